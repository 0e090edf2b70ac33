"""Hand-derived one-, two- and three-step values for the samplers k-diffusion does not cover.

Each case runs on a scalar state with a simple denoiser (D = k*x, or fixed guided/unconditional
values for CFG++) and fixed noise draws z1, z2, ...; the expected value is worked out step by step
from ComfyUI's rule for that name, written in the simplest algebraic form (often not the form the
implementation uses). float64; tolerance 1e-12.
"""

from __future__ import annotations

import math

import pytest
import torch

from sd3pose.sampling import sample

K = 0.5  # D(x, sigma) = K*x
X0 = 1.3
Z = [0.7, -1.1, 0.4, 0.9]
OFFSET = 3 * 0.9999 / (1 + 2 * 0.9999)  # ComfyUI's SNR samplers start from sigma(t = 1 - 1e-4), shift 3


class Draws:
    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.calls.append((float(sigma), float(sigma_next)))
        return torch.full((1, 1), Z[len(self.calls) - 1], dtype=torch.float64)


class Linear:
    def __init__(self) -> None:
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *, return_uncond: bool = False) -> torch.Tensor:
        self.sigmas.append(float(sigma))
        return K * x


def run(name: str, sigmas: list[float], denoiser=None) -> tuple[float, Draws, list[float]]:
    denoiser = denoiser or Linear()
    draws = Draws()
    out = sample(name, denoiser, torch.full((1, 1), X0, dtype=torch.float64), sigmas, noise_sampler=draws)
    return float(out), draws, getattr(denoiser, "sigmas", [])


def fixed_predictions(guided: float, uncond: float):
    def denoiser(x: torch.Tensor, sigma: torch.Tensor, *, return_uncond: bool = False):
        assert return_uncond
        return torch.full_like(x, guided), torch.full_like(x, uncond)

    return denoiser


def test_euler_pp_is_cfg_pp_with_alpha_one_minus_sigma() -> None:
    g, u = 0.8, -0.3  # guided and unconditional predictions (fixed)
    out, _, _ = run("euler_pp", [1.0, 0.5, 0.25], fixed_predictions(g, u))
    x1 = 0.5 * g + 0.5 * X0  # from sigma = 1: alpha = 0, the direction is x itself
    x2 = 0.75 * g + 0.25 * (x1 - 0.5 * u) / 0.5  # alpha' g + sigma' (x - alpha u)/sigma
    assert out == pytest.approx(x2 / 0.75, abs=1e-12)  # the last sigma is 0.25: inverse noise scaling


def test_euler_ancestral_pp_turns_the_first_step_into_noise() -> None:
    g, u = 0.8, -0.3
    out, draws, _ = run("euler_ancestral_pp", [1.0, 0.5, 0.25], fixed_predictions(g, u))
    x1 = 0.5 * g + 0.5 * 1.0 * Z[0]  # VE levels inf -> 1: all of it is noise (sigma_up = 1, sigma_down = 0)
    up = math.sqrt((1 / 9) * (1 - 1 / 9))  # VE 1 -> 1/3
    down = math.sqrt(1 / 9 - up**2)  # = 1/9
    x2 = 0.75 * g + 0.75 * down * (x1 - 0.5 * u) / 0.5 + 0.75 * up * Z[1]
    assert out == pytest.approx(x2 / 0.75, abs=1e-12)
    assert draws.calls == [(1.0, 0.5), (0.5, 0.25)]


def test_euler_ancestral_rectified_flow_branch() -> None:
    out, draws, _ = run("euler_ancestral", [1.0, 0.5, 0.25])
    # 1 -> 0.5: sigma_down = 0.5^2/1 = 0.25, rescale 0.5/0.75, renoise^2 = 0.25 - 0.25^2 (2/3)^2 = 2/9.
    x = 0.25 * X0 + 0.75 * K * X0
    x1 = (2 / 3) * x + math.sqrt(2 / 9) * Z[0]
    # 0.5 -> 0.25: sigma_down = 0.125, rescale 0.75/0.875, renoise^2 = 0.0625 (1 - 9/49).
    x = 0.25 * x1 + 0.75 * K * x1
    x2 = (6 / 7) * x + 0.25 * math.sqrt(40 / 49) * Z[1]
    assert out == pytest.approx(x2 / 0.75, abs=1e-12)
    assert draws.calls == [(1.0, 0.5), (0.5, 0.25)]


