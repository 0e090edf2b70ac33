"""Shared machinery of the samplers: the denoiser protocol, the noise draws, and the per-run context.

Every sampler computes what ComfyUI computes for SD3's flow model sampling (CONST: x_sigma =
(1-sigma)*x0 + sigma*eps, shift 3): the same update in the same variables. Scalar coefficients are
computed in float64 (Python floats); tensor maths runs in the state's dtype.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from sd3pose.errors import InvalidRequestError
from sd3pose.sampling.schedules import flow_sigma

log = logging.getLogger(__name__)

Seed = int | Sequence[int] | None
Callback = Callable[[dict[str, Any]], None]
# k-diffusion's convention: noise_sampler(sigma, sigma_next) -> standard normal noise shaped like x.
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class Denoiser(Protocol):
    """The model as the samplers see it: a data (x0) prediction at noise level sigma.

    ``denoiser(x, sigma)`` returns x0_hat with the shape of ``x`` -- the guided prediction when
    classifier-free guidance is on. ``sigma`` is a 0-dim tensor on ``x.device`` (float32, or float64
    when the sampler state is float64). The model sees x_sigma = (1 - sigma)*x0 + sigma*eps.

    The CFG++ samplers (``euler_pp``, ``euler_ancestral_pp``) call
    ``denoiser(x, sigma, return_uncond=True)`` and need the tuple ``(x0_guided, x0_uncond)``; the
    unconditional prediction is the negative prompt's, at every guidance scale including 1 (as
    ComfyUI computes it for these samplers). Other samplers never pass the keyword, so a plain
    ``lambda x, sigma: ...`` is enough for them.
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


class GaussianNoise:
    """Per-row seeded standard-normal draws, as ComfyUI's default noise sampler makes them.

    ComfyUI seeds a generator on x's device with the request's seed, plus 1 on the CPU (where the
    initial latent already drew from the seed itself), and draws in x's dtype; so do we, per row with
    the row's seed: a row's draws never depend on the rest of its batch, and a one-image request gets
    ComfyUI's very numbers on the same device (a CUDA generator's differ from the CPU's, as in ComfyUI).
    """

    def __init__(self, seeds: list[int] | None, like: torch.Tensor) -> None:
        self.shape = tuple(like.shape)
        self.device, self.dtype = like.device, like.dtype
        offset = 1 if like.device.type == "cpu" else 0
        self.generators = (
            None
            if seeds is None
            else [torch.Generator(device=like.device).manual_seed((s + offset) % 2**64) for s in seeds]
        )

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            return torch.randn(self.shape, dtype=self.dtype, device=self.device)
        return torch.stack(
            [torch.randn(self.shape[1:], generator=g, dtype=self.dtype, device=self.device) for g in self.generators]
        )


class BrownianNoise:
    """Per-row torchsde Brownian trees over [sigma_min, sigma_max], as ComfyUI's BrownianTreeNoiseSampler.

    ``noise(sigma, sigma_next)`` is the path's increment between the two levels divided by the square
    root of their distance: standard normal per draw, and draws over overlapping intervals are
    correlated as one Brownian path is. Row i's tree has entropy ``seeds[i]`` (ComfyUI seeds its tree
    with the request's seed). Times are float32, as ComfyUI's CPU tree takes them. The tree lives on
    the CPU (the same numbers on every device) unless ``on_device`` (the ``_gpu`` samplers).
    """

    TOLERANCE_DIGITS = 6  # the trees resolve time to 1e-6 (torchsde's default, which ComfyUI uses)

    def __init__(
        self, seeds: list[int] | None, like: torch.Tensor, sigma_min: float, sigma_max: float, on_device: bool
    ) -> None:
        import torchsde  # only the SDE samplers need it

        self.device, self.dtype = like.device, like.dtype
        tree_device = like.device if on_device else torch.device("cpu")
        t0, t1 = (torch.tensor(v, dtype=torch.float32, device=tree_device) for v in (sigma_min, sigma_max))
        # The trees round their ends and every query to the tolerance and clamp queries into their range
        # (warning each time); a query at sigma_min can round just outside, so clamp first, quietly.
        self.start, self.end = (round(float(t), self.TOLERANCE_DIGITS) for t in (t0, t1))
        w0 = torch.zeros(like.shape[1:], dtype=like.dtype, device=tree_device)
        if seeds is None:
            seeds = [int(torch.randint(0, 2**63 - 1, ()).item()) for _ in range(like.shape[0])]
        tol = 10.0**-self.TOLERANCE_DIGITS
        # A tree's entropy must be non-negative: a negative seed uses its 64-bit two's complement.
        entropies = [seed % 2**64 if seed < 0 else seed for seed in seeds]
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=e, tol=tol) for e in entropies]

    def _time(self, sigma: float) -> float:
        as_float32 = float(torch.tensor(sigma, dtype=torch.float32))
        return min(max(round(as_float32, self.TOLERANCE_DIGITS), self.start), self.end)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        lo, hi, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        ta, tb = self._time(lo), self._time(hi)
        w = torch.stack([tree(ta, tb) for tree in self.trees]).to(self.device, self.dtype)
        return w * (sign / math.sqrt(abs(b - a)))


