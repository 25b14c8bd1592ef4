"""Training losses, per sample (B,) so that callers can weight or mask them.

- :func:`edm_loss`: EDM's denoising score matching with log-normal sigma and the lambda(sigma) weighting
  (Karras et al. 2022, Sec. 5, Table 1) for image-space models wrapped in ``EDMPrecond``.
- :func:`adm_hybrid_loss`: ADM's L_hybrid = L_simple + L_vlb-term for epsilon models with a learned variance
  range (Nichol & Dhariwal 2021, Sec. 3.1), as the latent DiffiT release (via DiT) was trained.

Randomness only enters through the injected ``generator`` / ``noise``.
"""

import math
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from diffit.diffusion.denoisers import check_sigma_data, check_sigma_shape, per_sample_view
from diffit.diffusion.schedules import check_alphas_cumprod
from diffit.util import check_integer


def _mean_flat(x: Tensor) -> Tensor:
    return x.flatten(1).mean(dim=1)


def edm_loss(
    precond_denoiser: Callable[..., Tensor],
    x0: Float[Tensor, " b *dims"],
    *,
    y: Int[Tensor, " b"] | None = None,
    generator: torch.Generator | None = None,
    sigma: Float[Tensor, " b"] | None = None,
    noise: Float[Tensor, " b *dims"] | None = None,
    augment_labels: Float[Tensor, "b a"] | None = None,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    sigma_data: float = 0.5,
) -> Float[Tensor, " b"]:
    """EDM training loss: ln sigma ~ N(P_mean, P_std^2), n ~ N(0, sigma^2 I),
    loss = lambda(sigma) * mean ||D(x0 + n, sigma) - x0||^2 with lambda = (sigma^2 + s_d^2)/(sigma s_d)^2,
    which makes the effective target of F unit-weighted (EDM Eq. 8 and Table 1). Mean over non-batch dims.

    ``sigma`` and ``noise`` (unit normal, scaled by sigma here) may be given instead of drawn from
    ``generator``: a distributed trainer draws them for the global batch and passes each rank its slice.
    ``augment_labels`` (EDM's non-leaking augmentation) are passed on to the denoiser when given; ``x0`` is
    then the augmented batch.
    """
    # Free checks (scalars and shapes): a NaN P_std or a zero sigma_data gave a NaN loss, one sigma or one noise
    # sample was broadcast over the batch, and an integer x0 failed in torch's normal kernel.
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor, got {x0.dtype}")
    check_sigma_data(sigma_data)
    check_log_normal(P_mean, P_std)
    if sigma is not None:
        check_sigma_shape(sigma, x0)
    if noise is not None and noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    b = x0.shape[0]
    if sigma is None:
        sigma = sample_training_sigmas(b, P_mean=P_mean, P_std=P_std, generator=generator, device=x0.device)
    sigma = sigma.to(device=x0.device, dtype=x0.dtype)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    n = noise.to(device=x0.device, dtype=x0.dtype) * per_sample_view(sigma, x0)
    extra = {k: v for k, v in (("y", y), ("augment_labels", augment_labels)) if v is not None}
    denoised = precond_denoiser(x0 + n, sigma, **extra)
    return weight * _mean_flat((denoised - x0) ** 2)


def check_log_normal(P_mean: float, P_std: float) -> None:
    """ValueError unless ln sigma ~ N(P_mean, P_std^2) is a distribution: P_std finite and > 0, P_mean finite."""
    if not 0 < P_std < math.inf:
        raise ValueError(f"P_std must be a finite number > 0, got {P_std}")
    if not math.isfinite(P_mean):
        raise ValueError(f"P_mean must be a finite number, got {P_mean}")