def test_heunpp2_weights_three_sigma0_then_two_sigma0_then_euler() -> None:
    out, _, evaluated = run("heunpp2", [1.0, 0.5, 0.25, 0.0])
    # Step 1 (Heun++): slopes d = (1-K)x/sigma at x, x_2 = 0.75 x, x_3 = 0.5625 x: 0.5x, 0.75x, 1.125x;
    # weights sigma_1/(3 sigma_0) = 1/6, sigma_2/(3 sigma_0) = 1/12, 1 - 1/4 = 3/4.
    x1 = X0 - 0.5 * (0.75 * 0.5 + 0.75 / 6 + 1.125 / 12) * X0
    # Step 2 (the one before last, Heun): slopes x1 and 1.5 x1, weight sigma_2/(2 sigma_0) = 1/8.
    x2 = x1 - 0.25 * (7 / 8 * 1.0 + 1 / 8 * 1.5) * x1
    x3 = x2 - 0.25 * (0.5 * x2 / 0.25)  # Euler into 0
    assert out == pytest.approx(x3, abs=1e-12)
    assert evaluated == [1.0, 0.5, 0.25, 0.5, 0.25, 0.25]


def test_dpm_2_ancestral_rectified_flow_branch() -> None:
    out, draws, evaluated = run("dpm_2_ancestral", [1.0, 0.5, 0.0])
    # 1 -> sigma_down 0.25 through the log midpoint 0.5, then rescale 2/3 and noise sqrt(2/9).
    x_mid = X0 - 0.5 * (0.5 * X0)
    x = X0 + (0.5 * x_mid / 0.5) * (0.25 - 1.0)
    x1 = (2 / 3) * x + math.sqrt(2 / 9) * Z[0]
    assert out == pytest.approx(K * x1, abs=1e-12)  # Euler into 0 lands on D
    assert evaluated == [1.0, 0.5, 0.5] and len(draws.calls) == 1


def test_dpmpp_2s_ancestral_uses_0_9999_from_sigma_one() -> None:
    out, _, evaluated = run("dpmpp_2s_ancestral", [1.0, 0.5, 0.25])
    u = 0.9999 * X0 + 0.0001 * K * X0
    x1 = (2 / 3) * (0.25 * X0 + 0.75 * K * u) + math.sqrt(2 / 9) * Z[0]
    mid = 1 / (1 + math.sqrt(7))  # halfway in log((1-s)/s) from 0.5 (0) to sigma_down 0.125 (log 7)
    u = (mid / 0.5) * x1 + (1 - mid / 0.5) * K * x1
    x2 = (6 / 7) * (0.25 * x1 + 0.75 * K * u) + 0.25 * math.sqrt(40 / 49) * Z[1]
    assert out == pytest.approx(x2 / 0.75, abs=1e-12)
    assert evaluated == pytest.approx([1.0, 0.9999, 0.5, mid])


def _ve(sigma: float) -> float:
    return sigma / (1 - sigma)


def _posterior(x: float, d: float, sigma: float, sigma_next: float, z: float) -> float:
    """eta = 1 SDE step in VE form: alpha' [(s'/s)^2 x/alpha + (1 - (s'/s)^2) D + s' sqrt(1 - (s'/s)^2) z]."""
    q = (_ve(sigma_next) / _ve(sigma)) ** 2
    return (1 - sigma_next) * (q * x / (1 - sigma) + (1 - q) * d + _ve(sigma_next) * math.sqrt(1 - q) * z)


def test_dpmpp_sde_offset_start_midpoint_and_brownian_calls() -> None:
    out, draws, evaluated = run("dpmpp_sde", [1.0, 0.5, 0.0])
    mid = 1 / (1 + 1 / math.sqrt(_ve(OFFSET)))  # the logit midpoint between OFFSET and 0.5: VE level sqrt(s*1)
    x_mid = _posterior(X0, K * X0, OFFSET, mid, Z[0])
    x1 = _posterior(X0, K * x_mid, OFFSET, 0.5, Z[1])  # the whole step with the midpoint's prediction
    assert out == pytest.approx(K * x1, abs=1e-12)
    assert evaluated == pytest.approx([OFFSET, mid, 0.5])
    assert [v for call in draws.calls for v in call] == pytest.approx([OFFSET, mid, OFFSET, 0.5])


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_snr_samplers_start_from_sigma_of_t_1e4_below_one_of_the_models_shift(name: str) -> None:
    denoiser, draws = Linear(), Draws()
    x = torch.full((1, 1), X0, dtype=torch.float64)
    sample(name, denoiser, x, [1.0, 0.5, 0.25], noise_sampler=draws, shift=1.5)
    start = 1.5 * 0.9999 / (1 + 0.5 * 0.9999)
    assert denoiser.sigmas[0] == pytest.approx(start, abs=1e-12)
    assert draws.calls[0][0] == pytest.approx(start, abs=1e-12)


