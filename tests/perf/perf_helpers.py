"""Small builders shared by the performance tests (tiny model, 64-96 px, few steps)."""

from __future__ import annotations

import base64
import io

import numpy as np
import PIL.Image
import torch

# Same job alone or in a merged batch: only matmul blocking differs (float32 CPU: <= 5e-6 observed).
BATCH_ATOL = 2e-5


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
