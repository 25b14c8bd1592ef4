"""A Gaussian mixture with its exact denoiser: ground truth for testing and benchmarking samplers.

Data x0 ~ sum_k w_k N(mu_k, s_k^2 I). At noise level sigma the marginal is sum_k w_k N(mu_k, (s_k^2 + sigma^2) I),
and Tweedie's formula gives the exact denoiser in closed form:

    E[x0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),

with responsibilities r_k(x) proportional to w_k N(x; mu_k, (s_k^2 + sigma^2) I). Labels select one
component (class-conditional model); the label ``num_components`` (the null class) is the full mixture,
so the mixture doubles as a classifier-free-guidance test subject.
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class GaussianMixture(nn.Module):
    """Isotropic Gaussian mixture in R^d with the exact denoiser ``forward(x, sigma, y=None) -> E[x0 | x]``."""

    def __init__(
        self, means: Float[Tensor, "k d"], stds: Float[Tensor, " k"], weights: Float[Tensor, " k"] | None = None
    ) -> None:
        """
        Args:
            means: component means mu_k.
            stds: component standard deviations s_k (> 0).
            weights: mixture weights (normalised here); uniform when None.
        """
        super().__init__()
        k = means.shape[0]
        if stds.shape != (k,) or not bool((stds > 0).all()):
            raise ValueError(f"stds must be {k} positive values, got shape {tuple(stds.shape)}")
        weights = torch.ones(k, dtype=means.dtype) if weights is None else weights.to(means.dtype)
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {k} positive values")
        self.register_buffer("means", means)
        self.register_buffer("stds", stds.to(means.dtype))
        self.register_buffer("weights", weights / weights.sum())

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> Float[Tensor, " d"]:
        """E[x0] = sum_k w_k mu_k."""
        return self.weights @ self.means

    def covariance(self) -> Float[Tensor, "d d"]:
        """Cov[x0] = sum_k w_k (s_k^2 I + mu_k mu_k^T) - E[x0] E[x0]^T."""
        d = self.means.shape[1]
        second = (self.weights * self.stds**2).sum() * torch.eye(d, dtype=self.means.dtype, device=self.means.device)
        second = second + (self.weights[:, None] * self.means).T @ self.means
        m = self.mean()
        return second - m[:, None] * m[None, :]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Float[Tensor, "n d"]:
        """n exact draws of x0."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.stds[k, None] * z.to(self.means.device)

    def forward(
        self, x: Float[Tensor, "b d"], sigma: Float[Tensor, " b"], y: Int[Tensor, " b"] | None = None
    ) -> Float[Tensor, "b d"]:
        """The exact posterior mean E[x0 | x] of the mixture at noise level ``sigma``."""
        d = x.shape[1]
        var = self.stds**2 + sigma[:, None].to(x.dtype) ** 2  # (b, k): marginal variance per component
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (b, k)
        log_r = self.weights.log() - 0.5 * d * var.log() - 0.5 * sq / var
        if y is not None:
            # A real label keeps only its component; the null label (num_components) keeps the mixture.
            keep = (y[:, None] == self.num_components) | (
                y[:, None] == torch.arange(self.num_components, device=x.device)
            )
            log_r = log_r.masked_fill(~keep, float("-inf"))
        r = log_r.softmax(dim=-1)  # (b, k) responsibilities
        posterior = self.means[None] + (self.stds**2 / var)[..., None] * (x[:, None, :] - self.means[None])
        return (r[..., None] * posterior).sum(dim=1)
