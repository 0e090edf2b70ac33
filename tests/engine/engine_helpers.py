"""Small builders shared by the engine tests."""

from __future__ import annotations

import numpy as np
import PIL.Image

from sd3pose.engine import EngineJob


def pose_map(width: int = 64, height: int = 64, seed: int = 0) -> PIL.Image.Image:
    """A stand-in pose map: random coloured strokes on black, like an OpenPose rendering."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = rng.integers(0, width), rng.integers(0, height)
        colour = rng.integers(64, 256, size=3)
        for t in np.linspace(0.0, 1.0, 2 * max(width, height)):
            x, y = int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0))
            pixels[max(0, y - 2) : y + 2, max(0, x - 2) : x + 2] = colour
    return PIL.Image.fromarray(pixels)


def job(**changes) -> EngineJob:
    """A small, fast job (64x64, 4 euler steps); keyword arguments override fields."""
    fields = dict(
        prompt="a dancer in a red dress",
        negative_prompt="low quality,less details",
        steps=4,
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


def relative_difference(a, b) -> float:
    return float((a - b).norm() / b.norm())