def test_dpmpp_2m_sde_first_step_then_midpoint_correction() -> None:
    out, draws, _ = run("dpmpp_2m_sde", [1.0, 0.5, 0.25])
    x1 = _posterior(X0, K * X0, OFFSET, 0.5, Z[0])
    h0 = math.log(_ve(OFFSET) / _ve(0.5))
    h1 = math.log(_ve(0.5) / _ve(0.25))
    q = math.exp(-2 * h1)
    x2 = _posterior(x1, K * x1, 0.5, 0.25, Z[1]) + 0.5 * 0.75 * (1 - q) * (h1 / h0) * (K * x1 - K * X0)
    assert out == pytest.approx(x2 / 0.75, abs=1e-12)
    assert [v for call in draws.calls for v in call] == pytest.approx([OFFSET, 0.5, 0.5, 0.25])


def test_dpmpp_3m_sde_third_step_uses_two_differences() -> None:
    sigmas = [1.0, 0.75, 0.5, 0.25]
    out, _, _ = run("dpmpp_3m_sde", sigmas)
    s = [OFFSET, 0.75, 0.5, 0.25]
    h = [math.log(_ve(s[i]) / _ve(s[i + 1])) for i in range(3)]
    x1 = _posterior(X0, K * X0, s[0], s[1], Z[0])
    phi_2 = math.expm1(-2 * h[1]) / (2 * h[1]) + 1
    x2 = _posterior(x1, K * x1, s[1], s[2], Z[1]) + 0.5 * phi_2 * (K * x1 - K * X0) / (h[0] / h[1])
    # Third step, Lu et al.'s divided differences with r0 = h1/h, r1 = h0/h.
    d0, d1, d2 = K * x2, K * x1, K * X0
    r0, r1 = h[1] / h[2], h[0] / h[2]
    d1_0, d1_1 = (d0 - d1) / r0, (d1 - d2) / r1
    first = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
    second = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = math.expm1(-2 * h[2]) / (2 * h[2]) + 1
    phi_3 = phi_2 / (2 * h[2]) - 0.5
    x3 = _posterior(x2, d0, s[2], s[3], Z[2]) + 0.75 * (phi_2 * first - phi_3 * second)
    assert out == pytest.approx(x3 / 0.75, abs=1e-12)


def test_ddpm_reads_the_flow_sigma_as_a_ve_sigma() -> None:
    out, draws, _ = run("ddpm", [1.0, 0.5, 0.0])
    # 1 -> 0.5: alpha_bar 1/2 -> 4/5, alpha = 5/8; eps = (x - D)/sigma; state scaled by 1/sqrt(1 + sigma^2).
    eps = (X0 - K * X0) / 1.0
    mu = (X0 / math.sqrt(2) - (3 / 8) * eps / math.sqrt(1 / 2)) / math.sqrt(5 / 8)
    x1 = (mu + math.sqrt((3 / 8) * (1 / 5) / (1 / 2)) * Z[0]) * math.sqrt(1.25)
    # 0.5 -> 0: alpha_bar 4/5 -> 1, no noise, no rescale.
    eps = (x1 - K * x1) / 0.5
    x2 = (x1 / math.sqrt(1.25) - (1 / 5) * eps / math.sqrt(1 / 5)) / math.sqrt(4 / 5)
    assert out == pytest.approx(x2, abs=1e-12)
    assert draws.calls == [(1.0, 0.5)]


def test_lcm_renoises_the_prediction_each_step() -> None:
    out, draws, _ = run("lcm", [1.0, 0.5, 0.25])
    x1 = 0.5 * Z[0] + 0.5 * K * X0
    x2 = 0.25 * Z[1] + 0.75 * K * x1
    assert out == pytest.approx(x2 / 0.75, abs=1e-12)
    assert draws.calls == [(1.0, 0.5), (0.5, 0.25)]


def _slope(x: float, sigma: float) -> float:
    return (x - K * x) / sigma


def test_ipndm_uses_even_step_adams_bashforth_weights() -> None:
    s = [1.0, 0.8, 0.5, 0.3, 0.2]
    out, _, _ = run("ipndm", s)
    x, slopes = X0, []
    weights = ([1], [3 / 2, -1 / 2], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24])
    for i in range(4):
        slopes.insert(0, _slope(x, s[i]))
        x = x + (s[i + 1] - s[i]) * sum(w * d for w, d in zip(weights[i], slopes, strict=False))
    assert out == pytest.approx(x / 0.8, abs=1e-12)


