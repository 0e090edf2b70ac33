"""Bad models and bad jobs give one sentence naming the problem and the fix."""

from __future__ import annotations

import shutil

import pytest
import torch
from tiny_jobs import job

from sd3pose.engine import Engine
from sd3pose.engine.loading import choose_device, choose_dtype
from sd3pose.errors import InvalidRequestError, ModelLoadError


def assert_one_sentence(message: str, *needles: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    for needle in needles:
        assert needle in message


def test_missing_model_folder(tmp_path, tiny_model_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError) as info:
        Engine.load(missing, tiny_model_dir / "controlnet")
    assert_one_sentence(info.value.message, str(missing), "does not exist", "sd3pose download", "make-tiny-model")


def test_folder_without_model_index(tmp_path, tiny_model_dir):
    with pytest.raises(ModelLoadError) as info:
        Engine.load(tmp_path, tiny_model_dir / "controlnet")
    assert_one_sentence(info.value.message, str(tmp_path), "model_index.json")


def test_base_folder_missing_a_component(tmp_path, tiny_model_dir):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir / "base", base)
    shutil.rmtree(base / "transformer")
    with pytest.raises(ModelLoadError) as info:
        Engine.load(base, tiny_model_dir / "controlnet")
    assert_one_sentence(info.value.message, "lacks transformer", "sd3pose download")


def test_missing_t5_suggests_no_t5(tmp_path, tiny_model_dir):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir / "base", base)
    shutil.rmtree(base / "text_encoder_3")
    with pytest.raises(ModelLoadError) as info:
        Engine.load(base, tiny_model_dir / "controlnet")
    assert_one_sentence(info.value.message, "text_encoder_3", "--no-t5")
    # ...and without T5 the same folder loads.
    assert Engine.load(base, tiny_model_dir / "controlnet", use_t5=False).use_t5 is False


def test_controlnet_folder_swapped_with_base(tiny_model_dir):
    with pytest.raises(ModelLoadError) as info:
        Engine.load(tiny_model_dir / "base", tiny_model_dir / "base")
    assert_one_sentence(info.value.message, "config.json", "InstantX/SD3-Controlnet-Pose")


def test_corrupt_weights(tmp_path, tiny_model_dir):
    controlnet = tmp_path / "controlnet"
    shutil.copytree(tiny_model_dir / "controlnet", controlnet)
    (controlnet / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError) as info:
        Engine.load(tiny_model_dir / "base", controlnet)
    assert_one_sentence(info.value.message, "could not load", "sd3pose download")


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"width": 72}, ("width 72", "multiple of 16", "64")),
        ({"height": 0}, ("height 0", "multiple of 16")),
        ({"width": 2048}, ("width 2048", "at most 1024")),
        ({"sampler": "euler_magic"}, ("unknown sampler 'euler_magic'", "dpmpp_2m")),
        ({"scheduler": "linear"}, ("unknown scheduler 'linear'", "sgm_uniform")),
        ({"steps": 0}, ("steps",)),
        ({"seeds": []}, ("seed",)),
        ({"control_start": 0.8, "control_end": 0.2}, ("control_start",)),
    ],
)
def test_bad_job(tiny_engine, changes, needles):
    control = job().control_image
    with pytest.raises(InvalidRequestError) as info:
        tiny_engine.generate(job(control_image=control, **changes))
    assert_one_sentence(info.value.message, *needles)


def test_sampler_alias_is_accepted(tiny_engine):
    assert len(tiny_engine.generate(job(sampler="euler_cfg_pp", steps=2))) == 1


def test_dtype_choice():
    assert choose_dtype(None, torch.device("cpu")) == torch.float32
    assert choose_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert choose_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype 'fp8'"):
        choose_dtype("fp8", torch.device("cpu"))


def test_pre_ampere_gpu_defaults_to_fp16_not_emulated_bf16(monkeypatch):
    # torch.cuda.is_bf16_supported() says yes on a T4 (compute capability 7.5) because bf16 can be
    # emulated there, slowly; the default must be fp16 on such a GPU and bf16 from Ampere (8.0) on.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.version, "hip", None)
    capability = {"cuda:0": (7, 5), "cuda:1": (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[str(device)])
    assert choose_dtype(None, torch.device("cuda:0")) == torch.float16
    # The chosen device's capability counts, not the current device's.
    assert choose_dtype(None, torch.device("cuda:1")) == torch.bfloat16


def test_requested_gpu_that_is_not_there_is_one_sentence(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError) as info:
        choose_device("cuda")
    assert_one_sentence(info.value.message, "'cuda'", "no CUDA GPU", "--device cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ModelLoadError) as info:
        choose_device("cuda:2")
    assert_one_sentence(info.value.message, "'cuda:2'", "2 CUDA GPU(s)", "cuda:0 to cuda:1")
    assert choose_device("cuda:1") == torch.device("cuda:1")
    assert choose_device("cpu") == torch.device("cpu")
