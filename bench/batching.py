"""Dynamic batching: 4 concurrent compatible requests as one model batch vs one after another.

The demo (tiny) model on the CPU, 4 requests with the same size (its native 128x128), steps (20),
sampler (dpmpp_2m) and scheduler (sgm_uniform) -- the service defaults -- but different prompts,
seeds, guidance and strength. A: `Generator.run` four times in a row (what the worker did before);
B: `Generator.run_batch` of the four (what the worker does now when they are queued together).
Both start with warm caches, so only the sampling differs. Alternating rounds after one warm-up
each; prints the throughput ratio (median of per-round ratios, target >= 1.3) and the largest
pixel difference between a request's image in the batch and alone (target: identical, <= 1/255).

    .venv/bin/python bench/batching.py [--rounds 7] [--threads 1] [--steps 20]
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch


def pose_png(seed: int, size: int) -> str:
    """A stand-in pose map (coloured strokes on black) as base64 PNG."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    for _ in range(6):
        x0, x1 = rng.integers(0, size, 2)
        y0, y1 = rng.integers(0, size, 2)
        for t in np.linspace(0, 1, 2 * size):
            x, y = int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0))
            pixels[max(0, y - 2) : y + 2, max(0, x - 2) : x + 2] = rng.permutation([255, 60, 0])
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decoded(images: list[bytes]) -> np.ndarray:
    return np.stack([np.asarray(PIL.Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.int16) for b in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    from sd3pose.cli.tiny_model import write_tiny_model
    from sd3pose.engine import Engine
    from sd3pose.pipeline import Generator
    from sd3pose.request import parse_request

    with tempfile.TemporaryDirectory() as tmp:
        base, control = write_tiny_model(Path(tmp))
        engine = Engine.load(base, control, device="cpu", dtype="fp32")
        generator = Generator(engine)
        size = engine.native_resolution
        knobs = [
            ("a dancer in a red dress", 7.0, 0.8),
            ("an astronaut", 5.0, 0.6),
            ("a knight in armor", 7.0, 1.0),
            ("a chef in a kitchen", 3.0, 0.8),
        ]
        requests = [
            parse_request(
                {
                    "image": pose_png(i, size),
                    "prompt": prompt,
                    "guidance_scale": guidance,
                    "strength": strength,
                    "seed": 1000 + i,
                    "width": size,
                    "height": size,
                    "num_inference_steps": args.steps,
                    "pose_mode": "none",
                    "output_format": "png",
                }
            )
            for i, (prompt, guidance, strength) in enumerate(knobs)
        ]

        alone = [generator.run(r) for r in requests]
        batch = generator.run_batch(requests)
        worst = max(int(np.abs(decoded(a.images) - decoded(b.images)).max()) for a, b in zip(alone, batch, strict=True))

        times: dict[str, list[float]] = {"one after another": [], "one batch": []}
        arms = {
            "one after another": lambda: [generator.run(r) for r in requests],
            "one batch": lambda: generator.run_batch(requests),
        }
        for i in range(args.rounds):
            for name in list(arms) if i % 2 == 0 else list(arms)[::-1]:
                started = time.perf_counter()
                arms[name]()
                times[name].append(time.perf_counter() - started)

        print(
            f"4 requests, {size}x{size}, {args.steps} steps dpmpp_2m/sgm_uniform, tiny model, cpu "
            f"({torch.get_num_threads()} thread); {args.rounds} alternating rounds"
        )
        for name, values in times.items():
            runs = ", ".join(f"{t * 1000:.0f}" for t in values)
            print(f"  median {name:<18} {statistics.median(values) * 1000:8.1f} ms for 4 requests   (runs: {runs})")
        speedup = statistics.median(a / b for a, b in zip(times["one after another"], times["one batch"], strict=True))
        print(f"  throughput one batch / one after another (median of per-round ratios): {speedup:.2f}x")
        print(f"  largest pixel difference, batch vs alone: {worst}/255")
        print(f"  target >= 1.3x with identical images: {'met' if speedup >= 1.3 and worst <= 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
