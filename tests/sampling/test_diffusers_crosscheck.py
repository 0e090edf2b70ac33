"""Item 2: agreement with diffusers' flow-aware schedulers on the same sigmas (to 1e-4).

A smooth nonlinear velocity field stands in for a model; diffusers gets v, we get D = x - sigma*v.
Where the published algorithms differ (see the notes), the difference is stated and tested.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from sd3pose.sampling import NoiseSource, get_sigmas, sample

TOL = 1e-4
W = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3


def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ W) * (1 + sigma) + 0.5 * x


def denoiser(x: torch.Tensor, sigma: torch.Tensor, *, return_uncond: bool = False):
    d = x - sigma * velocity(x, sigma)
    return (d, d) if return_uncond else d


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def run_diffusers(sched, sigmas: torch.Tensor, noises: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Step a diffusers multistep scheduler over exactly ``sigmas`` (its flow-sigma mode)."""
    sched.set_timesteps(len(sigmas) - 1)
    sched.sigmas = sigmas.clone()
    sched.timesteps = sigmas[:-1] * 1000
    y = X.clone()
    for i, t in enumerate(sched.timesteps):
        kw = {"variance_noise": noises[i]} if noises is not None else {}
        y = sched.step(velocity(y, sigmas[i]), t, y, **kw).prev_sample
    return y


def _flow(cls, **kw):
    return cls(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction", **kw)


@pytest.mark.parametrize("steps", [4, 10, 20])
def test_euler_matches_flow_match_euler(steps: int) -> None:
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    y = X.clone()
    for i, t in enumerate(sched.timesteps):
        y = sched.step(velocity(y, sched.sigmas[i].double()), t, y).prev_sample
    ours = sample("euler", denoiser, X, get_sigmas("normal", steps).double())
    assert (ours - y).abs().max() < TOL


@pytest.mark.parametrize("steps", [4, 10])
def test_heun_matches_flow_match_heun(steps: int) -> None:
    sched = FlowMatchHeunDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    y = X.clone()
    for t in sched.timesteps:
        sigma = sched.sigmas[sched.step_index if sched.step_index is not None else 0].double()
        y = sched.step(velocity(y, sigma), t, y).prev_sample
    ours = sample("heun", denoiser, X, get_sigmas("normal", steps).double())
    assert (ours - y).abs().max() < TOL


@pytest.mark.parametrize("scheduler", ["normal", "karras", "sgm_uniform"])
@pytest.mark.parametrize("steps", [5, 12])
def test_dpmpp_2m_and_2m_sde_match_dpm_solver_multistep(scheduler: str, steps: int) -> None:
    # We take the step into the last sigma before 0 at first order (diffusers does so on its final
    # step): run diffusers to sigmas[-2], then land on 0 with the denoiser, as we do.
    sig = get_sigmas(scheduler, steps).double()
    src = NoiseSource(7, X)
    noise_seq = [src() for _ in range(steps)]
    for name, kind in [("dpmpp_2m", "dpmsolver++"), ("dpmpp_2m_sde", "sde-dpmsolver++")]:
        sched = _flow(DPMSolverMultistepScheduler, algorithm_type=kind, solver_order=2)
        y = run_diffusers(sched, sig[:-1], noise_seq if "sde" in name else None)
        ref = denoiser(y, sig[-2])
        ours = sample(name, denoiser, X, sig, seed=7)
        assert (ours - ref).abs().max() < TOL, name


@pytest.mark.parametrize(
    "name,cls,kw",
    [
        ("deis", DEISMultistepScheduler, {"solver_order": 3}),
        ("uni_pc", UniPCMultistepScheduler, {"solver_order": 3, "solver_type": "bh1"}),
        ("uni_pc_bh2", UniPCMultistepScheduler, {"solver_order": 3, "solver_type": "bh2"}),
    ],
)
@pytest.mark.parametrize("steps", [5, 12, 20])
def test_deis_and_unipc_match_diffusers(name: str, cls, kw, steps: int) -> None:
    # diffusers' eps-form DEIS and UniPC-B1 produce NaN at sigma = 1 and at sigma = 0 (0*inf);
    # compare on the same schedule with those two endpoints moved inside (0.999 and sigma_n/3).
    sig = get_sigmas("normal", steps).double()
    sig[0], sig[-1] = 0.999, sig[-2] / 3
    ref = run_diffusers(cls(**{**kw}, use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"), sig)
    ours = sample(name, denoiser, X, sig)
    assert (ours - ref).abs().max() < TOL


@pytest.mark.parametrize("name", ["deis", "uni_pc", "uni_pc_bh2", "dpmpp_2m"])
def test_sigma_one_and_zero_endpoints_are_finite_where_diffusers_is_not(name: str) -> None:
    out = sample(name, denoiser, X, get_sigmas("normal", 8).double())
    assert torch.isfinite(out).all()


def test_dpmpp_3m_sde_third_order_term_differs_from_diffusers_by_a_sign() -> None:
    # diffusers' SDE-DPM-Solver++(3M) weights D2 by alpha*((1 - e^{-2h} - 2h)/(2h)^2 - 0.5), which tends
    # to -alpha (an O(1) weight on a second difference) as h -> 0; k-diffusion's weight,
    # -(phi_2/(2h) - 0.5) with phi_2 = expm1(-2h)/(2h) + 1, tends to 0 as a third-order term must.
    # Ours follows k-diffusion; test_analytic shows its draws match the data distribution.
    h = 1e-3
    diffusers_w = ((1 - torch.exp(torch.tensor(-2 * h)) - 2 * h) / (2 * h) ** 2 - 0.5).item()
    phi_2 = torch.expm1(torch.tensor(-2 * h)).item() / (2 * h) + 1
    ours_w = -(phi_2 / (2 * h) - 0.5)
    assert abs(ours_w) < 1e-2 and abs(diffusers_w + 1) < 1e-2
