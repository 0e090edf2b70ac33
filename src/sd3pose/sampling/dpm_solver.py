"""dpm_fast (DPM-Solver-fast) and dpm_adaptive (DPM-Solver-23), as ComfyUI runs them on SD3.

ComfyUI calls k-diffusion's DPMSolver on the flow sigmas directly: noise prediction
eps = (x - D)/sigma, time t = -log(sigma), sigma(t) = e^-t, from sigma_max = sigmas[0] to sigma_min =
the last sigma, or the one before it when the last is 0. Both return the state *at sigma_min*: on a
schedule ending in 0 the result keeps sigma_min's share of noise, as ComfyUI's does.

* dpm_fast spends len(sigmas) - 1 model evaluations on steps evenly spaced in t, third order except
  for the last (orders 3, ..., 3, then 2,1 or the remainder).
* dpm_adaptive picks its own steps: an embedded order-2/order-3 pair, error norm over the whole batch
  with rtol 0.05, atol 0.0078, first step 0.05 in t, accepted when the step factor is at least 0.81,
  integral control (factor (1/error)^(1/3), limited by 1 + atan(f - 1)) -- k-diffusion's defaults,
  which ComfyUI uses. ComfyUI lets it run as long as it needs; a server cannot, so each run gets
  ``max(ADAPTIVE_MIN_ATTEMPTS, ADAPTIVE_ATTEMPTS_PER_STEP * steps)`` attempts (3 model evaluations
  each), which ComfyUI's runs stay well inside (bench/samplers.py prints the counts); when they run
  out, the rest of the range is covered by ``steps`` fixed second-order steps (and a warning is logged).

When a caller passes a noise_sampler, it is called where ComfyUI calls its own after every step
(with eta = 0 the draw is multiplied by 0), so the draws of a shared sequence stay aligned.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from sd3pose.sampling.core import Run

log = logging.getLogger(__name__)

RTOL, ATOL, H_INIT, ACCEPT_SAFETY, PID_EPS = 0.05, 0.0078, 0.05, 0.81, 1e-8
ADAPTIVE_MIN_ATTEMPTS, ADAPTIVE_ATTEMPTS_PER_STEP = 100, 10


def _sigma(t: float) -> float:
    return math.exp(-t)


class _Solver:
    """DPM-Solver-1/2/3 steps in t = -log(sigma) with the run's denoiser as a noise predictor."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def eps(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = _sigma(t)
        denoised = self.run.denoise(x, sigma)
        return (x - denoised) / sigma, denoised

    @staticmethod
    def first_order(x: torch.Tensor, t: float, t_next: float, eps: torch.Tensor) -> torch.Tensor:
        return x - (_sigma(t_next) * math.expm1(t_next - t)) * eps

    def second_order(
        self, x: torch.Tensor, t: float, t_next: float, eps: torch.Tensor, r1: float = 0.5
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step, and the noise prediction at t + r1*h (reused by the third-order step)."""
        h = t_next - t
        s1 = t + r1 * h
        eps_1 = self.eps(x - (_sigma(s1) * math.expm1(r1 * h)) * eps, s1)[0]
        return self.first_order(x, t, t_next, eps) - (_sigma(t_next) / (2 * r1) * math.expm1(h)) * (eps_1 - eps), eps_1

    def third_order(
        self, x: torch.Tensor, t: float, t_next: float, eps: torch.Tensor, eps_1: torch.Tensor | None = None
    ) -> torch.Tensor:
        r1, r2 = 1 / 3, 2 / 3
        h = t_next - t
        s1, s2 = t + r1 * h, t + r2 * h
        if eps_1 is None:
            eps_1 = self.eps(x - (_sigma(s1) * math.expm1(r1 * h)) * eps, s1)[0]
        phi = math.expm1(r2 * h)
        u2 = x - (_sigma(s2) * phi) * eps - (_sigma(s2) * (r2 / r1) * (phi / (r2 * h) - 1)) * (eps_1 - eps)
        eps_2 = self.eps(u2, s2)[0]
        return self.first_order(x, t, t_next, eps) - (_sigma(t_next) / r2 * (math.expm1(h) / h - 1)) * (eps_2 - eps)


def _range(sigmas: list[float]) -> tuple[float, float]:
    """(t_start, t_end): from sigmas[0] to the last sigma, or the one before it when the last is 0."""
    sigma_min = sigmas[-1] if sigmas[-1] != 0.0 else sigmas[-2]
    return -math.log(sigmas[0]), -math.log(sigma_min)


def dpm_fast(run: Run, x: torch.Tensor) -> torch.Tensor:
    t_start, t_end = _range(run.sigmas)
    evals = run.total
    m = evals // 3 + 1
    orders = [3] * (m - 2) + [2, 1] if evals % 3 == 0 else [3] * (m - 1) + [evals % 3]
    grid = np.linspace(t_start, t_end, m + 1).tolist()
    solver = _Solver(run)
    for i, order in enumerate(orders):
        t, t_next = grid[i], grid[i + 1]
        eps, denoised = solver.eps(x, t)
        if order == 1:
            x = solver.first_order(x, t, t_next, eps)
        elif order == 2:
            x = solver.second_order(x, t, t_next, eps)[0]
        else:
            x = solver.third_order(x, t, t_next, eps)
        run.unused_draw(_sigma(t), _sigma(t_next))
        run.step_done(i, x, denoised, total=len(orders), sigma=_sigma(t), sigma_next=_sigma(t_next))
    return x


def dpm_adaptive(run: Run, x: torch.Tensor) -> torch.Tensor:
    t_start, t_end = _range(run.sigmas)
    forward = t_end > t_start
    solver = _Solver(run)
    h = H_INIT if forward else -H_INIT
    s, x_prev = t_start, x
    budget = max(ADAPTIVE_MIN_ATTEMPTS, ADAPTIVE_ATTEMPTS_PER_STEP * run.total)

    def unfinished(s: float) -> bool:
        return s < t_end - 1e-5 if forward else s > t_end + 1e-5

    reported_end = False

    def report(x: torch.Tensor, denoised: torch.Tensor, s: float, t: float) -> None:
        # The number of steps is not known in advance: progress is the share of the t range covered,
        # on the requested step count, and only the very end reports the last step.
        nonlocal reported_end
        reported_end = reported_end or not unfinished(t)
        if unfinished(t) and run.total < 2:
            return
        covered = 1.0 if t_end == t_start else (t - t_start) / (t_end - t_start)
        i = run.total - 1 if not unfinished(t) else min(run.total - 2, int(covered * (run.total - 1)))
        run.step_done(max(i, 0), x, denoised, sigma=_sigma(s), sigma_next=_sigma(t))

    attempts = 0
    while unfinished(s) and attempts < budget:
        attempts += 1
        t = min(t_end, s + h) if forward else max(t_end, s + h)
        eps, denoised = solver.eps(x, s)
        x_low, eps_1 = solver.second_order(x, s, t, eps, r1=1 / 3)
        x_high = solver.third_order(x, s, t, eps, eps_1)
        delta = torch.maximum(torch.full_like(x, ATOL), RTOL * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.vector_norm((x_low - x_high) / delta)) / math.sqrt(x.numel())
        # k-diffusion's PID controller with its defaults (integral only, order 3).
        factor = (1.0 / (error + PID_EPS)) ** (1 / 3)
        factor = 1.0 + math.atan(factor - 1.0)
        if factor >= ACCEPT_SAFETY:
            x_prev, x = x_low, x_high
            run.unused_draw(_sigma(s), _sigma(t))
            report(x, denoised, s, t)
            s = t
        h *= factor
    if unfinished(s):
        finish = max(2, run.total)
        log.warning("dpm_adaptive used its %d attempts; finishing with %d fixed second-order steps", budget, finish)
        grid = np.linspace(s, t_end, finish + 1).tolist()
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            eps, denoised = solver.eps(x, t)
            x = solver.second_order(x, t, t_next, eps)[0]
            report(x, denoised, t, t_next)
    if not reported_end:  # nothing to integrate (sigma_min = sigma_max): still report the run's end
        run.step_done(run.total - 1, x, x, sigma=_sigma(s), sigma_next=_sigma(t_end))
    return x
