"""The README's memory table: GPU memory each run mode needs for the weights, from parameter counts.

Counts every stored value of each model, instantiated from the published configs on PyTorch's meta
device (no memory, no download), at 2 bytes per value (bf16/fp16 on a GPU; fp32 on a CPU doubles
it). With `--offload` the GPU holds at worst the models that one phase of a request needs
(`sd3pose.engine.memory.resident_bytes`). Activations come on top (`bench/gpu.py` measures peaks).

    .venv/bin/python bench/memory_table.py [CONFIGS]   # default: tests/fixtures/sd3-medium-configs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sd3pose.engine.memory import COMPONENTS, parameter_counts, resident_bytes

DEFAULT_CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sd3-medium-configs"
BYTES_PER_VALUE = 2  # bf16 / fp16
NAMES = {
    "transformer": "SD3 Medium transformer",
    "controlnet": "pose ControlNet",
    "vae": "VAE",
    "text_encoder": "CLIP-L",
    "text_encoder_2": "CLIP-G",
    "text_encoder_3": "T5-XXL",
}
MODES = (
    ("all on the GPU, with T5", True, False),
    ("all on the GPU, `--no-t5`", False, False),
    ("`--offload`, with T5", True, True),
    ("`--offload --no-t5`", False, True),
)


def table(configs: Path) -> str:
    """The markdown table (components, then modes) for the configs in CONFIGS/base and CONFIGS/controlnet."""
    counts = parameter_counts(configs / "base", configs / "controlnet")
    sizes = {name: count * BYTES_PER_VALUE for name, count in counts.items()}
    lines = ["| weights | parameters | bf16/fp16 |", "|---|---|---|"]
    lines += [f"| {NAMES[name]} | {counts[name] / 1e9:.2f} B | {sizes[name] / 1e9:.2f} GB |" for name in COMPONENTS]
    lines += ["", "| mode | GPU memory for weights |", "|---|---|"]
    for label, use_t5, offload in MODES:
        lines.append(f"| {label} | {resident_bytes(sizes, use_t5=use_t5, offload=offload) / 1e9:.1f} GB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="?", type=Path, default=DEFAULT_CONFIGS)
    print(table(parser.parse_args().configs))


if __name__ == "__main__":
    main()
