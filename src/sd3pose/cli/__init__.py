"""The `sd3pose` command line: every command, its shared options, and the tiny-model builder they (and the
tests) use. Each command imports what it needs when it runs, so `sd3pose --help` stays fast."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Any

import typer

from sd3pose.cli.comfy import comfy_workflow_command
from sd3pose.cli.generate import generate_command, sample_photo_command
from sd3pose.cli.models import download_command, make_tiny_model_command
from sd3pose.cli.pose import pose_command
from sd3pose.cli.serve import register as register_service_commands
from sd3pose.cli.worker import worker_command


class Program(typer.Typer):
    """The `sd3pose` program: it ends its process as soon as the command has finished.

    Tearing down an interpreter that has imported torch, diffusers and transformers takes about a
    second (freeing their module graphs) and does nothing a finished command needs: what it wrote is
    closed by then, and the logs and standard streams are flushed here. The exit handlers that
    libraries registered do run, since some do real work: Celery's restart of a worker on SIGHUP is
    one. Threads still running are not waited for, and a profiler that writes its report after the
    program returns (cProfile's -o) sees nothing; tests call the commands in-process, where this
    path is not taken.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__call__(*args, **kwargs)
            code: Any = 0
        except SystemExit as done:
            code = done.code
        logging.shutdown()
        if isinstance(code, str):
            sys.stderr.write(code + "\n")
        sys.stdout.flush()
        sys.stderr.flush()
        atexit._run_exitfuncs()  # the stdlib's own exit path, without the teardown after it
        os._exit(code if isinstance(code, int) else int(code is not None))


app = Program(
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
