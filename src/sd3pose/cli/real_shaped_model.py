"""A random-weight SD3 Medium + pose ControlNet with the real checkpoints' shapes and file formats.

Built from the config files the real repositories publish (a folder laid out like them: `base/`
with model_index.json, scheduler/, the model configs and the CLIP tokenizer configs, and
`controlnet/config.json`). Only depth is reduced (the layer counts in `DEPTH`); widths, heads,
vocabulary sizes, class names and the files on disk stay as published:

- every weight file is fp16 safetensors under the real names, next to the published config
  (only its layer count changed): the ControlNet keeps the legacy class name `ControlNetSD3Model`;
- T5 is stored in two shards with an index, holding its embedding once as `shared.weight` while
  its config says `tie_word_embeddings: false`;
- the CLIP configs keep their legacy special-token ids (bos 0, eos 2, pad 1);
- the CLIP tokenizers use OpenAI's real BPE vocabulary (49408 tokens) where the MIT-licensed
  `clip-anytorch` wheel is installed (it ships `bpe_simple_vocab_16e6.txt.gz`), else the tiny
  model's trained one; T5's sentencepiece model is not available offline, so the tiny T5
  tokenizer stands in for it.

It proves the loader and the engine on the real formats without a 16 GB download. The images are
noise. At the default depth it is about 1.8 GB on disk.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from sd3pose.errors import ModelLoadError

logger = logging.getLogger(__name__)

# The config keys that set depth, and the reduced values (published: 24, 6, 2, 12, 32, 24).
DEPTH: dict[str, dict[str, int]] = {
    "transformer": {"num_layers": 2},
    "controlnet": {"num_layers": 1},
    "vae": {"layers_per_block": 1},
    "text_encoder": {"num_hidden_layers": 1},
    "text_encoder_2": {"num_hidden_layers": 1},
    "text_encoder_3": {"num_layers": 1},
}
# Files copied unchanged from the published configs.
VERBATIM = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/special_tokens_map.json",
)
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers models
CLIP_WEIGHTS_NAME = "model.safetensors"  # transformers models
T5_SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
T5_INDEX = "model.safetensors.index.json"
T5_TIED_KEY = "encoder.embed_tokens.weight"  # the real file stores this tensor only as shared.weight
# OpenAI's CLIP vocabulary: 256 bytes, the same with '</w>', 48894 merges, 2 special tokens.
CLIP_BPE_FILE = "clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES = 49152 - 256 - 2
SEED = 20240613


def clip_bpe_vocabulary() -> Path | None:
    """OpenAI's CLIP BPE merges file from the installed `clip-anytorch` wheel, or None when absent.

    Found through the package metadata, never imported: the package's own `__init__` needs torchvision.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(distribution("clip-anytorch").locate_file(CLIP_BPE_FILE))
    except PackageNotFoundError:
        return None
    return path if path.is_file() else None


def read_config(configs: Path, name: str) -> dict[str, Any]:
    """One published JSON file from the configs folder, with a clear error when it is missing."""
    path = configs / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f"{str(path)!r} is missing: the configs folder must be laid out like the real repositories "
            "(base/model_index.json, base/<part>/config.json, controlnet/config.json)"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"could not read {str(path)!r} ({exc})") from exc


def model_arguments(config: dict[str, Any], depth: dict[str, int]) -> dict[str, Any]:
    """A published diffusers config as constructor arguments (no '_' metadata keys), depth reduced."""
    return {key: value for key, value in config.items() if not key.startswith("_")} | depth


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _fp16_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to(torch.float16).contiguous() for key, value in module.state_dict().items()}


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})


def _reinitialise(module: torch.nn.Module) -> None:
    """PyTorch's default initialisation for the module's linear and convolution layers.

    A fresh ControlNet zero-initialises its output blocks and its control-image embedding, so
    untrained it ignores the pose map; the tests need a live control path.
    """
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            layer.reset_parameters()


