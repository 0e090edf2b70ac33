"""Item 3 (every sampler x scheduler x step count) and the noise/seed/batch guarantees."""

from __future__ import annotations

import pytest
import torch

from sd3pose.sampling import SAMPLER_NAMES, SAMPLERS, SCHEDULER_NAMES, get_sigmas, sample

STOCHASTIC = [n for n, info in SAMPLERS.items() if info.stochastic]


def cheap_denoiser(x: torch.Tensor, sigma: torch.Tensor, *, return_uncond: bool = False):
    # Gaussian data N(0.3, 0.5^2): the exact posterior mean, computed in x's dtype.
    a = 1 - sigma
    d = 0.3 + a * 0.25 / (a * a * 0.25 + sigma * sigma) * (x - a * 0.3)
    return (d, 0.9 * d) if return_uncond else d


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_scheduler_and_step_count_gives_finite_output_of_the_right_shape(sampler: str) -> None:
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    for scheduler in SCHEDULER_NAMES:
        for steps in (1, 2, 3, 20):
            sigmas = get_sigmas(scheduler, steps)
            out = sample(sampler, cheap_denoiser, x * sigmas[0], sigmas, seed=1)
            assert out.shape == x.shape and out.dtype == x.dtype, (scheduler, steps)
            assert torch.isfinite(out).all(), (scheduler, steps)


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_same_seed_same_result_other_seed_other_result(sampler: str) -> None:
    x = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0))
    sig = get_sigmas("karras", 6)
    a = sample(sampler, cheap_denoiser, x, sig, seed=42)
    b = sample(sampler, cheap_denoiser, x, sig, seed=42)
    c = sample(sampler, cheap_denoiser, x, sig, seed=43)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_a_rows_result_does_not_depend_on_its_batch(sampler: str) -> None:
    x = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    sig = get_sigmas("normal", 5)
    batch = sample(sampler, cheap_denoiser, x, sig, seed=100)
    for i in range(3):
        alone = sample(sampler, cheap_denoiser, x[i : i + 1], sig, seed=100 + i)
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    listed = sample(sampler, cheap_denoiser, x[[2, 0]], sig, seed=[102, 100])
    torch.testing.assert_close(listed, batch[[2, 0]], rtol=1e-5, atol=1e-6)


def test_dpm_adaptive_steps_follow_the_whole_batch_as_in_comfyui() -> None:
    # Its error norm runs over the whole batch (ComfyUI's rule), so a row's steps depend on its
    # neighbours; the engine therefore runs each dpm_adaptive image on its own (tests/engine).
    x = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    sig = get_sigmas("normal", 5)
    batch = sample("dpm_adaptive", cheap_denoiser, x, sig)
    alone = sample("dpm_adaptive", cheap_denoiser, x[:1], sig)
    assert not torch.allclose(batch[:1], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_a_negative_seed_is_a_seed_like_any_other(sampler: str) -> None:
    # Seeds below 0 (such as -1, "random" in ComfyUI's and the hosted API's convention) must not crash
    # a sampler whose draws come from a Brownian tree, whose entropy must be non-negative.
    x = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0))
    sig = get_sigmas("karras", 6)
    a = sample(sampler, cheap_denoiser, x, sig, seed=-5)
    assert torch.equal(a, sample(sampler, cheap_denoiser, x, sig, seed=-5))
    assert not torch.allclose(a, sample(sampler, cheap_denoiser, x, sig, seed=5))


def test_seed_list_must_match_the_batch() -> None:
    from sd3pose.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="got 1 seeds for a batch of 2"):
        sample("euler_ancestral", cheap_denoiser, torch.zeros(2, 3), get_sigmas("normal", 3), seed=[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampler_noise_is_comfyuis_default_noise(dtype: torch.dtype) -> None:
    # ComfyUI's default noise sampler on the CPU: a generator seeded with seed + 1 (the initial latent drew
    # from seed itself), randn in x's dtype. Row i of a batch draws as a one-image request with seed + i.
    seed = 5
    eps = torch.randn((2, 64), generator=torch.Generator().manual_seed(0), dtype=dtype)
    seen = []
    sample("lcm", lambda x, s: torch.zeros_like(x), eps, [1.0, 0.5, 0.0], seed=seed, callback=seen.append)
    renoised = seen[0]["x"] / 0.5  # x' = 0.5 * z with D = 0
    for row in range(2):
        expected = torch.randn(64, generator=torch.Generator().manual_seed(seed + row + 1), dtype=dtype)
        torch.testing.assert_close(renoised[row], expected, rtol=0, atol=1e-6)


def test_gpu_variants_run_the_same_maths() -> None:
    # The _gpu variants keep their Brownian tree on x's device; on the CPU that is the same tree.
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    sig = get_sigmas("exponential", 7)
    for name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        assert SAMPLERS[f"{name}_gpu"].noise_on_device and not SAMPLERS[name].noise_on_device
        torch.testing.assert_close(
            sample(name, cheap_denoiser, x, sig, seed=3), sample(f"{name}_gpu", cheap_denoiser, x, sig, seed=3)
        )


def test_cfg_pp_samplers_use_the_unconditional_prediction() -> None:
    x = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    sig = get_sigmas("normal", 6)
    calls = []

    def guided(x, sigma, *, return_uncond=False):
        calls.append(return_uncond)
        return cheap_denoiser(x, sigma, return_uncond=return_uncond)

    pp = sample("euler_pp", guided, x, sig)
    assert calls and all(calls)
    # With uncond != guided the CFG++ path differs from plain Euler; with equal ones it is Euler.
    assert not torch.allclose(pp, sample("euler", cheap_denoiser, x, sig))
    same = sample("euler_pp", lambda x, s, return_uncond=False: (cheap_denoiser(x, s),) * 2, x, sig)
    torch.testing.assert_close(same, sample("euler", cheap_denoiser, x, sig))
