"""Wall time of our engine vs diffusers' StableDiffusion3ControlNetPipeline on the same random model.

Both load the same folders (a random-weight SD3 + ControlNet larger than the demo one: 4 joint
layers, hidden 256, 1 ControlNet layer) and make the same request: 256x256, 8 euler steps on
diffusers' default schedule, guidance 7, strength 0.8, one image, decoded to PIL. Runs alternate
A/B after one warm-up each; the ratio of the medians ours/diffusers is printed (target <= 1.0).

    .venv/bin/python bench/engine_vs_diffusers.py [--rounds 7] [--device cpu] [--threads 1]
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
from sd3pose.engine import Engine, EngineJob, initial_noise

SIZE, STEPS = 256, 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # steadier timings on a shared machine
    logging.basicConfig(level=logging.WARNING)

    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline

    with tempfile.TemporaryDirectory() as tmp:
        print("building the random benchmark model (4 layers, hidden 256)...", flush=True)
        base, control = write_tiny_model(Path(tmp), layers=4, heads=4, head_dim=64, controlnet_layers=1)
        engine = Engine.load(base, control, device=args.device, dtype="fp32")
        pipe = StableDiffusion3ControlNetPipeline.from_pretrained(
            base, controlnet=SD3ControlNetModel.from_pretrained(control)
        ).to(args.device)
        pipe.set_progress_bar_config(disable=True)

        rng = np.random.default_rng(0)
        pose = PIL.Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        job = EngineJob(
            prompt="a dancer in a red dress on a stage",
            negative_prompt="low quality,less details",
            steps=STEPS,
            guidance_scale=7.0,
            seeds=[698845],
            strength=0.8,
            sampler="euler",
            scheduler="normal",
            width=SIZE,
            height=SIZE,
            control_image=pose,
        )
        noise = initial_noise(job.seeds, (16, SIZE // 8, SIZE // 8), engine.device)

        def ours() -> None:
            # Cold caches every run: diffusers encodes the prompts and the pose map every time too.
            engine.text.cache.clear()
            engine.control_cache.clear()
            engine.generate(job)

        def reference() -> None:
            with torch.no_grad():
                pipe(
                    prompt=job.prompt,
                    negative_prompt=job.negative_prompt,
                    max_sequence_length=77,  # T5 at 77 tokens, as ComfyUI (and we) read a short prompt
                    num_inference_steps=STEPS,
                    guidance_scale=job.guidance_scale,
                    control_image=pose,
                    controlnet_conditioning_scale=job.strength,
                    latents=noise,
                    height=SIZE,
                    width=SIZE,
                )

        def timed(fn) -> float:
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            fn()
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - started

        ours(), reference()  # warm-up
        times: dict[str, list[float]] = {"ours": [], "diffusers": []}
        for i in range(args.rounds):
            order = [("ours", ours), ("diffusers", reference)]
            if i % 2:
                order.reverse()  # alternate who goes first
            for name, fn in order:
                times[name].append(timed(fn))
        a, b = statistics.median(times["ours"]), statistics.median(times["diffusers"])
        threads = torch.get_num_threads()
        print(f"device {engine.device} ({threads} threads), {SIZE}x{SIZE}, {STEPS} steps, guidance 7")
        print(f"{args.rounds} alternating rounds after one warm-up each")
        for name, median in (("ours", a), ("diffusers", b)):
            runs = ", ".join(f"{t * 1000:.0f}" for t in times[name])
            print(f"median {name:<10} {median * 1000:8.1f} ms   (all runs: {runs})")
        paired = statistics.median(o / d for o, d in zip(times["ours"], times["diffusers"], strict=True))
        print(f"median of per-round ratios ours/diffusers: {paired:.3f}   (ratio of medians: {a / b:.3f})")


if __name__ == "__main__":
    main()
