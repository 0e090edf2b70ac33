"""`sd3pose generate` and `sd3pose sample-photo`: one request from the command line."""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import typer

from sd3pose.cli.options import fail, settings_options
from sd3pose.errors import Sd3PoseError
from sd3pose.request import GenerationRequest, OutputFormat, parse_request
from sd3pose.settings import EngineSettings

log = logging.getLogger("sd3pose.cli")

_FORMATS = {".jpg": OutputFormat.jpeg, ".jpeg": OutputFormat.jpeg, ".png": OutputFormat.png, ".webp": OutputFormat.webp}


def output_paths(output: Path, count: int) -> list[Path]:
    """out.png for one image; out-0.png, out-1.png, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def _default(field: str):
    """A request field's default, so the command and the API never disagree."""
    value = GenerationRequest.model_fields[field].default
    return value.value if isinstance(value, Enum) else value


@settings_options(EngineSettings, into="engine")
def generate_command(
    engine: EngineSettings,
    prompt: str = typer.Option(..., "--prompt", "-p", help="What to draw."),
    image: str = typer.Option(None, "--image", "-i", help="Photo or pose map: a path, an http(s) URL or base64."),
    keypoints: Path = typer.Option(None, "--keypoints", help="OpenPose JSON file instead of --image."),
    output: Path = typer.Option(Path("out.png"), "--output", "-o", help="Output file (.png, .jpg or .webp)."),
    negative_prompt: str = typer.Option(_default("negative_prompt"), "--negative-prompt", "-n"),
    steps: int = typer.Option(_default("num_inference_steps"), "--steps", help="Denoising steps (1-100)."),
    guidance_scale: float = typer.Option(
        _default("guidance_scale"), "--guidance-scale", "--cfg", help="CFG scale (1-20)."
    ),
    strength: float = typer.Option(_default("strength"), "--strength", help="ControlNet strength (0-1)."),
    seed: int = typer.Option(_default("seed"), "--seed", help="Seed of the first image; -1 = random."),
    samples: int = typer.Option(_default("samples"), "--samples", help="Number of images (1-4)."),
    sampler: str = typer.Option(_default("sampler"), "--sampler"),
    scheduler: str = typer.Option(_default("scheduler"), "--scheduler"),
    width: int = typer.Option(None, "--width", help="Output width (multiple of 16)."),
    height: int = typer.Option(None, "--height", help="Output height (multiple of 16)."),
    pose_mode: str = typer.Option(_default("pose_mode"), "--pose-mode", help="auto, detect or none."),
    parts: str = typer.Option(
        ",".join(part.value for part in _default("pose_parts")), "--parts", help="Pose parts to draw."
    ),
    control_start: float = typer.Option(_default("control_start"), "--control-start"),
    control_end: float = typer.Option(_default("control_end"), "--control-end"),
    resize_mode: str = typer.Option(_default("resize_mode"), "--resize-mode", help="crop, fill or stretch."),
    save_pose: Path = typer.Option(None, "--save-pose", help="Also write the control image (pose map) here."),
) -> None:
    """Generate images in the pose of a photo (or pose map) from the command line."""
    # Imported here so `sd3pose --help` stays fast.
    import json

    from tqdm import tqdm

    from sd3pose.cli.loading import load_generator
    from sd3pose.images import InputLimits

    fmt = _FORMATS.get(output.suffix.lower())
    if fmt is None:
        fail(f"output file {output} has an unknown extension; use .png, .jpg or .webp")
    body: dict = {
        "image": image,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
        "seed": seed,
        "samples": samples,
        "strength": strength,
        "sampler": sampler,
        "scheduler": scheduler,
        "width": width,
        "height": height,
        "pose_mode": pose_mode,
        "pose_parts": [p.strip() for p in parts.split(",") if p.strip()],
        "control_start": control_start,
        "control_end": control_end,
        "resize_mode": resize_mode,
        "output_format": fmt.value,
        "return_pose": save_pose is not None,
    }
    if image is None and keypoints is None:
        fail("give --image PATH|URL (a photo or pose map) or --keypoints FILE.json")
    for target in (output, save_pose):  # before the (long) generation, not after it
        try:
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"cannot create the folder of {target} ({exc.strerror or exc}); choose a writable output path")
    if keypoints is not None:
        try:
            body["pose_keypoints"] = json.loads(keypoints.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            fail(f"could not read {keypoints}: {exc}")
    try:
        request = parse_request(body).with_seed_resolved()
        log.info("loading models")
        # A one-shot run: no warm-up (the pose models load only if a photo needs detecting).
        limits = InputLimits(allow_local_paths=True, allow_private_urls=True)
        generator = load_generator(engine, input_limits=limits)
        with tqdm(total=request.num_inference_steps, desc="sampling", unit="step") as bar:

            def on_step(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            result = generator.run(request, on_step=on_step)
    except (Sd3PoseError, ValueError) as exc:
        fail(getattr(exc, "message", str(exc)))

    writes = list(zip(output_paths(output, len(result.images)), result.images, strict=True))
    if save_pose is not None and result.pose_png is not None:
        writes.append((save_pose, result.pose_png))
    for path, data in writes:
        try:
            path.write_bytes(data)
        except OSError as exc:
            fail(f"could not write {path} ({exc.strerror or exc}); choose a writable output path")
    for (path, _), used_seed in zip(writes[: len(result.images)], result.seeds, strict=True):
        typer.echo(f"wrote {path} ({result.width}x{result.height}, seed {used_seed})")
    if save_pose is not None and result.pose_png is not None:
        typer.echo(f"wrote pose map {save_pose}")
    if generator.engine.is_demo:
        typer.echo(
            "note: this is the random-weight demo model, so the images are noise; "
            "use --model/--controlnet with real weights (sd3pose download DIR)"
        )


def sample_photo_command(
    output: Path = typer.Argument(Path("photo.jpg"), help="Where to write the photo."),
) -> None:
    """Write a sample photo of a person (scikit-image's astronaut) to try the service with."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).save(output, quality=95)
    typer.echo(f"wrote {output} (512x512 photo of a person, from scikit-image)")
