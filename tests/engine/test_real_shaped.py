"""The real-shaped model (sd3pose.cli.real_shaped_model): what the tiny model cannot prove.

Random fp16 weights with the published configs' widths, heads, vocabularies, class names and file
formats, depth reduced. On it: the loader reads every tensor as stored (T5's embedding stored once,
the legacy ControlNet class name), CLIP's legacy special-token ids pool the end-of-text state, the
pose map reaches the VAE contiguous, and the engine matches diffusers at real widths, with and
without T5 (final latents within 1e-4 relative, float32 on the CPU, 256x256).

Real widths are slow on a CPU: the model is built once per session, loaded once here, and the
number of runs is kept small (2 steps).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers_reference import clip_only_arguments, reference_latents
from safetensors import safe_open
from tiny_jobs import job, pose_map, relative_difference

from sd3pose.cli.real_shaped_model import DEPTH, clip_bpe_vocabulary, write_clip_tokenizer
from sd3pose.engine import Engine
from sd3pose.engine.loading import Components, load_components

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "sd3-medium-configs"
LATENT_RTOL = 1e-4
SIZE = 256
CPU = torch.device("cpu")
TEXT_PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")
# Where each component's files live, relative to the model folder.
FOLDERS = {
    "transformer": "base/transformer",
    "controlnet": "controlnet",
    "vae": "base/vae",
    "text_encoder": "base/text_encoder",
    "text_encoder_2": "base/text_encoder_2",
    "text_encoder_3": "base/text_encoder_3",
}


def file_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118 (not a dict)
    return tensors


def differences_from_files(parts: Components, model_dir: Path) -> tuple[list[str], int]:
    """Every way the loaded modules differ from the files: (problems, number of tensors compared)."""
    problems, compared = [], 0
    for name, folder in FOLDERS.items():
        module = getattr(parts, name)
        stored = file_tensors(model_dir / folder)
        state = module.state_dict()
        for key, value in state.items():
            if key in stored:
                compared += 1
                if not torch.equal(value, stored[key].to(value.dtype)):
                    problems.append(f"{name}: {key} differs from the file")
            elif name == "text_encoder_3" and key == "encoder.embed_tokens.weight":
                compared += 1
                if module.encoder.embed_tokens.weight is not module.shared.weight:
                    problems.append("text_encoder_3: the encoder's embedding is not tied to shared.weight")
            else:
                problems.append(f"{name}: {key} is not in the file (re-initialised)")
        problems += [f"{name}: {key} in the file is not used" for key in stored.keys() - state.keys()]
    return problems, compared


def real_job(**changes):
    return job(width=SIZE, height=SIZE, steps=2, control_image=pose_map(SIZE, SIZE), **changes)


WITH_T5 = real_job()
WITHOUT_T5 = real_job(prompt="an astronaut dancing on the moon")


@pytest.fixture(scope="module")
def real(real_shaped_model_dir: Path) -> SimpleNamespace:
    """One load, used in order: the components as the loader returns them (float32, CPU) are compared with
    the files and run through diffusers' pipeline (the reference), before an Engine's speed-ups rewrite
    them; then the engine on them with T5, and one sharing its models without T5.

    Loading once keeps this module's time and memory in bounds (a second float32 copy is 3.5 GB); the
    comparison with the files proves the shared modules are what a diffusers load would give.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3ControlNetPipeline

    base = real_shaped_model_dir / "base"
    parts = load_components(base, real_shaped_model_dir / "controlnet", device=CPU, dtype=torch.float32)
    report = differences_from_files(parts, real_shaped_model_dir)
    models = {name: getattr(parts, name) for name in ("transformer", "vae", "controlnet", *TEXT_PARTS)}
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler")
    pipe = StableDiffusion3ControlNetPipeline(scheduler=scheduler, **models)
    pipe.set_progress_bar_config(disable=True)
    without_t5_pipe = StableDiffusion3ControlNetPipeline(
        scheduler=scheduler, **{**models, "text_encoder_3": None, "tokenizer_3": None}
    )
    without_t5_pipe.set_progress_bar_config(disable=True)
    references = {
        "with": reference_latents(pipe, WITH_T5),
        "without": reference_latents(without_t5_pipe, WITHOUT_T5, **clip_only_arguments(without_t5_pipe, WITHOUT_T5)),
    }

    engine = Engine(parts, CPU, torch.float32)
    # The same (already prepared) models, without T5: the engine's zero-T5 path at real widths.
    without_t5 = Engine(
        dataclasses.replace(parts, text_encoder_3=None, tokenizer_3=None), CPU, torch.float32, optimize=False
    )
    return SimpleNamespace(parts=parts, report=report, references=references, engine=engine, without_t5=without_t5)


