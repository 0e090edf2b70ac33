"""The samplers' own cost per step against one tiny-model step (target: under 2 %).

A: ``sample(name, no-op denoiser, ...)`` over STEPS steps, divided by STEPS -- everything the
   sampler does besides calling the model (its tensor maths, noise draws, bookkeeping).
B: one call of the engine's denoiser on the project's tiny demo model (ControlNet + transformer,
   guidance on, so two rows per sample), the work one step costs at least.
Runs alternate A and B after a warm-up; the ratio of medians A / (evals per step * B) is printed
per sampler (a heun step costs two model evaluations, so its sampler time is set against two).

    .venv/bin/python bench/sampling_overhead.py [--rounds 7] [--size 256] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from sd3pose.cli.tiny_model import write_tiny_model
from sd3pose.engine import Engine, RowGroup, Sd3Denoiser
from sd3pose.sampling import SAMPLER_NAMES, SAMPLERS, get_sigmas, sample

STEPS = 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--samplers", default=",".join(SAMPLER_NAMES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        print("building the tiny demo model...", flush=True)
        base, control = write_tiny_model(Path(tmp))
        engine = Engine.load(base, control, device=args.device, dtype="fp32")
        pose = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8))
        sigmas = get_sigmas("sgm_uniform", STEPS)
        group = RowGroup(
            cond=engine.text.encode("a dancer on a stage"),
            uncond=engine.text.encode("low quality,less details"),
            control=engine.encode_control(pose, args.size, args.size),
            samples=1,
            guidance_scale=7.0,
            strength=0.8,
        )
        denoiser = Sd3Denoiser(engine, [group])
        shape = (1, engine.latent_channels, args.size // engine.vae_scale_factor, args.size // engine.vae_scale_factor)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        target = torch.zeros_like(x)

        def noop(x, sigma, *, return_uncond=False):
            return (target, target) if return_uncond else target

        def time_model() -> float:
            _sync(device)
            t = time.perf_counter()
            denoiser(x, torch.tensor(0.5, device=device))
            _sync(device)
            return time.perf_counter() - t

        def time_sampler(name: str) -> float:
            _sync(device)
            t = time.perf_counter()
            sample(name, noop, x, sigmas, seed=1)
            _sync(device)
            return (time.perf_counter() - t) / STEPS

        print(f"latent {tuple(x.shape)}, {STEPS} steps, device {device}, {args.rounds} rounds")
        time_model()
        worst = 0.0
        for name in args.samplers.split(","):
            time_sampler(name)
            a, b = [], []
            for _ in range(args.rounds):
                a.append(time_sampler(name))
                b.append(time_model())
            # A step of this sampler costs evals_per_step model evaluations.
            evals = SAMPLERS[name].evals_per_step
            ratio = statistics.median(a) / (evals * statistics.median(b))
            worst = max(worst, ratio)
            print(
                f"{name:20s} sampler {statistics.median(a) * 1e3:7.3f} ms/step  "
                f"model {statistics.median(b) * 1e3:7.2f} ms/eval x {evals}  overhead {100 * ratio:5.2f} %",
                flush=True,
            )
        print(f"worst overhead: {100 * worst:.2f} % of a step's model time (target < 2 %)")


if __name__ == "__main__":
    main()
