"""An analytic test problem for the samplers: Gaussian data under rectified flow.

For x0 ~ N(mu, c^2) (per element) and x_sigma = (1-sigma)*x0 + sigma*eps, the exact denoiser is the
posterior mean  E[x0 | x] = mu + a*c^2/(a^2*c^2 + sigma^2) * (x - a*mu), a = 1 - sigma, and the exact
probability-flow ODE maps the pure noise eps at sigma = 1 to mu + c*eps at sigma = 0.
"""

from __future__ import annotations

import torch


class GaussianData:
    def __init__(
        self,
        shape: tuple[int, ...] = (4, 2, 3),
        dtype: torch.dtype = torch.float64,
        c_range: tuple[float, float] = (0.3, 1.2),
    ) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.mu = (torch.rand(shape, generator=gen) * 2 - 1).to(dtype)
        lo, hi = c_range
        self.c = (torch.rand(shape, generator=gen) * (hi - lo) + lo).to(dtype)
        self.dtype = dtype
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *, return_uncond: bool = False):
        assert sigma.ndim == 0 and sigma.device == x.device
        self.calls += 1
        s = sigma.to(x.dtype)
        a = 1 - s
        var = self.c.to(x.dtype) ** 2
        mu = self.mu.to(x.dtype)
        x0 = mu + a * var / (a * a * var + s * s) * (x - a * mu)
        return (x0, x0) if return_uncond else x0

    def exact(self, eps: torch.Tensor) -> torch.Tensor:
        """The ODE solution at sigma = 0 from x = eps at sigma = 1."""
        return self.mu.to(eps.dtype) + self.c.to(eps.dtype) * eps

    def noise(self, batch: int, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *self.mu.shape), generator=gen, dtype=torch.float64).to(self.dtype)
