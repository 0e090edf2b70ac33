"""Agreement with diffusers' flow-match schedulers on the same sigmas (to 1e-4), where ComfyUI's
update is the same as diffusers': euler and heun. (The engine's parity with diffusers' SD3 pipelines
rests on euler.) ComfyUI's other samplers run k-diffusion's VE formulas on the flow sigmas, which
diffusers' flow-aware multistep schedulers do not, so they are checked against k-diffusion and
ComfyUI's recorded results instead.

A smooth nonlinear velocity field stands in for a model; diffusers gets v, we get D = x - sigma*v.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

from sd3pose.sampling import get_sigmas, sample

TOL = 1e-4
W = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3


def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ W) * (1 + sigma) + 0.5 * x


def denoiser(x: torch.Tensor, sigma: torch.Tensor, *, return_uncond: bool = False):
    d = x - sigma * velocity(x, sigma)
    return (d, d) if return_uncond else d


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


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