# ---- the files -----------------------------------------------------------------------------


def test_files_have_the_published_formats(real_shaped_model_dir):
    base = real_shaped_model_dir / "base"
    for path in real_shaped_model_dir.rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            assert {handle.get_slice(key).get_dtype() for key in handle.keys()} == {"F16"}, path  # noqa: SIM118
    # Every config is the published one, only the layer count reduced.
    for config in sorted(CONFIGS.rglob("*.json")):
        written = json.loads((real_shaped_model_dir / config.relative_to(CONFIGS)).read_text())
        published = json.loads(config.read_text())
        changed = {key for key in published if written.get(key) != published[key]}
        reduced = set(DEPTH[config.parent.name]) if config.name == "config.json" else set()
        assert changed == reduced, config
    assert json.loads((real_shaped_model_dir / "controlnet/config.json").read_text())["_class_name"] == (
        "ControlNetSD3Model"
    )
    t5 = base / "text_encoder_3"
    assert sorted(p.name for p in t5.glob("*.safetensors")) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    weight_map = json.loads((t5 / "model.safetensors.index.json").read_text())["weight_map"]
    assert "shared.weight" in weight_map and "encoder.embed_tokens.weight" not in weight_map
    assert set(weight_map.values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert json.loads((t5 / "config.json").read_text())["tie_word_embeddings"] is False
    for encoder in ("text_encoder", "text_encoder_2"):
        config = json.loads((base / encoder / "config.json").read_text())
        assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (0, 2, 1)


def test_clip_tokenizers_have_the_real_vocabulary(real_shaped_model_dir):
    from transformers import CLIPTokenizer

    if clip_bpe_vocabulary() is None:
        if os.environ.get("CI"):
            pytest.fail("clip-anytorch is not installed (make install puts it there)")
        pytest.skip("clip-anytorch is not installed: the tiny vocabulary stands in")
    for part in ("tokenizer", "tokenizer_2"):
        tokenizer = CLIPTokenizer.from_pretrained(real_shaped_model_dir / "base" / part)
        assert len(tokenizer) == 49408
        # OpenAI CLIP's ids for these words.
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert CLIPTokenizer.from_pretrained(real_shaped_model_dir / "base" / "tokenizer_2").pad_token_id == 0


def test_without_clip_anytorch_the_tiny_vocabulary_stands_in(tmp_path, monkeypatch):
    from transformers import CLIPTokenizer

    from sd3pose.cli import real_shaped_model as real_shaped

    monkeypatch.setattr(real_shaped, "clip_bpe_vocabulary", lambda: None)
    write_clip_tokenizer(tmp_path, CONFIGS / "base" / "tokenizer_2", pad_token="!")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) < 49408
    assert tokenizer.pad_token == "!" and tokenizer.model_max_length == 77
    words = [tuple(tokenizer(word, add_special_tokens=False).input_ids) for word in ("man", "woman", "dog")]
    assert len(set(words)) == 3


# ---- the loader ----------------------------------------------------------------------------


