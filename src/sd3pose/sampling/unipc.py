"""uni_pc and uni_pc_bh2: UniPC (Zhao et al. 2023), multistep order 3, as ComfyUI runs it on SD3.

ComfyUI reads the flow sigmas as VE sigmas and runs UniPC's data-prediction form on the VP-scaled
state y = x/sqrt(1 + sigma^2) with alpha = 1/sqrt(1 + sigma^2), std = sigma/sqrt(1 + sigma^2) and
lambda = -log(sigma). Its rules, reproduced here:

* A final sigma of 0 is replaced by 0.001: the run ends at 0.001, returns y/alpha(0.001), and the
  CONST inverse noise scaling then divides by 1 - 0.001 (``sample`` applies it with the sigmas as
  the sampler leaves them). ComfyUI also drops the schedule's second-to-last sigma for these two
  samplers (``schedules.get_sigmas(..., sampler=...)``).
* The order is min(3, len(sigmas) - 2): one step does nothing but evaluate the model, two steps are
  first order. The first evaluation only fills the history; each later step is a predictor to the
  next sigma followed by the corrector with the model evaluated there (that evaluation is also the
  next step's history), except the final step into the last sigma, which is predictor only. The
  order lowers on the last steps (min(order, steps + 1 - step)).
* B(h) = -h (bh1) or e^-h - 1 (bh2); the order-2 predictor and order-1 corrector use rho = 1/2.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sd3pose.sampling.core import Run

FINAL_SIGMA = 0.001  # ComfyUI's stand-in for a final sigma of 0


def _alpha(sigma: float) -> float:
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


class _UniPC:
    def __init__(self, run: Run, times: list[float], bh2: bool) -> None:
        self.run, self.times, self.bh2 = run, times, bh2
        self.history: list[tuple[float, torch.Tensor]] = []  # (sigma, data prediction), oldest first

    def predict(self, y: torch.Tensor, sigma: float) -> torch.Tensor:
        """The data prediction at a VP-scaled state: the model's x0 at x = y*sqrt(1 + sigma^2)."""
        return self.run.denoise(y / _alpha(sigma), sigma)

    def update(
        self, y: torch.Tensor, sigma_t: float, order: int, corrector: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """UniP to sigma_t at ``order`` from the history, then UniC with the model there if ``corrector``."""
        sigma_0, m0 = self.history[-1]
        h = math.log(sigma_0) - math.log(sigma_t)  # lambda_t - lambda_0
        hh = -h
        ratios, previous = [], []
        for k in range(1, order):
            sigma_k, m_k = self.history[-(k + 1)]
            ratios.append((math.log(sigma_0) - math.log(sigma_k)) / h)
            previous.append(m_k)
        h_phi_1 = math.expm1(hh)
        b_h = math.expm1(hh) if self.bh2 else hh
        # UniPC's right-hand side b and matrix R (rows: the powers 0..order-1 of the ratios and 1).
        b = []
        h_phi_k, factorial = h_phi_1 / hh - 1.0, 1.0
        for i in range(1, order + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        nodes = np.array([*ratios, 1.0])
        matrix = np.stack([nodes**p for p in range(order)])
        alpha_t = _alpha(sigma_t)
        scale = alpha_t * b_h
        # Both start from (std_t/std_0) y - alpha_t h_phi_1 m0 and subtract alpha_t B(h) sum_k rho_k (m_k - m0)/r_k.
        std_ratio = (sigma_t * _alpha(sigma_t)) / (sigma_0 * _alpha(sigma_0))
        predicted = y * std_ratio
        predicted.add_(m0, alpha=-alpha_t * h_phi_1)
        if previous:
            rhos_p = [0.5] if order == 2 else list(np.linalg.solve(matrix[:-1, :-1], np.array(b[:-1])))
            for rho, r, m_k in zip(rhos_p, ratios, previous, strict=True):
                weight = -scale * float(rho) / r
                predicted.add_(m_k, alpha=weight).add_(m0, alpha=-weight)
        if not corrector:
            return predicted, None
        model_t = self.predict(predicted, sigma_t)
        rhos_c = [0.5] if order == 1 else list(np.linalg.solve(matrix, np.array(b)))
        corrected = y * std_ratio
        corrected.add_(m0, alpha=-alpha_t * h_phi_1)
        for rho, r, m_k in zip(rhos_c[:-1], ratios, previous, strict=True):
            weight = -scale * float(rho) / r
            corrected.add_(m_k, alpha=weight).add_(m0, alpha=-weight)
        weight = -scale * float(rhos_c[-1])
        corrected.add_(model_t, alpha=weight).add_(m0, alpha=-weight)
        return corrected, model_t


def _sample(run: Run, x: torch.Tensor, bh2: bool) -> torch.Tensor:
    times = list(run.sigmas)
    if times[-1] == 0.0:
        times[-1] = FINAL_SIGMA
    steps = len(times) - 1
    order = min(3, len(times) - 2)
    solver = _UniPC(run, times, bh2)
    y = x * _alpha(times[0])
    reached = 0  # index of the sigma the state is at
    for index in range(steps):
        if index == 0:
            m = solver.predict(y, times[0])
            solver.history = [(times[0], m)]
        elif index < order:  # warm-up at lower order, with the corrector
            y, m = solver.update(y, times[index], index, corrector=True)
            solver.history.append((times[index], m))
            reached = index
        else:
            for step in (index, steps) if index == steps - 1 else (index,):
                corrector = step != steps
                y, m = solver.update(y, times[step], min(order, steps + 1 - step), corrector)
                if m is not None:
                    solver.history = [*solver.history[1:], (times[step], m)]
                reached = step
        last = solver.history[-1][1]
        run.step_done(
            index,
            y / _alpha(times[reached]),
            last,
            sigma=times[max(reached - 1, 0)],
            sigma_next=times[reached],
        )
    return y / _alpha(times[-1])


def uni_pc(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _sample(run, x, bh2=False)


def uni_pc_bh2(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _sample(run, x, bh2=True)
