"""First-order samplers: euler (and ddim, which ComfyUI runs as euler), euler_pp, euler_ancestral,
euler_ancestral_pp, ddpm and lcm, each as ComfyUI runs it on SD3's flow (CONST) model sampling.

* euler -- x += (x - D)/sigma * (sigma' - sigma) on the flow sigma itself.
* euler_ancestral -- ComfyUI's rectified-flow branch: a step to sigma_down = sigma'^2/sigma, a
  rescale by (1-sigma')/(1-sigma_down), fresh noise to make up the variance; lands on D at sigma' = 0.
* euler_pp, euler_ancestral_pp -- CFG++ with ComfyUI's flow-aware step: alpha = 1 - sigma, the data
  term uses the guided prediction and the noise direction the unconditional one; the ancestral split
  is taken on the VE levels sigma/alpha (infinite at sigma = 1: the whole step becomes noise there).
* ddpm -- ComfyUI's DDPM step, which reads the flow sigma as a VE sigma: the state is scaled by
  1/sqrt(1 + sigma^2) and the DDPM posterior is taken with alpha_bar = 1/(1 + sigma^2). On a flow
  model this is not the flow posterior; it is reproduced because the name promises ComfyUI's result.
* lcm -- x' = (1 - sigma')*D + sigma'*z with fresh noise each step (CONST noise scaling).
"""

from __future__ import annotations

import math

import torch

from sd3pose.sampling.core import Run, ancestral_split, flow_ancestral, to_d


def euler(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        x = x + to_d(x, denoised, s[i]) * (s[i + 1] - s[i])
        run.step_done(i, x, denoised)
    return x


def euler_ancestral(run: Run, x: torch.Tensor) -> torch.Tensor:
    run.use_gaussian_noise()
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        if s[i + 1] == 0.0:
            x = denoised
        else:
            down, rescale, renoise = flow_ancestral(s[i], s[i + 1])
            keep = down / s[i]
            x = keep * x + (1.0 - keep) * denoised
            x = rescale * x + renoise * run.noise(s[i], s[i + 1])
        run.step_done(i, x, denoised)
    return x


def _cfg_pp(run: Run, x: torch.Tensor, eta: float) -> torch.Tensor:
    if eta:
        run.use_gaussian_noise()
    s = run.sigmas
    for i in range(run.total):
        denoised, uncond = run.denoise_pp(x, s[i])
        if s[i + 1] == 0.0:
            x = denoised
        else:
            alpha, alpha_next = 1.0 - s[i], 1.0 - s[i + 1]
            d = to_d(x, alpha * uncond, s[i])  # the unconditional noise direction
            ve_from = math.inf if alpha == 0.0 else s[i] / alpha
            down, up = ancestral_split(ve_from, s[i + 1] / alpha_next, eta)
            x = alpha_next * denoised + (alpha_next * down) * d
            if eta:
                x = x + (alpha_next * up) * run.noise(s[i], s[i + 1])
        run.step_done(i, x, denoised)
    return x


def euler_pp(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _cfg_pp(run, x, eta=0.0)


def euler_ancestral_pp(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _cfg_pp(run, x, eta=1.0)


def ddpm(run: Run, x: torch.Tensor) -> torch.Tensor:
    run.use_gaussian_noise()
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        eps = to_d(x, denoised, s[i])
        alpha_bar, alpha_bar_next = 1.0 / (s[i] ** 2 + 1.0), 1.0 / (s[i + 1] ** 2 + 1.0)
        alpha = alpha_bar / alpha_bar_next
        scaled = x / math.sqrt(1.0 + s[i] ** 2)
        x = math.sqrt(1.0 / alpha) * (scaled - ((1.0 - alpha) / math.sqrt(1.0 - alpha_bar)) * eps)
        if s[i + 1] > 0.0:
            spread = math.sqrt((1.0 - alpha) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar))
            x = x + spread * run.noise(s[i], s[i + 1])
            x = x * math.sqrt(1.0 + s[i + 1] ** 2)
        run.step_done(i, x, denoised)
    return x


def lcm(run: Run, x: torch.Tensor) -> torch.Tensor:
    run.use_gaussian_noise()
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        x = denoised
        if s[i + 1] > 0.0:
            x = s[i + 1] * run.noise(s[i], s[i + 1]) + (1.0 - s[i + 1]) * denoised
        run.step_done(i, x, denoised)
    return x
