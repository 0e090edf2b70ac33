"""DPM-Solver with its own step grid: dpm_fast (DPM-Solver-fast) and dpm_adaptive (DPM-Solver-23).

Form: the noise-prediction DPM-Solver-1/2/3 of Lu et al. (2022) for general (alpha, sigma) in
lambda = log(alpha/sigma), which is k-diffusion's DPMSolver through the exact change of variables.
These eps-form updates are singular at lambda = -inf (sigma = 1) and at sigma = 0, so:

* a schedule starting at sigma = 1 begins with the exact DDIM step to sigmas[1] (the limit of
  every DPM-Solver step from lambda = -inf), using one evaluation;
* the solver runs between sigmas[1] (or sigmas[0] < 1) and sigmas[-2], like k-diffusion's
  sigma_min/sigma_max range;
* the last evaluation, at sigmas[-2], lands exactly on sigma = 0 (x = D), where k-diffusion would
  return the still slightly noisy state at sigma_min.

dpm_fast spends exactly len(sigmas) - 1 evaluations: the DDIM step, then DPM-Solver-fast's order
pattern (3, 3, ..., then 2,1 or the remainder) on steps evenly spaced in lambda, then the final D.
dpm_adaptive ignores the step count: it picks its own steps with an embedded order-2/order-3 pair
(rtol 0.01, atol 0.001 in flow units, initial h 0.05, safety 0.9; k-diffusion's rtol 0.05 /
atol 0.0078 were tuned for VE-scaled states and leave ~0.2 errors on unit-scale flow latents) and runs each batch
row separately so that a row's steps never depend on the other rows. Its callback is called per
accepted step with ``total`` an estimate. A server cannot let one request run unbounded model passes,
so each row gets a budget of ``max(ADAPTIVE_MIN_ATTEMPTS, ADAPTIVE_ATTEMPTS_PER_STEP * steps)``
attempts (3 model evaluations each); when it runs out, the rest of the range is covered by
``steps`` fixed order-2 steps, so the image is complete but less accurate (and a warning is logged).
"""

from __future__ import annotations

import logging
import math

import torch

from sd3pose.sampling.core import Run, eps_hat, half_log_snr

log = logging.getLogger(__name__)

RTOL, ATOL, H_INIT, SAFETY = 0.01, 0.001, 0.05, 0.9
ADAPTIVE_MIN_ATTEMPTS, ADAPTIVE_ATTEMPTS_PER_STEP = 16, 4


def _sigma(lam: float) -> float:
    return 1.0 / (1.0 + math.exp(lam))


def _alpha(lam: float) -> float:
    return 1.0 / (1.0 + math.exp(-lam))


