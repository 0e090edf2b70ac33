"""Small builders shared by the performance tests (tiny model, 64-96 px, few steps)."""

from __future__ import annotations

import base64
import io

import numpy as np
import PIL.Image
import torch

from sd3pose.engine import EngineJob

# Same job alone or in a merged batch: only matmul blocking differs (float32 CPU: <= 5e-6 observed).
BATCH_ATOL = 2e-5


def pose_map(width: int = 64, height: int = 64, seed: int = 0) -> PIL.Image.Image:
    """Random coloured strokes on black, like an OpenPose rendering (auto mode treats it as a pose map)."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for _ in range(5):
        x0, x1 = rng.integers(0, width, size=2)
        y0, y1 = rng.integers(0, height, size=2)
        colour = rng.permutation([255, int(rng.integers(0, 80)), 0])
        for t in np.linspace(0.0, 1.0, 2 * max(width, height)):
            x, y = int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0))
            pixels[max(0, y - 2) : y + 2, max(0, x - 2) : x + 2] = colour
    return PIL.Image.fromarray(pixels)


def job(**changes) -> EngineJob:
    """A small job (64x64, 3 euler steps, guidance 7); keyword arguments override fields."""
    fields = dict(
        prompt="a dancer in a red dress",
        negative_prompt="low quality,less details",
        steps=3,
        guidance_scale=7.0,
        seeds=[698845],
        strength=0.8,
        sampler="euler",
        scheduler="normal",
        width=64,
        height=64,
        control_image=None,
    )
    fields.update(changes)
    if fields["control_image"] is None:
        fields["control_image"] = pose_map(fields["width"], fields["height"])
    return EngineJob(**fields)


def png_base64(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pixels(images: list[PIL.Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def decoded_pixels(encoded: list[bytes]) -> np.ndarray:
    return pixels([PIL.Image.open(io.BytesIO(data)).convert("RGB") for data in encoded])


def assert_close_latents(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, rtol=0, atol=BATCH_ATOL), float((a - b).abs().max())
