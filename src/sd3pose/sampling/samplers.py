"""The 27 samplers of the hosted API, and ``sample``: the one entry point the engine calls.

Every sampler is exact for rectified flow, x_sigma = (1-sigma)*x0 + sigma*eps. Each module's
docstring says which form its samplers use (native flow formulas, or the k-diffusion algorithm run
through the exact change of variables x_ve = x/(1-sigma), sigma_ve = sigma/(1-sigma)) and how the
first step from sigma = 1 (sigma_ve = inf) is taken exactly:

* ``first_order``  -- euler, euler_pp, euler_ancestral, euler_ancestral_pp, ddim, ddpm
* ``single_step``  -- heun, heunpp2, dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral, dpmpp_sde, lcm
* ``multistep``    -- lms, ipndm, ipndm_v, deis, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde, uni_pc, uni_pc_bh2
* ``dpm_solver``   -- dpm_fast, dpm_adaptive

``*_gpu`` variants run the same maths with their noise drawn on x's device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sd3pose.errors import InvalidRequestError
from sd3pose.sampling import dpm_solver, first_order, multistep, single_step
from sd3pose.sampling.core import Callback, Denoiser, Run, Seed
from sd3pose.sampling.names import SAMPLER_NAMES, resolve_sampler_name

log = logging.getLogger(__name__)

SamplerFn = Callable[[Run, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerInfo:
    """What the engine may want to know about a sampler besides running it."""

    name: str
    fn: SamplerFn
    stochastic: bool = False  # draws noise during sampling (results depend on `seed`)
    needs_uncond: bool = False  # CFG++: calls denoiser(..., return_uncond=True)
    evals_per_step: int = 1  # model evaluations per step (the last step may use fewer)
    noise_on_device: bool = False  # `_gpu` variants: noise drawn on x's device
    adaptive: bool = False  # chooses its own steps (dpm_adaptive): sigmas give only the range


def _gpu(info: SamplerInfo) -> SamplerInfo:
    return SamplerInfo(f"{info.name}_gpu", info.fn, info.stochastic, info.needs_uncond, info.evals_per_step, True)


_BASE = (
    SamplerInfo("euler", first_order.euler),
    SamplerInfo("euler_pp", first_order.euler_pp, needs_uncond=True),
    SamplerInfo("euler_ancestral", first_order.euler_ancestral, stochastic=True),
    SamplerInfo("euler_ancestral_pp", first_order.euler_ancestral_pp, stochastic=True, needs_uncond=True),
    SamplerInfo("heun", single_step.heun, evals_per_step=2),
    SamplerInfo("heunpp2", single_step.heunpp2, evals_per_step=3),
    SamplerInfo("dpm_2", single_step.dpm_2, evals_per_step=2),
    SamplerInfo("dpm_2_ancestral", single_step.dpm_2_ancestral, stochastic=True, evals_per_step=2),
    SamplerInfo("lms", multistep.lms),
    SamplerInfo("dpm_fast", dpm_solver.dpm_fast),
    SamplerInfo("dpm_adaptive", dpm_solver.dpm_adaptive, evals_per_step=3, adaptive=True),
    SamplerInfo("dpmpp_2s_ancestral", single_step.dpmpp_2s_ancestral, stochastic=True, evals_per_step=2),
    SamplerInfo("dpmpp_sde", single_step.dpmpp_sde, stochastic=True, evals_per_step=2),
    SamplerInfo("dpmpp_2m", multistep.dpmpp_2m),
    SamplerInfo("dpmpp_2m_sde", multistep.dpmpp_2m_sde, stochastic=True),
    SamplerInfo("dpmpp_3m_sde", multistep.dpmpp_3m_sde, stochastic=True),
    SamplerInfo("ddpm", first_order.ddpm, stochastic=True),
    SamplerInfo("lcm", single_step.lcm, stochastic=True),
    SamplerInfo("ipndm", multistep.ipndm),
    SamplerInfo("ipndm_v", multistep.ipndm_v),
    SamplerInfo("deis", multistep.deis),
    SamplerInfo("ddim", first_order.ddim),
    SamplerInfo("uni_pc", multistep.uni_pc),
    SamplerInfo("uni_pc_bh2", multistep.uni_pc_bh2),
)
_BY_NAME = {info.name: info for info in _BASE}
_GPU = tuple(_gpu(_BY_NAME[n]) for n in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"))

# In the hosted API's order.
SAMPLERS: dict[str, SamplerInfo] = {name: {**_BY_NAME, **{g.name: g for g in _GPU}}[name] for name in SAMPLER_NAMES}


def sampler_info(name: str) -> SamplerInfo:
    """Metadata of a sampler (aliases accepted); raises InvalidRequestError for unknown names."""
    return SAMPLERS[resolve_sampler_name(name)]


def _check_sigmas(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    values = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if values.ndim != 1 or values.numel() < 1:
        raise InvalidRequestError("sigmas must be a 1-D sequence with at least one value; use get_sigmas()")
    if not torch.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise InvalidRequestError("sigmas must be flow noise levels in [0, 1]; use get_sigmas()")
    if values.numel() > 1 and not (values[:-1] > values[1:]).all():
        raise InvalidRequestError("sigmas must be strictly descending; use get_sigmas()")
    return values.tolist()


def sample(
    sampler: str,
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    *,
    seed: Seed = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Integrate from ``x`` (the state at sigmas[0]) down the sigmas; return the final state.

    ``denoiser`` follows the ``Denoiser`` protocol. ``seed`` (int: row i uses seed + i; a sequence:
    one per row; None: nondeterministic) drives every noise draw of stochastic samplers, per row,
    so a row's result does not depend on the rest of the batch. ``callback`` is called after each
    completed step with {"i", "total", "x", "sigma", "sigma_next", "denoised"} and may raise to abort.
    Math is done in float32 (float64 if x is float64); the result has x's dtype.
    """
    info = sampler_info(sampler)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.shape[0] < 1:
        raise InvalidRequestError("x must be a floating-point tensor with a batch dimension first")
    values = _check_sigmas(sigmas)
    run = Run(denoiser, x, values, seed, callback, info.noise_on_device)
    if run.total == 0:
        return x
    log.debug("sampling with %s over %d steps", info.name, run.total)
    out = info.fn(run, x.to(run.dtype))
    return out.to(x.dtype)
