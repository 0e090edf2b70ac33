"""Shared machinery of the samplers: the denoiser protocol, seeded noise, and the per-run context.

Flow notation used by every sampler module: x_sigma = alpha*x0 + sigma*eps with alpha = 1 - sigma.
Given a data prediction D = x0_hat, the implied noise prediction is eps_hat = (x - alpha*D)/sigma and
the flow velocity dx/dsigma is v = (x - D)/sigma; both stay finite at sigma = 1 (eps_hat = x there).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from sd3pose.errors import InvalidRequestError

log = logging.getLogger(__name__)

Seed = int | Sequence[int] | None
Callback = Callable[[dict[str, Any]], None]


@runtime_checkable
class Denoiser(Protocol):
    """The model as the samplers see it: a data (x0) prediction at noise level sigma.

    ``denoiser(x, sigma)`` returns x0_hat with the shape of ``x`` -- the guided prediction when
    classifier-free guidance is on. ``sigma`` is a 0-dim tensor on ``x.device`` (float32, or float64
    when the sampler state is float64). The model sees x_sigma = (1 - sigma)*x0 + sigma*eps.

    The CFG++ samplers (``euler_pp``, ``euler_ancestral_pp``) call
    ``denoiser(x, sigma, return_uncond=True)`` and need the tuple ``(x0_guided, x0_uncond)``; a
    denoiser without guidance returns the same tensor twice. Other samplers never pass the keyword,
    so a plain ``lambda x, sigma: ...`` is enough for them.
    """

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, *, return_uncond: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def row_seeds(seed: Seed, batch: int) -> list[int] | None:
    """The seed of each batch row: ``seed + i`` for an int, the sequence itself, or None."""
    if seed is None:
        return None
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed) + i for i in range(batch)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise InvalidRequestError(
            f"got {len(seeds)} seeds for a batch of {batch}; pass one seed per sample or a single int"
        )
    return seeds


def _stream_seed(seed: int) -> int:
    # The initial latent of a row is randn(generator seeded with `seed`); the sampler's own noise
    # must be a *different* stream, or the first ancestral noise would equal the initial noise.
    state = np.random.SeedSequence([seed % 2**64, 0x5D3]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


class NoiseSource:
    """Per-row seeded Gaussian noise, so a row's result never depends on the rest of its batch.

    Non-_gpu samplers draw on the CPU in float32 and move the noise to x's device (the same result on
    every device); ``_gpu`` variants draw on x's device (faster, device-dependent numbers).
    """

    def __init__(self, seed: Seed, like: torch.Tensor, on_device: bool = False) -> None:
        self.shape = tuple(like.shape)
        self.device, self.dtype = like.device, like.dtype
        self.gen_device = like.device if on_device else torch.device("cpu")
        seeds = row_seeds(seed, self.shape[0])
        self.generators = (
            None if seeds is None else [torch.Generator(self.gen_device).manual_seed(_stream_seed(s)) for s in seeds]
        )

    def __call__(self) -> torch.Tensor:
        if self.generators is None:
            z = torch.randn(self.shape, device=self.gen_device, dtype=torch.float32)
        else:
            z = torch.stack(
                [
                    torch.randn(self.shape[1:], generator=g, device=self.gen_device, dtype=torch.float32)
                    for g in self.generators
                ]
            )
        return z.to(self.device, self.dtype)


class Run:
    """One sampling run: calls the denoiser with the protocol's sigma tensors, reports steps."""

    def __init__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        sigmas: Sequence[float],
        seed: Seed,
        callback: Callback | None,
        noise_on_device: bool,
    ) -> None:
        self.denoiser = denoiser
        self.dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.device = x.device
        self.sigmas = [float(s) for s in sigmas]
        self.total = len(self.sigmas) - 1
        self.callback = callback
        self._seed, self._noise_on_device = seed, noise_on_device
        self._noise: NoiseSource | None = None
        self._like = x
        self.evals = 0

    def sigma_tensor(self, sigma: float) -> torch.Tensor:
        # Filled on x's device (the Denoiser contract), without a blocking host-to-device copy.
        return torch.full((), sigma, dtype=self.dtype, device=self.device)

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """x0 prediction at ``sigma`` (guided when CFG is on), in the working dtype."""
        self.evals += 1
        return self.denoiser(x, self.sigma_tensor(sigma)).to(self.dtype)

    def denoise_pp(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided, unconditional) x0 predictions, for the CFG++ samplers."""
        self.evals += 1
        out = self.denoiser(x, self.sigma_tensor(sigma), return_uncond=True)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "a CFG++ sampler needs denoiser(x, sigma, return_uncond=True) to return "
                "(x0_guided, x0_uncond); see sd3pose.sampling.Denoiser"
            )
        return out[0].to(self.dtype), out[1].to(self.dtype)

    def noise(self) -> torch.Tensor:
        """A fresh standard-normal tensor shaped like x, from the run's per-row seeded streams."""
        if self._noise is None:
            like = self._like.to(self.dtype)
            self._noise = NoiseSource(self._seed, like, on_device=self._noise_on_device)
        return self._noise()

    def step_done(
        self,
        i: int,
        x: torch.Tensor,
        denoised: torch.Tensor,
        *,
        total: int | None = None,
        sigma: float | None = None,
        sigma_next: float | None = None,
    ) -> None:
        """Report a completed step: x is the new state at sigmas[i+1]; denoised was predicted at sigmas[i].

        Samplers with their own step grid (dpm_fast, dpm_adaptive) pass total/sigma/sigma_next.
        """
        if self.callback is not None:
            self.callback(
                {
                    "i": i,
                    "total": self.total if total is None else total,
                    "x": x,
                    "sigma": self.sigmas[i] if sigma is None else sigma,
                    "sigma_next": self.sigmas[i + 1] if sigma_next is None else sigma_next,
                    "denoised": denoised,
                }
            )


def eps_hat(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """Noise implied by a data prediction: (x - (1-sigma)*D)/sigma (equals x at sigma = 1)."""
    return (x - (1.0 - sigma) * denoised) / sigma


def velocity(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """The flow ODE's dx/dsigma = (x - D)/sigma."""
    return (x - denoised) / sigma


def half_log_snr(sigma: float) -> float:
    """lambda = log(alpha/sigma) = -log(sigma_ve); -inf at sigma = 1, +inf at sigma = 0."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log1p(-sigma) - math.log(sigma)


def sigma_ve(sigma: float) -> float:
    """The variance-exploding sigma of the same noise level, sigma/(1-sigma) (inf at sigma = 1)."""
    return math.inf if sigma >= 1.0 else sigma / (1.0 - sigma)


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion's ancestral split in VE units, (sigma_down_ve, sigma_up_ve), exact at sigma = 1.

    Going from sigma to sigma_next, a deterministic step to sigma_down followed by fresh noise of
    scale sigma_up lands on the same marginal; eta = 1 is the DDPM posterior.
    """
    if sigma_next <= 0.0:
        return 0.0, 0.0
    sn = sigma_ve(sigma_next)
    ratio = (sigma_next / (1.0 - sigma_next)) * ((1.0 - sigma) / sigma)  # sn/s, 0 at sigma = 1
    up = min(sn, eta * sn * math.sqrt(max(0.0, 1.0 - ratio * ratio)))
    down = math.sqrt(max(0.0, sn * sn - up * up))
    return down, up
