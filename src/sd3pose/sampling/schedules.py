"""Noise schedules (sigma sequences) for SD3's rectified-flow model sampling, as ComfyUI builds them.

SD3 is trained on 1000 discrete timesteps t = k/1000, k = 1..1000, and samples with the shifted
flow sigma  sigma(t) = shift*t / (1 + (shift-1)*t)  (shift 3.0 for SD3 Medium). That gives the
1000-entry table ``sigma_table(shift)`` with sigma_max = sigma(1) = 1 and sigma_min = sigma(1/1000).

The model is conditioned on timestep = 1000*sigma (what SD3 receives), so "timestep space" below is
``1000*sigma`` and a timestep t maps back to ``sigma(t/1000)`` -- note this is *not* the inverse of
the shift; it is how ComfyUI's "normal" scheduler and diffusers' FlowMatchEulerDiscreteScheduler
build their schedules.

Every schedule is strictly descending float32 and ends in 0; all but ddim_uniform have ``steps + 1``
values:

* normal       -- ``steps`` points linear in timestep space from sigma_max to sigma_min, mapped through
                  sigma().
* sgm_uniform  -- the same with ``steps + 1`` points and the last dropped (SGM / SDXL-turbo style).
* simple       -- ``steps`` evenly spaced picks from the 1000-entry table, from the top.
* ddim_uniform -- every floor(1000/steps)-th table entry from the second one up, as ComfyUI picks
                  them: where 1000/steps is not whole that is more than ``steps`` entries (31 steps
                  for 30, 100 for 91), and it never reaches sigma_max (0.006 to 0 for 1 step).
* karras       -- Karras et al. (2022) rho = 7 spacing between sigma_min and sigma_max.
* exponential  -- log-linear spacing between sigma_min and sigma_max.

ComfyUI's KSampler hands dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2 the schedule of ``steps + 1``
without its second-to-last sigma (``get_sigmas(..., sampler=name)`` does the same). The arithmetic is
ComfyUI's, float32 included, so the values are ComfyUI's bit for bit. "normal" agrees with diffusers'
FlowMatchEulerDiscreteScheduler(shift=3), which computes in float64, to float32 rounding.
"""

from __future__ import annotations

import math

import torch

from sd3pose.errors import InvalidRequestError
from sd3pose.sampling.names import resolve_sampler_name, resolve_scheduler_name

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT = 3.0
KARRAS_RHO = 7.0


def flow_sigma(t: torch.Tensor | float, shift: float = DEFAULT_SHIFT) -> torch.Tensor | float:
    """SD3's shifted flow sigma for normalised time t in (0, 1] (a tensor, or a float for a float)."""
    return shift * t / (1 + (shift - 1) * t)


def sigma_table(shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """The model's 1000 training sigmas, ascending: sigma(k/1000) for k = 1..1000.

    Built in float32 as ComfyUI and diffusers build it, so sigma_min is bit-identical to theirs.
    """
    k = torch.arange(1, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32)
    return flow_sigma(k / NUM_TRAIN_TIMESTEPS, shift).double()


def _normal(steps: int, shift: float, table: torch.Tensor, sgm: bool) -> torch.Tensor:
    # Linear in timestep (1000*sigma, what SD3 is conditioned on) from sigma_max to sigma_min, in float32.
    ends = table[[-1, 0]].float() * NUM_TRAIN_TIMESTEPS
    timesteps = torch.linspace(float(ends[0]), float(ends[1]), steps + 1 if sgm else steps, dtype=torch.float32)
    return flow_sigma((timesteps[:-1] if sgm else timesteps) / NUM_TRAIN_TIMESTEPS, shift)


def _simple(steps: int, table: torch.Tensor) -> torch.Tensor:
    stride = len(table) / steps
    idx = [len(table) - 1 - int(i * stride) for i in range(steps)]
    return table[idx]


def _ddim_uniform(steps: int, table: torch.Tensor) -> torch.Tensor:
    stride = max(len(table) // steps, 1)
    return table[list(range(1, len(table), stride))].flip(0)  # from the second entry up, as DDIM does


def _karras(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    ramp = torch.linspace(0, 1, steps, dtype=torch.float32)
    lo, hi = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    return (hi + ramp * (lo - hi)) ** KARRAS_RHO


def _exponential(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float32).exp()


# ComfyUI's KSampler computes steps + 1 sigmas for these and drops the second-to-last one.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def get_sigmas(scheduler: str, steps: int, *, shift: float = DEFAULT_SHIFT, sampler: str | None = None) -> torch.Tensor:
    """The descending float32 sigmas of ``scheduler`` for ``steps`` steps, ending in 0 (on CPU).

    ``scheduler`` is one of SCHEDULER_NAMES; ``shift`` is the flow shift (3.0 for SD3 Medium). With
    a ``sampler`` name, the sigmas ComfyUI's KSampler hands that sampler (see the module docstring).
    """
    name = resolve_scheduler_name(scheduler)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
        raise InvalidRequestError(
            f"steps must be a whole number from 1 to {NUM_TRAIN_TIMESTEPS} (the model's timesteps), got {steps!r}"
        )
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise InvalidRequestError(f"shift must be a positive number, got {shift!r}")
    if sampler is not None and resolve_sampler_name(sampler) in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = _schedule(name, steps + 1, shift)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return _schedule(name, steps, shift)


def _schedule(name: str, steps: int, shift: float) -> torch.Tensor:
    table = sigma_table(shift)
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    if name == "normal":
        sigmas = _normal(steps, shift, table, sgm=False)
    elif name == "sgm_uniform":
        sigmas = _normal(steps, shift, table, sgm=True)
    elif name == "simple":
        sigmas = _simple(steps, table)
    elif name == "ddim_uniform":
        sigmas = _ddim_uniform(steps, table)
    elif name == "karras":
        sigmas = _karras(steps, sigma_min, sigma_max)
    else:  # exponential
        sigmas = _exponential(steps, sigma_min, sigma_max)
    # In float32 arithmetic where ComfyUI computes in float32 (normal, sgm_uniform, karras, exponential).
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def percent_to_sigma(percent: float, shift: float = DEFAULT_SHIFT) -> float:
    """The sigma at `percent` of the way through sampling, as ComfyUI's flow model sampling maps it.

    0 (or less) is the start, sigma 1; 1 (or more) is the end, sigma 0; in between, the flow sigma of
    the remaining time 1 - percent (in float64, like ComfyUI's Python arithmetic).
    """
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    return float(flow_sigma(1.0 - percent, shift))
