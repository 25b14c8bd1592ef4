"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser transform.

    D_guided = D(x, sigma, null) + s * (D(x, sigma, y) - D(x, sigma, null))

s = 1 is the conditional model, s = 0 the unconditional one, s > 1 extrapolates away from the unconditional
prediction. Because x0_hat = x - sigma * eps_hat is affine in eps_hat with the same x in both halves, guiding
x0_hat is exactly guiding eps_hat (what DiT/DiffiT code does).

The scale may vary with the noise level: a float is constant; :class:`PowerCosineScale` is the DiffiT
release's schedule. A guidance interval (Kynkaanniemi et al. 2024) restricts guidance to
sigma in [lo, hi]; outside it only the conditional pass runs, and the NFE accounting says so.
"""

import math
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from diffit.diffusion.schedules import check_alphas_cumprod, sigma_to_timestep
from diffit.util import check_integer

GuidanceScale = Callable[[Tensor], Tensor]


class PowerCosineScale:
    """The DiffiT release's scale schedule, s(t) = 1 + (w - 1) * (1 - cos(pi * (1 - t/T)^power)) / 2.

    t is the (continuous) DDPM timestep of sigma on the training chain ``alphas_cumprod`` (T = its length):
    s = 1 at t = T (pure noise) rising to w at t = 0, so guidance acts mostly at low noise. The release uses
    w = 4.4, power 4 for ImageNet-256.
    """

    def __init__(self, w: float, *, alphas_cumprod: Float[Tensor, " t"], power: float = 4.0) -> None:
        if not 0 <= w < math.inf:
            raise ValueError(f"w (guidance scale) must be a finite number >= 0, got {w}")
        if not 0 < power < math.inf:
            raise ValueError(f"power must be a finite number > 0, got {power}")
        check_alphas_cumprod(alphas_cumprod)
        self.w = w
        self.power = power
        self.alphas_cumprod = alphas_cumprod.detach().double().cpu()

    def __call__(self, sigma: Float[Tensor, " b"]) -> Float[Tensor, " b"]:
        t = sigma_to_timestep(sigma, self.alphas_cumprod, continuous=True).double()
        T = len(self.alphas_cumprod)
        ramp = 0.5 * (1 - torch.cos(torch.pi * (1 - t / T) ** self.power))
        return (1 + (self.w - 1) * ramp).to(sigma.dtype)


def _check_labels(y: object) -> None:
    if not isinstance(y, Tensor):  # None failed in torch.full_like
        raise ValueError(f"y must be the class labels (B,) to guide towards, got {type(y).__name__}")


class ClassifierFreeGuidance(nn.Module):
    """Guided denoiser ``forward(x, sigma, y) -> x0_hat`` from a class-conditional one whose label table has a
    null class ``num_classes`` (label dropout in training); cond and uncond run as one batch of 2B."""

    def __init__(
        self,
        denoiser: Callable[..., Tensor],
        *,
        num_classes: int,
        scale: float | GuidanceScale,
        guidance_channels: int | None = None,
        interval: tuple[float, float] | None = None,
    ) -> None:
        """
        Args:
            denoiser: conditional denoiser ``denoiser(x, sigma, y)`` (e.g. EDMPrecond, VPEpsDenoiser).
            num_classes: number of real classes; label ``num_classes`` is the null (unconditional) label.
            scale: guidance scale s >= 0 (float) or a callable sigma (B,) -> s (B,) such as PowerCosineScale.
            guidance_channels: guide only the first k channels, the rest (and the learned variance) come from
                the conditional half; None guides all. 3 reproduces DiT/DiffiT (4-channel latents).
            interval: (sigma_lo, sigma_hi): guide only for sigma in this closed interval; None: everywhere.
        """
        super().__init__()
        check_integer("num_classes", num_classes)
        if not callable(scale) and not 0 <= scale <= torch.finfo(torch.float32).max:  # 1e39 overflowed in torch
            raise ValueError(f"scale (guidance scale) must be a finite number >= 0 (float32), got {scale}")
        if guidance_channels is not None:  # 1.5 passed, then failed as a slice index
            check_integer("guidance_channels", guidance_channels)
        if interval is not None and not 0 <= interval[0] <= interval[1]:
            raise ValueError(f"interval must be (sigma_lo, sigma_hi) with 0 <= lo <= hi, got {interval}")
        self.denoiser = denoiser
        self.num_classes = num_classes
        self.scale = scale
        self.guidance_channels = guidance_channels
        self.interval = interval

    def active(self, sigma: Float[Tensor, " b"]) -> torch.Tensor:
        """Which samples are guided at this noise level (Bool (B,)). A constant scale of 1 never is."""
        if not callable(self.scale) and self.scale == 1:
            return torch.zeros_like(sigma, dtype=torch.bool)
        if self.interval is None:
            return torch.ones_like(sigma, dtype=torch.bool)
        return (sigma >= self.interval[0]) & (sigma <= self.interval[1])

    def evaluations(self, sigma: Float[Tensor, " b"]) -> int:
        """Network evaluations per call: 2 (cond + uncond) when any sample is guided, else 1."""
        return 2 if bool(self.active(sigma).any()) else 1

    def _scale(self, sigma: Tensor) -> Tensor:
        if callable(self.scale):
            return self.scale(sigma)
        return torch.full_like(sigma, float(self.scale))

    def _guide(self, cond: Tensor, uncond: Tensor, sigma: Tensor, active: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (cond.ndim - 1)
        s = self._scale(sigma).to(cond.dtype).reshape(shape)
        k = cond.shape[1] if self.guidance_channels is None else min(self.guidance_channels, cond.shape[1])
        guided = cond.clone()
        guided[:, :k] = uncond[:, :k] + s * (cond[:, :k] - uncond[:, :k])
        # Unguided samples (outside the interval in a mixed batch) keep the conditional output bit for bit.
        return torch.where(active.reshape(shape), guided, cond)

    def _pair(self, x: Tensor, sigma: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[cond, uncond] as one batch: inputs duplicated, labels [y, null]."""
        return torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([y, torch.full_like(y, self.num_classes)])

    def forward(
        self, x: Float[Tensor, "b c *dims"], sigma: Float[Tensor, " b"], y: Int[Tensor, " b"]
    ) -> Float[Tensor, "b c *dims"]:
        """uncond + s (cond - uncond) inside the guidance interval (one batched pass), the conditional model outside."""
        _check_labels(y)
        active = self.active(sigma)
        if not bool(active.any()):
            return self.denoiser(x, sigma, y)
        cond, uncond = self.denoiser(*self._pair(x, sigma, y)).chunk(2)
        return self._guide(cond, uncond, sigma, active)

    def denoise_with_variance(
        self, x: Float[Tensor, "b c *dims"], sigma: Float[Tensor, " b"], y: Int[Tensor, " b"]
    ) -> tuple[Float[Tensor, "b c *dims"], Float[Tensor, "b c *dims"] | None]:
        """Guided x0_hat and the conditional half's learned variance (None if the inner denoiser has none)."""
        _check_labels(y)
        inner = getattr(self.denoiser, "denoise_with_variance", None)
        if inner is None:
            return self.forward(x, sigma, y), None
        active = self.active(sigma)
        if not bool(active.any()):
            return inner(x, sigma, y)
        x0, v = inner(*self._pair(x, sigma, y))
        cond, uncond = x0.chunk(2)
        return self._guide(cond, uncond, sigma, active), (None if v is None else v.chunk(2)[0])
