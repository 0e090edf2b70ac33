"""The model-level speed-ups keep results: fused QKV, the trimmed ControlNet block, VAE tiling, compile."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from perf_helpers import pixels
from tiny_jobs import job, pose_map

from sd3pose.engine import Engine
from sd3pose.engine.loading import load_components
from sd3pose.engine.speed import PassThrough, fuse_qkv, trim_controlnet_last_block

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def plain_engine(tiny_model_dir) -> Engine:
    """The tiny model exactly as diffusers loads it: no fused QKV, no trimming, no tiling."""
    parts = load_components(tiny_model_dir / "base", tiny_model_dir / "controlnet", device=CPU, dtype=torch.float32)
    return Engine(parts, CPU, torch.float32, optimize=False)


def test_optimized_engine_matches_the_plain_models(tiny_engine, plain_engine):
    controlnet = tiny_engine.controlnet
    assert isinstance(controlnet.transformer_blocks[-1].ff_context, PassThrough)  # the trim is active
    assert all(hasattr(b.attn, "to_qkv") for b in tiny_engine.transformer.transformer_blocks)  # fused
    for the_job in (job(), job(guidance_scale=1.0, sampler="dpmpp_2m", steps=4)):
        ours, plain = tiny_engine.generate_latents(the_job), plain_engine.generate_latents(the_job)
        # Exact in practice (same products summed in the same order); allow float32 rounding.
        assert torch.allclose(ours, plain, rtol=1e-6, atol=1e-6), float((ours - plain).abs().max())


def test_fusing_is_refused_where_diffusers_fused_processor_would_skip_qk_norm():
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        pos_embed_max_size=16,
        qk_norm="rms_norm",
    )
    assert fuse_qkv(model) is False
    assert all(type(p).__name__ == "JointAttnProcessor2_0" for p in model.attn_processors.values())


def test_trimming_the_controlnet_keeps_its_outputs(plain_engine):
    controlnet = plain_engine.controlnet
    trimmed = copy.deepcopy(controlnet)
    assert trim_controlnet_last_block(trimmed) and not trim_controlnet_last_block(trimmed.transformer_blocks[:0])
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(2, 16, 8, 8, generator=generator),
        controlnet_cond=torch.randn(2, 16, 8, 8, generator=generator),
        encoder_hidden_states=torch.randn(2, 333, 64, generator=generator),
        pooled_projections=torch.zeros(2, 64),
        timestep=torch.tensor([500.0, 500.0]),
        conditioning_scale=0.7,
        return_dict=False,
    )
    with torch.inference_mode():
        full, cut = controlnet(**inputs)[0], trimmed(**inputs)[0]
    assert len(full) == len(cut) and all(torch.equal(a, b) for a, b in zip(full, cut, strict=True))


def test_vae_tiles_only_above_twice_the_native_size(tiny_engine, plain_engine):
    native = tiny_engine.native_resolution  # 128 px for the tiny model
    calls = []
    vae = tiny_engine.vae
    original = vae.tiled_decode
    vae.tiled_decode = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        small = torch.randn(1, 16, 2 * native // 8, 2 * native // 8, generator=torch.Generator().manual_seed(1))
        assert np.array_equal(pixels(tiny_engine.decode(small)), pixels(plain_engine.decode(small)))
        assert calls == []  # up to 2x native: one untiled pass, identical to the plain VAE
        large = torch.randn(1, 16, 2 * native // 8 + 8, 2 * native // 8, generator=torch.Generator().manual_seed(2))
        image = tiny_engine.decode(large)[0]
        assert calls == [1] and image.size == (2 * native, 2 * native + 64)
    finally:
        del vae.tiled_decode


def test_compiled_engine_gives_the_same_latents(tiny_model_dir):
    # Inductor needs a C++ toolchain and minutes on 2 cores; the "eager" backend runs the same
    # dynamo capture and warm-up path, which is what can break on a diffusers or torch upgrade.
    engine = Engine.load(tiny_model_dir / "base", tiny_model_dir / "controlnet", device="cpu", dtype="fp32")
    reference = engine.generate_latents(job())
    engine.compile(backend="eager")
    assert engine.compiled and engine.transformer._compiled_call_impl is not None
    assert torch.allclose(engine.generate_latents(job()), reference, rtol=1e-6, atol=1e-6)


def test_compile_is_a_generate_and_serve_option(monkeypatch):
    from typer.testing import CliRunner

    from sd3pose.cli import app
    from sd3pose.settings import EngineSettings

    for command in ("generate", "serve"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--compile" in result.output
    monkeypatch.delenv("SD3POSE_COMPILE", raising=False)
    assert EngineSettings().compile is False
    monkeypatch.setenv("SD3POSE_COMPILE", "1")  # for entry points without the flag (the Celery worker)
    assert EngineSettings().compile is True


def test_a_compiled_engine_does_not_recompile_for_new_strengths_or_guidance_1(tiny_model_dir):
    # Each recompile stalls a request (about a minute with inductor on a GPU), and diffusers' two models
    # share one cache of compiled graphs: strengths as graph constants would soon exhaust it.
    engine = Engine.load(tiny_model_dir / "base", tiny_model_dir / "controlnet", device="cpu", dtype="fp32")
    compiles = []

    def counting_backend(graph, example_inputs):
        compiles.append(graph)
        return graph.forward

    engine.compile(backend=counting_backend)
    after_warm_up = len(compiles)
    size = engine.native_resolution
    for strength, guidance in ((0.5, 7.0), (0.9, 4.0), (1.0, 1.0), (0.3, 1.0)):
        engine.generate_latents(
            job(width=size, height=size, strength=strength, guidance_scale=guidance, control_image=pose_map(size, size))
        )
    assert after_warm_up > 0 and len(compiles) == after_warm_up


def test_a_one_shot_load_compiles_lazily_without_the_warm_up(tiny_model_dir, caplog):
    # A server compiles the default shapes at start; `generate --compile` runs one request, which
    # compiles just the shapes it needs on first use.
    caplog.set_level("INFO")
    engine = Engine.load(
        tiny_model_dir / "base", tiny_model_dir / "controlnet", device="cpu", dtype="fp32", compile=True, warm_up=False
    )
    assert engine.compiled and "compile warm-up" not in caplog.text
