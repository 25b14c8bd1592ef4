"""Stochastic samplers: EDM Algorithm 2, Euler-Maruyama on the reverse SDE, and ancestral DDPM.

Same signature and conventions as ``diffit.diffusion.ode_samplers``; every random draw comes from the
injected ``noise`` sampler (default: the global RNG), so per-sample seeds reproduce exactly.
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor

from diffit.diffusion.noise import NoiseSampler
from diffit.diffusion.sampling import Callback, Denoiser, Stepper, check_sigmas


@torch.no_grad()
def sample_edm_stochastic(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    sigmas: Float[Tensor, "..."],  # 1-D, descending, trailing 0 (checked)
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
) -> Float[Tensor, " b *dims"]:
    """EDM Algorithm 2: raise the noise level by gamma = min(S_churn/n, sqrt(2) - 1) for sigma in
    [S_tmin, S_tmax] with fresh noise scaled by S_noise, then take a Heun step back down.
    S_churn = 0 is exactly :func:`sample_heun`."""
    for name, value in (("S_churn", S_churn), ("S_noise", S_noise)):
        if not 0 <= value < math.inf:  # NaN fails too
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if not 0 <= S_tmin <= S_tmax:
        raise ValueError(f"S_tmin and S_tmax must satisfy 0 <= S_tmin <= S_tmax, got S_tmin={S_tmin}, S_tmax={S_tmax}")
    sig = check_sigmas(sigmas)
    run = Stepper(denoiser, x, callback, noise)
    n = len(sig) - 1
    for i, (sigma, sigma_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        # Increase noise temporarily (Algorithm 2, lines 4-6).
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * S_noise * run.draw(x)
        # Euler step.
        denoised = run.denoise(x, sigma_hat)
        d = (x - denoised) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        # 2nd order correction.
        if sigma_next > 0:
            d_next = (x_next - run.denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
        run.report(i, x, sigma, sigma_next, denoised, sigma_hat=sigma_hat)
    return x


@torch.no_grad()
def sample_euler_maruyama(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    sigmas: Float[Tensor, "..."],  # 1-D, descending, trailing 0 (checked)
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
) -> Float[Tensor, " b *dims"]:
    """Euler-Maruyama on the reverse SDE dx = -2 sigma score dsigma + sqrt(2 sigma) dW (EDM Eq. 6 with
    beta(t) = sigma'/sigma; Song et al. 2021 Eq. 6), score = (D - x) / sigma^2.

    The VP and VE SDEs are the same process in the sigma-scaled space (EDM Eq. 4 / App. B.2), so "VP"
    vs "VE" is only the schedule passed in (e.g. :func:`respaced_sigmas` vs :func:`karras_sigmas`). The
    final step to sigma = 0 returns D(x, sigma_min) (Tweedie denoising), the usual last step.
    """
    sig = check_sigmas(sigmas)
    run = Stepper(denoiser, x, callback, noise)
    for i, (sigma, sigma_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            # Drift 2 (x - D)/sigma per unit sigma (twice the ODE's), diffusion g^2 dt = 2 sigma |dsigma|.
            x = x + 2 * (sigma_next - sigma) * (x - denoised) / sigma
            x = x + math.sqrt(2 * sigma * (sigma - sigma_next)) * run.draw(x)
        run.report(i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: Float[Tensor, " b *dims"],
    sigmas: Float[Tensor, "..."],  # 1-D, descending, trailing 0 (checked)
    *,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    variance: str = "small",
) -> Float[Tensor, " b *dims"]:
    """Ancestral DDPM sampling (Ho et al. 2020, Alg. 2; ADM's p_sample) on the (respaced) chain ``sigmas``.

    Each step draws x_next ~ N(mu, var) with mu the posterior mean of q(x_next | x, x0 = D):
    in sigma space the forward chain is x = x_next + sqrt(sigma^2 - sigma_next^2) z, whose Brownian-bridge
    posterior has mean D + (sigma_next/sigma)^2 (x - D) and variance
    ``small`` = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2  (beta-tilde / alpha_bar_next), or
    ``large`` = (sigma^2 - sigma_next^2) (1 + sigma_next^2) / (1 + sigma^2)  (beta / alpha_bar_next).
    When the denoiser provides ``denoise_with_variance`` (ADM learned range, Nichol & Dhariwal Eq. 15),
    log var = frac log(large) + (1 - frac) log(small), frac = (v + 1)/2, overriding ``variance``; this is
    how the release samples (250 respaced steps). ``large``/learned read sigmas as a VP chain
    (alpha_bar = 1/(1 + sigma^2)). The final step to sigma = 0 returns D without noise, as ADM does.
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    sig = check_sigmas(sigmas)
    run = Stepper(denoiser, x, callback, noise)
    for i, (sigma, sigma_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised, v = run.denoise_and_variance(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            # Posterior mean of q(x_next | x, x0 = D) (DDPM Eq. 7 divided by sqrt(alpha_bar_next)).
            mean = denoised + (sigma_next / sigma) ** 2 * (x - denoised)
            log_small = math.log(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
            log_large = math.log((sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2))
            if v is not None:
                frac = (v.to(x.dtype) + 1) / 2
                std = (0.5 * (frac * log_large + (1 - frac) * log_small)).exp()
            else:
                std = math.exp(0.5 * (log_small if variance == "small" else log_large))
            x = mean + std * run.draw(x)
        run.report(i, x, sigma, sigma_next, denoised)
    return x
