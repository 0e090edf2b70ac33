"""Whole images against ComfyUI v0.12.1's own SD3 + ControlNet workflow, on the same random weights.

Issue 12's measure: with the same weights, pose map, prompts, seed, steps, guidance, strength, sampler
and scheduler, our image must equal ComfyUI's to 3/255 per pixel (fp32, CPU), with and without T5.

ComfyUI's side runs its own code, imported from a checkout you provide (GPL-3: none of it is in this
repository): its loaders (diffusion model, ControlNet, VAE), its SD3 tokenizers and text encoders, the
ControlNetApplyAdvanced node with the VAE, EmptySD3LatentImage's zeros, KSampler (common_ksampler),
VAEDecode and SaveImage's conversion to 8 bits. Our side is `Engine.generate`.

Setup (once; ComfyUI v0.12.1 is upstream commit 3be01751):
    git --git-dir=<mirror of hiddenswitch/pip-and-uv-installable-ComfyUI> archive 3be01751 | tar -x -C /tmp/comfyui
    python -m venv /tmp/cvenv && echo "$PWD/.venv/lib/python3.11/site-packages" \
        > /tmp/cvenv/lib/python3.11/site-packages/sd3pose.pth
    /tmp/cvenv/bin/pip install einops av comfy-aimdo
    PYTHONPATH=src /tmp/cvenv/bin/python bench/comfyui_parity.py --comfyui /tmp/comfyui

The model is the tiny one with 64-wide attention heads and the real SD3 VAE architecture, which
ComfyUI's model detection assumes. Our images are rounded to 8 bits and ComfyUI's truncated, so a
mean difference near 0.5/255 with a maximum of 1/255 is the conversion alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

DEFAULT_NEGATIVE = "low quality,less details"
SEED, STEPS, GUIDANCE, STRENGTH = 698845, 8, 7.0, 0.8
WIDTH, HEIGHT = 96, 64


def cases(corpus: list[str]) -> list[dict]:
    rng = random.Random(0)
    long_prompt = " ".join(rng.choice(corpus) for _ in range(190)) + " (red dress:1.3) on a stage"
    return [
        dict(name="euler/normal", prompt="a dancer in a red dress", sampler="euler", scheduler="normal"),
        dict(name="API defaults dpmpp_2m/sgm_uniform", prompt="a dancer", sampler="dpmpp_2m", scheduler="sgm_uniform"),
        dict(
            name="emphasis, control 0.2-0.6",
            prompt="((knight)) in (shining armor:1.3), \\(night\\) sky",
            sampler="euler",
            scheduler="normal",
            control=(0.2, 0.6),
        ),
        dict(name="200-token prompt, heun", prompt=long_prompt, sampler="heun", scheduler="normal", control=(0.1, 0.7)),
        dict(
            name="embedding: dropped",
            prompt="a dancer embedding:easynegative, (in red:1.2)",
            sampler="euler",
            scheduler="normal",
        ),
        dict(name="guidance 1", prompt="a (dancer:1.2)", sampler="euler", scheduler="simple", guidance=1.0),
        dict(name="uni_pc/karras", prompt="a dancer", sampler="uni_pc", scheduler="karras"),
        dict(name="dpmpp_2m_sde/karras", prompt="a dancer", sampler="dpmpp_2m_sde", scheduler="karras"),
        dict(name="dpmpp_3m_sde/exponential", prompt="a dancer", sampler="dpmpp_3m_sde", scheduler="exponential"),
        dict(name="euler_ancestral/simple", prompt="a dancer", sampler="euler_ancestral", scheduler="simple"),
        dict(name="lcm/normal", prompt="a dancer", sampler="lcm", scheduler="normal"),
        dict(name="dpm_2/normal", prompt="a dancer", sampler="dpm_2", scheduler="normal"),
        dict(name="deis/ddim_uniform, 30 steps", prompt="a dancer", sampler="deis", scheduler="ddim_uniform", steps=30),
        dict(name="euler_pp/sgm_uniform", prompt="a dancer", sampler="euler_pp", scheduler="sgm_uniform"),
        dict(
            name="dpmpp_2m/karras, strength 0.5",
            prompt="a (blue:0.8) suit",
            sampler="dpmpp_2m",
            scheduler="karras",
            strength=0.5,
        ),
    ]


# Our names for the CFG++ samplers are the hosted API's; ComfyUI's differ.
COMFY_NAMES = {"euler_pp": "euler_cfg_pp", "euler_ancestral_pp": "euler_ancestral_cfg_pp"}


# The published SD3 Medium configs (tests/fixtures): the VAE is built from its real config.
REAL_VAE_CONFIG = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sd3-medium-configs" / "base" / "vae"


def build_model(root: Path) -> None:
    """The tiny model with 64-wide heads and the real SD3 VAE layout (ComfyUI's loaders assume both)."""
    from diffusers import AutoencoderKL

    from sd3pose.cli.tiny_model import write_tiny_model

    write_tiny_model(root, layers=2, heads=2, head_dim=64, controlnet_layers=1)
    torch.manual_seed(7)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(REAL_VAE_CONFIG))
    vae.save_pretrained(root / "base" / "vae", safe_serialization=True)


