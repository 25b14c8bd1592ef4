"""Generation: a backbone -> its denoiser -> guidance -> a sampler -> uint8 images, with per-sample seeds.

This composes ``diffit.nn`` backbones with ``diffit.diffusion`` for a run:

- an image-space :class:`~diffit.nn.ImageDiffiT` is an EDM-preconditioned denoiser (paper Sec. 3.4: EDM
  training and sampling), sampled by default with Heun on Karras sigmas (0.002 .. 80, rho 7);
- a :class:`~diffit.nn.LatentDiffiT` is an ADM epsilon model on the linear-beta chain (T = 1000), sampled by
  default with ancestral DDPM on 250 respaced steps, as the release does.

Image i of a run depends only on ``seeds[i]`` and ``labels[i]`` (EDM's per-sample generators), never on the
batch it was drawn in or on how many processes shared the seeds.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from PIL import Image
from torch import Tensor, nn

from diffit.data import SD_SCALE_FACTOR
from diffit.diffusion import (
    ClassifierFreeGuidance,
    EDMPrecond,
    PowerCosineScale,
    VPEpsDenoiser,
    alpha_bar_to_sigma,
    betas_to_alphas_cumprod,
    bind_labels,
    karras_sigmas,
    linear_betas,
    optimized_sigmas,
    per_sample_noise,
    respaced_sigmas,
    schedule_sigmas,
)
from diffit.distributed import DistInfo
from diffit.nn.latent import LatentDiffiT
from diffit.nn.unet import ImageDiffiT

Sampler = Callable[..., Tensor]


def release_alphas_cumprod() -> Float[Tensor, " T"]:
    """alpha_bar of the release's training chain: linear betas 1e-4 .. 0.02 over T = 1000 steps (ADM)."""
    return betas_to_alphas_cumprod(linear_betas(1000))


def conditional_denoiser(model: nn.Module) -> nn.Module:
    """The (x, sigma, y) -> x0_hat denoiser of a diffit backbone, with the preconditioning it was trained with."""
    if isinstance(model, ImageDiffiT):
        return EDMPrecond(model, sigma_data=0.5)
    if isinstance(model, LatentDiffiT):
        return VPEpsDenoiser(
            model, alphas_cumprod=release_alphas_cumprod(), learned_sigma=bool(model.config["learn_sigma"])
        )
    raise ValueError(f"model must be an ImageDiffiT or LatentDiffiT, got {type(model).__name__}")


def default_sigmas(
    model: nn.Module,
    steps: int,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    schedule: str | None = None,
    final: str = "sigma_min",
) -> Float[Tensor, " n"]:
    """The noise levels a backbone is sampled on by default, descending with a trailing zero.

    Image space: Karras et al. (2022) Eq. 5 with (sigma_min, sigma_max, rho). Latent: the release's chain
    respaced to ``steps`` of its 1000 timesteps (ADM ``space_timesteps``). ``schedule`` names one of
    ``diffit.diffusion.SCHEDULES`` instead, over (sigma_min, sigma_max), or for latent models the training
    chain's range (whose denoiser rounds each sigma to the nearest of its 1000 timesteps); ``final`` is
    passed on to :func:`~diffit.diffusion.schedule_sigmas`.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if schedule is not None:
        if isinstance(model, LatentDiffiT):
            sigma_min, sigma_max = (float(s) for s in alpha_bar_to_sigma(release_alphas_cumprod()[[0, -1]]))
        return schedule_sigmas(schedule, steps, sigma_min, sigma_max, final=final)
    if isinstance(model, LatentDiffiT):
        return respaced_sigmas(release_alphas_cumprod(), steps)
    return karras_sigmas(steps, sigma_min, sigma_max, rho=rho)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance settings (see :class:`~diffit.diffusion.ClassifierFreeGuidance`).

    scale: s in D_uncond + s (D_cond - D_uncond); 1 = plain conditional sampling (one pass per step).
    schedule: "constant", or "power-cosine" (the release's s(t) rising from 1 at t = T to ``scale`` at t = 0).
    channels: guide only the first k channels (3 reproduces the release on 4-channel latents); None = all.
    interval: (sigma_lo, sigma_hi) outside of which no guidance (and no unconditional pass) is spent.
    """

    scale: float = 1.0
    schedule: str = "constant"
    channels: int | None = None
    interval: tuple[float, float] | None = None


