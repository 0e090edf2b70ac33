"""Load SD3 Medium and an SD3 ControlNet from local folders (or hub ids) into plain components.

Folders are checked before anything heavy is read, so a wrong path gives one sentence naming the
folder, what is missing and the fix, instead of a diffusers traceback.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sd3pose.errors import ModelLoadError

logger = logging.getLogger(__name__)

# The key in model_index.json that marks the random-weight demo model (diffusers ignores keys with "_").
DEMO_MARKER = "_sd3pose_demo"

BASE_SUBFOLDERS = (
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)
T5_SUBFOLDERS = ("text_encoder_3", "tokenizer_3")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FIX = "run `sd3pose download DIR` (real weights) or `sd3pose make-tiny-model DIR` (demo model)"

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class Components:
    """The loaded models, tokenizers and the few config values the engine needs."""

    transformer: Any
    controlnet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    text_encoder_3: Any | None
    tokenizer: Any
    tokenizer_2: Any
    tokenizer_3: Any | None
    shift: float
    is_demo: bool


def choose_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or CUDA when available, else Apple MPS, else CPU."""
    if device is not None:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from exc
        check_device_available(chosen)
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device_available(device: torch.device) -> None:
    """Raise ModelLoadError when an explicitly requested accelerator is not there (instead of a torch assert)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {str(device)!r} was requested but PyTorch sees no CUDA GPU here (no driver, "
                "CUDA_VISIBLE_DEVICES hides it, or a CPU-only torch build); use --device cpu or fix the GPU setup"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ModelLoadError(
                f"device {str(device)!r} does not exist: PyTorch sees {count} CUDA GPU(s); "
                f"use cuda:0 to cuda:{count - 1}"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelLoadError(
                f"device {str(device)!r} was requested but Apple MPS is not available; use --device cpu"
            )


def check_offload(offload: bool, device: torch.device, compile: bool) -> None:
    """Raise ModelLoadError when `--offload` cannot apply: it needs a CUDA GPU, and not torch.compile."""
    if not offload:
        return
    if device.type != "cuda":
        raise ModelLoadError(
            f"--offload moves each model from main memory to a CUDA GPU while it runs, but the device is "
            f"{str(device)!r}; drop --offload (on {device.type} the models already live in one memory) "
            "or choose --device cuda"
        )
    if compile:
        raise ModelLoadError(
            "--offload and --compile cannot be combined: compiled graphs expect the weights to stay on the "
            "GPU; drop one of them (--offload for GPUs under 16 GB, --compile for speed)"
        )


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True when this CUDA device computes in bf16 natively (Ampere, compute capability 8.0, or newer; ROCm).

    torch.cuda.is_bf16_supported() also answers yes for older GPUs (T4, V100) that only emulate bf16,
    slowly, and it asks about the current device rather than the chosen one.
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def choose_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """The requested dtype, or bf16 on GPUs with native bf16 (fp16 on older ones and MPS), fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use one of: fp32, fp16, bf16")
        return _DTYPES[key]
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16(device) else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def is_hub_id(name: str | Path) -> bool:
    """True for 'owner/name' strings that are not an existing local path."""
    text = str(name)
    return not Path(text).expanduser().exists() and bool(_HUB_ID.match(text)) and not text.startswith(".")


def check_base_folder(path: Path, use_t5: bool) -> None:
    """Raise ModelLoadError unless `path` looks like a save_pretrained SD3 pipeline folder."""
    if not path.is_dir():
        raise ModelLoadError(f"base model folder {str(path)!r} does not exist; {FIX}")
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(
            f"base model folder {str(path)!r} has no model_index.json, so it is not a diffusers SD3 "
            f"pipeline folder (point to the folder that holds model_index.json, or {FIX})"
        )
    needed = BASE_SUBFOLDERS + (T5_SUBFOLDERS if use_t5 else ())
    missing = [name for name in needed if not (path / name).is_dir()]
    if missing:
        hint = " (or pass --no-t5 to run without T5)" if set(missing) <= set(T5_SUBFOLDERS) else ""
        raise ModelLoadError(f"base model folder {str(path)!r} lacks {', '.join(missing)}{hint}; {FIX}")


def check_controlnet_folder(path: Path) -> None:
    """Raise ModelLoadError unless `path` holds a ControlNet config.json and weights."""
    if not path.is_dir():
        raise ModelLoadError(f"ControlNet folder {str(path)!r} does not exist; {FIX}")
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"ControlNet folder {str(path)!r} has no config.json (it should be laid out like "
            f"InstantX/SD3-Controlnet-Pose); {FIX}"
        )
    if not any((path / name).is_file() for name in WEIGHT_NAMES):
        raise ModelLoadError(f"ControlNet folder {str(path)!r} has no {WEIGHT_NAMES[0]}; {FIX}")


