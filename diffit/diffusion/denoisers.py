"""Denoiser wrappers: turn a backbone into ``denoiser(x, sigma, y=None) -> x0_hat`` in sigma-scaled space.

Backbones know nothing of noise schedules; the wrapper owns the preconditioning:

- :class:`EDMPrecond` for image-space models trained the EDM way (the paper's image-space DiffiT),
  backbone called as ``model(c_in * x, c_noise, y)``.
- :class:`VPEpsDenoiser` for ADM-style epsilon-prediction models with a DDPM timestep input (the latent
  DiffiT release), backbone called as ``model(x_t, t, y)``.
"""

import math
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from diffit.diffusion.schedules import check_alphas_cumprod, sigma_to_timestep


def per_sample_view(sigma: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against x, in x's dtype."""
    return sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def check_sigma_shape(sigma: Tensor, x: Tensor) -> None:
    """ValueError unless ``sigma`` holds one noise level per sample of ``x`` (B,): one sigma, or a (B, 1), would be
    broadcast against x without a word. Free: a shape comparison."""
    if tuple(sigma.shape) != (x.shape[0],):
        raise ValueError(
            f"sigma must have shape ({x.shape[0]},), one noise level per sample of x, got {tuple(sigma.shape)}"
        )


def check_sigma_data(sigma_data: float) -> None:
    """The data's standard deviation, as preconditioning and its objective take it: finite and > 0."""
    if not 0 < sigma_data < math.inf:
        raise ValueError(f"sigma_data must be a finite number > 0, got {sigma_data}")


def edm_coefficients(
    sigma: Float[Tensor, "*s"], sigma_data: float = 0.5
) -> tuple[Float[Tensor, "*s"], Float[Tensor, "*s"], Float[Tensor, "*s"], Float[Tensor, "*s"]]:
    """EDM Table 1 preconditioning (c_skip, c_out, c_in, c_noise) for D = c_skip x + c_out F(c_in x, c_noise).

    c_skip = s_d^2/(sigma^2 + s_d^2), c_out = sigma s_d/sqrt(sigma^2 + s_d^2), c_in = 1/sqrt(sigma^2 + s_d^2),
    c_noise = ln(sigma)/4: the network input and its training target both have unit variance (EDM App. B.6).
    """
    check_sigma_data(sigma_data)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1 / total.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """EDM preconditioning (Karras et al. 2022, Sec. 5 / Table 1) around an image-space backbone F."""

    def __init__(self, model: Callable[..., Tensor], *, sigma_data: float = 0.5) -> None:
        """
        Args:
            model: backbone ``model(c_in * x, c_noise, y) -> F`` with c_noise a (B,) float tensor and F shaped
                like x; ``y`` is None for unconditional models.
            sigma_data: standard deviation of the training data (0.5 for images in [-1, 1]).
        """
        super().__init__()
        check_sigma_data(sigma_data)
        self.model = model
        self.sigma_data = sigma_data

    def forward(
        self,
        x: Float[Tensor, " b *dims"],
        sigma: Float[Tensor, " b"],
        y: Int[Tensor, " b"] | None = None,
        augment_labels: Float[Tensor, "b a"] | None = None,
    ) -> Float[Tensor, " b *dims"]:
        """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise, y) (EDM Eq. 7): the clean-image estimate."""
        check_sigma_shape(sigma, x)
        # Coefficients in float32 at least: c_noise = ln(sigma)/4 must not round in bf16.
        sigma = sigma if sigma.dtype == torch.float64 else sigma.float()
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        # Augmentation labels (EDM's non-leaking augmentation) only reach backbones that take them.
        extra = {} if augment_labels is None else {"augment_labels": augment_labels}
        f = self.model(per_sample_view(c_in, x) * x, c_noise, y, **extra)
        if f.shape != x.shape:  # it would broadcast into D silently
            raise ValueError(f"model must return a tensor shaped like x {tuple(x.shape)}, got {tuple(f.shape)}")
        # D(x; sigma) = c_skip x + c_out F (EDM Eq. 7).
        return per_sample_view(c_skip, x) * x + per_sample_view(c_out, x) * f.to(x.dtype)


class VPEpsDenoiser(nn.Module):
    """An ADM-style epsilon model on a discrete VP chain, seen as a sigma-space denoiser.

    With alpha_bar = 1/(1 + sigma^2): x_t = x / sqrt(1 + sigma^2) = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps,
    so x0_hat = x - sigma * eps_hat. sigma is mapped to the DDPM timestep t (nearest integer, or the
    log-sigma interpolation) and passed to the model as a float (B,) tensor in [0, T-1].

    With ``learned_sigma`` the model returns 2C channels: eps, then ADM's variance interpolation v in
    [-1, 1]; :meth:`forward` drops v, :meth:`denoise_with_variance` returns it too (what ``sample_ddpm``
    asks for).
    """

    def __init__(
        self,
        model: Callable[..., Tensor],
        *,
        alphas_cumprod: Float[Tensor, " t"],
        learned_sigma: bool = True,
        continuous_timesteps: bool = False,
    ) -> None:
        """
        Args:
            model: backbone ``model(x_t, t, y) -> out`` with t a float (B,) DDPM timestep.
            alphas_cumprod: the training chain's alpha_bar (T,), e.g. ``betas_to_alphas_cumprod(linear_betas())``.
            learned_sigma: the model outputs 2C channels (eps, v) rather than C (eps).
            continuous_timesteps: pass the fractional timestep of sigma instead of the nearest integer one
                (useful for sigmas that are not on the training chain, e.g. Karras schedules).
        """
        super().__init__()
        check_alphas_cumprod(alphas_cumprod)
        self.model = model
        self.learned_sigma = learned_sigma
        self.continuous_timesteps = continuous_timesteps
        # A plain float64 tensor, not a buffer: module casts (.half()) must not round the schedule;
        # sigma_to_timestep moves it to sigma's device.
        self.alphas_cumprod = alphas_cumprod.detach().double().cpu()

    def timestep(self, sigma: Float[Tensor, " b"]) -> Float[Tensor, " b"]:
        """The DDPM timestep fed to the model for noise level sigma."""
        return sigma_to_timestep(sigma, self.alphas_cumprod, continuous=self.continuous_timesteps)

    def denoise_with_variance(
        self, x: Float[Tensor, "b c *dims"], sigma: Float[Tensor, " b"], y: Int[Tensor, " b"] | None = None
    ) -> tuple[Float[Tensor, "b c *dims"], Float[Tensor, "b c *dims"] | None]:
        """(x0_hat, v) with v the learned variance interpolation (None without ``learned_sigma``)."""
        check_sigma_shape(sigma, x)
        s = per_sample_view(sigma, x)
        x_t = x / (1 + s**2).sqrt()
        out = self.model(x_t, self.timestep(sigma), y)
        channels = x.shape[1] * (2 if self.learned_sigma else 1)
        if out.shape[1] != channels:
            raise ValueError(
                f"model must return {channels} channels for {x.shape[1]}-channel input, got {out.shape[1]}"
            )
        eps, v = out.chunk(2, dim=1) if self.learned_sigma else (out, None)
        # x0_hat = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) = x - sigma eps (ADM pred_xstart_from_eps).
        x0 = x - s * eps.to(x.dtype)
        return x0, v

    def forward(
        self, x: Float[Tensor, "b c *dims"], sigma: Float[Tensor, " b"], y: Int[Tensor, " b"] | None = None
    ) -> Float[Tensor, "b c *dims"]:
        """The clean-image estimate x0_hat from the backbone's epsilon prediction."""
        return self.denoise_with_variance(x, sigma, y)[0]
