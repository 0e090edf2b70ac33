"""`sd3pose make-tiny-model DIR` and `sd3pose download DIR`."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from sd3pose.cli.options import fail
from sd3pose.errors import Sd3PoseError


def make_tiny_model_command(
    directory: Path = typer.Argument(..., help="Where to write base/ and controlnet/."),
    force: bool = typer.Option(False, "--force", help="Replace a model already in DIR."),
    from_configs: Path = typer.Option(
        None,
        "--from-configs",
        help="Build it with the widths of the published configs in this folder (e.g. "
        "tests/fixtures/sd3-medium-configs): the real file formats, depth reduced, about 1.8 GB.",
    ),
) -> None:
    """Write a random-weight SD3 + pose ControlNet (a few MB by default; for tests and the demo: images are noise)."""
    from sd3pose.cli.tiny_model import is_complete, write_tiny_model

    if is_complete(directory) and not force:
        fail(f"{str(directory)!r} already holds a model; pass --force to replace it")
    if from_configs is not None and not from_configs.is_dir():
        fail(f"--from-configs {str(from_configs)!r} is not a folder; give the folder holding base/ and controlnet/")
    try:
        for name in ("base", "controlnet"):
            if force and (directory / name).exists():
                shutil.rmtree(directory / name)
        if from_configs is None:
            base, controlnet = write_tiny_model(directory)
        else:
            from sd3pose.cli.real_shaped_model import write_real_shaped_model

            base, controlnet = write_real_shaped_model(directory, from_configs)
    except (Sd3PoseError, OSError) as exc:
        fail(getattr(exc, "message", None) or f"could not write {str(directory)!r} ({exc})")
    kind = "tiny model" if from_configs is None else f"real-shaped model (configs from {from_configs})"
    typer.echo(f"{kind} written: {base} and {controlnet} (random weights: images are noise)")


def download_command(
    directory: Path = typer.Argument(..., help="Where to put base/ (SD3 Medium) and controlnet/ (pose)."),
    token: str = typer.Option(
        None, "--token", envvar="HF_TOKEN", help="Hugging Face token (SD3 Medium is gated: accept its licence)."
    ),
    no_t5: bool = typer.Option(False, "--no-t5", help="Skip the T5 text encoder (9.5 GB) for small GPUs."),
) -> None:
    """Fetch SD3 Medium (its diffusers folders: 15.5 GB, 6 GB without T5) and InstantX/SD3-Controlnet-Pose (1.2 GB).

    Prints the files and the total first and checks the free disk space; an interrupted download resumes.
    """
    from sd3pose.engine.download import download_models

    try:
        base, controlnet = download_models(directory, token=token, with_t5=not no_t5, announce=typer.echo)
    except Sd3PoseError as exc:
        fail(exc.message)
    typer.echo(f"weights ready: --model {base} --controlnet {controlnet}")