class _Eps:
    """eps(x, lambda) from the run's denoiser."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __call__(self, x: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = _sigma(lam)
        denoised = self.run.denoise(x, sigma)
        return eps_hat(x, denoised, sigma), denoised


def _step1(x: torch.Tensor, ls: float, lt: float, e: torch.Tensor) -> torch.Tensor:
    h = lt - ls
    return (_alpha(lt) / _alpha(ls)) * x - _sigma(lt) * math.expm1(h) * e


def _step2(eps: _Eps, x, ls, lt, e, r1=0.5, cache=None):
    h = lt - ls
    s1 = ls + r1 * h
    if cache is None:
        u1 = _step1(x, ls, s1, e)
        cache = eps(u1, s1)[0]
    e1 = cache
    x_t = _step1(x, ls, lt, e) - _sigma(lt) / (2 * r1) * math.expm1(h) * (e1 - e)
    return x_t, e1


def _step3(eps: _Eps, x, ls, lt, e, r1=1 / 3, r2=2 / 3, e1=None):
    h = lt - ls
    s1, s2 = ls + r1 * h, ls + r2 * h
    if e1 is None:
        e1 = eps(_step1(x, ls, s1, e), s1)[0]
    u2 = (
        (_alpha(s2) / _alpha(ls)) * x
        - _sigma(s2) * math.expm1(r2 * h) * e
        - _sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1.0) * (e1 - e)
    )
    e2 = eps(u2, s2)[0]
    return _step1(x, ls, lt, e) - (_sigma(lt) / r2) * (math.expm1(h) / h - 1.0) * (e2 - e)


def _range(run: Run, x: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """Take the exact DDIM step from sigma = 1 if needed; returns (x, start index, its D)."""
    s = run.sigmas
    if s[0] < 1.0 or run.total < 2:
        return x, 0, None
    denoised = run.denoise(x, s[0])
    x = (1.0 - s[1]) * denoised + s[1] * x  # eps_hat = x at sigma = 1
    return x, 1, denoised


def dpm_fast(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    if run.total == 1:
        denoised = run.denoise(x, s[0])
        run.step_done(0, denoised, denoised)
        return denoised
    x, start, first = _range(run, x)
    to_zero = s[-1] == 0.0  # else the solver ends on sigmas[-1] itself
    nfe = run.total - start - (1 if to_zero else 0)
    orders = [] if nfe <= 0 else ([3] * (nfe // 3 - 1) + [2, 1] if nfe % 3 == 0 else [3] * (nfe // 3) + [nfe % 3])
    total = len(orders) + start + (1 if to_zero else 0)
    if first is not None:
        run.step_done(0, x, first, total=total, sigma=s[0], sigma_next=s[1])
    eps = _Eps(run)
    l0, l1 = half_log_snr(s[start]), half_log_snr(s[-2] if to_zero else s[-1])
    grid = [l0 + (l1 - l0) * k / len(orders) for k in range(len(orders) + 1)] if orders else [l0]
    for k, order in enumerate(orders):
        ls, lt = grid[k], grid[k + 1]
        e, denoised = eps(x, ls)
        if order == 1:
            x = _step1(x, ls, lt, e)
        elif order == 2:
            x = _step2(eps, x, ls, lt, e)[0]
        else:
            x = _step3(eps, x, ls, lt, e)
        run.step_done(start + k, x, denoised, total=total, sigma=_sigma(ls), sigma_next=_sigma(lt))
    if not to_zero:
        return x
    sigma_last = _sigma(grid[-1]) if orders else s[start]
    denoised = run.denoise(x, sigma_last)
    run.step_done(total - 1, denoised, denoised, total=total, sigma=sigma_last, sigma_next=0.0)
    return denoised


def _adaptive_row(run: Run, x: torch.Tensor, row: int, rows: int) -> torch.Tensor:
    s = run.sigmas
    lam_start = lam_end = 0.0

    def report(xr: torch.Tensor, d: torch.Tensor, sigma: float, sigma_next: float, done: float) -> None:
        # The number of steps is not known in advance: progress is the share of the log-SNR range
        # covered (all rows together), on the requested step count; only the very end reports the last step.
        overall = (row + done) / rows
        i = run.total - 1 if overall >= 1.0 else min(run.total - 2, int(overall * (run.total - 1)))
        run.step_done(max(i, 0), xr, d, total=run.total, sigma=sigma, sigma_next=sigma_next)

    def share(lam_now: float) -> float:
        # Short of the end while the final denoise to 0 is still to come: that step reports the end.
        covered = 0.0 if lam_end <= lam_start else (lam_now - lam_start) / (lam_end - lam_start)
        return min(0.999 if to_zero else 1.0, covered)

    if run.total == 1:
        denoised = run.denoise(x, s[0])
        report(denoised, denoised, s[0], 0.0, 1.0)
        return denoised
    x, start, first = _range(run, x)
    if first is not None:
        report(x, first, s[0], s[1], 0.0)
    eps = _Eps(run)
    to_zero = s[-1] == 0.0
    lam, lam_end = half_log_snr(s[start]), half_log_snr(s[-2] if to_zero else s[-1])
    lam_start = lam
    h, x_prev = H_INIT, x
    budget = max(ADAPTIVE_MIN_ATTEMPTS, ADAPTIVE_ATTEMPTS_PER_STEP * run.total)
    for _ in range(budget):
        if lam_end - lam <= 1e-5:
            break
        h = min(h, lam_end - lam)
        e, denoised = eps(x, lam)
        x_low, e1 = _step2(eps, x, lam, lam + h, e, r1=1 / 3)
        x_high = _step3(eps, x, lam, lam + h, e, e1=e1)
        delta = torch.maximum(torch.full_like(x, ATOL), RTOL * torch.maximum(x_low.abs(), x_prev.abs()))
        err = float(((x_low - x_high) / delta).pow(2).mean().sqrt())
        if err <= 1.0:
            x_prev = x
            x, lam = x_high, lam + h
            report(x, denoised, _sigma(lam - h), _sigma(lam), share(lam))
        h *= min(5.0, max(0.2, SAFETY * (err if err > 0 else 1e-10) ** (-1 / 3)))
    else:
        if lam_end - lam > 1e-5:
            # Out of budget: finish the range on a fixed grid (order 2, as many steps as requested).
            finish = max(2, run.total)
            log.warning("dpm_adaptive used its %d attempts; finishing with %d fixed steps", budget, finish)
            grid = [lam + (lam_end - lam) * j / finish for j in range(finish + 1)]
            for ls, lt in zip(grid[:-1], grid[1:], strict=True):
                e, denoised = eps(x, ls)
                x = _step2(eps, x, ls, lt, e)[0]
                report(x, denoised, _sigma(ls), _sigma(lt), share(lt))
            lam = lam_end
    if not to_zero:
        return x
    sigma_last = _sigma(lam)
    denoised = run.denoise(x, sigma_last)
    report(denoised, denoised, sigma_last, 0.0, 1.0)
    return denoised


def dpm_adaptive(run: Run, x: torch.Tensor) -> torch.Tensor:
    rows = x.shape[0]
    return torch.cat([_adaptive_row(run, x[b : b + 1], b, rows) for b in range(rows)])
