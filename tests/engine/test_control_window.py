"""The control window: control_start/control_end mapped to sigmas as ComfyUI v0.12.1 maps them.

ComfyUI turns a percent p into the flow model sampling's sigma shift*(1-p) / (1 + (shift-1)*(1-p))
(0 -> sigma 1, 1 -> sigma 0), and runs the ControlNet at a model call whose sigma lies between the
two, edges included. The expected sigmas are computed here from that formula.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_jobs import job, relative_difference

from sd3pose.engine.engine import control_active, control_window
from sd3pose.sampling.schedules import percent_to_sigma

SHIFT = 3.0


def by_the_formula(percent: float, shift: float = SHIFT) -> float:
    t = 1.0 - percent
    return shift * t / (1 + (shift - 1) * t)


@pytest.mark.parametrize("percent", [0.2, 0.5, 0.6, 0.999])
def test_percent_to_sigma_is_the_flow_sigma_of_the_remaining_time(percent):
    assert percent_to_sigma(percent, SHIFT) == by_the_formula(percent)


def test_percent_to_sigma_ends_are_sigma_1_and_0():
    assert percent_to_sigma(0.0, SHIFT) == 1.0 and percent_to_sigma(-0.5, SHIFT) == 1.0
    assert percent_to_sigma(1.0, SHIFT) == 0.0 and percent_to_sigma(1.5, SHIFT) == 0.0
    assert percent_to_sigma(0.5, 1.0) == 0.5  # no shift: sigma is the remaining time


def test_the_window_edges_are_included():
    high, low = control_window(0.2, 0.6, SHIFT)
    assert control_active(high, (high, low)) and control_active(low, (high, low))
    above = float(torch.nextafter(torch.tensor(high), torch.tensor(2.0)))
    below = float(torch.nextafter(torch.tensor(low), torch.tensor(-1.0)))
    assert not control_active(above, (high, low)) and not control_active(below, (high, low))


def spy_on_sigmas(module: torch.nn.Module, monkeypatch) -> list[float]:
    """The sigma of every call of a diffusers model (its timestep / 1000), in call order."""
    seen: list[float] = []
    forward = module.forward

    def spy(*args, **kwargs):
        seen.append(float(kwargs["timestep"][0]) / 1000)
        return forward(*args, **kwargs)

    monkeypatch.setattr(module, "forward", spy)
    return seen


@pytest.fixture
def controlnet_sigmas(tiny_engine, monkeypatch):
    return spy_on_sigmas(tiny_engine.controlnet, monkeypatch)


@pytest.fixture
def model_sigmas(tiny_engine, monkeypatch):
    return spy_on_sigmas(tiny_engine.transformer, monkeypatch)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2s_ancestral"])
def test_a_window_of_0_2_to_0_6_runs_the_controlnet_exactly_at_the_sigmas_inside_it(
    tiny_engine, controlnet_sigmas, model_sigmas, sampler
):
    # Multi-stage samplers call the model between schedule points: the window reads each call's own sigma.
    the_job = job(control_start=0.2, control_end=0.6, steps=10, sampler=sampler)
    tiny_engine.generate_latents(the_job)
    high = float(torch.tensor(by_the_formula(0.2), dtype=torch.float32))
    low = float(torch.tensor(by_the_formula(0.6), dtype=torch.float32))
    inside = [s for s in model_sigmas if low <= s <= high]
    assert 0 < len(inside) < len(model_sigmas)  # the window switches the ControlNet on and off
    assert controlnet_sigmas == pytest.approx(inside, abs=0)


def test_the_window_changes_the_image_and_the_whole_window_is_the_default(tiny_engine):
    windowed = tiny_engine.generate_latents(job(control_start=0.2, control_end=0.6, steps=6))
    full = tiny_engine.generate_latents(job(steps=6))
    assert relative_difference(windowed, full) > 1e-3
    explicit = tiny_engine.generate_latents(dataclasses.replace(job(steps=6), control_start=0.0, control_end=1.0))
    assert torch.equal(explicit, full)


def test_jobs_with_different_windows_share_a_batch_and_keep_their_own_window(tiny_engine):
    first = job(control_start=0.2, control_end=0.6, steps=6, seeds=[1])
    second = job(control_start=0.0, control_end=0.4, steps=6, seeds=[2])
    together = tiny_engine.generate_batch_latents([first, second])
    for alone, merged in zip((first, second), together, strict=True):
        assert torch.allclose(tiny_engine.generate_latents(alone), merged, rtol=0, atol=1e-5)