def test_ipndm_v_uses_the_variable_step_weights() -> None:
    s = [1.0, 0.8, 0.5, 0.3, 0.2]
    out, _, _ = run("ipndm_v", s)
    x, slopes = X0, []
    for i in range(4):
        slopes.insert(0, _slope(x, s[i]))
        h = [s[i + 1 - k] - s[i - k] for k in range(i + 1)]  # h_n, h_n-1, ...
        if i == 0:
            c = [1.0]
        elif i == 1:
            c = [1 + h[0] / (2 * h[1]), -h[0] / (2 * h[1])]
        else:
            t1 = (1 - h[0] / (3 * (h[0] + h[1])) * h[0] * (h[0] + h[1]) / (h[1] * (h[1] + h[2]))) / 2
            c = [1 + h[0] / (2 * h[1]) + t1, -h[0] / (2 * h[1]) - (1 + h[1] / h[2]) * t1, t1 * h[1] / h[2]]
            if i == 3:
                span = h[0] + h[1]
                t2 = ((1 - h[0] / (3 * span)) / 2 + (1 - h[0] / (2 * span)) * h[0] / (6 * (span + h[2]))) * (
                    h[0] * span * (span + h[2]) / (h[1] * (h[1] + h[2]) * (h[1] + h[2] + h[3]))
                )
                q = h[1] * (h[1] + h[2]) / (h[2] * (h[2] + h[3]))
                c = [
                    c[0] + t2,
                    c[1] - (1 + h[1] / h[2] + q) * t2,
                    c[2] + (h[1] / h[2] + q * (1 + h[2] / h[3])) * t2,
                    -t2 * q * h[1] / h[2],
                ]
        x = x + h[0] * sum(w * d for w, d in zip(c, slopes, strict=True))
    assert out == pytest.approx(x / 0.8, abs=1e-12)


def test_ipndm_v_equals_ipndm_on_evenly_spaced_sigmas_up_to_order_3() -> None:
    s = [1.0, 0.8, 0.6, 0.4]
    assert run("ipndm_v", s)[0] == pytest.approx(run("ipndm", s)[0], abs=1e-12)
    # Its order-4 weights do not reduce to the even-step ones (55/24 ... would need t2 = 9/24, not 11/24).
    s = [1.0, 0.8, 0.6, 0.4, 0.2]
    assert abs(run("ipndm_v", s)[0] - run("ipndm", s)[0]) > 1e-4


def test_deis_integrates_with_comfyuis_10000_point_sum_not_exactly() -> None:
    # A constant slope c: the exact answer is x0 + c (sigma_end - sigma_0) for any multistep weights
    # that integrate exactly; DEIS's sum over 10000 points with both ends included misses it slightly
    # (its weights are off by ~2e-5 relative, partly cancelling here).
    c = 0.6

    def constant_slope(x: torch.Tensor, sigma: torch.Tensor, **kw) -> torch.Tensor:
        return x - c * sigma

    sigmas = [1.0, 0.8, 0.55, 0.35, 0.2]
    out = float(sample("deis", constant_slope, torch.full((1, 1), X0, dtype=torch.float64), sigmas))
    exact = X0 + c * (sigmas[-1] - sigmas[0])
    assert 1e-9 < abs(out * (1 - sigmas[-1]) - exact) < 1e-5


def _unipc_expected(bh2: bool, sigma_0: float, sigma_1: float) -> tuple[float, list[float]]:
    def alpha(s: float) -> float:
        return 1 / math.sqrt(1 + s * s)

    def std(s: float) -> float:
        return s * alpha(s)

    y0 = X0 * alpha(sigma_0)
    m0 = K * X0  # data prediction at y0: the model sees x = y0 / alpha
    h = math.log(sigma_0 / sigma_1)
    b_h = math.expm1(-h) if bh2 else -h
    y1_pred = std(sigma_1) / std(sigma_0) * y0 - alpha(sigma_1) * math.expm1(-h) * m0
    m1 = K * y1_pred / alpha(sigma_1)
    y1 = y1_pred - alpha(sigma_1) * b_h * 0.5 * (m1 - m0)  # order-1 corrector, rho = 1/2
    h2 = math.log(sigma_1 / 0.001)  # the final sigma 0 becomes 0.001
    y2 = std(0.001) / std(sigma_1) * y1 - alpha(0.001) * math.expm1(-h2) * m1
    return y2 / alpha(0.001) / (1 - 0.001), [sigma_0, sigma_1]


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
def test_uni_pc_two_steps_end_at_0_001(name: str) -> None:
    out, _, evaluated = run(name, [1.0, 0.5, 0.0])
    expected, sigmas = _unipc_expected(name == "uni_pc_bh2", 1.0, 0.5)
    assert out == pytest.approx(expected, abs=1e-12)
    assert evaluated == sigmas


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
def test_uni_pc_single_step_only_evaluates_the_model(name: str) -> None:
    out, _, evaluated = run(name, [1.0, 0.0])
    # order min(3, 0): the state is scaled into VP units and back at 0.001, then divided by 1 - 0.001.
    assert out == pytest.approx(X0 / math.sqrt(2) * math.sqrt(1 + 1e-6) / 0.999, abs=1e-12)
    assert evaluated == [1.0]
