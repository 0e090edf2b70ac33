"""`sd3pose pose IMAGE`: detect the pose in a photo, write the skeleton map and OpenPose JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sd3pose.errors import ImageInputError, Sd3PoseError
from sd3pose.request import PoseMode, ResizeMode

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


def open_photo(path: Path) -> Image.Image:
    """The photo at `path`, decoded exactly as the API decodes uploads: upright, 8-bit RGB.

    Going through sd3pose.images (not Pillow's convert) keeps 16-bit greyscale from clipping to
    white and composites transparency the same way, so the CLI finds the people the API would.
    """
    from sd3pose.images import InputLimits, load_image_bytes, read_image_file

    limits = InputLimits(allow_local_paths=True)
    try:
        return load_image_bytes(read_image_file(path, limits.max_bytes), limits)
    except ImageInputError as exc:
        if str(path) in exc.message:
            raise
        raise ImageInputError(f"{path}: {exc.message}") from None


def pose_command(
    image: Path = typer.Argument(..., help="A photo of one or more people (JPEG, PNG, WebP...)."),
    output: Path = typer.Option(Path("skeleton.png"), "--output", "-o", help="Where to write the pose map."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the keypoints as OpenPose JSON."),
    parts: str = typer.Option("body,hands,face", "--parts", help="Parts to draw, comma-separated."),
    width: int | None = typer.Option(None, "--width", help="Map width (default: the photo's)."),
    height: int | None = typer.Option(None, "--height", help="Map height (default: the photo's)."),
    resize_mode: ResizeMode = typer.Option(
        ResizeMode.crop, "--resize-mode", help="How the photo is fitted to another size: crop, fill, stretch."
    ),
) -> None:
    """Detect the pose in a photo; write the OpenPose-style skeleton map (and keypoints JSON)."""
    from sd3pose.pose.control import build_control_image
    from sd3pose.pose.openpose_json import pose_to_openpose_json

    try:
        photo = open_photo(image)
        part_list = [p for p in (s.strip() for s in parts.split(",")) if p]
        result = build_control_image(
            photo,
            None,
            mode=PoseMode.detect,
            parts=part_list,
            width=width or photo.width,
            height=height or photo.height,
            resize_mode=resize_mode,
        )
        result.image.save(output)
        log.info("wrote the pose map of %d person(s) to %s", len(result.pose.people), output)
        if json_path is not None:
            json_path.write_text(json.dumps(pose_to_openpose_json(result.pose)))
            log.info("wrote the keypoints to %s", json_path)
    except Sd3PoseError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(code=1) from None
    except (OSError, ValueError) as exc:  # e.g. an unwritable output path or unknown extension
        typer.echo(f"error: could not write the output ({exc}); check the --output and --json paths", err=True)
        raise typer.Exit(code=1) from None
