"""The sampler and scheduler names of the hosted API, and their accepted aliases."""

from __future__ import annotations

from sd3pose.errors import InvalidRequestError

SAMPLER_NAMES: tuple[str, ...] = (
    "euler",
    "euler_pp",
    "euler_ancestral",
    "euler_ancestral_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)

SCHEDULER_NAMES: tuple[str, ...] = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform")

# ComfyUI spells the CFG++ samplers `*_cfg_pp`; the hosted API spells them `*_pp`.
SAMPLER_ALIASES: dict[str, str] = {
    "euler_cfg_pp": "euler_pp",
    "euler_ancestral_cfg_pp": "euler_ancestral_pp",
}


def resolve_sampler_name(name: str) -> str:
    """Return the canonical sampler name, or raise a clear error listing the valid ones."""
    key = name.strip().lower()
    key = SAMPLER_ALIASES.get(key, key)
    if key not in SAMPLER_NAMES:
        raise InvalidRequestError(f"unknown sampler {name!r}; use one of: {', '.join(SAMPLER_NAMES)}")
    return key


def resolve_scheduler_name(name: str) -> str:
    """Return the canonical scheduler name, or raise a clear error listing the valid ones."""
    key = name.strip().lower()
    if key not in SCHEDULER_NAMES:
        raise InvalidRequestError(f"unknown scheduler {name!r}; use one of: {', '.join(SCHEDULER_NAMES)}")
    return key
