"""Multistep samplers: lms, ipndm, ipndm_v, deis, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde (+ _gpu),
uni_pc (B1) and uni_pc_bh2.

Forms (flow notation of ``core``; lambda = log((1-sigma)/sigma), VE level s = sigma/(1-sigma)):
* lms -- k-diffusion's order-4 linear multistep through the change of variables: Adams-Bashforth on
  dx_ve/ds = eps_hat with exactly integrated Lagrange weights in s.
* ipndm -- iPNDM (Zhang & Chen 2023): fixed Adams-Bashforth weights up to order 4 on the flow ODE
  dx/dsigma = v, natively in flow sigma (exact only for evenly spaced sigmas; order drops otherwise).
* ipndm_v -- the variable-step iPNDM: Adams-Bashforth weights for the actual (uneven) step sizes,
  order 4, natively in flow sigma.
* deis -- DEIS "logrho" multistep (order 3), as diffusers' DEISMultistepScheduler: eps interpolated
  by a polynomial in log s and integrated exactly over s (int P(u) e^u du); diffusers' lower order
  on the last steps below 15 steps.
* dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde -- DPM-Solver++ in data prediction for general (alpha, sigma)
  (Lu et al. 2022), which is the exact image of k-diffusion's VE formulas:
  x' = (sigma'/sigma) e^{-eta h} x + alpha' (1 - e^{-(1+eta) h}) D + ... + sigma' sqrt(1 - e^{-2 eta h}) z,
  midpoint correction for 2M (as k-diffusion and diffusers), eta = 1 for the SDE variants.
* uni_pc / uni_pc_bh2 -- UniPC (Zhao et al. 2023) order 3, data prediction, B(h) = h (bh1) or
  e^h - 1 (bh2), predictor UniP + corrector UniC, lower order on the last steps -- the algorithm of
  diffusers' UniPCMultistepScheduler.

The step into the last sigma before 0 (sigma_min on SD3's schedules) is taken at first order by
the DPM-Solver++ multisteps and UniPC: in lambda it is a large jump (e.g. sigma 0.067 -> 0.009 at
50 normal steps, h = 2.1 after h = 0.6), across which the 2M/3M extrapolation amplifies the
difference of the last predictions and UniPC's order-2 weight (exact only as h -> 0) is far off.
diffusers takes its final step at first order too. For UniPC the rule applies only where that step
is a jump (UNIPC_MAX_STEP_RATIO): on evenly spaced schedules (sgm_uniform) the higher order is the
more accurate there. Likewise ipndm_v and deis land their final step to 0 on the data prediction D
(the exact first-order step) when that gap is much wider than the step before
(FINAL_GAP_MAX_RATIO, up to 1000x on karras or exponential schedules with many steps), where an
order-4/3 extrapolation would multiply float32 rounding with the step count.

dpmpp_3m_sde differs from diffusers' SDE-DPM-Solver++(3M): diffusers weights the second difference
by alpha*((1 - e^{-2h} - 2h)/(2h)^2 - 0.5) (-> -alpha as h -> 0, not a consistent third-order
term); we use k-diffusion's -alpha*(phi_2/(2h) - 0.5) (-> 0), and the analytic tests check it.

Near sigma = 1 a schedule linear in t has lambda steps log((k+1)/k) that do not shrink with the
step count, so the lambda-based multisteps (dpmpp_*, deis, uni_pc) lose order there: on the full
sigma 1 -> 0 Gaussian problem dpmpp_2m's error falls only about 1.5x per doubling at 100 steps,
while on the interior (0.9 -> 0.1) it is second order as designed.

The first step from sigma = 1 (lambda = -inf, s = inf): every formula above is taken in its limit,
which is the first-order DDIM step x' = (1-sigma')*D + sigma'*x (plus fresh noise for the SDE
variants), and a history point at lambda = -inf contributes nothing to later steps (its weight
tends to 0), so it is dropped and the next step runs at the order the finite history allows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sd3pose.sampling.core import Run, eps_hat, half_log_snr, sigma_ve, velocity

# Multistep extrapolation is only stable for bounded ratios of a step to the steps before it. Wider
# steps are taken at first order: UniPC's step into the last sigma before 0 when it is this many
# times the previous step in lambda and large in itself (its order-2 weight is exact only as h -> 0).
# SD3's normal schedule: 3.2-4.6x and h 2-3.8 up to 50 steps (2.6x at 100); sgm_uniform, simple and
# karras stay below 3.2x and, where they come close (simple at ~600 steps), h is under 0.7 ...
UNIPC_MAX_STEP_RATIO = 3.0
UNIPC_MAX_JUMP = 1.0
# ... and ipndm_v's and deis' final step to 0 when it is this many times the previous step in sigma
# (karras from ~60 steps and exponential from ~40: 5-50x; normal, sgm_uniform, simple: at most 4.1x).
FINAL_GAP_MAX_RATIO = 5.0


def _is_jump_in_lambda(s: list[float], i: int) -> bool:
    """Whether the log-SNR step s[i] -> s[i+1] is a jump: large, and much larger than the step before."""
    if i < 1 or s[i - 1] >= 1.0:
        return False
    before = half_log_snr(s[i]) - half_log_snr(s[i - 1])
    step = half_log_snr(s[i + 1]) - half_log_snr(s[i])
    return step > UNIPC_MAX_JUMP and step > UNIPC_MAX_STEP_RATIO * before


def _final_gap_too_wide(s: list[float], i: int) -> bool:
    """Whether s[i] -> 0 is the final step and much wider than the step before it."""
    return s[i + 1] == 0.0 and i >= 1 and s[i] > FINAL_GAP_MAX_RATIO * (s[i - 1] - s[i])


# Tiny polynomials (degree <= 3) as ascending coefficient lists: plain Python is several times
# faster than numpy's polynomial module at this size, and these run once per step.
def _lagrange(nodes: list[float], j: int) -> list[float]:
    """Coefficients (ascending) of the Lagrange basis polynomial that is 1 at nodes[j], 0 at the others."""
    poly = [1.0]
    for k, node in enumerate(nodes):
        if k != j:
            scale = 1.0 / (nodes[j] - node)
            shifted = [0.0, *poly]  # poly * u
            poly = [(shifted[m] - node * (poly[m] if m < len(poly) else 0.0)) * scale for m in range(len(shifted))]
    return poly


def _polyval(poly: list[float], u: float) -> float:
    total = 0.0
    for c in reversed(poly):
        total = total * u + c
    return total


def _ab_weights(nodes: list[float], a: float, b: float) -> list[float]:
    """Adams-Bashforth weights: integral over [a, b] of each Lagrange basis polynomial of ``nodes``."""
    weights = []
    for j in range(len(nodes)):
        integral = [0.0, *(c / (m + 1) for m, c in enumerate(_lagrange(nodes, j)))]
        weights.append(_polyval(integral, b) - _polyval(integral, a))
    return weights


def _ddim(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    return (1.0 - sigma_next) * denoised + sigma_next * eps_hat(x, denoised, sigma)


def lms(run: Run, x: torch.Tensor, order: int = 4) -> torch.Tensor:
    s = run.sigmas
    hist: list[tuple[float, torch.Tensor]] = []  # (s_ve, eps_hat), newest first
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        if s[i] >= 1.0 or s[i + 1] == 0.0:
            x = _ddim(x, denoised, s[i], s[i + 1])  # limit from s = inf / exact landing on 0
        else:
            hist.insert(0, (sigma_ve(s[i]), eps_hat(x, denoised, s[i])))
            del hist[order:]
            nodes = [n for n, _ in hist]
            w = _ab_weights(nodes, nodes[0], sigma_ve(s[i + 1]))
            x_ve = x / (1.0 - s[i]) + sum(wj * e for wj, (_, e) in zip(w, hist, strict=True))
            x = (1.0 - s[i + 1]) * x_ve
        run.step_done(i, x, denoised)
    return x


_IPNDM = ([1.0], [3 / 2, -1 / 2], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24])


def ipndm(run: Run, x: torch.Tensor, order: int = 4) -> torch.Tensor:
    s = run.sigmas
    hist: list[torch.Tensor] = []
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        hist.insert(0, velocity(x, denoised, s[i]))
        del hist[order:]
        w = _IPNDM[len(hist) - 1]
        x = x + (s[i + 1] - s[i]) * sum(wj * d for wj, d in zip(w, hist, strict=True))
        run.step_done(i, x, denoised)
    return x


def ipndm_v(run: Run, x: torch.Tensor, order: int = 4) -> torch.Tensor:
    s = run.sigmas
    hist: list[tuple[float, torch.Tensor]] = []
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        hist.insert(0, (s[i], velocity(x, denoised, s[i])))
        del hist[order:]
        if _final_gap_too_wide(s, i):
            x = denoised  # first order: lands on D (see the module docstring)
        else:
            w = _ab_weights([n for n, _ in hist], s[i], s[i + 1])
            x = x + sum(wj * d for wj, (_, d) in zip(w, hist, strict=True))
        run.step_done(i, x, denoised)
    return x


def _exp_poly_integral(poly: list[float], u: float) -> float:
    """Antiderivative of poly(u)*e^u at u: e^u * sum_m (-1)^m poly^(m)(u); 0 at u = -inf."""
    if u == -math.inf:
        return 0.0
    total, deriv, sign = 0.0, poly, 1.0
    while deriv:
        total += sign * _polyval(deriv, u)
        deriv, sign = [m * c for m, c in enumerate(deriv)][1:], -sign
    return math.exp(u) * total


def deis(run: Run, x: torch.Tensor, order: int = 3) -> torch.Tensor:
    s = run.sigmas
    n = run.total
    hist: list[tuple[float, torch.Tensor]] = []  # (log s_ve, eps_hat), newest first
    for i in range(n):
        denoised = run.denoise(x, s[i])
        if s[i] >= 1.0:
            x = _ddim(x, denoised, s[i], s[i + 1])
        elif _final_gap_too_wide(s, i):
            x = denoised  # first order: lands on D (see the module docstring)
        else:
            hist.insert(0, (math.log(sigma_ve(s[i])), eps_hat(x, denoised, s[i])))
            del hist[order:]
            k = len(hist)
            if n < 15:  # diffusers' lower_order_final: order 1 on the last step, <= 2 on the one before
                k = min(k, n - i)
            nodes = [u for u, _ in hist[:k]]
            u_t = -math.inf if s[i + 1] == 0.0 else math.log(sigma_ve(s[i + 1]))
            x_ve = x / (1.0 - s[i])
            for j in range(k):
                poly = _lagrange(nodes, j)
                w = _exp_poly_integral(poly, u_t) - _exp_poly_integral(poly, nodes[0])
                x_ve = x_ve + w * hist[j][1]
            x = (1.0 - s[i + 1]) * x_ve
        run.step_done(i, x, denoised)
    return x


def _dpmpp_multistep(run: Run, x: torch.Tensor, order: int, eta: float) -> torch.Tensor:
    """DPM-Solver++(2M) / SDE-DPM-Solver++(2M, 3M) in flow form, midpoint 2M correction."""
    s = run.sigmas
    hist: list[tuple[float, torch.Tensor]] = []  # (h of the step that ended here, D), newest first
    h_prev: list[float] = []
    for i in range(run.total):
        denoised = run.denoise(x, s[i])
        if s[i + 1] == 0.0:
            x = denoised
        else:
            lam, lam_next = half_log_snr(s[i]), half_log_snr(s[i + 1])
            h = lam_next - lam
            if math.isinf(h):  # from sigma = 1: the first-order limit
                x = (1.0 - s[i + 1]) * denoised + (s[i + 1] * (0.0 if eta else 1.0)) * x
                if eta:
                    x = x + s[i + 1] * run.noise()
            else:
                h_eta = h * (1.0 + eta)
                alpha_next = 1.0 - s[i + 1]
                phi_1 = -math.expm1(-h_eta)
                # x_next is a linear combination of x, D, the history and noise: weights first, then one
                # pass over each tensor (the sampler's own time per step is benchmarked).
                w_d, w_h0, w_h1 = alpha_next * phi_1, 0.0, 0.0
                usable = [hp for hp in h_prev if math.isfinite(hp)]
                if i + 2 < len(s) and s[i + 2] == 0.0:
                    usable = []  # first order into the last sigma before 0 (see docstring)
                if order == 2 and usable:
                    # DPM-Solver++(2M) midpoint correction, D_d = (1 + 1/2r) D - 1/2r D_old (same with eta).
                    w = alpha_next * phi_1 * 0.5 * h / usable[0]
                    w_d, w_h0 = w_d + w, -w
                elif order == 3 and usable:
                    phi_2 = math.expm1(-h_eta) / h_eta + 1.0
                    phi_3 = phi_2 / h_eta - 0.5
                    r0 = usable[0] / h
                    if len(usable) >= 2:
                        # phi_2 * d1 - phi_3 * d2 with d1_0 = (D - H0)/r0, d1_1 = (H0 - H1)/r1,
                        # d1 = d1_0 + (d1_0 - d1_1) r0/(r0+r1), d2 = (d1_0 - d1_1)/(r0+r1).
                        r1 = usable[1] / h
                        q = r0 / (r0 + r1)
                        a = (phi_2 * (1.0 + q) - phi_3 / (r0 + r1)) / r0  # weight of D - H0
                        b = (phi_3 / (r0 + r1) - phi_2 * q) / r1  # weight of H0 - H1
                        w_d, w_h0, w_h1 = w_d + alpha_next * a, alpha_next * (b - a), -alpha_next * b
                    else:
                        w = alpha_next * phi_2 / r0
                        w_d, w_h0 = w_d + w, -w
                x = x * ((s[i + 1] / s[i]) * math.exp(-eta * h))
                x.add_(denoised, alpha=w_d)
                if w_h0:
                    x.add_(hist[0][1], alpha=w_h0)
                if w_h1:
                    x.add_(hist[1][1], alpha=w_h1)
                if eta:
                    x.add_(run.noise(), alpha=s[i + 1] * math.sqrt(-math.expm1(-2.0 * eta * h)))
            hist.insert(0, (h, denoised))
            h_prev.insert(0, h)
            del hist[2:], h_prev[2:]
        run.step_done(i, x, denoised)
    return x


def dpmpp_2m(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _dpmpp_multistep(run, x, order=2, eta=0.0)


def dpmpp_2m_sde(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _dpmpp_multistep(run, x, order=2, eta=1.0)


def dpmpp_3m_sde(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _dpmpp_multistep(run, x, order=3, eta=1.0)


def _unipc_coeffs(rks: list[float], hh: float, b_h: float, order: int, corrector: bool) -> tuple[np.ndarray, bool]:
    """UniPC weights multiplied by B(h) (so B(h) = -inf for bh1 at h = inf cancels exactly).

    Returns (B(h) * rhos, ok). For the predictor of order 2 and the corrector of order 1, UniPC
    uses the fixed rho = 1/2 whenever h is finite (as diffusers does).
    """
    if math.isfinite(hh):
        if not corrector and order == 2:
            return np.array([0.5 * b_h]), True
        if corrector and order == 1:
            return np.array([0.5 * b_h]), True
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1.0
    g = []
    for k in range(1, order + 1):
        g.append(h_phi_k * factorial)  # = b_k * B(h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    nodes = np.array([*rks, 1.0])
    R = np.stack([nodes**k for k in range(order)])
    g = np.array(g)
    if corrector:
        return np.linalg.solve(R, g), True
    return np.linalg.solve(R[:-1, :-1], g[:-1]), True


def _unipc(run: Run, x: torch.Tensor, bh2: bool, order: int = 3) -> torch.Tensor:
    s = run.sigmas
    n = run.total
    lams = [half_log_snr(v) for v in s]
    outs: list[torch.Tensor] = []  # data predictions, oldest first; outs[k] belongs to step idx[k]
    idx: list[int] = []
    last_x: torch.Tensor | None = None
    last_order = 0

    def update(x_s: torch.Tensor, i: int, k: int, m_t: torch.Tensor | None) -> torch.Tensor:
        """UniP (m_t None) or UniC (m_t = model output at sigmas[i+1]) from step i at order k."""
        m0 = outs[-1]
        sig_t, sig_s = s[i + 1], s[i]
        h = lams[i + 1] - lams[i]
        hh = -h
        # The update is a linear combination of x_s, m0, the history and m_t: gather scalar weights
        # first and touch each tensor once (the per-step overhead is what bench/sampling_overhead.py measures).
        m0_weight = -(1.0 - sig_t) * math.expm1(hh)
        # History terms that are finite (a point at lambda = -inf has weight -> 0).
        rks, history = [], []
        for j in range(1, k):
            if len(outs) <= j or not math.isfinite(lams[idx[-(j + 1)]]):
                break
            rks.append((lams[idx[-(j + 1)]] - lams[i]) / h)
            history.append(outs[-(j + 1)])
        corrector = m_t is not None
        k_eff = len(rks) + 1
        terms: list[tuple[float, torch.Tensor]] = []
        if corrector or k_eff > 1:
            b_h = math.expm1(hh) if bh2 else hh
            brhos, _ = _unipc_coeffs(rks, hh, b_h, k_eff, corrector)
            scale = -(1.0 - sig_t)
            for c, rk, out in zip(brhos, rks, history, strict=False):  # D1_j = (out_j - m0) / r_j
                weight = float(c) / rk
                terms.append((scale * weight, out))
                m0_weight -= scale * weight
            if corrector:
                terms.append((scale * float(brhos[-1]), m_t))
                m0_weight -= scale * float(brhos[-1])
        result = x_s * (sig_t / sig_s)
        result.add_(m0, alpha=m0_weight)
        for weight, tensor in terms:
            result.add_(tensor, alpha=weight)
        return result

    for i in range(n):
        denoised = run.denoise(x, s[i])
        if last_x is not None:  # UniC: correct the previous predictor result with this evaluation
            x = update(last_x, i - 1, last_order, denoised)
        outs.append(denoised)
        idx.append(i)
        del outs[:-order], idx[:-order]
        this_order = min(order, n - i, len(outs))  # warm-up and lower order at the end
        if i + 2 <= n and s[i + 2] == 0.0 and _is_jump_in_lambda(s, i):
            this_order = 1  # first order across the jump into sigma_min (see the module docstring)
        last_x, last_order = x, this_order
        # On the last step the order-1 predictor lands exactly on D.
        x = denoised if s[i + 1] == 0.0 else update(x, i, this_order, None)
        run.step_done(i, x, denoised)
    return x


def uni_pc(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _unipc(run, x, bh2=False)


def uni_pc_bh2(run: Run, x: torch.Tensor) -> torch.Tensor:
    return _unipc(run, x, bh2=True)
