"""CPU speed of our engine against diffusers, and what the caches save on a repeated request.

Model: the engine benchmark's random SD3 + ControlNet (4 joint layers, hidden 256, 1 ControlNet
layer, tiny CLIP/T5), 256x256, 8 euler steps on the "normal" schedule, guidance 7, strength 0.8.

1. ours (cold: prompt and control-latent caches emptied before every run) vs diffusers'
   StableDiffusion3ControlNetPipeline from the same noise, and ours with the model speed-ups off
   (`Engine(optimize=False)`: what fused QKV + the trimmed ControlNet block are worth). Target:
   median of per-round ratios ours/diffusers <= 0.95.
2. a whole request (Generator.run: photo -> pose detection -> generation -> PNG) the first time
   (every cache empty) vs the same request again (pose, prompt and control-latent caches warm).
   Target: median of per-round ratios repeat/first <= 0.85.
Runs alternate (who goes first flips each round) after one warm-up each; medians and ratios printed.

    .venv/bin/python bench/perf_cpu.py [--rounds 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import torch

SIZE, STEPS = 256, 8
PROMPT, NEGATIVE = "a dancer in a red dress on a stage", "low quality,less details"


def alternate(arms: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Time each arm once per round, rotating which goes first."""
    names = list(arms)
    for fn in arms.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            started = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - started)
    return times


def report(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Print medians and per-round ratios against `baseline`; return the ratios."""
    ratios = {}
    for name, values in times.items():
        runs = ", ".join(f"{t * 1000:.0f}" for t in values)
        print(f"  median {name:<28} {statistics.median(values) * 1000:8.1f} ms   (runs: {runs})")
    for name, values in times.items():
        if name != baseline:
            ratio = statistics.median(a / b for a, b in zip(values, times[baseline], strict=True))
            ratios[name] = ratio
            print(f"  median of per-round ratios {name}/{baseline}: {ratio:.3f}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline

    from sd3pose.cli.tiny_model import write_tiny_model
    from sd3pose.engine import Engine, EngineJob, initial_noise
    from sd3pose.engine.loading import load_components
    from sd3pose.pipeline import Generator
    from sd3pose.pose.detect import get_detector
    from sd3pose.request import parse_request

    with tempfile.TemporaryDirectory() as tmp:
        print("building the random benchmark model (4 layers, hidden 256, 1 ControlNet layer)...", flush=True)
        base, control = write_tiny_model(Path(tmp), layers=4, heads=4, head_dim=64, controlnet_layers=1)
        engine = Engine.load(base, control, device="cpu", dtype="fp32")
        parts = load_components(base, control, device=torch.device("cpu"), dtype=torch.float32)
        plain = Engine(parts, torch.device("cpu"), torch.float32, optimize=False)
        pipe = StableDiffusion3ControlNetPipeline.from_pretrained(
            base, controlnet=SD3ControlNetModel.from_pretrained(control)
        )
        pipe.set_progress_bar_config(disable=True)

        rng = np.random.default_rng(0)
        pose = PIL.Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        job = EngineJob(PROMPT, NEGATIVE, STEPS, 7.0, [698845], 0.8, "euler", "normal", SIZE, SIZE, pose)
        noise = initial_noise(job.seeds, (16, SIZE // 8, SIZE // 8), engine.device)

        def cold(which: Engine) -> Callable[[], object]:
            def run() -> object:
                which.text.cache.clear()
                which.control_cache.clear()
                return which.generate(job)

            return run

        def reference() -> object:
            with torch.no_grad():
                return pipe(
                    prompt=PROMPT,
                    negative_prompt=NEGATIVE,
                    max_sequence_length=77,  # T5 at 77 tokens, as ComfyUI (and we) read a short prompt
                    num_inference_steps=STEPS,
                    guidance_scale=7.0,
                    control_image=pose,
                    controlnet_conditioning_scale=0.8,
                    latents=noise,
                    height=SIZE,
                    width=SIZE,
                ).images

        ours_pixels = np.asarray(cold(engine)()[0], dtype=np.int16)
        ref_pixels = np.asarray(reference()[0], dtype=np.int16)
        print(
            f"\n[1] engine vs diffusers, cpu ({torch.get_num_threads()} thread), {SIZE}x{SIZE}, {STEPS} euler steps, "
            f"guidance 7, ControlNet 0.8; {args.rounds} alternating rounds"
        )
        print(f"  images: max |ours - diffusers| = {np.abs(ours_pixels - ref_pixels).max()} / 255")
        times = alternate(
            {"diffusers": reference, "ours (cold caches)": cold(engine), "ours, model speed-ups off": cold(plain)},
            args.rounds,
        )
        ratios = report(times, "diffusers")
        target = ratios["ours (cold caches)"]
        print(f"  target ours/diffusers <= 0.95: {'met' if target <= 0.95 else 'NOT met'} ({target:.3f})")
        del plain, parts

        from skimage import data

        buffer = io.BytesIO()
        PIL.Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=95)
        request = parse_request(
            {
                "image": base64.b64encode(buffer.getvalue()).decode("ascii"),
                "prompt": PROMPT,
                "negative_prompt": NEGATIVE,
                "width": SIZE,
                "height": SIZE,
                "num_inference_steps": STEPS,
                "sampler": "euler",
                "scheduler": "normal",
                "output_format": "png",
            }
        )
        generator = Generator(engine, detector=get_detector())

        def first() -> object:
            generator.detector.cache.clear()
            engine.text.cache.clear()
            engine.control_cache.clear()
            return generator.run(request)

        def repeat() -> object:
            return generator.run(request)

        a, b = first(), repeat()
        same = a.images == b.images
        print(
            f"\n[2] whole request (512x512 JPEG photo -> pose -> {SIZE}x{SIZE}, {STEPS} steps -> PNG): "
            f"first time vs the same request again; {args.rounds} alternating rounds"
        )
        print(
            f"  repeat gives byte-identical PNGs: {same}; stage times of a first run: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in a.timings.items())
        )
        times = alternate({"first (caches empty)": first, "repeat (caches warm)": repeat}, args.rounds)
        ratio = report(times, "first (caches empty)")["repeat (caches warm)"]
        print(f"  target repeat/first <= 0.85: {'met' if ratio <= 0.85 else 'NOT met'} ({ratio:.3f})")


if __name__ == "__main__":
    main()
