"""Higher-order multistep ODE samplers: DPM-Solver++(3M), UniPC and iPNDM. One NFE per step.

Same signature and conventions as ``diffit.diffusion.ode_samplers``: they solve the probability-flow ODE
dx/dsigma = (x - D(x, sigma)) / sigma (EDM Eq. 4 with sigma(t) = t) on a schedule ending with 0, reuse the
last few denoiser outputs instead of evaluating more, and warm up with lower orders while that history is
short. Every step reports the order it actually used in the callback (``state["order"]``), so a run that
could not reach the nominal order (too few steps) says so.
"""

import math

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from diffit.diffusion.noise import NoiseSampler
from diffit.diffusion.sampling import Callback, Denoiser, Stepper, check_sigmas
from diffit.util import is_integer

# Adams-Bashforth coefficients for equal steps (order 1..4), newest derivative first.
AB_COEFFICIENTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def sample_dpmpp_3m(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    sigmas: Float[Tensor, "..."],  # 1-D, descending, trailing 0 (checked)
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
) -> Float[Tensor, " b *dims"]:
    """DPM-Solver++(3M) (Lu et al. 2022, multistep 3rd order with data prediction, lambda = -log sigma).

    Steps 1 and 2 are 1st and 2nd order (warm start); the final step to sigma = 0 returns D itself.
    """
    sig = check_sigmas(sigmas)
    run = Stepper(denoiser, x, callback, noise)
    history: list[tuple[float, Tensor]] = []  # (lambda, D) of the previous evaluations, newest last
    for i, (sigma, sigma_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = run.denoise(x, sigma)
        lam = -math.log(sigma)
        if sigma_next == 0:
            # Final step: x(0) is the data prediction itself (first order).
            x, order = denoised, 1
        else:
            h = -math.log(sigma_next) - lam
            ratio = sigma_next / sigma  # e^-h
            phi_1 = math.expm1(-h)  # e^-h - 1
            # Exact integration of the linear part with D held constant (DDIM, DPM-Solver++ Eq. 9).
            x_next = ratio * x - phi_1 * denoised
            order = min(3, len(history) + 1)
            if order >= 2:
                # Taylor terms of D in lambda: x(t) = e^-h x + sum_k h^k phi_(k+1)(-h) D^(k)
                # (Lu et al. 2022, Eq. 8), with phi_2 = (e^-h - 1)/h + 1, phi_3 = (e^-h - 1 + h)/h^2 - 1/2.
                phi_2 = phi_1 / h + 1
                lam_1, d_1 = history[-1]
                r0 = (lam - lam_1) / h
                d1_0 = (denoised - d_1) / r0  # ~ h D'
                if order == 2:
                    x_next = x_next + phi_2 * d1_0
                else:
                    lam_2, d_2 = history[-2]
                    r1 = (lam_1 - lam_2) / h
                    d1_1 = (d_1 - d_2) / r1
                    d2 = (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 D'' / 2
                    d1 = d1_0 + r0 * d2  # ~ h D' to second order
                    phi_3 = phi_2 / h - 0.5
                    # The D'' term is h^2 phi_3 D'' = 2 phi_3 d2; with phi_3 d2 alone the method stays 2nd
                    # order (measured in benchmarks/bench_samplers.py).
                    x_next = x_next + phi_2 * d1 - 2 * phi_3 * d2
            x = x_next
        history = [*history[-1:], (lam, denoised)]
        run.report(i, x, sigma, sigma_next, denoised, order=order)
    return x


def _unipc_coefficients(rks: list[float], h: float, *, corrector: bool) -> tuple[float, np.ndarray]:
    """(e^-h - 1, B(h) rho) of UniPC (Zhao et al. 2023, Eqs. 8-10, data prediction, hh = -h): rho solves
    R_p rho = g_p(h) / B(h) with R_p[k, j] = r_j^k and g_p[k] = (k + 1)! h phi_(k+2)(-h). Solved exactly,
    B(h) cancels in the update B(h) rho, so it is returned as the product (no bh1/bh2 switch)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    r = np.array([*rks, 1.0] if corrector else rks, dtype=np.float64)
    p = len(r)
    h_phi_k, factorial, rhs = h_phi_1 / hh - 1, 1, []
    for k in range(1, p + 1):
        rhs.append(h_phi_k * factorial)  # g_p[k - 1]
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    if p == 0:
        return h_phi_1, np.zeros(0)
    return h_phi_1, np.linalg.solve(np.stack([r**k for k in range(p)]), np.array(rhs))


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    sigmas: Float[Tensor, "..."],  # 1-D, descending, trailing 0 (checked)
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    order: int = 3,
) -> Float[Tensor, " b *dims"]:
    """UniPC (Zhao et al. 2023, Alg. 2/3): UniP-p predictor plus the UniC corrector, which reuses the next
    step's evaluation, so the order rises to p + 1 at no extra NFE. Data prediction, lambda = -log sigma.

    ``order`` is the predictor order p (1..3); the first steps warm up from order 1. The final step to
    sigma = 0 is an Euler step in sigma from the corrected point, reusing the slope (x - D)/sigma of the
    last evaluation (no extra NFE).
    """
    if not is_integer(order) or order not in (1, 2, 3):  # 2.0 passed, then failed as a slice index
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    sig = check_sigmas(sigmas)
    run = Stepper(denoiser, x, callback, noise)
    history: list[tuple[float, Tensor]] = []  # (lambda, D at the predicted point), newest last
    x_prev: Tensor | None = None  # corrected point the last predictor started from
    last_order = 0
    for i, (sigma, sigma_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = run.denoise(x, sigma)
        lam = -math.log(sigma)
        x_pred = x
        if x_prev is not None:
            # UniC corrector (Eq. 10): redo the last step from x_prev with D at this point added.
            lam_0, m0 = history[-1]
            h = lam - lam_0
            rks = [(lam_k - lam_0) / h for lam_k, _ in history[-last_order:-1][::-1]]
            d1s = [(m_k - m0) / r for (_, m_k), r in zip(history[-last_order:-1][::-1], rks, strict=True)]
            h_phi_1, b_rho = _unipc_coefficients(rks, h, corrector=True)
            x = math.exp(-h) * x_prev - h_phi_1 * m0 - float(b_rho[-1]) * (denoised - m0)
            for c, d in zip(b_rho[:-1], d1s, strict=True):
                x = x - float(c) * d
        history = [*history[-(order - 1) :], (lam, denoised)] if order > 1 else [(lam, denoised)]
        if sigma_next == 0:
            # Euler step in sigma to 0 from the corrected point with the evaluated slope (x_pred - D)/sigma.
            x, step_order = x - (x_pred - denoised), 1
        else:
            step_order = min(order, len(history))
            h = -math.log(sigma_next) - lam
            # UniP-p predictor (Eq. 8) with D differences to the step_order - 1 previous evaluations.
            past = history[-step_order:-1][::-1]
            rks = [(lam_k - lam) / h for lam_k, _ in past]
            d1s = [(m_k - denoised) / r for (_, m_k), r in zip(past, rks, strict=True)]
            h_phi_1, b_rho = _unipc_coefficients(rks, h, corrector=False)
            x_prev = x
            x = (sigma_next / sigma) * x - h_phi_1 * denoised
            for c, d in zip(b_rho, d1s, strict=True):
                x = x - float(c) * d
            last_order = step_order
        # The corrector applied at the next evaluation lifts a predictor step of order p to p + 1.
        run.report(i, x, sigma, sigma_next, denoised, order=step_order if sigma_next == 0 else step_order + 1)
    return x


@torch.no_grad()
def sample_ipndm(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    sigmas: Float[Tensor, "..."],  # 1-D, descending, trailing 0 (checked)
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    order: int = 4,
) -> Float[Tensor, " b *dims"]:
    """iPNDM (Zhang & Chen 2023, DEIS App.; improved PNDM): Adams-Bashforth on dx/dsigma = (x - D)/sigma with
    the equal-step coefficients, warm-started at orders 1, 2, 3; the step to sigma = 0 is an AB step too.

    The fixed coefficients are exact only on equal steps; on a varying schedule the method is formally
    2nd order, which is what makes it robust at few steps (measured in benchmarks/bench_samplers.py).
    """
    if not is_integer(order) or order not in (1, 2, 3, 4):
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
    sig = check_sigmas(sigmas)
    run = Stepper(denoiser, x, callback, noise)
    slopes: list[Tensor] = []  # d = (x - D)/sigma at the previous points, newest first
    for i, (sigma, sigma_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = run.denoise(x, sigma)
        slopes = [(x - denoised) / sigma, *slopes][:order]
        step_order = len(slopes)
        # Adams-Bashforth step: x_next = x + (sigma_next - sigma) sum_k c_k d_(i-k).
        coeffs = AB_COEFFICIENTS[step_order - 1]
        slope = coeffs[0] * slopes[0]
        for c, d in zip(coeffs[1:], slopes[1:], strict=True):
            slope = slope + c * d
        x = x + (sigma_next - sigma) * slope
        run.report(i, x, sigma, sigma_next, denoised, order=step_order)
    return x
