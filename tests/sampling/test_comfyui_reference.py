"""Recorded results of ComfyUI v0.12.1 (numbers only, data/comfyui_v0_12_1.json): every name matches them.

The file holds, for all 27 samplers x 6 schedulers at 1, 2, 3 and 10 steps (the CFG++ samplers at
cfg 1 and 5, with cond != uncond), what ComfyUI's KSAMPLER returned in float64 for a two-Gaussian
CFG problem, a fixed start and a fixed sequence of noise draws, plus the (sigma, sigma_next) of each
call it made to the noise sampler; and KSampler's sigmas for each scheduler at 1-100 steps with and
without the dropped second-to-last sigma. Tolerance: 1e-9 of the output's scale (values are stored
to 12 digits); sigmas bit for bit in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sd3pose.sampling import get_sigmas, sample

DATA = json.loads((Path(__file__).parent / "data" / "comfyui_v0_12_1.json").read_text())
SHAPE = tuple(DATA["shape"])


def posterior_mean(x: torch.Tensor, sigma: torch.Tensor, mu: list[float], c: list[float]) -> torch.Tensor:
    a = 1 - sigma
    mu_t, var = torch.tensor(mu, dtype=x.dtype), torch.tensor(c, dtype=x.dtype) ** 2
    return mu_t + a * var / (a * a * var + sigma * sigma) * (x - a * mu_t)


def cfg_denoiser(cfg: float):
    problem = DATA["problem"]

    def denoiser(x, sigma, *, return_uncond=False):
        cond = posterior_mean(x, sigma, problem["mu_c"], problem["c_c"])
        uncond = posterior_mean(x, sigma, problem["mu_u"], problem["c_u"])
        guided = uncond + (cond - uncond) * cfg
        return (guided, uncond) if return_uncond else guided

    return denoiser


class RecordedDraws:
    """Draw k is randn(shape) from a generator seeded with draw_seed*1000 + k, as the harness drew them."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        k = len(self.calls)
        self.calls.append((float(sigma), float(sigma_next)))
        generator = torch.Generator().manual_seed(DATA["draw_seed"] * 1000 + k)
        return torch.randn(SHAPE, generator=generator, dtype=torch.float64)


def _case_id(case: list) -> str:
    return f"{case[0]}-{case[1]}-{case[2]}-cfg{case[3]:g}"


class Counting:
    def __init__(self, denoiser) -> None:
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        return self.denoiser(x, sigma, **kw)


@pytest.mark.parametrize("case", DATA["cases"], ids=_case_id)
def test_result_draws_and_model_calls_equal_comfyui(case: list) -> None:
    name, scheduler, steps, cfg, expected, model_calls, draws = case
    sigmas = get_sigmas(scheduler, steps, shift=DATA["shift"], sampler=name).double()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(DATA["noise_seed"]), dtype=torch.float64)
    recorded = RecordedDraws()
    denoiser = Counting(cfg_denoiser(cfg))
    out = sample(name, denoiser, sigmas[0] * noise, sigmas, noise_sampler=recorded, shift=DATA["shift"])
    expected_t = torch.tensor(expected, dtype=torch.float64).reshape(SHAPE)
    scale = float(expected_t.abs().max())
    assert float((out - expected_t).abs().max()) <= 1e-9 * scale
    assert denoiser.calls == model_calls
    if draws is not None:  # the same noise-sampler calls, in order, with the same values
        assert len(recorded.calls) == len(draws)
        for (a, b), (c, d) in zip(recorded.calls, draws, strict=True):
            assert a == pytest.approx(c, rel=1e-10) and b == pytest.approx(d, rel=1e-10)


@pytest.mark.parametrize("entry", DATA["sigmas"], ids=lambda e: f"{e[0]}-{e[1]}-{e[2]}")
def test_sigmas_equal_comfyui_ksampler_bit_for_bit(entry: list) -> None:
    scheduler, steps, sampler, expected = entry
    ours = get_sigmas(scheduler, steps, shift=DATA["shift"], sampler=sampler)
    assert torch.equal(ours, torch.tensor(expected, dtype=torch.float32))
