"""Small jobs for the tiny model, shared by the engine and performance tests (a module name unique in the suite)."""

from __future__ import annotations

import numpy as np
import PIL.Image

from sd3pose.engine import EngineJob


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
    """A small, fast job (64x64, 4 euler steps, guidance 7); keyword arguments override fields."""
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
