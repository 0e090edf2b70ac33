"""Every sampler x scheduler against the exact answer of an analytic problem: the table in docs/samplers.md.

The problem: data x0 ~ N(mu, c^2) per element (24 elements, mu in [-1, 1], c in [0.3, 1.2]) under
SD3's rectified flow x = (1 - sigma) x0 + sigma eps, with the exact denoiser (the posterior mean).
The probability-flow ODE then maps the pure noise eps at sigma = 1 to mu + c eps exactly, and the
SDE samplers should draw N(mu, c^2).

* deterministic samplers: the RMS of (x - (mu + c eps))/c over 64 starts x 24 elements, i.e. the
  error against the exact ODE solution in units of the data's spread;
* stochastic samplers (marked ~): the worst relative error of the sample std (or of the mean, in
  units of c) over the elements, from 8192 draws per element (about 1 % is sampling noise), with
  noise of the same law as the samplers' own draws (``PathDraws``).

Each sampler runs as the hosted API runs it (``get_sigmas(scheduler, steps, sampler=name)``), in
float64. A pair is flagged (!) by the rule in ``sd3pose.sampling.caveats``; the pairs flagged at 20
steps (the API's default) are those the playground and the API docs warn about (``--check`` fails
when the flags and that list disagree). dpm_adaptive's model
evaluations per run are printed too (its budget must stay out of ComfyUI's way).

    .venv/bin/python bench/samplers.py [--steps 10,20] [--check]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from sd3pose.sampling import SAMPLER_NAMES, SAMPLERS, SCHEDULER_NAMES, get_sigmas, sample
from sd3pose.sampling.caveats import BASELINE_RATIO, CAVEATS, FLAGGED_AT_STEPS, OWN_RATIO

STARTS, DRAWS, ELEMENTS = 64, 8192, 24


class Gaussian:
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.mu = torch.rand(ELEMENTS, generator=gen, dtype=torch.float64) * 2 - 1
        self.c = torch.rand(ELEMENTS, generator=gen, dtype=torch.float64) * 0.9 + 0.3
        self.evals = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *, return_uncond: bool = False):
        self.evals += 1
        a, var = 1 - sigma, self.c**2
        x0 = self.mu + a * var / (a * a * var + sigma * sigma) * (x - a * self.mu)
        return (x0, x0) if return_uncond else x0


class PathDraws:
    """Draws with a Brownian path's law for the calls the samplers make, over the whole batch.

    A call from the same sigma as the previous one and reaching further (dpmpp_sde's two draws per
    step) extends that increment; any other call covers a new, disjoint interval, whose increment is
    independent. (A Brownian tree over 8192 x 24 elements costs about a second per query.)
    """

    def __init__(self, like: torch.Tensor) -> None:
        self.like = like
        self.generator = torch.Generator().manual_seed(11)
        self.last: tuple[float, float, torch.Tensor] | None = None

    def _normal(self) -> torch.Tensor:
        return torch.randn(self.like.shape, generator=self.generator, dtype=self.like.dtype)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        if self.last is not None and self.last[0] == a and abs(b - a) > abs(self.last[1] - a):
            w = self.last[2] + self._normal() * abs(b - self.last[1]) ** 0.5
        else:
            w = self._normal() * abs(b - a) ** 0.5
        self.last = (a, b, w)
        return w / abs(b - a) ** 0.5


def error(name: str, scheduler: str, steps: int, problem: Gaussian) -> float:
    sigmas = get_sigmas(scheduler, steps, sampler=name).double()
    stochastic = SAMPLERS[name].stochastic
    eps = torch.randn(DRAWS if stochastic else STARTS, ELEMENTS, generator=torch.Generator().manual_seed(7))
    eps = eps.double()
    draws = PathDraws(eps) if stochastic else None
    out = sample(name, problem, sigmas[0] * eps, sigmas, noise_sampler=draws)
    if not stochastic:
        return float((((out - (problem.mu + problem.c * eps)) / problem.c) ** 2).mean().sqrt())
    std_error = (out.std(0) / problem.c - 1).abs().max()
    mean_error = ((out.mean(0) - problem.mu) / problem.c).abs().max()
    return float(max(std_error, mean_error))


def table(steps: int) -> tuple[str, set[tuple[str, str]], dict[str, float]]:
    # The _gpu variants run the same maths with the same draws here: their rows repeat the base sampler's.
    errors = {(n, s): error(n, s, steps, Gaussian()) for n in SAMPLER_NAMES for s in SCHEDULER_NAMES if "_gpu" not in n}
    errors.update({(n, s): errors[(n.removesuffix("_gpu"), s)] for n in SAMPLER_NAMES for s in SCHEDULER_NAMES})
    flagged = set()
    for (n, s), e in errors.items():
        own = statistics.median(errors[(n, other)] for other in SCHEDULER_NAMES)
        baseline = errors[("euler_ancestral" if SAMPLERS[n].stochastic else "euler", s)]
        if not e < BASELINE_RATIO * baseline or (e >= OWN_RATIO * own and e >= baseline):
            flagged.add((n, s))  # nan and inf are flagged too
    lines = [
        f"| {steps} steps | " + " | ".join(SCHEDULER_NAMES) + " |",
        "|---|" + "---:|" * len(SCHEDULER_NAMES),
    ]
    for n in SAMPLER_NAMES:
        mark = " ~" if SAMPLERS[n].stochastic else ""
        cells = [f"{errors[(n, s)]:.2g}" + (" !" if (n, s) in flagged else "") for s in SCHEDULER_NAMES]
        lines.append(f"| {n}{mark} | " + " | ".join(cells) + " |")
    adaptive_evals = {}
    for s in SCHEDULER_NAMES:
        problem = Gaussian()
        sigmas = get_sigmas(s, steps).double()
        sample("dpm_adaptive", problem, sigmas[0] * torch.ones(1, ELEMENTS, dtype=torch.float64), sigmas)
        adaptive_evals[s] = problem.evals
    return "\n".join(lines), flagged, adaptive_evals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,20", help="comma-separated step counts, one table each")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the flags at 20 steps differ from caveats.CAVEATS"
    )
    args = parser.parse_args()
    mismatch = False
    for steps in (int(v) for v in args.steps.split(",")):
        started = time.perf_counter()
        text, flagged, adaptive_evals = table(steps)
        print(text)
        print(f"\n({time.perf_counter() - started:.0f} s) dpm_adaptive model evaluations: {adaptive_evals}")
        listed = set(CAVEATS)
        if steps == FLAGGED_AT_STEPS and flagged != listed:
            mismatch = True
            print(f"flagged but not in caveats.CAVEATS: {sorted(flagged - listed)}")
            print(f"in caveats.CAVEATS but not flagged: {sorted(listed - flagged)}")
        print(flush=True)
    if args.check and mismatch:
        sys.exit(1)


if __name__ == "__main__":
    main()
