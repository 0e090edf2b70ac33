"""The tiny demo model: real folder layout, InstantX-style ControlNet config, sensitive weights and tokenizers."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sd3pose.cli.tiny_model import INSTANTX_CLASS_NAME, INSTANTX_CONFIG_KEYS

BASE_PARTS = (
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "scheduler",
)


def test_layout_matches_the_real_folders(tiny_model_dir):
    base, controlnet = tiny_model_dir / "base", tiny_model_dir / "controlnet"
    index = json.loads((base / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    for part in BASE_PARTS:
        assert (base / part).is_dir()
        assert part in index
    assert sorted(p.name for p in controlnet.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    total = sum(p.stat().st_size for p in tiny_model_dir.rglob("*") if p.is_file())
    assert total < 8 * 2**20  # a few MB


def test_controlnet_config_looks_like_instantx_and_loads(tiny_model_dir):
    from diffusers import SD3ControlNetModel

    config = json.loads((tiny_model_dir / "controlnet" / "config.json").read_text())
    assert config["_class_name"] == INSTANTX_CLASS_NAME == "ControlNetSD3Model"
    assert set(config) - {"_class_name", "_diffusers_version"} == set(INSTANTX_CONFIG_KEYS)
    model = SD3ControlNetModel.from_pretrained(tiny_model_dir / "controlnet")
    # Absent newer keys fall back to the InstantX behaviour: no extra channels, zero pooled projections.
    assert model.config.extra_conditioning_channels == 0
    assert model.config.force_zeros_for_pooled_projection is True
    # The layers a fresh ControlNet zero-initialises were re-randomised, so the control path is live.
    for block in model.controlnet_blocks:
        assert block.weight.abs().max() > 0
    assert model.pos_embed_input.proj.weight.abs().max() > 0


@pytest.mark.parametrize("subfolder", ["tokenizer", "tokenizer_2", "tokenizer_3"])
def test_tokenizers_tell_words_apart(tiny_model_dir, subfolder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir / "base" / subfolder)
    words = ["man", "woman", "dog", "cat", "red", "blue", "zebra", "quixotic"]
    encodings = [tuple(tokenizer(word, add_special_tokens=False).input_ids) for word in words]
    assert len(set(encodings)) == len(words)
    assert all(tokenizer.unk_token_id not in ids for ids in encodings)


def test_clip_g_tokenizer_pads_like_sd3(tiny_model_dir):
    from transformers import CLIPTokenizer

    tokenizer_2 = CLIPTokenizer.from_pretrained(tiny_model_dir / "base" / "tokenizer_2")
    assert tokenizer_2.pad_token == "!" and tokenizer_2.model_max_length == 77


def test_cli_writes_the_same_model_again(tmp_path, tiny_model_dir):
    """`sd3pose make-tiny-model` is deterministic: a second build is byte-identical in its weights."""
    from sd3pose.cli import app

    result = CliRunner().invoke(app, ["make-tiny-model", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    for weights in sorted(tiny_model_dir.rglob("*.safetensors")):
        twin = tmp_path / "m" / weights.relative_to(tiny_model_dir)
        assert twin.read_bytes() == weights.read_bytes(), weights
    again = CliRunner().invoke(app, ["make-tiny-model", str(tmp_path / "m")])
    assert again.exit_code == 2 and "--force" in again.output


def test_ensure_demo_model_reuses_a_built_model(tiny_model_dir):
    from sd3pose.cli.tiny_model import ensure_demo_model

    stamp = (tiny_model_dir / "base" / "model_index.json").stat().st_mtime_ns
    base, controlnet = ensure_demo_model(tiny_model_dir)
    assert (base, controlnet) == (tiny_model_dir / "base", tiny_model_dir / "controlnet")
    assert (base / "model_index.json").stat().st_mtime_ns == stamp


def test_transformer_is_conditioned_on_sigma(tiny_engine):
    # Guard against a degenerate random model: the velocity depends on the timestep.
    torch.manual_seed(0)
    x = torch.randn(1, 16, 8, 8)
    tokens = torch.randn(1, 333, 64)
    pooled = torch.randn(1, 64)
    with torch.no_grad():
        outs = [
            tiny_engine.transformer(
                hidden_states=x,
                timestep=torch.tensor([t]),
                encoder_hidden_states=tokens,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
            for t in (900.0, 100.0)
        ]
    assert (outs[0] - outs[1]).abs().max() > 1e-3
