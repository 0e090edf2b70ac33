"""Single-step higher-order samplers: heun, heunpp2, dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral and
dpmpp_sde (+ _gpu), each as ComfyUI runs it on SD3's flow (CONST) model sampling.

* heun -- Karras et al.'s Heun on dx/dsigma = (x - D)/sigma, Euler into sigma = 0.
* heunpp2 -- Heun++: a third evaluation one step further, slopes weighted w2 = sigma_{i+1}/(3 sigma_0),
  w3 = sigma_{i+2}/(3 sigma_0), w1 = 1 - w2 - w3; on the step before the last one Heun weighted
  w2 = sigma_{i+1}/(2 sigma_0), w1 = 1 - w2; Euler on the last step. "Last" means the schedule's
  final sigma, whatever its value.
* dpm_2 -- k-diffusion's DPM-Solver-2 taken directly on the flow sigmas: a midpoint at
  sqrt(sigma*sigma'), Euler into sigma = 0. ComfyUI hands it a schedule without its second-to-last
  sigma (see ``schedules.get_sigmas``).
* dpm_2_ancestral, dpmpp_2s_ancestral -- ComfyUI's rectified-flow branches: the deterministic part
  goes to sigma_down = sigma'^2/sigma, then a rescale and fresh noise (``core.flow_ancestral``).
  dpmpp_2s_ancestral's midpoint is the lambda = logit midpoint, or 0.9999 when sigma is exactly 1.
* dpmpp_sde -- DPM-Solver++ SDE in ComfyUI's logit half-log-SNR with alpha = 1 - sigma, starting
  from sigma(t = 1 - 1e-4) instead of 1; its two draws per step come from a Brownian tree.
"""

from __future__ import annotations

import math

import torch

from sd3pose.sampling.core import (
    Run,
    ancestral_split,
    first_sigma_offset,
    flow_ancestral,
    lambda_to_sigma,
    logit_lambda,
    to_d,
)


def heun(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        d = to_d(x, denoised, s[i])
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0.0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, run.denoise(x_2, s[i + 1]), s[i + 1])
            x = x + ((d + d_2) / 2) * dt
        run.step_done(i, x, denoised)
    return x


def heunpp2(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    end = s[-1]
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        d = to_d(x, denoised, s[i])
        dt = s[i + 1] - s[i]
        if s[i + 1] == end:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, run.denoise(x_2, s[i + 1]), s[i + 1])
            if s[i + 2] == end:
                w2 = s[i + 1] / (2 * s[0])
                x = x + (d * (1.0 - w2) + d_2 * w2) * dt
            else:
                x_3 = x_2 + d_2 * (s[i + 2] - s[i + 1])
                d_3 = to_d(x_3, run.denoise(x_3, s[i + 2]), s[i + 2])
                w2, w3 = s[i + 1] / (3 * s[0]), s[i + 2] / (3 * s[0])
                x = x + ((1.0 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
        run.step_done(i, x, denoised)
    return x


def _log_midpoint(a: float, b: float) -> float:
    """exp of the midpoint of log a and log b (k-diffusion's DPM-Solver-2 midpoint)."""
    log_a = math.log(a)
    return math.exp(log_a + 0.5 * (math.log(b) - log_a))


def _dpm_2_to(run: Run, x: torch.Tensor, d: torch.Tensor, sigma: float, target: float) -> torch.Tensor:
    """DPM-Solver-2 from (x, sigma) with slope d to ``target`` > 0: the slope at the log midpoint."""
    mid = _log_midpoint(sigma, target)
    x_2 = x + d * (mid - sigma)
    d_2 = to_d(x_2, run.denoise(x_2, mid), mid)
    return x + d_2 * (target - sigma)


def dpm_2(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        d = to_d(x, denoised, s[i])
        x = x + d * (s[i + 1] - s[i]) if s[i + 1] == 0.0 else _dpm_2_to(run, x, d, s[i], s[i + 1])
        run.step_done(i, x, denoised)
    return x


def dpm_2_ancestral(run: Run, x: torch.Tensor) -> torch.Tensor:
    run.use_gaussian_noise()
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        d = to_d(x, denoised, s[i])
        down, rescale, renoise = flow_ancestral(s[i], s[i + 1]) if s[i + 1] > 0.0 else (0.0, 1.0, 0.0)
        if down == 0.0:
            x = x + d * (down - s[i])
        else:
            x = _dpm_2_to(run, x, d, s[i], down)
            x = rescale * x + renoise * run.noise(s[i], s[i + 1])
        run.step_done(i, x, denoised)
    return x


def dpmpp_2s_ancestral(run: Run, x: torch.Tensor) -> torch.Tensor:
    run.use_gaussian_noise()
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        if s[i + 1] == 0.0:
            x = x + to_d(x, denoised, s[i]) * (0.0 - s[i])
        else:
            down, rescale, renoise = flow_ancestral(s[i], s[i + 1])
            if s[i] == 1.0:
                mid = 0.9999  # ComfyUI's stand-in: the logit midpoint from lambda = -inf is undefined
            else:
                lam = logit_lambda(s[i])
                mid = lambda_to_sigma(lam + 0.5 * (logit_lambda(down) - lam))
            keep = mid / s[i]
            denoised_mid = run.denoise(keep * x + (1.0 - keep) * denoised, mid)
            keep = down / s[i]
            x = keep * x + (1.0 - keep) * denoised_mid
            x = rescale * x + renoise * run.noise(s[i], s[i + 1])
        run.step_done(i, x, denoised)
    return x


def dpmpp_sde(run: Run, x: torch.Tensor, noise_on_device: bool = False) -> torch.Tensor:
    """DPM-Solver++ SDE with ComfyUI's defaults: r = 1/2, eta = 1, s_noise = 1."""
    run.use_brownian_noise(noise_on_device)
    s = first_sigma_offset(run.sigmas, run.shift)
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        if s[i + 1] == 0.0:
            x = denoised
        else:
            lam_s, lam_t = logit_lambda(s[i]), logit_lambda(s[i + 1])
            lam_mid = lam_s + 0.5 * (lam_t - lam_s)
            sigma_mid = lambda_to_sigma(lam_mid)
            alpha_s, alpha_mid, alpha_t = 1.0 - s[i], 1.0 - sigma_mid, 1.0 - s[i + 1]
            # Step 1: to the midpoint, with noise (the split is taken on the VE levels e^-lambda).
            down, up = ancestral_split(math.exp(-lam_s), math.exp(-lam_mid))
            h = -math.log(down) - lam_s
            x_2 = ((alpha_mid / alpha_s) * math.exp(-h)) * x - (alpha_mid * math.expm1(-h)) * denoised
            x_2 = x_2 + (alpha_mid * up) * run.noise(s[i], sigma_mid)
            denoised_2 = run.denoise(x_2, sigma_mid)
            # Step 2: the whole step with the midpoint's prediction (r = 1/2 weighs it fully).
            down, up = ancestral_split(math.exp(-lam_s), math.exp(-lam_t))
            h = -math.log(down) - lam_s
            x = ((alpha_t / alpha_s) * math.exp(-h)) * x - (alpha_t * math.expm1(-h)) * denoised_2
            x = x + (alpha_t * up) * run.noise(s[i], s[i + 1])
        run.step_done(i, x, denoised, sigma=s[i])
    return x


def dpmpp_sde_gpu(run: Run, x: torch.Tensor) -> torch.Tensor:
    return dpmpp_sde(run, x, noise_on_device=True)