def _resolve(source: str | Path, kind: str, use_t5: bool) -> str:
    """A local folder path (checked) or a hub id, as the string from_pretrained takes."""
    if is_hub_id(source):
        return str(source)
    path = Path(source).expanduser()
    if kind == "base":
        check_base_folder(path, use_t5)
    else:
        check_controlnet_folder(path)
    return str(path)


def _read_json(source: str, filename: str) -> dict:
    path = Path(source) / filename
    if path.is_file():
        return json.loads(path.read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(source, filename)).read_text())


def tie_t5_embedding(model: torch.nn.Module) -> None:
    """Make T5's encoder read its token embedding from `shared`, where SD3's checkpoint stores it.

    The real file holds the embedding once, as `shared.weight`, and its config says
    `tie_word_embeddings: false`; transformers shares the module between `shared` and the encoder
    in T5's own constructor, whatever that flag says. Tie it here too, so a transformers release
    that followed the flag could not leave the encoder with an untrained embedding.
    """
    if model.encoder.embed_tokens.weight is not model.shared.weight:
        logger.debug("tying T5's encoder embedding to shared.weight")
        model.encoder.set_input_embeddings(model.shared)


def load_components(
    model: str | Path,
    controlnet: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    use_t5: bool = True,
    offload: bool = False,
) -> Components:
    """Load every component in `dtype` onto `device`, in eval mode.

    With `offload` the models stay in main memory (offload hooks move them to `device` as they run).
    """
    from diffusers import AutoencoderKL, SD3ControlNetModel, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    base = _resolve(model, "base", use_t5)
    control = _resolve(controlnet, "controlnet", use_t5)
    try:
        index = _read_json(base, "model_index.json")
        scheduler_config = _read_json(base, "scheduler/scheduler_config.json")
        logger.info("loading the base model from %s (%s on %s)", base, str(dtype).removeprefix("torch."), device)
        transformer = SD3Transformer2DModel.from_pretrained(base, subfolder="transformer", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=dtype)
        text_encoder = CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder", dtype=dtype)
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2", dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
        tokenizer_2 = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2")
        text_encoder_3 = tokenizer_3 = None
        if use_t5:
            logger.info("loading the T5 text encoder (pass --no-t5 to save its memory)")
            text_encoder_3 = T5EncoderModel.from_pretrained(base, subfolder="text_encoder_3", dtype=dtype)
            tie_t5_embedding(text_encoder_3)
            tokenizer_3 = T5TokenizerFast.from_pretrained(base, subfolder="tokenizer_3")
        else:
            logger.info("running without T5: its prompt features are zeros, as SD3 does when T5 is dropped")
        logger.info("loading the ControlNet from %s", control)
        # InstantX's config carries the old class name ControlNetSD3Model; the weights are the same.
        control_net = SD3ControlNetModel.from_pretrained(control, torch_dtype=dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # the loading boundary: whatever diffusers/hub raise becomes one sentence
        logger.debug("model loading failed", exc_info=True)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hub_names = [name for name in (base, control) if is_hub_id(name)]
        where = (
            f"{' and '.join(map(repr, hub_names))} is neither a local folder nor a reachable hub model id"
            if hub_names
            else f"could not load the model from {base!r} and {control!r}"
        )
        raise ModelLoadError(f"{where} ({first_line[:200]}); {FIX}") from exc

    if control_net.config.joint_attention_dim != transformer.config.joint_attention_dim or (
        control_net.config.pooled_projection_dim != transformer.config.pooled_projection_dim
    ):
        raise ModelLoadError(
            f"the ControlNet in {control!r} does not fit the base model in {base!r} (different text "
            "dimensions); use an SD3 Medium ControlNet such as InstantX/SD3-Controlnet-Pose"
        )
    if getattr(control_net.config, "use_pos_embed", True) is False:
        # SD3.5-style ControlNets share the transformer's patch embedding (as diffusers' pipeline does).
        control_net.pos_embed = control_net._get_pos_embed_from_transformer(transformer).to(dtype)

    models = [transformer, control_net, vae, text_encoder, text_encoder_2, text_encoder_3]
    for module in models:
        if module is not None:
            module.to("cpu" if offload else device).eval().requires_grad_(False)
    return Components(
        transformer=transformer,
        controlnet=control_net,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        text_encoder_3=text_encoder_3,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        tokenizer_3=tokenizer_3,
        shift=float(scheduler_config.get("shift", 3.0)),
        is_demo=bool(index.get(DEMO_MARKER, False)),
    )
