"""The 27 samplers of the hosted API, and ``sample``: the one entry point the engine calls.

Each name computes what ComfyUI (v0.12.1) computes for SD3's flow model sampling: given the same
denoiser, start, sigmas and noise draws, ``sample`` returns what ComfyUI's KSAMPLER returns -- the
sampler function, then the CONST inverse noise scaling x/(1 - sigma_last) with the last sigma as
the sampler leaves it (0 for all but uni_pc, which ends at 0.001). The modules say which update
each name runs, and where ComfyUI's formula misbehaves on a flow model:

* ``first_order``  -- euler, ddim (ComfyUI runs euler), euler_pp, euler_ancestral, euler_ancestral_pp, ddpm, lcm
* ``single_step``  -- heun, heunpp2, dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral, dpmpp_sde
* ``multistep``    -- lms, ipndm, ipndm_v, deis, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde
* ``unipc``        -- uni_pc, uni_pc_bh2
* ``dpm_solver``   -- dpm_fast, dpm_adaptive

``*_gpu`` variants run the same maths with their Brownian tree on x's device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sd3pose.errors import InvalidRequestError
from sd3pose.sampling import dpm_solver, first_order, multistep, single_step, unipc
from sd3pose.sampling.core import Callback, Denoiser, NoiseSampler, Run, Seed
from sd3pose.sampling.names import SAMPLER_NAMES, resolve_sampler_name
from sd3pose.sampling.schedules import DEFAULT_SHIFT

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
    noise_on_device: bool = False  # `_gpu` variants: the Brownian tree lives on x's device
    adaptive: bool = False  # chooses its own steps (dpm_adaptive): sigmas give only the range
    final_sigma_for_zero: float = 0.0  # the last sigma the sampler ends at when the schedule ends at 0


_ALL = (
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
    SamplerInfo("dpmpp_sde_gpu", single_step.dpmpp_sde_gpu, stochastic=True, evals_per_step=2, noise_on_device=True),
    SamplerInfo("dpmpp_2m", multistep.dpmpp_2m),
    SamplerInfo("dpmpp_2m_sde", multistep.dpmpp_2m_sde, stochastic=True),
    SamplerInfo("dpmpp_2m_sde_gpu", multistep.dpmpp_2m_sde_gpu, stochastic=True, noise_on_device=True),
    SamplerInfo("dpmpp_3m_sde", multistep.dpmpp_3m_sde, stochastic=True),
    SamplerInfo("dpmpp_3m_sde_gpu", multistep.dpmpp_3m_sde_gpu, stochastic=True, noise_on_device=True),
    SamplerInfo("ddpm", first_order.ddpm, stochastic=True),
    SamplerInfo("lcm", first_order.lcm, stochastic=True),
    SamplerInfo("ipndm", multistep.ipndm),
    SamplerInfo("ipndm_v", multistep.ipndm_v),
    SamplerInfo("deis", multistep.deis),
    SamplerInfo("ddim", first_order.euler),
    SamplerInfo("uni_pc", unipc.uni_pc, final_sigma_for_zero=unipc.FINAL_SIGMA),
    SamplerInfo("uni_pc_bh2", unipc.uni_pc_bh2, final_sigma_for_zero=unipc.FINAL_SIGMA),
)
_BY_NAME = {info.name: info for info in _ALL}

# In the hosted API's order.
SAMPLERS: dict[str, SamplerInfo] = {name: _BY_NAME[name] for name in SAMPLER_NAMES}


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
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    shift: float = DEFAULT_SHIFT,
) -> torch.Tensor:
    """Integrate from ``x`` (the state at sigmas[0]) down the sigmas, as ComfyUI's KSAMPLER does.

    ``denoiser`` follows the ``Denoiser`` protocol. ``noise_sampler(sigma, sigma_next)`` (k-diffusion's
    convention; 0-dim float64 tensors in, standard normal noise shaped like x out), when given,
    replaces every random draw and is called where, in the order and with the values with which
    ComfyUI's sampler of that name calls its own. Without it, ``seed`` drives the draws per row
    (int: row i uses seed + i; a sequence: one per row; None: nondeterministic), so a row's result
    does not depend on the rest of the batch: Gaussian streams, or for the SDE samplers a Brownian
    tree per row. ``callback`` is called after each step with {"i", "total", "x", "sigma",
    "sigma_next", "denoised"} and may raise to abort. ``shift`` is the model's flow shift (the SDE
    samplers start from sigma(t = 1 - 1e-4) of it). Math runs in float32 (float64 if x is float64);
    the result has x's dtype. A single sigma means no step: x comes back unchanged.
    """
    info = sampler_info(sampler)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.shape[0] < 1:
        raise InvalidRequestError("x must be a floating-point tensor with a batch dimension first")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise InvalidRequestError(f"shift must be a positive number, got {shift!r}")
    values = _check_sigmas(sigmas)
    run = Run(denoiser, x, values, seed=seed, noise_sampler=noise_sampler, callback=callback, shift=float(shift))
    if run.total == 0:
        return x
    log.debug("sampling with %s over %d steps", info.name, run.total)
    out = info.fn(run, x.to(run.dtype))
    last = values[-1] if values[-1] != 0.0 else info.final_sigma_for_zero
    if last != 0.0:  # CONST inverse noise scaling
        out = out / (1.0 - last)
    return out.to(x.dtype)