def guided_denoiser(model: nn.Module, labels: Int[Tensor, " b"] | None, guidance: Guidance) -> Callable[..., Tensor]:
    """A plain (x, sigma) denoiser: the model's denoiser, guided when asked, with the labels bound."""
    if guidance.schedule not in ("constant", "power-cosine"):
        raise ValueError(f"guidance schedule must be 'constant' or 'power-cosine', got {guidance.schedule!r}")
    if guidance.scale < 0:
        raise ValueError(f"guidance scale must be >= 0, got {guidance.scale}")
    base = conditional_denoiser(model)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        if labels is not None or guidance.scale != 1.0:
            raise ValueError("the model is unconditional: class labels and guidance (scale != 1) do not apply")
        return base  # y defaults to None
    if labels is None:
        raise ValueError("the model is class-conditional: labels are required")
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(f"class ids must lie in [0, {num_classes - 1}], got {labels.tolist()}")
    scale: float | PowerCosineScale = guidance.scale
    if guidance.schedule == "power-cosine":
        scale = PowerCosineScale(guidance.scale, alphas_cumprod=release_alphas_cumprod())
    if scale == 1.0 and guidance.schedule == "constant":
        return bind_labels(base, labels)
    guided = ClassifierFreeGuidance(
        base, num_classes=num_classes, scale=scale, guidance_channels=guidance.channels, interval=guidance.interval
    )
    return bind_labels(guided, labels)


def random_labels(seeds: Sequence[int], num_classes: int) -> Int[Tensor, " b"]:
    """A random class per seed that depends on that seed alone (not on the batch or the process count)."""
    return torch.tensor(
        [int(torch.randint(num_classes, (), generator=torch.Generator().manual_seed(s + 2**40))) for s in seeds]
    )


# Starting points of fitted schedules: a fixed seed range apart from the usual 0..N-1 sampling seeds.
FIT_SEEDS = range(10**9, 10**9 + 32)


