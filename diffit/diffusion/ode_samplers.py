"""Probability-flow ODE samplers: Euler, Heun (EDM Algorithm 1), DPM-Solver++(2M) and DDIM.

All solve EDM Eq. 4 in the sigma-scaled space with sigma(t) = t, where the ODE reads
dx/dsigma = (x - D(x, sigma)) / sigma. Shared signature::

    sample_X(denoiser, x, sigmas, *, callback=None, noise=None, ...) -> x

``x`` is the starting noise already multiplied by sigmas[0]; ``sigmas`` is 1-D, strictly descending, with a
trailing zero (see ``diffit.diffusion.schedules``); ``noise`` is an injected noise sampler (only DDIM with
eta > 0 draws from it); ``callback`` receives {i, x, sigma, sigma_next, denoised, nfe, order} after every
step, ``order`` being that step's order (lower on warm-up and final steps).
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor

from diffit.diffusion.noise import NoiseSampler
from diffit.diffusion.sampling import Callback, Denoiser, Stepper, check_sigmas


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    sigmas: Float[Tensor, "..."],  # 1-D, descending, trailing 0 (checked)
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
) -> Float[Tensor, " b *dims"]:
    """Euler's method on the probability-flow ODE (EDM Eq. 4); first order, one NFE per step."""
    sig = check_sigmas(sigmas)
    run = Stepper(denoiser, x, callback, noise)
    for i, (sigma, sigma_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = run.denoise(x, sigma)
        d = (x - denoised) / sigma
        # Euler step.
        x = x + (sigma_next - sigma) * d
        run.report(i, x, sigma, sigma_next, denoised, order=1)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    sigmas: Float[Tensor, "..."],  # 1-D, descending, trailing 0 (checked)
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
) -> Float[Tensor, " b *dims"]:
    """EDM Algorithm 1: Heun's 2nd-order method; the last step (to sigma = 0) stays Euler, so n steps cost
    2n - 1 NFE (18 steps -> 35 NFE)."""
    sig = check_sigmas(sigmas)
    run = Stepper(denoiser, x, callback, noise)
    for i, (sigma, sigma_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = run.denoise(x, sigma)
        d = (x - denoised) / sigma
        # Euler step.
        x_next = x + (sigma_next - sigma) * d
        # 2nd order correction (trapezoidal rule), except on the final step where D(x, 0) is undefined.
        if sigma_next > 0:
            d_next = (x_next - run.denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
        run.report(i, x, sigma, sigma_next, denoised, order=2 if sigma_next > 0 else 1)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    sigmas: Float[Tensor, "..."],  # 1-D, descending, trailing 0 (checked)
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
) -> Float[Tensor, " b *dims"]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep 2nd order in lambda = -log sigma with data
    prediction; one NFE per step. The first step and the final one (to sigma = 0) are first order."""
    sig = check_sigmas(sigmas)
    run = Stepper(denoiser, x, callback, noise)
    old_denoised: Tensor | None = None
    h_last = 0.0
    for i, (sigma, sigma_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = run.denoise(x, sigma)
        if old_denoised is None or sigma_next == 0:
            # First-order (DDIM) update; at sigma_next = 0 it returns the denoised estimate itself.
            d_eff = denoised
        else:
            # Linear extrapolation of D in lambda across the last two points: with r = h_last / h,
            # D_eff = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1} (Lu et al. 2022, Eq. 6 / Algorithm 2).
            h = math.log(sigma / sigma_next)
            r = h_last / h
            d_eff = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        # Exact integration of the linear part (e^-h = sigma_next/sigma): x_next = e^-h x + (1 - e^-h) D_eff.
        ratio = sigma_next / sigma
        x = ratio * x + (1 - ratio) * d_eff
        order = 1 if old_denoised is None or sigma_next == 0 else 2
        h_last = math.log(sigma / sigma_next) if sigma_next > 0 else 0.0
        old_denoised = denoised
        run.report(i, x, sigma, sigma_next, denoised, order=order)
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    sigmas: Float[Tensor, "..."],  # 1-D, descending, trailing 0 (checked)
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 0.0,
) -> Float[Tensor, " b *dims"]:
    """DDIM (Song et al. 2021, Eq. 12) in sigma space: x_next = D + sigma_down (x - D)/sigma + sigma_up z.

    With sigma_up = eta * sigma_next * sqrt(1 - sigma_next^2/sigma^2) (the VE form of DDIM's
    sigma_t(eta)) and sigma_down = sqrt(sigma_next^2 - sigma_up^2). eta = 0 is deterministic and equals
    Euler on the ODE step for step; eta = 1 is ancestral sampling with the DDPM posterior variance.
    """
    if not 0 <= eta < math.inf:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    sig = check_sigmas(sigmas)
    run = Stepper(denoiser, x, callback, noise)
    for i, (sigma, sigma_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = run.denoise(x, sigma)
        sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(1 - (sigma_next / sigma) ** 2))
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        # Deterministic move to sigma_down along the predicted noise direction, then fresh noise sigma_up.
        x = denoised + (sigma_down / sigma) * (x - denoised)
        if sigma_up > 0:
            x = x + sigma_up * run.draw(x)
        run.report(i, x, sigma, sigma_next, denoised, order=1)
    return x
