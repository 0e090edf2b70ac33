"""PNG output encoding: sd3pose's zlib level (images.PNG_COMPRESS_LEVEL) against Pillow's default (6).

Encodes a 1024x1024 photo (scikit-image's astronaut, upscaled like a generated image at the
default size) with both settings, alternating A/B runs, and reports median times, their ratio
and the size ratio. Both are lossless, so the decoded pixels are checked to be identical.

    .venv/bin/python bench/encode.py [--runs 15] [--size 1024]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image
from skimage import data

from sd3pose.images import PNG_COMPRESS_LEVEL, encode_image

PILLOW_DEFAULT_LEVEL = 6


def reference_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=PILLOW_DEFAULT_LEVEL)
    return buffer.getvalue()


def timed(fn, image: Image.Image) -> tuple[float, bytes]:
    started = time.perf_counter()
    out = fn(image)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()

    image = Image.fromarray(data.astronaut()).resize((args.size, args.size), Image.Resampling.LANCZOS)
    ours, reference = [], []
    ours_bytes = ref_bytes = b""
    for run in range(args.runs):
        # Alternate which goes first so caches and clock drift favour neither.
        order = [("ours", lambda im: encode_image(im, "png")), ("ref", reference_png)]
        if run % 2:
            order.reverse()
        for name, fn in order:
            seconds, out = timed(fn, image)
            if name == "ours":
                ours.append(seconds)
                ours_bytes = out
            else:
                reference.append(seconds)
                ref_bytes = out

    same = np.array_equal(np.asarray(Image.open(io.BytesIO(ours_bytes))), np.asarray(image))
    ours_ms, ref_ms = statistics.median(ours) * 1e3, statistics.median(reference) * 1e3
    print(f"image {args.size}x{args.size} RGB, {args.runs} alternating runs, medians")
    print(f"sd3pose PNG (zlib level {PNG_COMPRESS_LEVEL}): {ours_ms:7.1f} ms  {len(ours_bytes) / 1024:7.0f} KiB")
    print(f"Pillow default (level {PILLOW_DEFAULT_LEVEL}):     {ref_ms:7.1f} ms  {len(ref_bytes) / 1024:7.0f} KiB")
    print(f"speed-up {ref_ms / ours_ms:.2f}x, size ratio {len(ours_bytes) / len(ref_bytes):.3f}, lossless: {same}")


if __name__ == "__main__":
    main()
