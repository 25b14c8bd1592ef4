"""Training objectives: how a backbone is noised, what it learns, and how it is read back as a denoiser.

An objective is any object following :class:`Objective`. ``train`` only calls ``draw`` and ``loss``;
``generate`` calls ``denoiser`` and ``sampling_sigmas``; checkpoints record ``type(obj).__name__`` and its
``config`` (constructor arguments, see :func:`~diffit.nn.capture_config`). A new objective (v-prediction,
rectified flow, ...) is a small class of your own: see ``examples/custom_objective.py``.

The two built in:

- :class:`EDMObjective`: the paper's image-space recipe (EDM preconditioning, loss and augmentation);
- :class:`ADMObjective`: the latent release's recipe (epsilon prediction with learned-range variance, L_hybrid,
  on the linear-beta chain of T = 1000 steps).
"""

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from diffit.augment import AUGMENT_DIM, apply_augment, draw_augment_labels
from diffit.diffusion import (
    EDMPrecond,
    VPEpsDenoiser,
    adm_hybrid_loss,
    betas_to_alphas_cumprod,
    check_log_normal,
    check_sigma_data,
    edm_loss,
    karras_sigmas,
    linear_betas,
    respaced_sigmas,
    sample_timesteps,
    sample_training_sigmas,
)
from diffit.ema import unwrap
from diffit.nn import LatentDiffiT, capture_config

Denoiser = Callable[..., Tensor]


