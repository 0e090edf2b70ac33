"""The `sample` contract other code relies on: names, callback, seeds, dtypes, errors."""

from __future__ import annotations

import pytest
import torch
from gaussian_problem import GaussianData

from sd3pose.errors import InvalidRequestError
from sd3pose.sampling import SAMPLER_NAMES, SAMPLERS, get_sigmas, resolve_sampler_name, sample


def test_every_hosted_sampler_name_is_implemented() -> None:
    assert set(SAMPLERS) == set(SAMPLER_NAMES) and len(SAMPLER_NAMES) == 27


def test_comfyui_cfg_pp_spellings_are_aliases() -> None:
    assert resolve_sampler_name("euler_cfg_pp") == "euler_pp"
    assert resolve_sampler_name("euler_ancestral_cfg_pp") == "euler_ancestral_pp"


def test_unknown_sampler_lists_valid_ones(gaussian) -> None:
    with pytest.raises(InvalidRequestError, match=r"unknown sampler 'dpmpp_9m'; use one of: euler, euler_pp"):
        sample("dpmpp_9m", gaussian, gaussian.noise(1), get_sigmas("normal", 4))


@pytest.mark.parametrize(
    ("sigmas", "message"),
    [([1.0, 0.5, 0.7, 0.0], "strictly descending"), ([2.0, 1.0, 0.0], r"in \[0, 1\]"), ([[1.0, 0.0]], "1-D")],
)
def test_bad_sigmas_are_rejected(gaussian, sigmas, message) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        sample("euler", gaussian, gaussian.noise(1), sigmas)


def test_callback_reports_every_step_and_can_abort(gaussian) -> None:
    seen = []
    sigmas = get_sigmas("normal", 5)
    sample("euler", gaussian, gaussian.noise(2), sigmas, callback=seen.append)
    assert [e["i"] for e in seen] == [0, 1, 2, 3, 4] and {e["total"] for e in seen} == {5}
    assert seen[0]["sigma"] == pytest.approx(1.0) and seen[-1]["sigma_next"] == 0.0
    assert seen[-1]["x"].shape == (2, *gaussian.mu.shape) and seen[-1]["denoised"].shape == seen[-1]["x"].shape

    class Stop(Exception):
        pass

    def abort(info: dict) -> None:
        if info["i"] == 1:
            raise Stop

    before = gaussian.calls
    with pytest.raises(Stop):
        sample("euler", gaussian, gaussian.noise(2), sigmas, callback=abort)
    assert gaussian.calls - before == 2  # stopped right after the second step


def test_single_sigma_means_no_steps(gaussian) -> None:
    x = gaussian.noise(1)
    assert torch.equal(sample("euler", gaussian, x, [1.0]), x)


def test_low_precision_input_is_sampled_in_float32_and_returned_in_its_dtype(gaussian) -> None:
    x = gaussian.noise(2)
    sigmas = get_sigmas("normal", 8)
    seen_dtypes = set()

    def denoiser(x, sigma, **kw):
        seen_dtypes.add((x.dtype, sigma.dtype))
        return gaussian(x, sigma, **kw)

    out = sample("euler", denoiser, x.to(torch.bfloat16), sigmas)
    ref = sample("euler", gaussian, x.float(), sigmas)
    assert out.dtype == torch.bfloat16 and seen_dtypes == {(torch.float32, torch.float32)}
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)  # bf16 rounding of input/output only


def test_dpm_adaptive_model_passes_are_bounded_and_it_still_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server request must not run unbounded passes: dpm_adaptive gets a budget and still finishes its range."""
    import sd3pose.sampling.dpm_solver as dpm_solver

    problem, eps = GaussianData(), GaussianData().noise(1, seed=3)
    sigmas = get_sigmas("normal", 8).double()
    free = sample("dpm_adaptive", problem, eps.clone(), sigmas)
    free_calls = problem.calls
    assert free_calls > 3 * 2 + 3  # unconstrained, it takes more than 2 attempts here

    monkeypatch.setattr(dpm_solver, "ADAPTIVE_MIN_ATTEMPTS", 2)
    monkeypatch.setattr(dpm_solver, "ADAPTIVE_ATTEMPTS_PER_STEP", 0)
    problem.calls = 0
    capped = sample("dpm_adaptive", problem, eps.clone(), sigmas)
    # 2 attempts x 3 evaluations, then 8 finishing order-2 steps x 2.
    assert problem.calls <= 2 * 3 + 8 * 2
    # Finished, not cut off halfway: as close to the exact ODE solution as a fixed 8-step second-order
    # solver gets, if less accurate than unconstrained.
    exact = problem.exact(eps)
    reference = sample("dpmpp_2m", problem, eps.clone(), sigmas)
    assert float((capped - exact).abs().max()) <= float((reference - exact).abs().max())
    assert float((free - exact).abs().max()) <= float((capped - exact).abs().max())


STOCHASTIC = [n for n, info in SAMPLERS.items() if info.stochastic]


def _draws_of(value: float, calls: list):
    def draws(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        assert sigma.ndim == 0 and sigma_next.ndim == 0
        calls.append((float(sigma), float(sigma_next)))
        return torch.full((2, 4, 2, 3), value, dtype=torch.float64)

    return draws


@pytest.mark.parametrize("name", STOCHASTIC)
def test_a_noise_sampler_replaces_every_draw(gaussian, name: str) -> None:
    x, sigmas = gaussian.noise(2), get_sigmas("karras", 5).double()
    calls: list = []
    first = sample(name, gaussian, x, sigmas, seed=1, noise_sampler=_draws_of(0.3, calls))
    assert calls
    assert torch.equal(first, sample(name, gaussian, x, sigmas, seed=2, noise_sampler=_draws_of(0.3, [])))
    assert not torch.allclose(first, sample(name, gaussian, x, sigmas, seed=1))


@pytest.mark.parametrize("name", [n for n in SAMPLER_NAMES if n not in STOCHASTIC])
def test_deterministic_samplers_ignore_draws(gaussian, name: str) -> None:
    # dpm_fast and dpm_adaptive call it after each step, as ComfyUI does, and multiply the draw by 0.
    x, sigmas = gaussian.noise(2), get_sigmas("karras", 5).double()
    calls: list = []
    with_draws = sample(name, gaussian, x, sigmas, noise_sampler=_draws_of(1e6, calls))
    assert torch.equal(with_draws, sample(name, gaussian, x, sigmas))
    assert bool(calls) == (name in ("dpm_fast", "dpm_adaptive"))


def test_a_schedule_ending_above_zero_is_scaled_by_one_over_one_minus_sigma(gaussian) -> None:
    # ComfyUI's KSAMPLER ends with the CONST inverse noise scaling x/(1 - sigma_last).
    x = gaussian.noise(1)
    denoised = gaussian(x, torch.tensor(1.0, dtype=x.dtype))
    out = sample("euler", gaussian, x, [1.0, 0.5])
    torch.testing.assert_close(out, (0.5 * x + 0.5 * denoised) / 0.5)
