"""sd3pose.sampling: the hosted API's 27 samplers and 6 schedulers, computing what ComfyUI computes for SD3.

    sigmas = get_sigmas("sgm_uniform", 20, sampler="dpmpp_2m")   # ComfyUI's KSampler sigmas (SD3 shift 3)
    x = sigmas[0] * torch.randn(...)                               # the state at sigmas[0]
    out = sample("dpmpp_2m", denoiser, x, sigmas, seed=698845, callback=progress)

``denoiser(x, sigma) -> x0`` follows the ``Denoiser`` protocol (see ``core``); ``SAMPLERS[name]`` says
whether a sampler is stochastic, needs the unconditional prediction (CFG++), and how many model
evaluations it makes per step; ``caveats`` lists the pairs that misbehave on SD3 (as in ComfyUI).
docs/samplers.md has the rules and the measurements.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sd3pose.sampling.names import (
    SAMPLER_ALIASES,
    SAMPLER_NAMES,
    SCHEDULER_NAMES,
    resolve_sampler_name,
    resolve_scheduler_name,
)

if TYPE_CHECKING:
    from sd3pose.sampling.core import Denoiser, NoiseSampler, row_seeds
    from sd3pose.sampling.samplers import SAMPLERS, SamplerInfo, sample, sampler_info
    from sd3pose.sampling.schedules import DEFAULT_SHIFT, flow_sigma, get_sigmas, sigma_table

# The names above need no torch; the rest load on first use, so validating a request (an API replica
# that runs no model) never imports torch.
_LAZY = {
    "Denoiser": "core",
    "NoiseSampler": "core",
    "row_seeds": "core",
    "SAMPLERS": "samplers",
    "SamplerInfo": "samplers",
    "sample": "samplers",
    "sampler_info": "samplers",
    "DEFAULT_SHIFT": "schedules",
    "flow_sigma": "schedules",
    "get_sigmas": "schedules",
    "sigma_table": "schedules",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"sd3pose.sampling.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'sd3pose.sampling' has no attribute {name!r}")


__all__ = [
    "DEFAULT_SHIFT",
    "SAMPLERS",
    "SAMPLER_ALIASES",
    "SAMPLER_NAMES",
    "SCHEDULER_NAMES",
    "Denoiser",
    "NoiseSampler",
    "SamplerInfo",
    "flow_sigma",
    "get_sigmas",
    "resolve_sampler_name",
    "resolve_scheduler_name",
    "row_seeds",
    "sample",
    "sampler_info",
    "sigma_table",
]
