"""The `sd3pose` command line: each command lives in the module of its area and is registered here."""

from __future__ import annotations

import logging

import typer

from sd3pose.cli_comfy import comfy_workflow_command
from sd3pose.cli_generate import generate_command, sample_photo_command
from sd3pose.distributed.cli import worker_command
from sd3pose.engine.cli import download_command, make_tiny_model_command
from sd3pose.pose.cli import pose_command
from sd3pose.service.cli import register as register_service_commands

app = typer.Typer(
    help="sd3pose: pose-guided image generation with SD3 Medium and the InstantX pose ControlNet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


app.command("generate")(generate_command)
app.command("sample-photo")(sample_photo_command)
app.command("pose")(pose_command)
register_service_commands(app)  # serve, demo, keys
app.command("worker")(worker_command)
app.command("make-tiny-model")(make_tiny_model_command)
app.command("download")(download_command)
app.command("comfy-workflow")(comfy_workflow_command)