def write_clip_tokenizer(target: Path, published: Path, pad_token: str) -> None:
    """vocab.json and merges.txt (the real vocabulary when available) beside the published tokenizer configs."""
    target.mkdir(parents=True, exist_ok=True)
    bpe = clip_bpe_vocabulary()
    if bpe is None:
        from sd3pose.cli.tiny_model import build_clip_tokenizer

        logger.warning("clip-anytorch is not installed: the CLIP tokenizers get the tiny trained vocabulary")
        build_clip_tokenizer(pad_token=pad_token).save_pretrained(target)
    else:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
        alphabet = list(bytes_to_unicode().values())
        tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
        tokens += ["<|startoftext|>", "<|endoftext|>"]
        (target / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
        (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(published / name, target / name)


def _write_t5(model: torch.nn.Module, folder: Path) -> None:
    """Two shards and an index, the embedding stored once as shared.weight, as in the real repository."""
    state = _fp16_state(model)
    state.pop(T5_TIED_KEY)
    half = sum(t.numel() for t in state.values()) / 2
    shards: list[dict[str, torch.Tensor]] = [{}, {}]
    filled = 0
    for key, tensor in state.items():
        shards[0 if filled < half else 1][key] = tensor
        filled += tensor.numel()
    weight_map = {}
    for name, shard in zip(T5_SHARDS, shards, strict=True):
        _save(shard, folder / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_json(folder / T5_INDEX, {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def write_real_shaped_model(directory: str | Path, configs: str | Path) -> tuple[Path, Path]:
    """Write the model to DIR/base (the SD3 repository's layout) and DIR/controlnet (InstantX's).

    `configs` is the folder of published configs (see the module docstring). Deterministic for a fixed SEED.
    """
    from diffusers import AutoencoderKL, SD3ControlNetModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from sd3pose.cli.tiny_model import build_t5_tokenizer
    from sd3pose.engine.loading import DEMO_MARKER

    configs, directory = Path(configs), Path(directory)
    base, control = directory / "base", directory / "controlnet"
    published = {
        part: read_config(configs, f"base/{part}/config.json")
        for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    }
    published["controlnet"] = read_config(configs, "controlnet/config.json")
    verbatim = {name: read_config(configs, f"base/{name}") for name in VERBATIM}
    logger.info("building the real-shaped random-weight model in %s (about 1.8 GB)", directory)

    for name, data in verbatim.items():
        if name == "model_index.json":
            data = {**data, DEMO_MARKER: True}  # random weights: the engine says so when it loads them
        _write_json(base / name, data)
    for part, config in published.items():
        folder = control if part == "controlnet" else base / part
        _write_json(folder / "config.json", config | DEPTH[part])

    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(**model_arguments(published["transformer"], DEPTH["transformer"]))
    _save(_fp16_state(transformer), base / "transformer" / WEIGHTS_NAME)
    del transformer

    controlnet = SD3ControlNetModel(**model_arguments(published["controlnet"], DEPTH["controlnet"]))
    _reinitialise(controlnet.controlnet_blocks)
    _reinitialise(controlnet.pos_embed_input)
    _save(_fp16_state(controlnet), control / WEIGHTS_NAME)
    del controlnet

    vae = AutoencoderKL(**model_arguments(published["vae"], DEPTH["vae"]))
    latent = vae.config.latent_channels
    # A trained VAE's posterior is nearly a point (diffusers samples it, we take its mean): log-variance at the floor.
    with torch.no_grad():
        vae.encoder.conv_out.weight[latent:].zero_()
        vae.encoder.conv_out.bias[latent:].fill_(-30.0)
    _save(_fp16_state(vae), base / "vae" / WEIGHTS_NAME)
    del vae

    for part in ("text_encoder", "text_encoder_2"):
        clip = CLIPTextModelWithProjection(CLIPTextConfig(**published[part] | DEPTH[part]))
        if part == "text_encoder":  # SD3 Medium's CLIP-L projection is the identity
            with torch.no_grad():
                clip.text_projection.weight.copy_(torch.eye(clip.text_projection.weight.shape[0]))
        _save(_fp16_state(clip), base / part / CLIP_WEIGHTS_NAME)
    del clip
    t5 = T5EncoderModel(T5Config(**published["text_encoder_3"] | DEPTH["text_encoder_3"]))
    _write_t5(t5, base / "text_encoder_3")

    for part, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        write_clip_tokenizer(base / part, configs / "base" / part, pad)
    build_t5_tokenizer().save_pretrained(base / "tokenizer_3")
    logger.info("real-shaped model written: %s and %s (random weights: images are noise)", base, control)
    return base, control