def test_every_loaded_tensor_equals_the_files(real):
    problems, compared = real.report
    assert problems == []
    assert compared > 200  # every tensor of six models, T5's tied embedding included
    # The layers a fresh ControlNet zero-initialises carry weights, so the control path is live.
    assert all(block.weight.abs().max() > 0 for block in real.parts.controlnet.controlnet_blocks)
    assert real.parts.controlnet.pos_embed_input.proj.weight.abs().max() > 0


def test_clip_pools_the_end_of_text_state_with_legacy_ids(real):
    parts = real.parts
    prompt = "a dancer in a red dress"
    pooled = []
    encoders = ((parts.tokenizer, parts.text_encoder, False), (parts.tokenizer_2, parts.text_encoder_2, True))
    for tokenizer, encoder, projected in encoders:
        assert encoder.config.eos_token_id == 2  # the legacy id, as published
        ids = tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            out = encoder(ids)
            end_state = out.last_hidden_state[0, int((ids[0] == tokenizer.eos_token_id).nonzero()[0])]
        assert torch.allclose(out.text_embeds[0], encoder.text_projection(end_state), rtol=0, atol=1e-6)
        # CLIP-L's pooled vector is taken un-projected (ComfyUI), CLIP-G's projected.
        pooled.append(encoder.text_projection(end_state) if projected else end_state)
    assert torch.allclose(real.engine.text.encode(prompt).pooled[0], torch.cat(pooled), rtol=0, atol=1e-6)


# ---- the engine ----------------------------------------------------------------------------


def test_pose_map_reaches_the_vae_contiguous(real):
    """The control latent is the VAE mean of the contiguous pixels, as in diffusers (CPU GroupNorm on the
    channels-last strides of a decoded image is about 2e-3 off at these widths)."""
    engine = real.engine
    image = pose_map(SIZE, SIZE, seed=3)
    pixels = engine.image_processor.preprocess(image, height=SIZE, width=SIZE).contiguous()
    with torch.no_grad():
        expected = engine.vae.encode(pixels).latent_dist.mean * engine.vae.config.scaling_factor
    assert torch.equal(engine.encode_control(image, SIZE, SIZE), expected)


def test_engine_matches_diffusers_with_t5(real):
    ours = real.engine.generate_latents(WITH_T5)
    assert relative_difference(ours, real.references["with"]) < LATENT_RTOL


def test_engine_matches_diffusers_without_t5(real):
    assert real.without_t5.text.t5 is None
    ours = real.without_t5.generate_latents(WITHOUT_T5)
    assert relative_difference(ours, real.references["without"]) < LATENT_RTOL


def test_t5_encoder_embedding_is_tied_to_shared_when_a_release_leaves_it_apart():
    from transformers import T5Config, T5EncoderModel

    from sd3pose.engine.loading import tie_t5_embedding

    config = T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, tie_word_embeddings=False)
    model = T5EncoderModel(config).eval()
    model.encoder.embed_tokens = torch.nn.Embedding(50, 16)  # what a loader following the flag would leave
    tie_t5_embedding(model)
    assert model.encoder.embed_tokens.weight is model.shared.weight
    ids = torch.tensor([[5, 7, 1]])
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, model.encoder(inputs_embeds=model.shared(ids))[0])


def test_from_configs_needs_the_published_layout(tmp_path):
    import shutil

    from typer.testing import CliRunner

    from sd3pose.cli import app

    def make(configs: Path):
        return CliRunner().invoke(app, ["make-tiny-model", str(tmp_path / "m"), "--from-configs", str(configs)])

    result = make(tmp_path / "nowhere")
    assert result.exit_code == 2 and "is not a folder" in result.output
    shutil.copytree(CONFIGS, tmp_path / "configs")
    (tmp_path / "configs" / "controlnet" / "config.json").unlink()
    result = make(tmp_path / "configs")
    assert result.exit_code == 2
    assert "controlnet/config.json' is missing" in result.output
    assert "laid out like the real repositories" in result.output
    assert not (tmp_path / "m").exists()  # nothing written before every config was read
