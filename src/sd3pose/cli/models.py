"""`sd3pose make-tiny-model DIR` and `sd3pose download DIR`."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from sd3pose.errors import Sd3PoseError


def _fail(message: str) -> None:
    # One clear sentence on stderr, no traceback.
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def make_tiny_model_command(
    directory: Path = typer.Argument(..., help="Where to write base/ and controlnet/."),
    force: bool = typer.Option(False, "--force", help="Replace a model already in DIR."),
) -> None:
    """Write the tiny random-weight SD3 + pose ControlNet (a few MB; for tests and the demo: images are noise)."""
    from sd3pose.cli.tiny_model import is_complete, write_tiny_model

    if is_complete(directory) and not force:
        _fail(f"{str(directory)!r} already holds a model; pass --force to replace it")
    try:
        for name in ("base", "controlnet"):
            if force and (directory / name).exists():
                shutil.rmtree(directory / name)
        base, controlnet = write_tiny_model(directory)
    except (Sd3PoseError, OSError) as exc:
        _fail(getattr(exc, "message", None) or f"could not write {str(directory)!r} ({exc})")
    typer.echo(f"tiny model written: {base} and {controlnet} (random weights: images are noise)")


def download_command(
    directory: Path = typer.Argument(..., help="Where to put base/ (SD3 Medium) and controlnet/ (pose)."),
    token: str = typer.Option(
        None, "--token", envvar="HF_TOKEN", help="Hugging Face token (SD3 Medium is gated: accept its licence)."
    ),
    no_t5: bool = typer.Option(False, "--no-t5", help="Skip the T5 text encoder (about 9 GB) for small GPUs."),
) -> None:
    """Fetch SD3 Medium (diffusers layout) and InstantX/SD3-Controlnet-Pose with huggingface_hub."""
    from sd3pose.engine.download import download_models

    try:
        base, controlnet = download_models(directory, token=token, with_t5=not no_t5)
    except Sd3PoseError as exc:
        _fail(exc.message)
    typer.echo(f"weights ready: --model {base} --controlnet {controlnet}")
