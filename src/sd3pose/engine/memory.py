"""What the models need in memory: weights per component from parameter counts, per run mode, and the
peak GPU memory a request really used (logged at debug level).

The counts come from the published configs, instantiated on PyTorch's meta device (no memory, no
download), so the README's table can be recomputed by `bench/memory_table.py` and checked by a test.
Activations (attention, the VAE decode at 1024 px) come on top; `bench/gpu.py` measures the peaks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
COMPONENTS = ("transformer", "controlnet", "vae") + TEXT_ENCODERS


def _config(path: Path) -> dict:
    return {key: value for key, value in json.loads(path.read_text()).items() if not key.startswith("_")}


def _stored_values(model: torch.nn.Module) -> int:
    """Parameters (tied ones once) plus persistent buffers: the values a checkpoint stores."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    buffers = [value for key, value in model.state_dict().items() if key not in parameters]
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in buffers)


def parameter_counts(base: str | Path, controlnet: str | Path) -> dict[str, int]:
    """Stored values per component of the model whose configs are in `base` (SD3 layout) and `controlnet`."""
    from diffusers import AutoencoderKL, SD3ControlNetModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    base, controlnet = Path(base), Path(controlnet)
    with torch.device("meta"):
        models = {
            "transformer": SD3Transformer2DModel(**_config(base / "transformer" / "config.json")),
            "controlnet": SD3ControlNetModel(**_config(controlnet / "config.json")),
            "vae": AutoencoderKL(**_config(base / "vae" / "config.json")),
            "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**_config(base / "text_encoder/config.json"))),
            "text_encoder_2": CLIPTextModelWithProjection(
                CLIPTextConfig(**_config(base / "text_encoder_2" / "config.json"))
            ),
            "text_encoder_3": T5EncoderModel(T5Config(**_config(base / "text_encoder_3" / "config.json"))),
        }
    return {name: _stored_values(model) for name, model in models.items()}


def resident_bytes(sizes: dict[str, int], *, use_t5: bool, offload: bool) -> int:
    """Bytes of weights on the GPU at the worst moment of a request, for component sizes in bytes.

    Without offload every loaded model stays on the GPU. With `--offload` (see engine/offload.py) the
    GPU holds, at worst, the last text encoder that ran plus the VAE (while the pose map is encoded),
    or the transformer, the ControlNet and the VAE (while sampling).
    """
    texts = [name for name in TEXT_ENCODERS if use_t5 or name != "text_encoder_3"]
    if not offload:
        return sum(sizes[name] for name in ("transformer", "controlnet", "vae", *texts))
    encoding = sizes[texts[-1]] + sizes["vae"]
    sampling = sizes["transformer"] + sizes["controlnet"] + sizes["vae"]
    return max(encoding, sampling)


@contextmanager
def log_peak_gpu_memory(device: torch.device, what: str) -> Iterator[None]:
    """Log at debug level the most GPU memory allocated while the block ran (CUDA only; else a no-op)."""
    if device.type != "cuda" or not logger.isEnabledFor(logging.DEBUG):
        yield
        return
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        logger.debug(
            "peak GPU memory for %s on %s: %.2f GiB allocated, %.2f GiB reserved",
            what,
            device,
            torch.cuda.max_memory_allocated(device) / 2**30,
            torch.cuda.max_memory_reserved(device) / 2**30,
        )
