"""Noise schedules (sigma sequences) for SD3's rectified-flow model sampling.

SD3 is trained on 1000 discrete timesteps t = k/1000, k = 1..1000, and samples with the shifted
flow sigma  sigma(t) = shift*t / (1 + (shift-1)*t)  (shift 3.0 for SD3 Medium). That gives the
1000-entry table ``sigma_table(shift)`` with sigma_max = sigma(1) = 1 and sigma_min = sigma(1/1000).

The model is conditioned on timestep = 1000*sigma (what SD3 receives), so "timestep space" below is
``1000*sigma`` and a timestep t maps back to ``sigma(t/1000)`` -- note this is *not* the inverse of
the shift; it is how diffusers' FlowMatchEulerDiscreteScheduler (and the hosted service) build their
default ("normal") schedule, and reproducing it exactly is part of the contract.

Every schedule has ``steps + 1`` strictly descending float32 values ending in 0:

* normal       -- ``steps`` points linear in timestep space from sigma_max to sigma_min, mapped through
                  sigma(); equals diffusers' FlowMatchEulerDiscreteScheduler(shift=3).set_timesteps(steps).
* sgm_uniform  -- the same with ``steps + 1`` points and the last dropped (SGM / SDXL-turbo style).
* simple       -- ``steps`` evenly spaced picks from the 1000-entry table, from the top.
* ddim_uniform -- every floor(1000/steps)-th table entry, starting at the second entry as DDIM does;
                  when that stride would give more than ``steps`` entries, the lowest ones are dropped
                  so the schedule always has exactly ``steps`` steps (ComfyUI keeps them and runs
                  more steps than asked; the request's step count is the contract here).
* karras       -- Karras et al. (2022) rho = 7 spacing between sigma_min and sigma_max.
* exponential  -- log-linear spacing between sigma_min and sigma_max.
"""

from __future__ import annotations

import math

import torch

from sd3pose.errors import InvalidRequestError
from sd3pose.sampling.names import resolve_scheduler_name

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT = 3.0
KARRAS_RHO = 7.0


def flow_sigma(t: torch.Tensor, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """SD3's shifted flow sigma for normalised time t in (0, 1]."""
    return shift * t / (1 + (shift - 1) * t)


def sigma_table(shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """The model's 1000 training sigmas, ascending: sigma(k/1000) for k = 1..1000.

    Built in float32 exactly as diffusers builds it, so sigma_min is bit-identical to the reference.
    """
    k = torch.arange(1, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32)
    return flow_sigma(k / NUM_TRAIN_TIMESTEPS, shift).double()


def _from_timesteps(timesteps: torch.Tensor, shift: float) -> torch.Tensor:
    return flow_sigma(timesteps / NUM_TRAIN_TIMESTEPS, shift)


def _normal(steps: int, shift: float, table: torch.Tensor, sgm: bool) -> torch.Tensor:
    # Timestep of a sigma is 1000*sigma (the value SD3 is conditioned on), as in diffusers.
    start = float(table[-1]) * NUM_TRAIN_TIMESTEPS
    end = float(table[0]) * NUM_TRAIN_TIMESTEPS
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1, dtype=torch.float64)[:-1]
    else:
        timesteps = torch.linspace(start, end, steps, dtype=torch.float64)
    return _from_timesteps(timesteps, shift)


def _simple(steps: int, table: torch.Tensor) -> torch.Tensor:
    stride = len(table) / steps
    idx = [len(table) - 1 - int(i * stride) for i in range(steps)]
    return table[idx]


def _ddim_uniform(steps: int, table: torch.Tensor) -> torch.Tensor:
    stride = max(len(table) // steps, 1)
    idx = list(range(1, len(table), stride))  # ascending, DDIM's "+1" offset
    if len(idx) < steps:  # only at steps = 1000: every entry
        idx = list(range(0, len(table), stride))
    idx = idx[-steps:]  # keep the top of the schedule if the stride gives too many
    return table[idx].flip(0)


def _karras(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    return (hi + ramp * (lo - hi)) ** KARRAS_RHO


def _exponential(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp()


def get_sigmas(scheduler: str, steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """The ``steps + 1`` descending float32 sigmas of ``scheduler``, ending in 0 (on CPU).

    ``scheduler`` is one of SCHEDULER_NAMES; ``shift`` is the flow shift (3.0 for SD3 Medium).
    """
    name = resolve_scheduler_name(scheduler)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
        raise InvalidRequestError(
            f"steps must be a whole number from 1 to {NUM_TRAIN_TIMESTEPS} (the model's timesteps), got {steps!r}"
        )
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise InvalidRequestError(f"shift must be a positive number, got {shift!r}")
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
    # Cast once at the end: float64 arithmetic, like diffusers' numpy path, then float32.
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
