"""Speed-ups applied to the loaded diffusers models; none changes what the models compute.

- Fused QKV projections (diffusers' own `fuse_qkv_projections`): one GEMM instead of three per
  stream and block. Only where every attention layer lacks QK-norm, since diffusers' fused SD3
  processor skips it (SD3 Medium has none; SD3.5 has it).
- The ControlNet's last block: SD3ControlNetModel returns only the image-stream states of its
  blocks, so the text stream's output projection and feed-forward in the *last* block are computed
  and thrown away by diffusers. We replace those two layers with a pass-through there (the text
  stream's attention inputs, which the image stream needs, are kept).
- A channels-last VAE on CUDA (faster cuDNN convolutions), and VAE tiling above twice the native
  size so very large images decode in bounded memory (below that the VAE runs untiled, exactly).
- Optional `torch.compile` of the transformer and the ControlNet, warmed up by the engine at load.
Attention already runs on PyTorch SDPA: diffusers' JointAttnProcessor2_0 (and its fused variant).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

# Compiled graphs kept per forward function: two models x (1, 2, dynamic rows) x a few image sizes.
COMPILED_GRAPHS_LIMIT = 64


class PassThrough(torch.nn.Module):
    """Returns its first input unchanged: stands in for a layer whose output nobody reads."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return x


def _attentions(model: torch.nn.Module) -> list[torch.nn.Module]:
    from diffusers.models.attention_processor import Attention

    return [module for module in model.modules() if isinstance(module, Attention)]


def fuse_qkv(model: torch.nn.Module) -> bool:
    """Fuse the model's Q/K/V projections where that is exact; True when fused."""
    attentions = _attentions(model)
    if not attentions or not hasattr(model, "fuse_qkv_projections"):
        return False
    if any(getattr(a, "norm_q", None) is not None or getattr(a, "norm_added_q", None) is not None for a in attentions):
        logger.info("%s has QK-norm: keeping separate Q/K/V projections", type(model).__name__)
        return False
    processors = {type(p).__name__ for p in model.attn_processors.values()}
    if processors != {"JointAttnProcessor2_0"}:
        logger.info("%s uses %s attention: not fusing Q/K/V", type(model).__name__, ", ".join(sorted(processors)))
        return False
    model.fuse_qkv_projections()
    # The unfused weights stay referenced by the attention modules but are no longer used: free them.
    # (diffusers' unfuse_qkv_projections cannot be used afterwards; the engine never unfuses.)
    for attention in attentions:
        replaced = {"to_qkv": ("to_q", "to_k", "to_v"), "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}
        for fused_name, names in replaced.items():
            if getattr(attention, fused_name, None) is not None:
                for name in names:
                    setattr(attention, name, PassThrough())
    return True


def trim_controlnet_last_block(controlnet: torch.nn.Module) -> bool:
    """Skip the text-stream outputs of the ControlNet's last joint block, which its forward discards."""
    blocks = getattr(controlnet, "transformer_blocks", None)
    if not blocks or getattr(controlnet, "context_embedder", None) is None:
        return False
    last = blocks[-1]
    if getattr(last, "context_pre_only", True) or getattr(last, "ff_context", None) is None:
        return False
    last.ff_context = PassThrough()
    last.attn.to_add_out = PassThrough()
    return True


def prepare_models(
    transformer: torch.nn.Module,
    controlnet: torch.nn.Module,
    vae: torch.nn.Module,
    device: torch.device,
    native_size: int,
) -> None:
    """Apply the exact speed-ups above to freshly loaded models (in place)."""
    fused = [type(m).__name__ for m in (transformer, controlnet) if fuse_qkv(m)]
    trimmed = trim_controlnet_last_block(controlnet)
    vae.to(memory_format=vae_memory_format(device))
    enable_vae_tiling(vae, 2 * native_size)
    logger.info(
        "speed-ups: fused QKV in %s; ControlNet last-block text outputs %s; VAE %s, tiled above %d px",
        ", ".join(fused) or "nothing",
        "skipped" if trimmed else "kept",
        "channels-last" if device.type == "cuda" else "contiguous",
        2 * native_size,
    )


def vae_memory_format(device: torch.device) -> torch.memory_format:
    """The layout of the VAE's weights and of every tensor it is given on this device.

    Channels-last on CUDA (cuDNN's faster convolution layout), contiguous elsewhere. The inputs must
    follow: a pose map arrives channels-last-strided (numpy HWC viewed as NCHW), and the CPU's
    GroupNorm on that layout is less exact (about 2e-3 off at SD3 Medium widths, against 2e-6
    contiguous: `bench/control_layout.py` prints both).
    """
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def enable_vae_tiling(vae: torch.nn.Module, above_px: int) -> None:
    """Tile VAE encode/decode only for images with a side over `above_px` (in tiles of that size)."""
    vae.enable_tiling()
    vae.tile_sample_min_size = above_px
    vae.tile_latent_min_size = above_px // (2 ** (len(vae.config.block_out_channels) - 1))


def compile_models(
    transformer: torch.nn.Module, controlnet: torch.nn.Module, *, backend: str = "inductor", mode: str | None = None
) -> None:
    """torch.compile the two models in place (nn.Module.compile keeps their attributes and configs)."""
    logger.info("compiling the transformer and the ControlNet with torch.compile (%s)", backend)
    # Both models' forwards pass through one diffusers wrapper function, so they share its cache of
    # compiled graphs (8 by default): sizes and batch shapes would soon fall back to uncompiled runs.
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # before torch 2.7
    setattr(config, name, max(getattr(config, name), COMPILED_GRAPHS_LIMIT))
    for model in (transformer, controlnet):
        model.compile(backend=backend, mode=mode)
