"""Memory for real GPUs: `--offload` (accelerate's model CPU offload), the README's memory table, and the
peak-GPU-memory debug log. No GPU here: offload runs with the CPU as its execution device, which checks
the hook chain and that results do not change, not the transfers themselves."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
from tiny_jobs import job
from typer.testing import CliRunner

from sd3pose.cli import app
from sd3pose.engine import Engine
from sd3pose.engine.loading import check_offload
from sd3pose.engine.memory import log_peak_gpu_memory, resident_bytes
from sd3pose.errors import GenerationCancelledError, ModelLoadError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def offloaded(tiny_model_dir):
    """The tiny engine with offload hooks, the CPU standing in for the GPU."""
    engine = Engine.load(tiny_model_dir / "base", tiny_model_dir / "controlnet", device="cpu", dtype="fp32")
    engine.enable_offload()
    return engine


def test_offload_chain_follows_a_request(offloaded):
    """Each text encoder sends the previous one back, CLIP-L the last one (T5: a negative prompt runs them
    again); ControlNet and transformer both send back the last text encoder (never each other: they
    alternate at every step); the VAE sends back the transformer."""
    hooks = {id(hook.model): hook for hook in offloaded.offload.hooks}
    clip_l, clip_g, t5 = offloaded.text.models

    def previous(model):
        before = hooks[id(model)].hook.prev_module_hook
        return None if before is None else before.model

    assert previous(clip_l) is t5
    assert previous(clip_g) is clip_l
    assert previous(t5) is clip_g
    assert previous(offloaded.controlnet) is t5
    assert previous(offloaded.transformer) is t5
    assert previous(offloaded.vae) is offloaded.transformer
    assert len(hooks) == 6


def test_offloaded_engine_gives_the_same_images(offloaded, tiny_engine):
    the_job = job(seeds=[3, 4])
    assert torch.equal(offloaded.generate_latents(the_job), tiny_engine.generate_latents(the_job))
    ours = [list(image.getdata()) for image in offloaded.generate(the_job)]
    assert ours == [list(image.getdata()) for image in tiny_engine.generate(the_job)]


def test_every_request_ends_with_the_models_released(offloaded, monkeypatch):
    releases = []
    monkeypatch.setattr(offloaded.offload, "release", lambda: releases.append(1))
    offloaded.generate(job())
    assert len(releases) == 1
    offloaded.generate_batch([job(), job(prompt="a cat")])
    assert len(releases) == 2
    with pytest.raises(GenerationCancelledError):
        offloaded.generate(job(), cancelled=lambda: True)
    assert len(releases) == 3  # also when a request fails


# SD3 Medium's weights in bf16, in bytes (the README's table, which the test below computes from the configs).
SD3_MEDIUM_BYTES = {
    "transformer": 4.17e9,
    "controlnet": 1.19e9,
    "vae": 0.17e9,
    "text_encoder": 0.25e9,
    "text_encoder_2": 1.39e9,
    "text_encoder_3": 9.52e9,
}


def test_the_gpu_never_holds_more_than_the_offload_figure(offloaded, monkeypatch):
    """Replays the order in which the offload hooks saw the models start (and the releases) by accelerate's
    rule: a model's start sends the model before it in the chain back, a release sends every model back.
    At SD3 Medium's sizes the GPU never holds more than `resident_bytes` says (the README's 9.7 GB), also
    for a request with a new negative prompt and for jobs that need two model batches."""
    parts = {
        "text_encoder": offloaded.text.models[0],
        "text_encoder_2": offloaded.text.models[1],
        "text_encoder_3": offloaded.text.models[2],
        "controlnet": offloaded.controlnet,
        "transformer": offloaded.transformer,
        "vae": offloaded.vae,
    }
    names = {id(model): name for name, model in parts.items()}
    previous, events = {}, []
    for user_hook in offloaded.offload.hooks:
        hook = user_hook.hook
        before = hook.prev_module_hook
        previous[names[id(user_hook.model)]] = None if before is None else names[id(before.model)]

        def start(module, *args, _pre_forward=hook.pre_forward, **kwargs):
            events.append(names[id(module)])
            return _pre_forward(module, *args, **kwargs)

        monkeypatch.setattr(hook, "pre_forward", start)
    release = offloaded.offload.release
    monkeypatch.setattr(offloaded.offload, "release", lambda: (events.append("release"), release()))

    offloaded.generate(job(prompt="a knight on a horse", negative_prompt="blurry, ugly, deformed"))
    offloaded.generate_batch([job(prompt="a chef in a kitchen", steps=2), job(prompt="a robot in the snow", steps=3)])

    on_gpu: set[str] = set()
    peak = 0.0
    for event in events:
        if event == "release":
            on_gpu.clear()
            continue
        on_gpu.discard(previous[event])
        on_gpu.add(event)
        peak = max(peak, sum(SD3_MEDIUM_BYTES[name] for name in on_gpu))
    assert peak <= resident_bytes(SD3_MEDIUM_BYTES, use_t5=True, offload=True)
    assert events.count("release") == 3  # after the request, between the two model batches, after the batch


def test_offload_needs_a_cuda_gpu(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="--offload moves each model .* to a CUDA GPU .* device is .cpu."):
        Engine.load(tiny_model_dir / "base", tiny_model_dir / "controlnet", device="cpu", offload=True)
    with pytest.raises(ModelLoadError, match="--offload and --compile cannot be combined"):
        check_offload(True, torch.device("cuda", 0), compile=True)
    check_offload(True, torch.device("cuda", 0), compile=False)  # accepted


def test_generate_offload_flag_reaches_the_engine(tiny_model_dir, tmp_path):
    from tiny_jobs import pose_map

    pose_map().save(tmp_path / "pose.png")
    model = ["--model", str(tiny_model_dir / "base"), "--controlnet", str(tiny_model_dir / "controlnet")]
    arguments = ["generate", "--image", str(tmp_path / "pose.png"), "--prompt", "a dancer", *model]
    result = CliRunner().invoke(app, [*arguments, "--output", str(tmp_path / "o.png"), "--device", "cpu", "--offload"])
    assert result.exit_code == 2
    assert "--offload" in result.output and "CUDA" in result.output and "Traceback" not in result.output


def test_offload_holds_at_most_one_phase_of_a_request():
    sizes = {"transformer": 40, "controlnet": 10, "vae": 2, "text_encoder": 3, "text_encoder_2": 14}
    sizes["text_encoder_3"] = 95
    assert resident_bytes(sizes, use_t5=True, offload=False) == 164
    assert resident_bytes(sizes, use_t5=False, offload=False) == 69
    assert resident_bytes(sizes, use_t5=True, offload=True) == 97  # T5 + VAE while the pose map is encoded
    assert resident_bytes(sizes, use_t5=False, offload=True) == 52  # transformer + ControlNet + VAE


def test_readme_memory_table_is_computed_from_the_parameter_counts():
    spec = importlib.util.spec_from_file_location("memory_table", ROOT / "bench" / "memory_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    table = script.table(script.DEFAULT_CONFIGS)
    assert "| T5-XXL | 4.76 B | 9.52 GB |" in table  # the hub's file size of T5, from its config alone
    assert table in (ROOT / "README.md").read_text()


def test_peak_gpu_memory_is_logged_per_request_at_debug_level(monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**29)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 2 * 2**30)
    caplog.set_level(logging.DEBUG, logger="sd3pose.engine.memory")
    with log_peak_gpu_memory(torch.device("cuda", 1), "1 job, 1 image(s) of 1024x1024"):
        pass
    assert calls == [("reset", torch.device("cuda", 1))]
    assert "peak GPU memory for 1 job, 1 image(s) of 1024x1024 on cuda:1: 1.50 GiB allocated, 2.00 GiB reserved" in (
        caplog.text
    )
    calls.clear()
    with log_peak_gpu_memory(torch.device("cpu"), "cpu"):
        pass
    assert calls == []


def test_the_engine_reports_each_request_and_batch(tiny_engine, monkeypatch):
    from contextlib import contextmanager

    from sd3pose.engine import engine as engine_module

    seen = []

    @contextmanager
    def record(device, what):
        seen.append(what)
        yield

    monkeypatch.setattr(engine_module, "log_peak_gpu_memory", record)
    tiny_engine.generate(job(seeds=[1, 2]))
    tiny_engine.generate_batch([job(), job(prompt="a cat")])
    assert seen == ["1 job, 2 image(s) of 64x64", "2 job(s), 2 image(s)"]
