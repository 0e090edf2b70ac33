"""The six schedulers: the diffusers reference for "normal", and each schedule's defining formula."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from sd3pose.errors import InvalidRequestError
from sd3pose.sampling import SCHEDULER_NAMES, flow_sigma, get_sigmas, sigma_table


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 20, 28, 50, 100])
def test_normal_is_bit_identical_to_diffusers_flow_match_euler_sd3(steps: int) -> None:
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3 Medium's scheduler config
    ref.set_timesteps(steps)
    assert torch.equal(get_sigmas("normal", steps), ref.sigmas)


def test_normal_follows_the_shift_like_diffusers() -> None:
    ref = FlowMatchEulerDiscreteScheduler(shift=1.5)
    ref.set_timesteps(13)
    assert torch.equal(get_sigmas("normal", 13, shift=1.5), ref.sigmas)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20, 100, 999, 1000])
def test_every_schedule_has_steps_plus_one_descending_values_ending_in_zero(scheduler: str, steps: int) -> None:
    sig = get_sigmas(scheduler, steps)
    assert sig.dtype == torch.float32 and sig.shape == (steps + 1,)
    assert sig[-1] == 0 and (sig[:-1] > sig[1:]).all()
    assert sig[0] <= 1 and sig[-2] >= sigma_table()[0].float() - 1e-7


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


def test_ddim_uniform_takes_every_floor_1000_over_steps_entry() -> None:
    table = sigma_table().float()
    torch.testing.assert_close(get_sigmas("ddim_uniform", 4)[:-1], table[[751, 501, 251, 1]], rtol=0, atol=0)
    # 1000 // 7 = 142 would give 8 entries (1, 143, ..., 995): the lowest is dropped to keep 7 steps.
    sig = get_sigmas("ddim_uniform", 7)
    torch.testing.assert_close(sig[:-1], table[[995, 853, 711, 569, 427, 285, 143]], rtol=0, atol=0)


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
    assert torch.equal(get_sigmas(" Karras ", 5), get_sigmas("karras", 5))