def sample_training_sigmas(
    batch_size: int,
    *,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Float[Tensor, " b"]:
    """sigma per sample with ln sigma ~ N(P_mean, P_std^2), in float32: EDM's training distribution (Table 1)."""
    check_integer("batch_size", batch_size, minimum=0)
    check_log_normal(P_mean, P_std)
    return (torch.randn(batch_size, generator=generator, device=device, dtype=torch.float32) * P_std + P_mean).exp()


def sample_timesteps(
    batch_size: int,
    num_timesteps: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Int[Tensor, " b"]:
    """t ~ Uniform{0, ..., T-1} per sample (ADM's UniformSampler)."""
    check_integer("batch_size", batch_size)
    check_integer("num_timesteps", num_timesteps)
    return torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=device)


def normal_kl(
    mean1: Float[Tensor, "..."],
    logvar1: Float[Tensor, "..."],
    mean2: Float[Tensor, "..."],
    logvar2: Float[Tensor, "..."],
) -> Float[Tensor, "..."]:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise with broadcasting, in nats."""
    return 0.5 * (-1 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp())


def discretized_gaussian_log_likelihood(
    x: Float[Tensor, "..."], mean: Float[Tensor, "..."], log_scale: Float[Tensor, "..."], *, bin_width: float = 2 / 255
) -> Float[Tensor, "..."]:
    """log P(bin of x) under N(mean, e^(2 log_scale)) for data quantised to 256 levels in [-1, 1]
    (DDPM Sec. 3.3, ADM's L_0 decoder); the outer bins (|x| > 0.999) extend to -inf / +inf. Arguments broadcast.
    Uses the exact normal CDF (ADM uses a tanh approximation of it)."""
    inv_std = (-log_scale).exp()
    upper = inv_std * (x - mean + bin_width / 2)
    lower = inv_std * (x - mean - bin_width / 2)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X <= upper edge)
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X >= lower edge)
    log_delta = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_delta))


def adm_hybrid_loss(
    model: Callable[..., Tensor],
    x0: Float[Tensor, "b c *dims"],
    t: Int[Tensor, " b"],
    *,
    y: Int[Tensor, " b"] | None,
    alphas_cumprod: Float[Tensor, " T"],
    noise: Float[Tensor, "b c *dims"] | None = None,
    generator: torch.Generator | None = None,
) -> Float[Tensor, " b"]:
    """ADM L_hybrid per sample: mean ||eps - eps_hat||^2 + L_t, for a model ``model(x_t, t, y)`` returning
    2C channels (eps_hat, v).

    L_t (in bits per dimension) is KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0 and the
    discretised decoder NLL for t = 0; the model's mean uses a stop-gradient eps_hat so the VLB only trains
    the variance, log var = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1)/2 (Nichol & Dhariwal
    Eq. 15-16). Adding one per-timestep term with uniform t gives lambda = 1/T on the full VLB sum
    (lambda = 0.001 at T = 1000, as in the paper).
    """
    check_alphas_cumprod(alphas_cumprod, values=False)  # its shape: free (its values: where the chain is built)
    if t.dtype.is_floating_point or t.dtype == torch.bool or tuple(t.shape) != (x0.shape[0],):
        raise ValueError(
            f"t must hold one integer timestep per sample of x0 ({x0.shape[0]},), got {t.dtype} {tuple(t.shape)}"
        )
    if noise is not None and noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    T = len(alphas_cumprod)
    if bool((t < 0).any()) or bool((t >= T).any()):
        raise ValueError(f"t must lie in [0, {T - 1}]")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    # Chain coefficients at t, in float64 as ADM computes them (DDPM Eq. 4 and 7), then cast to x0's dtype.
    acp = alphas_cumprod.detach().double().to(x0.device)
    a_t = acp[t]
    a_prev = torch.where(t > 0, acp[(t - 1).clamp(min=0)], torch.ones_like(a_t))
    beta = 1 - a_t / a_prev
    # beta~_t is 0 at t = 0; ADM clips its log there to beta~_1 (the value used by the decoder term).
    beta_tilde_1 = (1 - acp[1] / acp[0]) * (1 - acp[0]) / (1 - acp[1])
    post_var = torch.where(t > 0, beta * (1 - a_prev) / (1 - a_t), beta_tilde_1)
    c = {
        "sqrt_a": a_t.sqrt(),
        "sqrt_1ma": (1 - a_t).sqrt(),
        "sqrt_recip_a": (1 / a_t).sqrt(),
        "sqrt_recipm1_a": (1 / a_t - 1).sqrt(),
        "coef_x0": beta * a_prev.sqrt() / (1 - a_t),
        "coef_xt": (1 - a_prev) * (1 - beta).sqrt() / (1 - a_t),
        "log_beta": beta.log(),
        "post_logvar": post_var.log(),
    }
    c = {k: per_sample_view(v, x0) for k, v in c.items()}

    # Forward process q(x_t | x0) (DDPM Eq. 4).
    x_t = c["sqrt_a"] * x0 + c["sqrt_1ma"] * noise
    out = model(x_t, t.to(torch.float32 if x0.dtype != torch.float64 else torch.float64), y)
    if out.shape[1] != 2 * x0.shape[1]:
        raise ValueError(f"model must return {2 * x0.shape[1]} channels (eps, v), got {out.shape[1]}")
    eps, v = out.to(x0.dtype).chunk(2, dim=1)
    mse = _mean_flat((eps - noise) ** 2)

    # p(x_{t-1} | x_t) with a frozen mean: x0_hat from the detached eps_hat, then the posterior mean.
    x0_hat = c["sqrt_recip_a"] * x_t - c["sqrt_recipm1_a"] * eps.detach()
    model_mean = c["coef_x0"] * x0_hat + c["coef_xt"] * x_t
    frac = (v + 1) / 2  # learned interpolation between log beta~_t (v = -1) and log beta_t (v = +1)
    model_logvar = frac * c["log_beta"] + (1 - frac) * c["post_logvar"]
    true_mean = c["coef_x0"] * x0 + c["coef_xt"] * x_t
    kl = _mean_flat(normal_kl(true_mean, c["post_logvar"], model_mean, model_logvar)) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / math.log(2.0)
    return mse + torch.where(t == 0, nll, kl)