@runtime_checkable
class Objective(Protocol):
    """What ``train`` and ``generate`` need from a training objective."""

    default_sampler: str  # a name in diffit.diffusion.SAMPLERS
    default_steps: int

    def draw(self, generator: torch.Generator, n: int, sample_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """Every random draw of a global batch of ``n`` samples (each value has ``n`` rows): the training loop
        draws once per step for all ranks and gives each rank its rows."""
        ...

    def loss(
        self, model: nn.Module, x0: Float[Tensor, "b c h w"], y: Int[Tensor, " b"] | None, draws: dict[str, Tensor]
    ) -> Float[Tensor, " b"]:
        """Per-sample loss of ``model`` on clean data ``x0`` with labels ``y`` and this slice of ``draws``."""
        ...

    def denoiser(self, model: nn.Module) -> Denoiser:
        """``model`` as a sigma-space denoiser ``D(x, sigma, y=None) -> x0_hat`` (what the samplers call)."""
        ...

    def sampling_sigmas(self, steps: int) -> Float[Tensor, " n"]:
        """Default noise levels for ``steps`` sampling steps, descending, with a trailing zero."""
        ...


def check_objective(objective: Any) -> None:
    """ValueError (one line) naming what ``objective`` lacks of the :class:`Objective` contract."""
    missing = [name for name in ("default_sampler", "default_steps", "draw", "loss", "denoiser", "sampling_sigmas")
               if not hasattr(objective, name)]  # fmt: skip
    if missing:
        raise ValueError(
            f"objective {type(objective).__name__} lacks {', '.join(missing)} (see diffit.objectives.Objective)"
        )


class EDMObjective:
    """Image-space objective of the paper: EDM preconditioning and loss (Karras et al. 2022)."""

    default_sampler = "heun"
    default_steps = 18

    @capture_config
    def __init__(
        self,
        *,
        sigma_data: float = 0.5,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        augment_p: float = 0.0,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
    ) -> None:
        """
        Args:
            sigma_data: data standard deviation (0.5 for images in [-1, 1]).
            P_mean: mean of ln(sigma) during training.
            P_std: standard deviation of ln(sigma) during training.
            augment_p: probability of each non-leaking geometric augmentation (``diffit.augment``; EDM used
                0.12 on CIFAR-10, 0.15 on FFHQ-64); needs a backbone built with ``augment_dim=AUGMENT_DIM``.
            sigma_min, sigma_max, rho: the default sampling schedule (Karras et al. Eq. 5).
        """
        if not 0.0 <= augment_p <= 1.0:
            raise ValueError(f"augment_p must be in [0, 1], got {augment_p}")
        check_sigma_data(sigma_data)
        check_log_normal(P_mean, P_std)
        karras_sigmas(1, sigma_min, sigma_max, rho)  # checks 0 < sigma_min < sigma_max < inf and rho
        self.sigma_data, self.P_mean, self.P_std, self.augment_p = sigma_data, P_mean, P_std, augment_p
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def draw(self, generator: torch.Generator, n: int, sample_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """Per-sample randomness of a global batch: ln sigma ~ N(P_mean, P_std^2), unit noise, augmentations."""
        sigma = sample_training_sigmas(n, P_mean=self.P_mean, P_std=self.P_std, generator=generator)
        draws = {"sigma": sigma, "noise": torch.randn((n, *sample_shape), generator=generator)}
        if self.augment_p > 0:
            draws["augment"] = draw_augment_labels(generator, n, p=self.augment_p)
        return draws

    def loss(
        self, model: nn.Module, x0: Float[Tensor, "b c h w"], y: Int[Tensor, " b"] | None, draws: dict[str, Tensor]
    ) -> Float[Tensor, " b"]:
        """EDM's weighted denoising loss per sample (Eq. 2 with lambda(sigma)), augmented when ``draws`` say so."""
        labels = draws.get("augment")
        if labels is not None:
            if getattr(unwrap(model), "augment_dim", 0) != AUGMENT_DIM:
                raise ValueError(f"augment_p > 0 needs a backbone built with augment_dim={AUGMENT_DIM}")
            x0 = apply_augment(x0, labels)
        return edm_loss(
            self.denoiser(model), x0, y=y, sigma=draws["sigma"], noise=draws["noise"], sigma_data=self.sigma_data,
            augment_labels=labels,
        )  # fmt: skip

    def denoiser(self, model: nn.Module) -> Denoiser:
        """EDM preconditioning around ``model`` (:class:`~diffit.diffusion.EDMPrecond`)."""
        return EDMPrecond(model, sigma_data=self.sigma_data)

    def sampling_sigmas(self, steps: int) -> Float[Tensor, " n"]:
        """Karras et al.'s sigmas (EDM Eq. 5) from ``sigma_max`` down to ``sigma_min``, then 0."""
        return karras_sigmas(steps, self.sigma_min, self.sigma_max, rho=self.rho)


class ADMObjective:
    """Latent objective of the release: ADM epsilon prediction with learned-range variance (L_hybrid) on the
    linear-beta chain (DDPM; Nichol & Dhariwal 2021). The backbone is fed the DDPM timestep as its
    ``noise_label`` and returns 2C channels (eps, variance interpolation)."""

    default_sampler = "ddpm"
    default_steps = 250

    @capture_config
    def __init__(self, *, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        """
        Args:
            num_timesteps: T, the length of the training chain (1000 in the release).
            beta_start, beta_end: the linear beta schedule's ends at T = 1000 (ADM scales them by 1000 / T).
        """
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"betas must satisfy 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        self.alphas_cumprod = betas_to_alphas_cumprod(
            linear_betas(num_timesteps, beta_start=beta_start, beta_end=beta_end)
        )

    def draw(self, generator: torch.Generator, n: int, sample_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """t ~ Uniform{0..T-1} and unit noise per sample."""
        t = sample_timesteps(n, len(self.alphas_cumprod), generator=generator)
        return {"t": t, "noise": torch.randn((n, *sample_shape), generator=generator)}

    def loss(
        self, model: nn.Module, x0: Float[Tensor, "b c h w"], y: Int[Tensor, " b"] | None, draws: dict[str, Tensor]
    ) -> Float[Tensor, " b"]:
        """ADM's L_hybrid per sample: epsilon MSE plus the VLB term of the learned variance."""
        return adm_hybrid_loss(
            model, x0, draws["t"], y=y, alphas_cumprod=self.alphas_cumprod.to(x0.device), noise=draws["noise"]
        )

    def denoiser(self, model: nn.Module) -> Denoiser:
        """``model`` as an epsilon-predicting VP denoiser, with the learned variance when it outputs one."""
        bare = unwrap(model)
        learned = getattr(bare, "out_channels", 2 * bare.in_channels) == 2 * bare.in_channels
        return VPEpsDenoiser(model, alphas_cumprod=self.alphas_cumprod, learned_sigma=learned)

    def sampling_sigmas(self, steps: int) -> Float[Tensor, " n"]:
        """The chain respaced to ``steps`` of its T timesteps (ADM ``space_timesteps``), as the release samples."""
        return respaced_sigmas(self.alphas_cumprod, steps)


def release_alphas_cumprod() -> Float[Tensor, " T"]:
    """alpha_bar of the release's training chain: linear betas 1e-4 .. 0.02 over T = 1000 steps (ADM)."""
    return ADMObjective().alphas_cumprod


# Objectives a checkpoint can name and diffit rebuild by itself; any other is passed in by its user.
BUILTIN_OBJECTIVES: dict[str, type] = {"EDMObjective": EDMObjective, "ADMObjective": ADMObjective}


def objective_spec(objective: Any) -> dict[str, Any]:
    """``{"class": name, "config": constructor arguments or None}``: what a checkpoint records of an objective."""
    config = getattr(objective, "config", None)
    return {"class": type(objective).__name__, "config": config if isinstance(config, dict) else None}


def build_objective(spec: dict[str, Any] | None, *, model: nn.Module | None = None) -> Any:
    """The objective a checkpoint's spec names; with no spec, the default for ``model`` (see
    :func:`default_objective`). Raises ValueError for an objective diffit cannot rebuild by itself."""
    if spec is None:
        return default_objective(model)
    cls = BUILTIN_OBJECTIVES.get(spec.get("class", "")) if isinstance(spec, dict) else None
    if cls is None or not isinstance(spec.get("config"), dict):
        raise ValueError(
            f"the checkpoint was trained with objective {spec.get('class') if isinstance(spec, dict) else spec!r}, "
            "which diffit cannot rebuild: pass objective=YourObjective(...)"
        )
    try:
        return cls(**spec["config"])
    except (TypeError, ValueError) as err:  # a recorded config this version does not take
        raise ValueError(f"cannot rebuild objective {spec['class']} from its recorded config: {err}") from None


def default_objective(model: nn.Module | None) -> Any:
    """The objective a backbone is taken to be trained with when nothing says otherwise: ADM for the latent
    DiffiT (the release's recipe), EDM for everything else (pass ``objective=`` for a model of your own
    trained otherwise)."""
    return ADMObjective() if isinstance(unwrap(model) if model is not None else None, LatentDiffiT) else EDMObjective()