def fitted_sigmas(
    model: nn.Module,
    steps: int,
    *,
    guidance: Guidance = Guidance(),
    seeds: Sequence[int] = FIT_SEEDS,
    fine_steps: int = 100,
) -> Float[Tensor, " n"]:
    """:func:`~diffit.diffusion.optimized_sigmas` on the model's own (guided) denoiser, from the noise of
    ``seeds`` with a random class each; the range of :func:`default_sigmas` with a schedule. Costs
    (2 fine_steps - 1) evaluations (times 2 when guided) for each of the len(seeds) starts, once per run."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    num_classes = getattr(model, "num_classes", None)
    labels = None if num_classes is None else random_labels(seeds, num_classes).to(device)
    denoiser = guided_denoiser(model, labels, guidance)
    sigma_min, sigma_max = (float(s) for s in default_sigmas(model, 2, schedule="log-snr")[[1, 0]])
    x = per_sample_noise(list(seeds), (model.in_channels, model.resolution, model.resolution), device=device)()
    return optimized_sigmas(denoiser, x * sigma_max, steps, sigma_min, sigma_max, fine_steps=fine_steps).float()


@torch.no_grad()
def sample(
    model: nn.Module,
    *,
    sampler: Sampler,
    sigmas: Float[Tensor, " n"],
    seeds: Sequence[int],
    labels: Int[Tensor, " b"] | None = None,
    guidance: Guidance = Guidance(),
    precision: str = "fp32",
    callback: Callable[[dict[str, Any]], None] | None = None,
    sampler_kwargs: dict[str, Any] | None = None,
) -> Float[Tensor, "b c h w"]:
    """Samples in the model's space (pixels in [-1, 1] or scaled latents), one per seed.

    ``sampler`` is any function of diffit.diffusion's shared signature. Initial noise and every stochastic
    step come from per-sample generators seeded with ``seeds``.
    """
    if len(seeds) < 1:
        raise ValueError("seeds must hold at least one seed")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if labels is not None and len(labels) != len(seeds):
        raise ValueError(f"labels must hold one class id per seed ({len(seeds)}), got {len(labels)}")
    device = next(model.parameters()).device
    shape = (model.in_channels, model.resolution, model.resolution)
    noise = per_sample_noise(seeds, shape, device=device)
    denoiser = guided_denoiser(model, None if labels is None else labels.to(device), guidance)
    sigmas = sigmas.to(device)
    x = noise() * sigmas[0]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = sampler(denoiser, x, sigmas, callback=callback, noise=noise, **(sampler_kwargs or {}))
    return out.float()


@torch.no_grad()
def generate(
    model: nn.Module,
    *,
    sampler: Sampler,
    sigmas: Float[Tensor, " n"],
    seeds: Sequence[int],
    labels: Int[Tensor, " b"] | None = None,
    guidance: Guidance = Guidance(),
    precision: str = "fp32",
    batch_size: int = 64,
    decode: Callable[[Tensor], Tensor] | None = None,
    dist: DistInfo | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    sampler_kwargs: dict[str, Any] | None = None,
) -> UInt8[Tensor, "num h w c"]:
    """uint8 NHWC images for every seed, in seed order, sampled in batches and split over ranks.

    Rank r samples seeds r, r + W, ... in batches of ``batch_size``; the images are gathered on every rank.
    ``decode`` maps model outputs to pixels in [-1, 1] (a VAE decoder for latent models). ``callback`` gets
    the sampler's state plus ``batch`` / ``batches`` (this rank's), ``batch_size`` and ``images_done``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    mine = list(range(rank, len(seeds), world))
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    images, done = [], 0
    for b, idx in enumerate(batches):

        def report(state: dict[str, Any], b: int = b, done: int = done, size: int = len(idx)) -> None:
            if callback is not None:
                callback({**state, "batch": b, "batches": len(batches), "batch_size": size, "images_done": done})

        x = sample(
            model, sampler=sampler, sigmas=sigmas, seeds=[seeds[i] for i in idx],
            labels=None if labels is None else labels[idx], guidance=guidance, precision=precision,
            callback=report, sampler_kwargs=sampler_kwargs,
        )  # fmt: skip
        images.append(to_uint8(decode(x) if decode is not None else x))
        done += len(idx)
    side = images[0].shape[1:] if images else (0, 0, 0)
    local, order = (torch.cat(images) if images else torch.zeros(0, *side, dtype=torch.uint8)), torch.tensor(mine)
    if dist is not None and dist.enabled:  # every rank's images, back in seed order
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (order, local))
        order = torch.cat([g[0] for g in gathered])
        local = torch.cat([g[1] for g in gathered if len(g[1])])
    return local[torch.argsort(order)]


def latent_decoder(vae: nn.Module, *, scale: float = SD_SCALE_FACTOR) -> Callable[[Tensor], Tensor]:
    """Scaled latents -> pixels in [-1, 1] through a diffusers AutoencoderKL (the release's VAE scale)."""

    @torch.no_grad()
    def decode(z: Tensor) -> Tensor:
        return vae.decode(z / scale).sample.float()

    return decode


def to_uint8(images: Float[Tensor, "b c h w"]) -> UInt8[Tensor, "b h w c"]:
    """[-1, 1] floats -> uint8 NHWC (the ADM reference-batch layout), rounding to the nearest level."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def make_grid(images: UInt8[Tensor, "b h w c"], *, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images into one (rows*H, cols*W, C) uint8 array with ``pad`` pixels of black between them."""
    b, h, w, c = images.shape
    cols = nrow or int(np.ceil(np.sqrt(b)))
    rows = int(np.ceil(b / cols))
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images.numpy()):
        r, col = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    return grid


def save_png(array: np.ndarray, path: Path, *, upscale: int = 1) -> None:
    """Write an (H, W, C) uint8 array as PNG atomically (temporary name, then rename)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {path.parent}")
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
