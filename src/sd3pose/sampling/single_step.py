"""Single-step higher-order samplers: heun, heunpp2, dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral,
dpmpp_sde (+ _gpu), and lcm.

Forms (flow notation of ``core``; VE quantities are s = sigma/(1-sigma), x_ve = x/(1-sigma)):
* heun -- native flow Heun on dx/dsigma = v with an Euler last step; identical to diffusers'
  FlowMatchHeunDiscreteScheduler (2 evaluations per step, 1 on the step to 0).
* heunpp2 -- the Heun++ weighting natively in flow sigma: a third evaluation one step further and the
  slopes averaged with weights w2 = sigma_{i+1}/(2 sigma_0), w3 = sigma_{i+2}/(2 sigma_0),
  w1 = 1 - w2 - w3; Heun on the second-to-last step and Euler on the last.
* dpm_2, dpm_2_ancestral -- k-diffusion's DPM-Solver-2 (midpoint in log s) through the change of
  variables, written with eps_hat so it is finite everywhere. From sigma = 1 (s = inf) the midpoint
  is at s = inf too and the step's limit is the first-order DDIM step, taken with one evaluation.
* dpmpp_2s_ancestral, dpmpp_sde -- k-diffusion's DPM-Solver++(2S) (midpoint in lambda = -log s, data
  prediction), ancestral / SDE noise with eta = 1; from sigma = 1 the first-order limit (an ancestral
  DDPM step) is taken. dpmpp_sde's two noise draws of a step are increments of one Brownian path in
  s (k-diffusion uses a Brownian tree; our per-step construction has the same joint law).
* lcm -- latent-consistency sampling: x' = (1-sigma')*D + sigma'*z (fresh noise each step).
"""

from __future__ import annotations

import math

import torch

from sd3pose.sampling.core import Run, ancestral_step, eps_hat, sigma_ve, velocity


def heun(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        d = velocity(x, denoised, s[i])
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0.0:
            x = x + dt * d
        else:
            x_2 = x + dt * d
            d_2 = velocity(x_2, run.denoise(x_2, s[i + 1]), s[i + 1])
            x = x + dt * 0.5 * (d + d_2)
        run.step_done(i, x, denoised)
    return x


def heunpp2(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        d = velocity(x, denoised, s[i])
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0.0:
            x = x + dt * d
        else:
            x_2 = x + dt * d
            d_2 = velocity(x_2, run.denoise(x_2, s[i + 1]), s[i + 1])
            if i + 2 >= len(s) or s[i + 2] == 0.0:
                x = x + dt * 0.5 * (d + d_2)
            else:
                x_3 = x_2 + (s[i + 2] - s[i + 1]) * d_2
                d_3 = velocity(x_3, run.denoise(x_3, s[i + 2]), s[i + 2])
                w = 2.0 * s[0]
                w2, w3 = s[i + 1] / w, s[i + 2] / w
                x = x + dt * ((1.0 - w2 - w3) * d + w2 * d_2 + w3 * d_3)
        run.step_done(i, x, denoised)
    return x


def _flow_at(x_ve: torch.Tensor, s_ve: float) -> tuple[torch.Tensor, float]:
    """VE state -> (flow state, flow sigma)."""
    sigma = s_ve / (1.0 + s_ve)
    return (1.0 - sigma) * x_ve, sigma


def _dpm2_to(run: Run, x: torch.Tensor, sigma: float, denoised: torch.Tensor, target_ve: float) -> torch.Tensor:
    """One DPM-Solver-2 step in VE units from flow (x, sigma) to VE level ``target_ve``; returns x_ve."""
    eps = eps_hat(x, denoised, sigma)
    if target_ve == 0.0 or sigma >= 1.0:  # to 0, or the limit from s = inf: first order (DDIM)
        return denoised + target_ve * eps
    s = sigma_ve(sigma)
    s_mid = math.sqrt(s * target_ve)
    x_mid, sigma_mid = _flow_at(denoised + s_mid * eps, s_mid)
    eps_mid = eps_hat(x_mid, run.denoise(x_mid, sigma_mid), sigma_mid)
    return x / (1.0 - sigma) + (target_ve - s) * eps_mid


def dpm_2(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        x = (1.0 - s[i + 1]) * _dpm2_to(run, x, s[i], denoised, sigma_ve(s[i + 1]))
        run.step_done(i, x, denoised)
    return x


def dpm_2_ancestral(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        down, up = ancestral_step(s[i], s[i + 1])
        x_ve = _dpm2_to(run, x, s[i], denoised, down)
        if up > 0.0:
            x_ve = x_ve + up * run.noise()
        x = (1.0 - s[i + 1]) * x_ve
        run.step_done(i, x, denoised)
    return x


def _dpmpp_2s_to(run: Run, x: torch.Tensor, sigma: float, denoised: torch.Tensor, target_ve: float) -> torch.Tensor:
    """DPM-Solver++(2S) (r = 1/2) from flow (x, sigma) to VE level ``target_ve``; returns x_ve."""
    eps = eps_hat(x, denoised, sigma)
    if target_ve == 0.0 or sigma >= 1.0:
        return denoised + target_ve * eps
    s = sigma_ve(sigma)
    s_mid = math.sqrt(s * target_ve)  # lambda midpoint
    x_mid, sigma_mid = _flow_at(denoised + s_mid * eps, s_mid)
    d_mid = run.denoise(x_mid, sigma_mid)
    # x_ve' = (t/s) x_ve + (1 - t/s) D_mid, written around eps_hat so it stays finite.
    return d_mid + target_ve * eps + (target_ve / s) * (denoised - d_mid)


def dpmpp_2s_ancestral(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        down, up = ancestral_step(s[i], s[i + 1])
        x_ve = _dpmpp_2s_to(run, x, s[i], denoised, down)
        if up > 0.0:
            x_ve = x_ve + up * run.noise()
        x = (1.0 - s[i + 1]) * x_ve
        run.step_done(i, x, denoised)
    return x


def dpmpp_sde(run: Run, x: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++ SDE, k-diffusion's defaults: r = 1/2, eta = 1, s_noise = 1."""
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        eps = eps_hat(x, denoised, s[i])
        if s[i + 1] == 0.0:
            x = denoised
        elif s[i] >= 1.0:  # limit from s = inf: the ancestral (DDPM) step
            down, up = ancestral_step(s[i], s[i + 1])
            x = (1.0 - s[i + 1]) * (denoised + down * eps + up * run.noise())
        else:
            sv, tv = sigma_ve(s[i]), sigma_ve(s[i + 1])
            mv = math.sqrt(sv * tv)
            # Brownian path in s: increments over [s, s_mid] and [s_mid, t]; z1, z2 normalised.
            g1, g2 = run.noise(), run.noise()
            a, b = sv - mv, mv - tv
            z1, z2 = g1, (math.sqrt(a) * g1 + math.sqrt(b) * g2) / math.sqrt(a + b)
            down1, up1 = ancestral_step(s[i], mv / (1.0 + mv))
            x_mid, sigma_mid = _flow_at(denoised + down1 * eps + up1 * z1, mv)
            d_mid = run.denoise(x_mid, sigma_mid)
            down, up = ancestral_step(s[i], s[i + 1])
            x_ve = d_mid + down * eps + (down / sv) * (denoised - d_mid) + up * z2
            x = (1.0 - s[i + 1]) * x_ve
        run.step_done(i, x, denoised)
    return x


def lcm(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        x = denoised
        if s[i + 1] > 0.0:
            x = (1.0 - s[i + 1]) * denoised + s[i + 1] * run.noise()
        run.step_done(i, x, denoised)
    return x
