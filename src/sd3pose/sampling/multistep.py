"""Multistep samplers: lms, ipndm, ipndm_v, deis, dpmpp_2m, dpmpp_2m_sde and dpmpp_3m_sde (+ _gpu),
each as ComfyUI runs it on SD3's flow (CONST) model sampling.

* lms -- linear multistep (order 4) on dx/dsigma = (x - D)/sigma in the flow sigma: each weight is
  the integral over [sigma_i, sigma_{i+1}] of a Lagrange basis polynomial through the last sigmas
  (ComfyUI integrates it with scipy's quad, exact for these polynomials). Lands on D at sigma = 0.
* ipndm -- Adams-Bashforth with the fixed weights of even steps (order up to 4) on the same ODE.
* ipndm_v -- the same with iPNDM-v's weights for the actual step sizes (variable-step
  Adams-Bashforth at order 2; its published order-3/4 terms, reproduced as ComfyUI has them, are
  not the exact variable-step integrals). Both land on D at sigma = 0.
* deis -- DEIS "tab" (order 3): the slope as a polynomial in the VP time of an EDM schedule, with
  weights from ComfyUI's 10000-point quadrature (``deis_coefficients``); Euler into sigma = 0.
* dpmpp_2m -- DPM-Solver++(2M) in k-diffusion's variables t = -log(sigma), taken directly on the flow
  sigma (so alpha = 1 throughout); first order on the first step and into sigma = 0.
* dpmpp_2m_sde, dpmpp_3m_sde -- DPM-Solver++(2M/3M) SDE (eta = 1, midpoint) in ComfyUI's logit
  half-log-SNR with alpha = 1 - sigma, from sigma(t = 1 - 1e-4) instead of 1; their noise comes
  from a Brownian tree. They land on D at sigma = 0.

The multistep updates gather their scalar weights first and touch each tensor once (the per-step
overhead is what bench/sampling_overhead.py measures).
"""

from __future__ import annotations

import math

import torch

from sd3pose.sampling.core import Run, first_sigma_offset, logit_lambda, to_d
from sd3pose.sampling.deis import deis_coefficients


