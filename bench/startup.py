"""A whole `sd3pose generate` process against a plain diffusers script doing the same job.

Both are fresh Python processes timed from spawn to exit, so imports, model loading, sampling,
decoding and writing the PNG all count: what a user running one command pays. Model: the engine
benchmark's random SD3 + ControlNet (4 joint layers, hidden 256, 1 ControlNet layer, tiny CLIP/T5),
written once to a temporary folder in the diffusers layout. Job: a ready 256x256 pose map, 8 euler
steps on the "normal" schedule (diffusers' default FlowMatchEuler), guidance 7, strength 0.8, fp32
on the CPU, one PNG. Runs alternate (who goes first rotates each round) after one warm-up each, so
all read the model from the page cache. Target: median of per-round ratios ours/diffusers <= 0.95.
A third arm runs the same command with the interpreter's teardown at exit (typer's own entry), to
show what ending the process as soon as the command has is worth on its own.

    .venv/bin/python bench/startup.py [--rounds 5] [--profile]

`--profile` also prints where `sd3pose generate` spends its import time (python -X importtime).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE, STEPS, SEED = 256, 8, 698845
PROMPT, NEGATIVE = "a dancer in a red dress on a stage", "low quality,less details"
SD3POSE = str(Path(sys.executable).parent / "sd3pose")

# The reference: what a user of diffusers alone would write for the same image.
DIFFUSERS_SCRIPT = """
import sys
import torch
from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline
from diffusers.utils import load_image

base, control, pose, out, prompt, negative, size, steps, seed = sys.argv[1:]
pipe = StableDiffusion3ControlNetPipeline.from_pretrained(
    base, controlnet=SD3ControlNetModel.from_pretrained(control), torch_dtype=torch.float32
)
pipe.set_progress_bar_config(disable=True)
image = pipe(
    prompt=prompt,
    negative_prompt=negative,
    control_image=load_image(pose),
    controlnet_conditioning_scale=0.8,
    num_inference_steps=int(steps),
    guidance_scale=7.0,
    height=int(size),
    width=int(size),
    generator=torch.Generator("cpu").manual_seed(int(seed)),
).images[0]
image.save(out)
"""


TEARDOWN_ENTRY = "import sys, typer; from sd3pose.cli import app; typer.Typer.__call__(app)"


def write_pose_map(path: Path) -> None:
    """Random coloured strokes on black: a ready pose map (no detection in either arm)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    for _ in range(6):
        x0, y0, x1, y1 = rng.integers(0, SIZE, size=4)
        for t in np.linspace(0.0, 1.0, 2 * SIZE):
            x, y = int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0))
            pixels[max(0, y - 3) : y + 3, max(0, x - 3) : x + 3] = rng.permutation([255, 85, 0])
    Image.fromarray(pixels).save(path)


def commands(base: Path, control: Path, pose: Path, folder: Path) -> dict[str, list[str]]:
    ours = [
        SD3POSE,
        "generate",
        "--image",
        str(pose),
        "--pose-mode",
        "none",
        "--prompt",
        PROMPT,
        "--negative-prompt",
        NEGATIVE,
        "--width",
        str(SIZE),
        "--height",
        str(SIZE),
        "--steps",
        str(STEPS),
        "--sampler",
        "euler",
        "--scheduler",
        "normal",
        "--seed",
        str(SEED),
        "--model",
        str(base),
        "--controlnet",
        str(control),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--output",
        str(folder / "ours.png"),
    ]
    reference = [sys.executable, "-c", DIFFUSERS_SCRIPT, str(base), str(control), str(pose)]
    reference += [str(folder / "diffusers.png"), PROMPT, NEGATIVE, str(SIZE), str(STEPS), str(SEED)]
    # The ablation: the same command through typer's own entry, so the interpreter is torn down at exit.
    with_teardown = [sys.executable, "-c", TEARDOWN_ENTRY, *ours[1:]]
    return {"ours": ours, "diffusers": reference, "ours with teardown": with_teardown}


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run of `command`."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} {command[1]} failed:\n{done.stdout}\n{done.stderr}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return elapsed, cpu


def profile_imports(command: list[str]) -> None:
    """Where one run of `command` spends its import time (python -X importtime), by top-level package."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "from sd3pose.cli import app; app()", *command[1:]],
        capture_output=True,
        text=True,
    )
    by_package: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            own, _, name = line[len("import time:") :].split("|")
            if own.strip().isdigit():
                package = name.strip().split(".")[0]
                by_package[package] = by_package.get(package, 0) + int(own)
    total = sum(by_package.values())
    print(f"imports of `sd3pose generate`: {total / 1e6:.2f} s in all; the largest, by top-level package:")
    for package, micros in sorted(by_package.items(), key=lambda item: -item[1])[:12]:
        print(f"  {micros / 1e6:6.2f} s  {package}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also print the slowest imports of our command")
    args = parser.parse_args()

    from sd3pose.cli.tiny_model import write_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("building the random benchmark model (4 layers, hidden 256)...", flush=True)
        base, control = write_tiny_model(folder / "model", layers=4, heads=4, head_dim=64, controlnet_layers=1)
        pose = folder / "pose.png"
        write_pose_map(pose)
        arms = commands(base, control, pose, folder)
        if args.profile:
            profile_imports(arms["ours"])
        for command in arms.values():
            timed(command)  # warm-up: the page cache holds the model and the libraries for both
        wall: dict[str, list[float]] = {name: [] for name in arms}
        cpu: dict[str, list[float]] = {name: [] for name in arms}
        names = list(arms)
        for i in range(args.rounds):
            order = names[i % len(names) :] + names[: i % len(names)]  # who goes first rotates
            for name in order:
                elapsed, used = timed(arms[name])
                wall[name].append(elapsed)
                cpu[name].append(used)
                print(f"  round {i + 1}: {name:<18} {elapsed:6.2f} s wall, {used:6.2f} s CPU", flush=True)

    print(f"whole process, {SIZE}x{SIZE}, {STEPS} euler steps, guidance 7, fp32 CPU; {args.rounds} alternating rounds")
    # Wall time is what a user waits; CPU time (user + system) barely moves when other work shares
    # the cores, so it is the steadier cross-check on a busy machine.
    for label, times in (("wall", wall), ("CPU", cpu)):
        for name, values in times.items():
            runs = ", ".join(f"{t:.2f}" for t in values)
            print(f"median {label} {name:<18} {statistics.median(values):6.2f} s   (runs: {runs})")
        for name in ("ours", "ours with teardown"):
            paired = statistics.median(o / d for o, d in zip(times[name], times["diffusers"], strict=True))
            print(f"{label}: median of per-round ratios {name}/diffusers: {paired:.3f}")
            if name == "ours" and label == "wall":
                print(f"target <= 0.95 (wall): {'met' if paired <= 0.95 else 'NOT met'}")


if __name__ == "__main__":
    main()