class Run:
    """One sampling run: the denoiser with the protocol's sigma tensors, the noise draws, step reports."""

    def __init__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        sigmas: Sequence[float],
        *,
        seed: Seed,
        noise_sampler: NoiseSampler | None,
        callback: Callback | None,
        shift: float,
    ) -> None:
        self.denoiser = denoiser
        self.dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.device = x.device
        self.sigmas = [float(s) for s in sigmas]
        self.total = len(self.sigmas) - 1
        self.callback = callback
        self.shift = shift
        self.seeds = row_seeds(seed, x.shape[0])
        self.user_noise = noise_sampler
        self._noise: NoiseSampler | None = noise_sampler
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

    def use_gaussian_noise(self) -> None:
        """Default draws: per-row seeded Gaussian streams (a given noise_sampler takes precedence)."""
        if self._noise is None:
            self._noise = GaussianNoise(self.seeds, self._like.to(self.dtype))

    def use_brownian_noise(self, on_device: bool) -> None:
        """Default draws: per-row Brownian trees from the smallest positive sigma to the largest (the SDE samplers)."""
        if self._noise is None:
            low, high = min(v for v in self.sigmas if v > 0.0), max(self.sigmas)
            self._noise = BrownianNoise(self.seeds, self._like.to(self.dtype), low, high, on_device)

    def noise(self, sigma: float, sigma_next: float) -> torch.Tensor:
        """The sampler's draw for the step sigma -> sigma_next, shaped like x, in the working dtype."""
        if self._noise is None:
            raise RuntimeError("a sampler drew noise without choosing its noise source")
        z = self._noise(torch.tensor(sigma, dtype=torch.float64), torch.tensor(sigma_next, dtype=torch.float64))
        return z.to(self.device, self.dtype)

    def unused_draw(self, sigma: float, sigma_next: float) -> None:
        """A draw ComfyUI makes and multiplies by 0: only a caller's noise_sampler sees it (same call order)."""
        if self.user_noise is not None:
            self.user_noise(torch.tensor(sigma, dtype=torch.float64), torch.tensor(sigma_next, dtype=torch.float64))

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
        """Report a completed step: x is the new state at sigma_next; denoised was predicted at sigma.

        Samplers whose steps are not the schedule's (dpm_fast, dpm_adaptive, uni_pc) pass total/sigma/sigma_next.
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


def to_d(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """k-diffusion's ODE derivative (x - D)/sigma, taken on the flow sigma itself (as ComfyUI does)."""
    return (x - denoised) / sigma


def ancestral_split(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion's (sigma_down, sigma_up) between two levels of a variance-exploding schedule.

    A deterministic step to sigma_down followed by fresh noise of scale sigma_up lands on sigma_to.
    From sigma_from = inf (a flow sigma of 1 seen in VE units) ComfyUI's formula evaluates to nan
    inside ``min(sigma_to, nan)``, which keeps sigma_to: all of the step becomes noise.
    """
    if not eta:
        return sigma_to, 0.0
    if math.isinf(sigma_from):
        return 0.0, sigma_to
    up = min(sigma_to, eta * math.sqrt(max(0.0, sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)))
    return math.sqrt(max(0.0, sigma_to**2 - up**2)), up


def flow_ancestral(sigma: float, sigma_next: float) -> tuple[float, float, float]:
    """ComfyUI's rectified-flow ancestral split at eta = 1: (sigma_down, rescale, renoise), for sigma_next > 0.

    The step goes deterministically to sigma_down = sigma_next^2/sigma, is rescaled by
    (1-sigma_next)/(1-sigma_down) and gets fresh noise of std ``renoise``.
    """
    down = sigma_next * (sigma_next / sigma)
    rescale = (1.0 - sigma_next) / (1.0 - down)
    renoise = math.sqrt(max(0.0, sigma_next**2 - down**2 * rescale**2))
    return down, rescale, renoise


def logit_lambda(sigma: float) -> float:
    """ComfyUI's half-log-SNR of a flow sigma, log((1-sigma)/sigma): -inf at 1, +inf at 0."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log1p(-sigma) - math.log(sigma)


def lambda_to_sigma(lam: float) -> float:
    """The flow sigma of a half-log-SNR: 1/(1 + e^lambda)."""
    return 1.0 / (1.0 + math.exp(lam)) if lam < 700 else 0.0


def first_sigma_offset(sigmas: list[float], shift: float) -> list[float]:
    """ComfyUI's SNR samplers start from sigma(t = 1 - 1e-4) instead of a first sigma of 1 (finite lambda)."""
    if len(sigmas) <= 1 or sigmas[0] < 1.0:
        return sigmas
    return [flow_sigma(1.0 - 1e-4, shift), *sigmas[1:]]
