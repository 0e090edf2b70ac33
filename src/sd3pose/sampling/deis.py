"""The step weights of DEIS "tab" (Zhang & Chen 2023) as ComfyUI computes them for the deis sampler.

The flow sigmas are read as EDM sigmas and mapped to the time t of a VP schedule fitted to EDM's
range (sigma 0.002 to 80, t from 1e-3 to 1). On each step the slope dx/dsigma is interpolated by a
polynomial in t through the current and previous points, and its product with dsigma/dt is
integrated over the step -- numerically, with ComfyUI's rule: the sum over 10000 evenly spaced points
from t_i to t_{i+1} (both ends included) times (t_{i+1} - t_i)/10000. That rule is part of the
result (the weights differ from the exact integrals by up to ~2e-5 relative on SD3's schedules), so
it is reproduced as is, in float64 (ComfyUI sums in float32).
"""

from __future__ import annotations

import functools
import math

import numpy as np

EDM_SIGMA_MIN, EDM_SIGMA_MAX, VP_T_MIN = 0.002, 80.0, 1e-3
QUADRATURE_POINTS = 10_000

# The VP schedule whose sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1) spans EDM's range on [1e-3, 1].
_BETA_D = 2 * (math.log(EDM_SIGMA_MIN**2 + 1) / VP_T_MIN - math.log(EDM_SIGMA_MAX**2 + 1)) / (VP_T_MIN - 1)
_BETA_MIN = math.log(EDM_SIGMA_MAX**2 + 1) - 0.5 * _BETA_D


def vp_time(sigma: float) -> float:
    """The VP time t of an EDM sigma (0 at sigma = 0)."""
    return (math.sqrt(_BETA_MIN**2 + 2 * _BETA_D * math.log(sigma**2 + 1)) - _BETA_MIN) / _BETA_D


def _dsigma_dt(t: np.ndarray) -> np.ndarray:
    # alpha(t) = exp(-beta_d t^2/2 - beta_min t); dsigma/dt = -(dlog(alpha)/dt) / (2 sqrt(alpha (1 - alpha))).
    alpha = np.exp(-0.5 * _BETA_D * t * t - _BETA_MIN * t)
    return 0.5 * (_BETA_D * t + _BETA_MIN) / np.sqrt(alpha * (1.0 - alpha))


@functools.lru_cache(maxsize=64)
def _coefficients(sigmas: tuple[float, ...], max_order: int) -> tuple[tuple[float, ...], ...]:
    times = [vp_time(s) for s in sigmas]
    table: list[tuple[float, ...]] = []
    for i in range(len(sigmas) - 1):
        order = min(i + 1, max_order)
        if order == 1 or sigmas[i + 1] <= 0.0:  # first-order steps need no weights
            table.append(())
            continue
        taus = np.linspace(times[i], times[i + 1], QUADRATURE_POINTS)
        weighted = _dsigma_dt(taus) * ((times[i + 1] - times[i]) / QUADRATURE_POINTS)
        nodes = [times[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = np.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis *= (taus - nodes[k]) / (nodes[j] - nodes[k])
            row.append(float(np.sum(weighted * basis)))
        table.append(tuple(row))
    return tuple(table)


def deis_coefficients(sigmas: list[float], max_order: int) -> tuple[tuple[float, ...], ...]:
    """Per step i, the weights of the slopes at sigmas[i], sigmas[i-1], ... (empty on first-order steps)."""
    return _coefficients(tuple(sigmas), max_order)
