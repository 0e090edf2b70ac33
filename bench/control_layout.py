"""The pose map's memory layout before the VAE: channels-last strides (how a decoded image arrives) vs contiguous.

SD3 Medium's VAE (published config, random weights) encodes one pose map both ways, on the chosen device,
with the VAE's weights in the layout the engine gives them there (channels-last on CUDA, contiguous
elsewhere). Prints, against a float64 CPU reference of the same encode, the largest absolute error of
each layout in float32 (the CPU's GroupNorm is less exact on channels-last strides), then the time of
each in the run dtype over alternating rounds after a warm-up, and the ratio channels-last / contiguous
(below 1: channels-last is faster). The engine keeps channels-last on CUDA and contiguous elsewhere.

    .venv/bin/python bench/control_layout.py [--device cpu|cuda] [--size 512] [--rounds 5] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

CONFIG = (
    Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sd3-medium-configs" / "base" / "vae" / "config.json"
)


def pose_pixels(size: int) -> torch.Tensor:
    """A random pose-map-like image as the VAE image processor hands it over: NCHW over HWC memory, in [-1, 1]."""
    rng = np.random.default_rng(0)
    image = np.zeros((1, size, size, 3), dtype=np.float32)
    for _ in range(12):
        y, x = rng.integers(0, size - 16, size=2)
        image[0, y : y + 16, x : x + size // 4] = rng.random(3)
    return torch.from_numpy(image * 2 - 1).permute(0, 3, 1, 2)


def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return vae.encode(pixels).latent_dist.mean


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    from diffusers import AutoencoderKL

    from sd3pose.engine.speed import vae_memory_format

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=0, help="pixels per side (default: 1024 on CUDA, 512 on CPU)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="", help="fp32 or bf16 (default: bf16 on CUDA, fp32 on CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or (1024 if device.type == "cuda" else 512)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]

    config = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    torch.manual_seed(0)
    vae = AutoencoderKL(**config).eval()
    strided = pose_pixels(size)
    print(f"SD3 Medium VAE (random weights), {size}x{size} pose map, {device}; input strides {strided.stride()}")

    reference = encode(vae.double(), strided.double().contiguous())
    vae = vae.float().to(device, memory_format=vae_memory_format(device))
    for name, pixels in (("channels-last strides", strided), ("contiguous", strided.contiguous())):
        error = (encode(vae, pixels.to(device)).double().cpu() - reference).abs().max().item()
        print(f"float32, {name}: largest absolute error vs float64 {error:.1e}")

    if dtype != torch.float32:
        vae = vae.to(dtype)
    inputs = {
        "channels_last": strided.to(device, dtype, memory_format=torch.channels_last),
        "contiguous": strided.to(device, dtype).contiguous(),
    }
    times: dict[str, list[float]] = {name: [] for name in inputs}
    for pixels in inputs.values():  # warm-up
        encode(vae, pixels)
    for _ in range(args.rounds):
        for name, pixels in inputs.items():
            sync(device)
            start = time.perf_counter()
            encode(vae, pixels)
            sync(device)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = [a / b for a, b in zip(times["channels_last"], times["contiguous"], strict=True)]
    print(
        f"{str(dtype).removeprefix('torch.')} encode, median of {args.rounds} rounds: channels-last "
        f"{medians['channels_last'] * 1000:.1f} ms, contiguous {medians['contiguous'] * 1000:.1f} ms; "
        f"channels-last / contiguous {statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
