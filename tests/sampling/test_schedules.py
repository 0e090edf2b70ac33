"""The six schedulers: each schedule's defining formula, ComfyUI's step-count rules (ddim_uniform, the
dropped second-to-last sigma) and the diffusers reference for "normal". (Bit-for-bit agreement with
ComfyUI's KSampler is checked against its recorded sigmas in test_comfyui_reference.)"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from sd3pose.errors import InvalidRequestError
from sd3pose.sampling import SCHEDULER_NAMES, flow_sigma, get_sigmas, sigma_table


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 20, 28, 50, 100])
def test_normal_agrees_with_diffusers_flow_match_euler_sd3(steps: int) -> None:
    # diffusers computes in float64 and ComfyUI (our reference) in float32: equal to float32 rounding.
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3 Medium's scheduler config
    ref.set_timesteps(steps)
    torch.testing.assert_close(get_sigmas("normal", steps), ref.sigmas, rtol=3e-7, atol=0)


def test_normal_follows_the_shift_like_diffusers() -> None:
    ref = FlowMatchEulerDiscreteScheduler(shift=1.5)
    ref.set_timesteps(13)
    torch.testing.assert_close(get_sigmas("normal", 13, shift=1.5), ref.sigmas, rtol=3e-7, atol=0)


@pytest.mark.parametrize("scheduler", [s for s in SCHEDULER_NAMES if s != "ddim_uniform"])
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20, 100, 999, 1000])
def test_every_schedule_has_steps_plus_one_descending_values_ending_in_zero(scheduler: str, steps: int) -> None:
    sig = get_sigmas(scheduler, steps)
    assert sig.dtype == torch.float32 and sig.shape == (steps + 1,)
    assert sig[-1] == 0 and (sig[:-1] > sig[1:]).all()
    assert sig[0] <= 1 and sig[-2] >= sigma_table()[0].float() - 1e-7


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("sampler", ["dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"])
@pytest.mark.parametrize("steps", [1, 2, 5, 30])
def test_comfyui_drops_the_second_to_last_sigma_for_four_samplers(scheduler: str, sampler: str, steps: int) -> None:
    longer = get_sigmas(scheduler, steps + 1)
    assert torch.equal(get_sigmas(scheduler, steps, sampler=sampler), torch.cat([longer[:-2], longer[-1:]]))
    # Every other sampler gets the plain schedule.
    assert torch.equal(get_sigmas(scheduler, steps, sampler="dpmpp_2m"), get_sigmas(scheduler, steps))


def test_table_is_sd3_shifted_flow_sigma() -> None:
    table = sigma_table(3.0)
    assert table.shape == (1000,)
    assert table[-1] == 1.0
    assert math.isclose(float(table[0]), 3 * 0.001 / (1 + 2 * 0.001), rel_tol=1e-6)
    assert math.isclose(float(table[499]), float(flow_sigma(torch.tensor(0.5))), rel_tol=1e-6)


def test_sgm_uniform_is_normal_with_one_more_point_dropped() -> None:
    steps = 5
    t = torch.linspace(1000.0, 1000 * float(sigma_table()[0]), steps + 1, dtype=torch.float64)[:-1]
    expected = flow_sigma(t / 1000)
    torch.testing.assert_close(get_sigmas("sgm_uniform", steps)[:-1], expected.float())


def test_simple_picks_evenly_spaced_table_entries_from_the_top() -> None:
    table = sigma_table().float()
    sig = get_sigmas("simple", 4)
    torch.testing.assert_close(sig[:-1], table[[999, 749, 499, 249]], rtol=0, atol=0)


def test_ddim_uniform_takes_every_floor_1000_over_steps_entry_from_the_second() -> None:
    table = sigma_table().float()
    torch.testing.assert_close(get_sigmas("ddim_uniform", 4)[:-1], table[[751, 501, 251, 1]], rtol=0, atol=0)
    # 1000 // 7 = 142 gives 8 entries (1, 143, ..., 995): ComfyUI runs them all, 8 steps for 7.
    sig = get_sigmas("ddim_uniform", 7)
    torch.testing.assert_close(sig[:-1], table[[995, 853, 711, 569, 427, 285, 143, 1]], rtol=0, atol=0)
    assert len(get_sigmas("ddim_uniform", 30)) == 32 and len(get_sigmas("ddim_uniform", 91)) == 101
    assert len(get_sigmas("ddim_uniform", 100)) == 101
    # One step starts at the second table entry, not at sigma_max: 0.006 -> 0.
    torch.testing.assert_close(get_sigmas("ddim_uniform", 1), torch.stack([table[1], torch.tensor(0.0)]))


def test_karras_and_exponential_span_sigma_min_to_sigma_max() -> None:
    smin, smax = float(sigma_table()[0]), 1.0
    k = get_sigmas("karras", 10).double()
    assert math.isclose(k[0], smax, rel_tol=1e-6) and math.isclose(k[-2], smin, rel_tol=1e-5)
    root = k[:-1] ** (1 / 7)  # rho = 7: evenly spaced in sigma^(1/rho)
    torch.testing.assert_close(root.diff(), torch.full_like(root.diff(), root.diff().mean()), atol=1e-6, rtol=0)
    e = get_sigmas("exponential", 10).double()
    assert math.isclose(e[0], smax, rel_tol=1e-6) and math.isclose(e[-2], smin, rel_tol=1e-5)
    logs = e[:-1].log()
    torch.testing.assert_close(logs.diff(), torch.full_like(logs.diff(), logs.diff().mean()), atol=1e-5, rtol=0)


def test_bad_arguments_are_rejected_with_clear_messages() -> None:
    with pytest.raises(InvalidRequestError, match="unknown scheduler 'linear'; use one of: normal"):
        get_sigmas("linear", 10)
    with pytest.raises(InvalidRequestError, match="steps must be"):
        get_sigmas("normal", 0)
    with pytest.raises(InvalidRequestError, match="steps must be"):
        get_sigmas("simple", 1001)
    with pytest.raises(InvalidRequestError, match="shift must be"):
        get_sigmas("normal", 10, shift=-1.0)
    with pytest.raises(InvalidRequestError, match="unknown sampler 'dpm_3'"):
        get_sigmas("normal", 10, sampler="dpm_3")
    assert torch.equal(get_sigmas(" Karras ", 5), get_sigmas("karras", 5))
