"""Sampler x scheduler pairs where ComfyUI's formula misbehaves on SD3's flow model, and why.

The names promise ComfyUI's results, so these pairs compute exactly what ComfyUI computes; the
playground and the API docs warn about them (this module is the one place their data lives, and it
needs no torch). The list is what bench/samplers.py flags on its analytic problem at the API's
default of FLAGGED_AT_STEPS steps (``--check`` fails when the two disagree): a pair is flagged when
its error is at least BASELINE_RATIO times the baseline's (euler, or euler_ancestral for the
stochastic samplers) on that scheduler, or at least OWN_RATIO times the same sampler's median over
the six schedulers while no better than the baseline. docs/samplers.md has the measured tables.
"""

from __future__ import annotations

from sd3pose.sampling.names import SCHEDULER_NAMES, resolve_sampler_name, resolve_scheduler_name

FLAGGED_AT_STEPS = 20
BASELINE_RATIO = 2.5
OWN_RATIO = 4.0

_ENDS_AT_SIGMA_MIN = (
    "returns the state at the last sigma before 0, as ComfyUI does; on this schedule that sigma is "
    "large (0.14 at 20 steps), so the image keeps visible noise"
)
_DROPPED = (
    "gets the schedule without its second-to-last sigma, as in ComfyUI; on this schedule that leaves "
    "one long final step from about 0.2, so the result is no better than euler's"
)
_JUMP = (
    "extrapolates its multistep history across this schedule's final jump into sigma_min (a log-sigma "
    "step many times the previous one), as ComfyUI does; the result is far off"
)
_JUMP_SDE = (
    "extrapolates across this schedule's final jump into sigma_min and over-disperses there, as "
    "ComfyUI does; the result is far off"
)
_DDPM = (
    "ComfyUI's DDPM step reads the flow sigma as a variance-exploding sigma, so on SD3 its draws have "
    "the wrong spread with every scheduler"
)

# (sampler, scheduler) -> why it misbehaves.
CAVEATS: dict[tuple[str, str], str] = {
    **{("dpm_fast", s): _ENDS_AT_SIGMA_MIN for s in ("sgm_uniform", "simple")},
    **{("dpm_adaptive", s): _ENDS_AT_SIGMA_MIN for s in ("sgm_uniform", "simple")},
    **{(n, s): _DROPPED for n in ("dpm_2_ancestral", "uni_pc", "uni_pc_bh2") for s in ("sgm_uniform", "simple")},
    **{("dpmpp_2m", s): _JUMP for s in ("normal", "ddim_uniform")},
    **{
        (n, s): _JUMP_SDE
        for n in ("dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu")
        for s in ("normal", "ddim_uniform")
    },
    **{("ddpm", s): _DDPM for s in SCHEDULER_NAMES},
}


def caveat(sampler: str, scheduler: str) -> str | None:
    """Why this pair misbehaves on SD3 (a sentence to show a user), or None; aliases are accepted."""
    return CAVEATS.get((resolve_sampler_name(sampler), resolve_scheduler_name(scheduler)))


def caveat_list() -> list[dict[str, str]]:
    """The pairs as JSON-ready records {sampler, scheduler, warning}, for the API schema and the playground."""
    return [{"sampler": n, "scheduler": s, "warning": why} for (n, s), why in CAVEATS.items()]


def caveat_summary() -> str:
    """The pairs in one line for API docs, e.g. "ddpm with any scheduler; dpm_fast with sgm_uniform or simple"."""
    by_sampler: dict[str, list[str]] = {}
    for sampler, scheduler in CAVEATS:
        by_sampler.setdefault(sampler, []).append(scheduler)
    parts = []
    for sampler, schedulers in by_sampler.items():
        which = "any scheduler" if len(schedulers) == len(SCHEDULER_NAMES) else " or ".join(schedulers)
        parts.append(f"{sampler} with {which}")
    return "; ".join(parts)