def import_comfyui(checkout: Path) -> None:
    """ComfyUI on the CPU in fp32; a stub torchvision where none is installed (imported, never used here)."""
    # diffusers and transformers look for torchvision when their modules load: load ours before any stub.
    from diffusers import AutoencoderKL, SD3ControlNetModel, SD3Transformer2DModel  # noqa: F401
    from transformers import CLIPTextModelWithProjection, T5EncoderModel, T5TokenizerFast  # noqa: F401

    try:
        import torchvision  # noqa: F401
    except ImportError:
        stub = Path(tempfile.mkdtemp()) / "torchvision"
        stub.mkdir()
        (stub / "__init__.py").write_text("from . import models, transforms  # noqa\n")
        (stub / "models.py").write_text("")
        (stub / "transforms.py").write_text("")
        sys.path.insert(0, str(stub.parent))
    sys.path.insert(0, str(checkout))
    import comfy.options

    comfy.options.enable_args_parsing()
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu", "--force-fp32"]
    import comfy.cli_args  # noqa: F401

    sys.argv = argv

    import comfy.sd1_clip as sd1_clip

    class Penultimate(int):
        """-2, but passing ComfyUI's check abs(layer_idx) < num_layers on the tiny 2-layer CLIPs (the
        penultimate state is then layer 0's output, as transformers' hidden_states[-2])."""

        def __abs__(self) -> int:
            return 1

    original = sd1_clip.SDClipModel.__init__

    def init(self, *args, layer_idx=None, **kwargs):
        original(self, *args, layer_idx=Penultimate(-2) if layer_idx == -2 else layer_idx, **kwargs)

    sd1_clip.SDClipModel.__init__ = init


