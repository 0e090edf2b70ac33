"""First-order samplers: euler, euler_pp, euler_ancestral, euler_ancestral_pp, ddim, ddpm.

Forms (flow notation of ``core``):
* euler -- native flow Euler on dx/dsigma = v; identical to diffusers' FlowMatchEulerDiscreteScheduler.
  (Euler in VE variables through the change of variables gives the same update: it is DDIM.)
* ddim -- the DDIM (eta = 0) update x' = alpha'*D + sigma'*eps_hat, which is algebraically the same
  map as euler for flow; kept as its own name because the hosted API lists both.
* euler_ancestral / ddpm -- k-diffusion's ancestral Euler run through x_ve = x/alpha,
  sigma_ve = sigma/alpha: a step to sigma_down_ve, then fresh noise of sigma_up_ve, back to flow.
  With eta = 1 this is the DDPM posterior q(x_sigma' | x_sigma, x0 = D) (so ``ddpm`` is the same
  update). At sigma = 1 (sigma_ve = inf) the split is taken in its limit: sigma_down = 0,
  sigma_up = sigma'_ve, i.e. x' = alpha'*D + sigma'*z.
* euler_pp / euler_ancestral_pp -- CFG++ (Chung et al. 2024): the data term uses the guided
  prediction and the re-noising direction uses the unconditional one,
  x' = alpha'*(D_g + sigma_down_ve*eps_u [+ sigma_up_ve*z]).
"""

from __future__ import annotations

import torch

from sd3pose.sampling.core import Run, ancestral_step, eps_hat, velocity


def euler(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        x = x + (s[i + 1] - s[i]) * velocity(x, denoised, s[i])
        run.step_done(i, x, denoised)
    return x


def ddim(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        x = (1.0 - s[i + 1]) * denoised + s[i + 1] * eps_hat(x, denoised, s[i])
        run.step_done(i, x, denoised)
    return x


def _ancestral(run: Run, x: torch.Tensor, cfg_pp: bool, eta: float = 1.0) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        if cfg_pp:
            denoised, uncond = run.denoise_pp(x, s[i])
        else:
            denoised = uncond = run.denoise(x, s[i])
        down, up = ancestral_step(s[i], s[i + 1], eta)
        # In VE units: x_ve' = D + sigma_down_ve*eps_hat + sigma_up_ve*z; back to flow with alpha'.
        x_ve = denoised + down * eps_hat(x, uncond, s[i])
        if up > 0.0:
            x_ve = x_ve + up * run.noise()
        x = (1.0 - s[i + 1]) * x_ve
        run.step_done(i, x, denoised)
    return x


def euler_ancestral(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _ancestral(run, x, cfg_pp=False)


def ddpm(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _ancestral(run, x, cfg_pp=False)


def euler_ancestral_pp(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _ancestral(run, x, cfg_pp=True)


def euler_pp(run: Run, x: torch.Tensor) -> torch.Tensor:
    s = run.sigmas
    for i in range(run.total):
        guided, uncond = run.denoise_pp(x, s[i])
        x = (1.0 - s[i + 1]) * guided + s[i + 1] * eps_hat(x, uncond, s[i])
        run.step_done(i, x, guided)
    return x
