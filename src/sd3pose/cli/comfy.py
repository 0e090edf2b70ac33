"""`sd3pose comfy-workflow REQUEST.json > workflow.json`: a request as the equivalent ComfyUI workflow."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from sd3pose.cli.generate import fail
from sd3pose.comfy_workflow import ModelFiles, comfy_workflow, pose_image_name
from sd3pose.errors import Sd3PoseError

log = logging.getLogger("sd3pose.cli")

SD3_MEDIUM_SIDE = 1024  # the default output size is the input's aspect ratio at about 1024 x 1024


def comfy_workflow_command(
    request_file: Path = typer.Argument(
        ..., help="A request body as for POST /v1/sd3-med-pose (JSON; '-' reads stdin). `image` may be a local path."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Write the workflow here instead of to stdout."),
    pose_out: Path = typer.Option(
        None, "--pose-out", help="Where to write the pose map PNG (default: sd3pose_pose_<hash>.png, here)."
    ),
    no_t5: bool = typer.Option(False, "--no-t5", help="Load CLIP-L and CLIP-G only, as `sd3pose serve --no-t5` runs."),
    native_size: int = typer.Option(
        SD3_MEDIUM_SIDE, "--native-size", help="The model's native side in pixels, for the default output size."
    ),
    checkpoint: str = typer.Option(ModelFiles.checkpoint, "--checkpoint", help="SD3 Medium in models/checkpoints."),
    clip_l: str = typer.Option(ModelFiles.clip_l, "--clip-l", help="CLIP-L in models/text_encoders."),
    clip_g: str = typer.Option(ModelFiles.clip_g, "--clip-g", help="CLIP-G in models/text_encoders."),
    t5: str = typer.Option(ModelFiles.t5, "--t5", help="T5-XXL in models/text_encoders."),
    controlnet: str = typer.Option(
        ModelFiles.controlnet, "--controlnet", help="InstantX/SD3-Controlnet-Pose's weights in models/controlnet."
    ),
) -> None:
    """Write the ComfyUI (v0.12.1) workflow, in API format, that makes the same images as this request.

    The pose map is made here and written as a PNG for ComfyUI's input/ folder; LoadImage names it.
    """
    from sd3pose.images import InputLimits, encode_image
    from sd3pose.pipeline import prepare_control
    from sd3pose.request import OutputFormat, parse_request

    try:
        text = sys.stdin.read() if str(request_file) == "-" else request_file.read_text()
        body = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"could not read the request {request_file}: {exc}")
    try:
        request = parse_request(body).with_seed_resolved()
        log.info("making the pose map")
        control = prepare_control(
            request, native=native_size, input_limits=InputLimits(allow_local_paths=True, allow_private_urls=True)
        )
    except (Sd3PoseError, ValueError) as exc:
        fail(getattr(exc, "message", str(exc)))
    png = encode_image(control.image, OutputFormat.png)
    pose_path = pose_out if pose_out is not None else Path(pose_image_name(png))
    files = ModelFiles(checkpoint, clip_l, clip_g, None if no_t5 else t5, controlnet)
    workflow = comfy_workflow(
        request, width=control.image.width, height=control.image.height, pose_image=pose_path.name, files=files
    )
    text = json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"
    try:
        pose_path.write_bytes(png)
        if output is not None:
            output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"could not write {exc.filename} ({exc.strerror or exc}); choose a writable path")
    if output is None:
        typer.echo(text, nl=False)
    size = f"{control.image.width}x{control.image.height}"
    typer.echo(f"wrote the pose map {pose_path} ({size}): put it in ComfyUI's input/ folder", err=True)
    typer.echo(f"seeds {', '.join(map(str, request.seeds))}: one KSampler each", err=True)
    if request.output_format is not OutputFormat.png:
        typer.echo(f"note: ComfyUI's SaveImage writes PNG files, not {request.output_format.value}", err=True)