class _Embedding(torch.nn.Module):
    """An embedding table called as ComfyUI's T5 calls its own (with out_dtype)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.nn.functional.embedding(x, self.weight).to(out_dtype or self.weight.dtype)


class ComfyText:
    """ComfyUI's SD3 tokenizers and text encoders (CLIPTextEncode), built on the tiny model's folders."""

    def __init__(self, base: Path, use_t5: bool, joint_width: int) -> None:
        import comfy.sd1_clip as sd1_clip
        import comfy.sdxl_clip as sdxl_clip
        import comfy.text_encoders.sd3_clip as sd3_clip
        from transformers import T5TokenizerFast

        self.joint_width = joint_width
        tok = sd3_clip.SD3Tokenizer.__new__(sd3_clip.SD3Tokenizer)
        # An embeddings folder, empty, as a ComfyUI install without textual inversions has.
        embeddings = tempfile.mkdtemp()
        tok.clip_l = sd1_clip.SDTokenizer(str(base / "tokenizer"), embedding_directory=embeddings)
        tok.clip_g = sdxl_clip.SDXLClipGTokenizer(str(base / "tokenizer_2"), embedding_directory=embeddings)
        tok.t5xxl = sd1_clip.SDTokenizer(
            str(base / "tokenizer_3"),
            embedding_directory=embeddings,
            pad_with_end=False,
            embedding_size=64,
            embedding_key="t5xxl",
            tokenizer_class=T5TokenizerFast,
            has_start_token=False,
            pad_to_max_length=False,
            max_length=99999999,
            min_length=77,
        )
        self.tokenizer = tok

        def clip_config(folder: str) -> dict:
            c = json.loads((base / folder / "config.json").read_text())
            keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act")
            return {k: c[k] for k in (*keys, "max_position_embeddings", "eos_token_id")}

        t5c = json.loads((base / "text_encoder_3" / "config.json").read_text())
        t5_config = {k: t5c[k] for k in ("num_layers", "d_model", "d_kv", "num_heads", "d_ff", "vocab_size")}
        t5_config.update(dense_act_fn="gelu_pytorch_tanh", is_gated_act=True, model_type="t5")
        options = {
            "clip_l_model_config": clip_config("text_encoder"),
            "clip_g_model_config": clip_config("text_encoder_2"),
            "t5xxl_model_config": t5_config,
        }
        model = sd3_clip.SD3ClipModel(
            clip_l=True, clip_g=True, t5=use_t5, device="cpu", dtype=torch.float32, model_options=options
        )
        for name, folder in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")):
            state = dict(load_file(base / folder / "model.safetensors"))
            embedding = state["text_model.embeddings.token_embedding.weight"]
            padded = torch.zeros(49408, embedding.shape[1])  # ComfyUI's CLIP has the real vocabulary size
            padded[: embedding.shape[0]] = embedding
            state["text_model.embeddings.token_embedding.weight"] = padded
            missing, _ = getattr(model, name).load_sd(state)
            if [m for m in missing if "logit" not in m]:
                raise SystemExit(f"{name}: weights missing: {missing}")
            part = getattr(tok, name)
            getattr(model, name).special_tokens = {
                "start": part.start_token,
                "end": part.end_token,
                "pad": part.pad_token,
            }
        if use_t5:
            attention = model.t5xxl.transformer.encoder.block[0].layer[0].SelfAttention
            buckets = t5c["relative_attention_num_buckets"]  # ComfyUI fixes 32; the tiny T5 has fewer
            attention.relative_attention_num_buckets = buckets
            attention.relative_attention_bias = _Embedding(torch.zeros(buckets, attention.num_heads))
            missing, _ = model.t5xxl.load_sd(dict(load_file(base / "text_encoder_3" / "model.safetensors")))
            if missing:
                raise SystemExit(f"t5: weights missing: {missing}")
            model.t5xxl.special_tokens = {"end": tok.t5xxl.end_token, "pad": tok.t5xxl.pad_token}
        self.model = model

    @contextlib.contextmanager
    def _joint_width(self):
        # ComfyUI pads the CLIP states to SD3 Medium's 4096; the tiny model's joint width is smaller.
        original = torch.nn.functional.pad

        def pad(x, amounts, *args, **kwargs):
            if len(amounts) == 2 and amounts[0] == 0 and x.shape[-1] + amounts[1] == 4096:
                amounts = (0, self.joint_width - x.shape[-1])
            return original(x, amounts, *args, **kwargs)

        torch.nn.functional.pad = pad
        try:
            yield
        finally:
            torch.nn.functional.pad = original

    def encode(self, text: str) -> list:
        """What CLIPTextEncode returns."""
        with torch.no_grad(), self._joint_width():
            cond, pooled, extra = self.model.encode_token_weights(self.tokenizer.tokenize_with_weights(text))
        return [[cond, {"pooled_output": pooled, **extra}]]


def pose_map(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    for _ in range(6):
        (x0, x1), (y0, y1) = rng.integers(0, WIDTH, size=2), rng.integers(0, HEIGHT, size=2)
        colour = rng.permutation([255, int(rng.integers(0, 80)), 0])
        for t in np.linspace(0.0, 1.0, 2 * max(WIDTH, HEIGHT)):
            x, y = int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0))
            pixels[max(0, y - 3) : y + 3, max(0, x - 3) : x + 3] = colour
    return Image.fromarray(pixels)


def comfy_image(loaded: dict, text: ComfyText, case: dict, pose: Image.Image) -> np.ndarray:
    import nodes

    positive, negative = text.encode(case["prompt"]), text.encode(DEFAULT_NEGATIVE)
    image = torch.from_numpy(np.asarray(pose).astype(np.float32) / 255.0)[None]  # LoadImage
    start, end = case.get("control", (0.0, 1.0))
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, loaded["controlnet"], image, case.get("strength", STRENGTH), start, end, vae=loaded["vae"]
    )
    latent = {"samples": torch.zeros([1, 16, HEIGHT // 8, WIDTH // 8]), "downscale_ratio_spacial": 8}
    (samples,) = nodes.common_ksampler(
        loaded["model"],
        SEED,
        case.get("steps", STEPS),
        case.get("guidance", GUIDANCE),
        COMFY_NAMES.get(case["sampler"], case["sampler"]),
        case["scheduler"],
        positive,
        negative,
        latent,
        denoise=1.0,
    )
    decoded = loaded["vae"].decode(samples["samples"])  # VAEDecode
    return np.clip(255.0 * decoded[0].detach().cpu().numpy(), 0, 255).astype(np.uint8)  # SaveImage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI v0.12.1 checkout")
    parser.add_argument("--model-dir", type=Path, help="where to build the model (default: a temporary folder)")
    args = parser.parse_args()

    root = args.model_dir or Path(tempfile.mkdtemp(prefix="sd3pose-comfy-parity-"))
    if not (root / "controlnet").exists():
        print(f"building the model in {root}", flush=True)
        build_model(root)
    import_comfyui(args.comfyui)
    import comfy.controlnet
    import comfy.sd

    from sd3pose.cli.tiny_model import _CORPUS
    from sd3pose.engine import Engine, EngineJob

    base = root / "base"
    loaded = {
        "model": comfy.sd.load_diffusion_model_state_dict(
            dict(load_file(base / "transformer" / "diffusion_pytorch_model.safetensors"))
        ),
        "controlnet": comfy.controlnet.load_controlnet_state_dict(
            dict(load_file(root / "controlnet" / "diffusion_pytorch_model.safetensors"))
        ),
        "vae": comfy.sd.VAE(sd=dict(load_file(base / "vae" / "diffusion_pytorch_model.safetensors"))),
    }
    pose = pose_map()
    worst = 0
    for use_t5 in (True, False):
        engine = Engine.load(base, root / "controlnet", device="cpu", dtype="fp32", use_t5=use_t5)
        text = ComfyText(base, use_t5, engine.transformer.config.joint_attention_dim)
        for case in cases(_CORPUS):
            started = time.perf_counter()
            theirs = comfy_image(loaded, text, case, pose).astype(np.int16)
            start, end = case.get("control", (0.0, 1.0))
            job = EngineJob(
                prompt=case["prompt"],
                negative_prompt=DEFAULT_NEGATIVE,
                steps=case.get("steps", STEPS),
                guidance_scale=case.get("guidance", GUIDANCE),
                seeds=[SEED],
                strength=case.get("strength", STRENGTH),
                sampler=case["sampler"],
                scheduler=case["scheduler"],
                width=WIDTH,
                height=HEIGHT,
                control_image=pose,
                control_start=start,
                control_end=end,
            )
            ours = np.asarray(engine.generate(job)[0], dtype=np.int16)  # H x W x 3, as ComfyUI's decode
            diff = np.abs(ours - theirs)
            worst = max(worst, int(diff.max()))
            print(
                f"T5 {'on ' if use_t5 else 'off'} {case['name']:<36} max |diff| {diff.max():3d}/255,"
                f" mean {diff.mean():.3f}  ({time.perf_counter() - started:.1f} s)",
                flush=True,
            )
    print(f"worst: {worst}/255 (target <= 3/255): {'met' if worst <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