def _combine(first: torch.Tensor, first_weight: float, terms: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    out = first * first_weight
    for weight, tensor in terms:
        if weight:
            out.add_(tensor, alpha=weight)
    return out


# Tiny polynomials (degree <= 3) as ascending coefficient lists: plain Python is several times
# faster than numpy's polynomial module at this size, and these run once per step.
def _lagrange(nodes: list[float], j: int) -> list[float]:
    """Coefficients (ascending) of the Lagrange basis polynomial that is 1 at nodes[j], 0 at the others."""
    poly = [1.0]
    for k, node in enumerate(nodes):
        if k != j:
            scale = 1.0 / (nodes[j] - node)
            shifted = [0.0, *poly]  # poly * u
            poly = [(shifted[m] - node * (poly[m] if m < len(poly) else 0.0)) * scale for m in range(len(shifted))]
    return poly


def _integral(poly: list[float], length: float) -> float:
    """Integral of an ascending-coefficient polynomial over [0, length]."""
    total = 0.0
    for m in range(len(poly) - 1, -1, -1):
        total = total * length + poly[m] / (m + 1)
    return total * length


def adams_bashforth_weights(points: list[float], target: float) -> list[float]:
    """Weights of the slopes at ``points`` (newest first) for a step from points[0] to ``target``.

    Each is the integral over [points[0], target] of the Lagrange basis polynomial of that point,
    computed around points[0] for conditioning.
    """
    origin = points[0]
    nodes = [p - origin for p in points]
    return [_integral(_lagrange(nodes, j), target - origin) for j in range(len(nodes))]


def _linear_multistep(run: Run, x: torch.Tensor, order: int) -> torch.Tensor:
    s = run.sigmas
    slopes: list[torch.Tensor] = []  # newest first
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        slopes.insert(0, to_d(x, denoised, s[i]))
        del slopes[order:]
        if s[i + 1] == 0.0:
            x = denoised
        else:
            weights = adams_bashforth_weights([s[i - k] for k in range(len(slopes))], s[i + 1])
            x = _combine(x, 1.0, list(zip(weights, slopes, strict=False)))
        run.step_done(i, x, denoised)
    return x


def lms(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _linear_multistep(run, x, order=4)


def _ipndm_v_terms(h: list[float], slopes: list[torch.Tensor]) -> list[tuple[float, torch.Tensor]]:
    """iPNDM-v's step x += sum(w_k * d_k) for step sizes h = [h_n, h_n-1, ...] and slopes d_n, d_n-1, ...

    Written as differences: d_n + h_n/(2 h_n-1) (d_n - d_n-1) [order 2], plus t1 times a second
    difference [order 3], plus t2 times a third one [order 4], with the published weights t1, t2.
    (The third difference does not vanish on a constant slope unless h_n-1/h_n-2 = h_n-2/h_n-3;
    ComfyUI's weights are used as they are.)
    """
    order = len(slopes)
    w = [1.0] + [0.0] * (order - 1)
    if order >= 2:
        half = h[0] / (2 * h[1])
        w[0] += half
        w[1] -= half
    if order >= 3:
        r1 = h[1] / h[2]
        grow = h[0] * (h[0] + h[1]) / (h[1] * (h[1] + h[2]))
        t1 = (1 - h[0] / (3 * (h[0] + h[1])) * grow) / 2
        w[0] += t1
        w[1] -= (1 + r1) * t1
        w[2] += r1 * t1
    if order >= 4:
        q = h[1] * (h[1] + h[2]) / (h[2] * (h[2] + h[3]))
        r2 = h[2] / h[3]
        span = h[0] + h[1]
        t2 = ((1 - h[0] / (3 * span)) / 2 + (1 - h[0] / (2 * span)) * h[0] / (6 * (span + h[2]))) * (
            h[0] * span * (span + h[2]) / (h[1] * (h[1] + h[2]) * (h[1] + h[2] + h[3]))
        )
        w[0] += t2
        w[1] -= (1 + r1 + q) * t2
        w[2] += (r1 + q * (1 + r2)) * t2
        w[3] -= q * r1 * t2
    return [(h[0] * wk, d) for wk, d in zip(w, slopes, strict=True)]


def ipndm_v(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    slopes: list[torch.Tensor] = []
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        slopes.insert(0, to_d(x, denoised, s[i]))
        del slopes[4:]
        if s[i + 1] == 0.0:
            x = denoised
        else:
            sizes = [s[i + 1 - k] - s[i - k] for k in range(len(slopes))]  # h_n, h_n-1, ... (negative)
            x = _combine(x, 1.0, _ipndm_v_terms(sizes, slopes))
        run.step_done(i, x, denoised)
    return x


# Adams-Bashforth weights of evenly spaced steps, orders 1-4 (newest slope first).
_EVEN_STEP_WEIGHTS = ([1.0], [3 / 2, -1 / 2], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24])


def ipndm(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    slopes: list[torch.Tensor] = []
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        slopes.insert(0, to_d(x, denoised, s[i]))
        del slopes[4:]
        if s[i + 1] == 0.0:
            x = denoised
        else:
            weights = _EVEN_STEP_WEIGHTS[min(i + 1, 4) - 1]
            dt = s[i + 1] - s[i]
            x = _combine(x, 1.0, [(dt * w, d) for w, d in zip(weights, slopes, strict=False)])
        run.step_done(i, x, denoised)
    return x


def deis(run: Run, x: torch.Tensor, max_order: int = 3) -> torch.Tensor:
    s = run.sigmas
    coefficients = deis_coefficients(s, max_order)
    slopes: list[torch.Tensor] = []
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        slopes.insert(0, to_d(x, denoised, s[i]))
        del slopes[max_order:]
        if i == 0 or s[i + 1] <= 0.0:
            x = x + slopes[0] * (s[i + 1] - s[i])
        else:
            x = _combine(x, 1.0, list(zip(coefficients[i], slopes, strict=False)))
        run.step_done(i, x, denoised)
    return x


def dpmpp_2m(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    previous: torch.Tensor | None = None
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        if s[i + 1] == 0.0:
            x = denoised  # t_next = inf: sigma_next/sigma = 0 and -expm1(-h) = 1
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            weight = -math.expm1(-h)
            if previous is None:
                x = _combine(x, s[i + 1] / s[i], [(weight, denoised)])
            else:
                half_over_r = 0.5 * h / (math.log(s[i - 1]) - math.log(s[i]))
                x = _combine(
                    x, s[i + 1] / s[i], [(weight * (1.0 + half_over_r), denoised), (-weight * half_over_r, previous)]
                )
        previous = denoised
        run.step_done(i, x, denoised)
    return x


def _dpmpp_sde_multistep(run: Run, x: torch.Tensor, order: int, noise_on_device: bool) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (order 2, midpoint) or (3M) SDE (order 3), eta = 1, s_noise = 1."""
    run.use_brownian_noise(noise_on_device)
    s = first_sigma_offset(run.sigmas, run.shift)
    history: list[torch.Tensor] = []  # previous predictions, newest first
    steps: list[float] = []  # their h, newest first
    h = math.nan
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        if s[i + 1] == 0.0:
            x = denoised
        else:
            h = logit_lambda(s[i + 1]) - logit_lambda(s[i])
            alpha_t = 1.0 - s[i + 1]
            phi_1 = -math.expm1(-2.0 * h)  # (1 - e^{-h_eta}) with h_eta = 2h
            terms = [(alpha_t * phi_1, denoised)]
            if order == 2 and history:
                w = 0.5 * alpha_t * phi_1 * h / steps[0]
                terms += [(w, denoised), (-w, history[0])]
            elif order == 3 and history:
                phi_2 = math.expm1(-2.0 * h) / (2.0 * h) + 1.0
                r0 = steps[0] / h
                if len(history) >= 2:
                    phi_3 = phi_2 / (2.0 * h) - 0.5
                    r1 = steps[1] / h
                    # phi_2*d1 - phi_3*d2 with d1_0 = (D - D1)/r0, d1_1 = (D1 - D2)/r1,
                    # d1 = d1_0 + (d1_0 - d1_1)*r0/(r0+r1), d2 = (d1_0 - d1_1)/(r0+r1).
                    a = (phi_2 * (1.0 + r0 / (r0 + r1)) - phi_3 / (r0 + r1)) / r0  # weight of D - D1
                    b = (phi_3 / (r0 + r1) - phi_2 * r0 / (r0 + r1)) / r1  # weight of D1 - D2
                    terms += [(alpha_t * a, denoised), (alpha_t * (b - a), history[0]), (-alpha_t * b, history[1])]
                else:
                    w = alpha_t * phi_2 / r0
                    terms += [(w, denoised), (-w, history[0])]
            x = _combine(x, (s[i + 1] / s[i]) * math.exp(-h), terms)
            x.add_(run.noise(s[i], s[i + 1]), alpha=s[i + 1] * math.sqrt(-math.expm1(-2.0 * h)))
        history.insert(0, denoised)
        steps.insert(0, h)
        del history[2:], steps[2:]
        run.step_done(i, x, denoised, sigma=s[i])
    return x


def dpmpp_2m_sde(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _dpmpp_sde_multistep(run, x, order=2, noise_on_device=False)


def dpmpp_2m_sde_gpu(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _dpmpp_sde_multistep(run, x, order=2, noise_on_device=True)


def dpmpp_3m_sde(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _dpmpp_sde_multistep(run, x, order=3, noise_on_device=False)


def dpmpp_3m_sde_gpu(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _dpmpp_sde_multistep(run, x, order=3, noise_on_device=True)
