"""Generation: a backbone -> its denoiser -> guidance -> a sampler -> uint8 images, with per-sample seeds.

Any backbone (see :class:`~diffit.nn.Backbone`) is read as a denoiser by the objective it was trained with
(:mod:`diffit.objectives`; by default EDM for image-space models, ADM for the latent DiffiT):

- :class:`~diffit.objectives.EDMObjective`: EDM preconditioning (paper Sec. 3.4), sampled by default with
  Heun on Karras sigmas (0.002 .. 80, rho 7);
- :class:`~diffit.objectives.ADMObjective`: an epsilon model on the linear-beta chain (T = 1000), sampled by
  default with ancestral DDPM on 250 respaced steps, as the release does.

Image i of a run depends only on ``seeds[i]`` and ``labels[i]`` (EDM's per-sample generators), never on the
batch it was drawn in or on how many processes shared the seeds.
"""

import json
import math
import platform
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from PIL import Image
from torch import Tensor, nn

import diffit
from diffit.data import SD_SCALE_FACTOR
from diffit.diffusion import (
    SAMPLERS,
    ClassifierFreeGuidance,
    PowerCosineScale,
    bind_labels,
    check_seeds,
    check_sigmas,
    final_for,
    optimized_sigmas,
    per_sample_noise,
    schedule_sigmas,
)
from diffit.distributed import DistInfo, all_gather
from diffit.nn import check_backbone
from diffit.objectives import ADMObjective, Objective, default_objective, objective_spec, release_alphas_cumprod
from diffit.util import (
    OutOfMemory,
    atomic_path,
    check_integer,
    check_output_path,
    is_integer,
    mix_seed,
    out_of_memory_as,
    write_json,
)

Sampler = Callable[..., Tensor]
_LABEL_STREAM = 1  # random_labels' seeds: mix_seed(seed, _LABEL_STREAM), apart from the noise's seed

__all__ = [
    "Guidance",
    "check_guidance_interval",
    "default_sigmas",
    "fitted_sigmas",
    "sigma_range",
    "sampling_protocol",
    "sampling_sigmas",
    "generate",
    "guided_denoiser",
    "latent_decoder",
    "make_grid",
    "preview_grid",
    "preview_writer",
    "class_labels",
    "images_out_kind",
    "random_labels",
    "save_images",
    "release_alphas_cumprod",
    "sample",
    "save_png",
    "to_uint8",
]


def sigma_range(objective: Objective) -> tuple[float, float]:
    """(sigma_min, sigma_max) that ``objective`` samples over: the ends of its default schedule (for ADM, the
    training chain's, whose denoiser rounds each sigma to the nearest of its timesteps)."""
    sigmas = objective.sampling_sigmas(2)
    positive = sigmas[sigmas > 0]
    return float(positive.min()), float(positive.max())


def default_sigmas(
    model: nn.Module,
    steps: int,
    *,
    objective: Objective | None = None,
    schedule: str | None = None,
    final: str = "sigma_min",
) -> Float[Tensor, " n"]:
    """The noise levels ``model`` is sampled on, descending with a trailing zero: by default its objective's
    (Karras et al. Eq. 5 for EDM; the release's chain respaced to ``steps`` for ADM); ``schedule`` names one of
    ``diffit.diffusion.SCHEDULES`` instead, over :func:`sigma_range`, with ``final`` passed on to
    :func:`~diffit.diffusion.schedule_sigmas`."""
    check_integer("steps", steps)
    objective = objective if objective is not None else default_objective(model)
    if schedule is None:
        return objective.sampling_sigmas(steps)
    sigma_min, sigma_max = sigma_range(objective)
    return schedule_sigmas(schedule, steps, sigma_min, sigma_max, final=final)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance settings (see :class:`~diffit.diffusion.ClassifierFreeGuidance`).

    scale: s in D_uncond + s (D_cond - D_uncond); 1 = plain conditional sampling (one pass per step).
    schedule: "constant", or "power-cosine" (the release's s(t) rising from 1 at t = T to ``scale`` at t = 0).
    channels: guide only the first k channels (3 reproduces the release on 4-channel latents); None = all.
    interval: (sigma_lo, sigma_hi) outside of which no guidance (and no unconditional pass) is spent.

    At scale 1 the other three do nothing: the first :func:`guided_denoiser` built from these settings says so
    in a warning (once, however many batches a run samples).
    """

    scale: float = 1.0
    schedule: str = "constant"
    channels: int | None = None
    interval: tuple[float, float] | None = None
    # Whether the unused settings were reported: state of this object, not a setting (no init, no equality).
    _warned: list[bool] = field(default_factory=lambda: [False], init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        number = isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)  # "2": math's TypeError
        if not number or not math.isfinite(self.scale) or self.scale < 0:
            raise ValueError(f"scale (guidance) must be a finite number >= 0, got {self.scale!r}")
        if self.schedule not in ("constant", "power-cosine"):
            raise ValueError(f"schedule (guidance) must be 'constant' or 'power-cosine', got {self.schedule!r}")
        if self.channels is not None:
            check_integer("channels (guided)", self.channels)  # 1.5 passed
        if self.interval is not None:
            pair = isinstance(self.interval, (tuple, list)) and len(self.interval) == 2
            if not pair or not all(isinstance(v, (int, float)) for v in self.interval):
                raise ValueError(f"interval (guidance) must be a pair of sigmas (lo, hi), got {self.interval!r}")
            lo, hi = self.interval
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(f"interval (guidance) must be finite sigmas 0 <= lo <= hi, got {self.interval}")


def guided_denoiser(
    model: nn.Module, labels: Int[Tensor, " b"] | None, guidance: Guidance, objective: Objective | None = None
) -> Callable[..., Tensor]:
    """A plain (x, sigma) denoiser: the model read by its objective, guided when asked, with the labels bound.

    Scale 1 is no guidance, whatever the schedule (the power-cosine s(t) is 1 throughout): one pass per call.
    Guidance settings that then do nothing (channels, an interval, a schedule) are named in a warning."""
    channels = getattr(model, "in_channels", None)
    if guidance.channels is not None and channels is not None and guidance.channels > channels:
        raise ValueError(f"channels (guided) must be in [1, {channels}] for this model, got {guidance.channels}")
    objective = objective if objective is not None else default_objective(model)
    base = objective.denoiser(model)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        if labels is not None or guidance.scale != 1.0:
            raise ValueError("the model is unconditional: class labels and guidance (scale != 1) do not apply")
        _warn_unused(guidance)
        return base  # y defaults to None
    if labels is None:
        raise ValueError("the model is class-conditional: labels are required")
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(f"labels must be class ids in [0, {num_classes - 1}], got {labels.tolist()[:10]}")
    if guidance.scale == 1.0:
        _warn_unused(guidance)
        return bind_labels(base, labels)
    scale: float | PowerCosineScale = guidance.scale
    if guidance.schedule == "power-cosine":
        chain = objective.alphas_cumprod if isinstance(objective, ADMObjective) else release_alphas_cumprod()
        scale = PowerCosineScale(guidance.scale, alphas_cumprod=chain)
    guided = ClassifierFreeGuidance(
        base, num_classes=num_classes, scale=scale, guidance_channels=guidance.channels, interval=guidance.interval
    )
    return bind_labels(guided, labels)


def _warn_unused(guidance: Guidance) -> None:
    """A warning naming the settings of ``guidance`` that scale 1 (no guidance) leaves unused, once per object:
    a run builds its denoiser again for every batch."""
    unused = [f"{name}={value!r}" for name, value in (("channels", guidance.channels), ("interval", guidance.interval))
              if value is not None]  # fmt: skip
    unused += [f"schedule={guidance.schedule!r}"] if guidance.schedule != "constant" else []
    if guidance.scale == 1.0 and unused and not guidance._warned[0]:
        guidance._warned[0] = True
        warnings.warn(f"guidance settings unused at scale 1 (no guidance): {', '.join(unused)}", stacklevel=3)


def check_guidance_interval(guidance: Guidance, sigmas: Float[Tensor, " n"]) -> None:
    """ValueError when ``guidance`` guides (scale != 1) only in an interval that holds none of the noise levels
    of ``sigmas`` (its positive ones, where the samplers evaluate the denoiser): guidance would never apply,
    and the run would be plain conditional sampling recorded as a guided one. (EDM's stochastic sampler with
    ``S_churn`` > 0 also evaluates raised levels sigma (1 + gamma); an interval that only they reach is
    refused too.)"""
    if guidance.interval is None or guidance.scale == 1.0:
        return
    levels = sigmas[sigmas > 0]
    lo, hi = guidance.interval
    if len(levels) and not bool(((levels >= lo) & (levels <= hi)).any()):
        raise ValueError(
            f"interval (guidance) [{lo:g}, {hi:g}] holds none of the {len(levels)} noise levels sampled "
            f"({float(levels.min()):.4g} .. {float(levels.max()):.4g}): guidance would never apply"
        )


def class_labels(
    seeds: Sequence[int], num_classes: int | None, classes: Sequence[int] | None = None
) -> Int[Tensor, " b"] | None:
    """One label per seed: None for an unconditional model; ``classes`` cycled over the seeds when given;
    else a random class that depends on its seed alone (:func:`random_labels`). ValueError for class ids
    outside [0, num_classes), or classes given to an unconditional model."""
    if num_classes is None:
        if classes is not None:
            raise ValueError("classes do not apply: the model is unconditional")
        return None
    if classes is None:
        return random_labels(seeds, num_classes)
    if not all(is_integer(c) for c in classes):  # torch.tensor(..., dtype=long) truncated 1.5 to 1
        raise ValueError(f"classes must be integer ids, got {list(classes)[:10]}")
    if not classes or min(classes) < 0 or max(classes) >= num_classes:
        raise ValueError(f"classes must be ids in [0, {num_classes - 1}] for this model, got {list(classes)[:10]}")
    return torch.tensor([classes[i % len(classes)] for i in range(len(seeds))], dtype=torch.long)


def random_labels(seeds: Sequence[int], num_classes: int) -> Int[Tensor, " b"]:
    """A random class per seed that depends on that seed alone (not on the batch or the process count)."""
    check_integer("num_classes", num_classes)
    return torch.tensor(
        [
            int(torch.randint(num_classes, (), generator=torch.Generator().manual_seed(mix_seed(s, _LABEL_STREAM))))
            for s in seeds
        ],
        dtype=torch.long,
    )


# Starting points of fitted schedules: a fixed seed range apart from the usual 0..N-1 sampling seeds.
FIT_SEEDS = range(10**9, 10**9 + 32)


def fitted_sigmas(
    model: nn.Module,
    steps: int,
    *,
    guidance: Guidance = Guidance(),
    objective: Objective | None = None,
    seeds: Sequence[int] = FIT_SEEDS,
    fine_steps: int = 100,
) -> Float[Tensor, " n"]:
    """:func:`~diffit.diffusion.optimized_sigmas` on the model's own (guided) denoiser, from the noise of
    ``seeds`` with a random class each; the range of :func:`default_sigmas` with a schedule. Costs
    (2 fine_steps - 1) evaluations (times 2 when guided) for each of the len(seeds) starts, once per run."""
    check_integer("steps", steps)
    device = next(model.parameters()).device
    num_classes = getattr(model, "num_classes", None)
    labels = None if num_classes is None else random_labels(seeds, num_classes).to(device)
    objective = objective if objective is not None else default_objective(model)
    denoiser = guided_denoiser(model, labels, guidance, objective)
    sigma_min, sigma_max = sigma_range(objective)
    x = per_sample_noise(list(seeds), (model.in_channels, model.resolution, model.resolution), device=device)()
    return optimized_sigmas(denoiser, x * sigma_max, steps, sigma_min, sigma_max, fine_steps=fine_steps).float()


FIT_FINE_STEPS = 100  # candidate sigmas of the "optimized" schedule (its Heun teacher costs 2 * 100 - 1 NFE)


def sampling_sigmas(
    model: nn.Module,
    steps: int,
    *,
    sampler: str,
    schedule: str | None = None,
    objective: Objective | None = None,
    guidance: Guidance = Guidance(),
) -> tuple[Float[Tensor, " n"], int]:
    """The sigmas a run samples on, and the network evaluations spent choosing them (per run, not per image):
    the objective's default (``schedule`` None), a named schedule ending as ``sampler`` needs
    (:func:`~diffit.diffusion.final_for`), or ``"optimized"``: :func:`fitted_sigmas` on the model itself.
    ValueError for a guidance interval that holds none of them (:func:`check_guidance_interval`)."""
    if schedule == "optimized":
        device = next(model.parameters()).device
        with out_of_memory_as(
            lambda tried: OutOfMemory(
                f"schedule: fitting the optimized schedule to the model ({len(FIT_SEEDS)} starts in one batch) ran "
                f"out of memory on {device}{tried}; sample on another schedule"
            ),
            restate_inner=True,
        ):
            sigmas = fitted_sigmas(
                model, steps, guidance=guidance, objective=objective, seeds=FIT_SEEDS, fine_steps=FIT_FINE_STEPS
            )
        fit_nfe = (2 * FIT_FINE_STEPS - 1) * len(FIT_SEEDS) * (1 if guidance.scale == 1.0 else 2)
    else:
        final = final_for(sampler) if schedule is not None else "sigma_min"
        sigmas, fit_nfe = default_sigmas(model, steps, objective=objective, schedule=schedule, final=final), 0
    check_guidance_interval(guidance, sigmas)
    return sigmas, fit_nfe


def sampling_protocol(
    *,
    source: dict[str, Any],
    objective: Objective,
    sampler: str,
    sigmas: Float[Tensor, " n"],
    nfe_per_image: int,
    guidance: Guidance,
    seeds: str,
    count: int,
    classes: str,
    precision: str,
    device: str,
    world_size: int = 1,
    seconds: float | None = None,
    schedule: str | None = None,
    plan: dict[str, Any] | None = None,
    step_orders: list[int] | None = None,
    schedule_fit_nfe: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON record of a sampling run that users of peer codebases ask for first: the checkpoint (path,
    sha256, EMA or raw), the objective, sampler, steps, schedule and its exact sigmas, the NFE each image cost
    (guided steps count cond + uncond), guidance, seeds, classes, precision, device count and versions."""
    return {
        "diffit_version": diffit.__version__, "torch_version": torch.__version__, "python": platform.python_version(),
        "checkpoint": source, "weights": source.get("weights"), "objective": objective_spec(objective),
        "sampler": sampler, "steps": len(sigmas) - 1, "nfe_per_image": nfe_per_image,
        "schedule": schedule or "objective default", "final": final_for(sampler) if schedule else "sigma_min",
        "plan": plan, "step_orders": step_orders or None, "schedule_fit_nfe": schedule_fit_nfe,
        "guidance": {"scale": guidance.scale, "schedule": guidance.schedule, "channels": guidance.channels,
                     "interval": guidance.interval},
        "seeds": seeds, "count": count, "classes": classes, "precision": precision,
        "sigmas": [round(float(s), 6) for s in sigmas], "device": device, "world_size": world_size,
        "seconds": None if seconds is None else round(seconds, 3), **extra,
    }  # fmt: skip


def check_sample_args(
    seeds: Sequence[int], labels: object, precision: str, *, sampler: object = None, sigmas: object = None
) -> None:
    """ValueError for arguments :func:`sample` and :func:`generate` refuse, before any work (``sampler`` and
    ``sigmas`` when given: a sampler function, a schedule :func:`~diffit.diffusion.check_sigmas` accepts)."""
    check_seeds(seeds)
    if sampler is not None and not callable(sampler):  # a name failed as "'str' object is not callable"
        raise ValueError(
            f"sampler must be a sampler function such as diffit.diffusion.sample_heun (diffit.diffusion.SAMPLERS "
            f"maps names to them), got {sampler!r}"
        )
    if sigmas is not None:
        check_sigmas(sigmas)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if labels is None:
        return
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D int64 tensor of class ids, one per seed, got {got}")
    if len(labels) != len(seeds):
        raise ValueError(f"labels must hold one class id per seed ({len(seeds)}), got {len(labels)}")


@torch.no_grad()
def sample(
    model: nn.Module,
    *,
    sampler: Sampler,
    sigmas: Float[Tensor, " n"],
    seeds: Sequence[int],
    labels: Int[Tensor, " b"] | None = None,
    guidance: Guidance = Guidance(),
    objective: Objective | None = None,
    precision: str = "fp32",
    callback: Callable[[dict[str, Any]], None] | None = None,
    sampler_kwargs: dict[str, Any] | None = None,
) -> Float[Tensor, "b c h w"]:
    """Samples in the model's space (pixels in [-1, 1] or scaled latents), one per seed.

    ``sampler`` is any function of diffit.diffusion's shared signature; ``objective`` is the one the model was
    trained with (default: :func:`~diffit.objectives.default_objective`). Initial noise and every stochastic
    step come from per-sample generators seeded with ``seeds``. All seeds are one batch: an allocation failure
    raises :class:`~diffit.util.OutOfMemory` naming ``seeds`` (:func:`generate` samples in batches).
    """
    check_backbone(model)
    check_sample_args(seeds, labels, precision, sampler=sampler, sigmas=sigmas)
    check_guidance_interval(guidance, sigmas)
    device = next(model.parameters()).device
    with _batch_memory("seeds", len(seeds), device, "sample fewer seeds per call (generate takes a batch_size)"):
        return _sample(model, sampler, sigmas, seeds, labels, guidance, objective, precision, callback, sampler_kwargs)


def _sample(
    model: nn.Module,
    sampler: Sampler,
    sigmas: Tensor,
    seeds: Sequence[int],
    labels: Tensor | None,
    guidance: Guidance,
    objective: Objective | None,
    precision: str,
    callback: Callable[[dict[str, Any]], None] | None,
    sampler_kwargs: dict[str, Any] | None,
) -> Tensor:
    """:func:`sample` on arguments already checked (by it, or once for all batches by :func:`generate`)."""
    device = next(model.parameters()).device
    shape = (model.in_channels, model.resolution, model.resolution)
    noise = per_sample_noise(seeds, shape, device=device)
    denoiser = guided_denoiser(model, None if labels is None else labels.to(device), guidance, objective)
    sigmas = sigmas.to(device)
    x = noise() * sigmas[0]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = sampler(denoiser, x, sigmas, callback=callback, noise=noise, **(sampler_kwargs or {}))
    return out.float()


@contextmanager
def _batch_memory(name: str, size: int, device: torch.device, advice: str) -> Iterator[None]:
    """An allocation failure sampling (or decoding) one batch of ``size`` images on ``device`` raises
    :class:`~diffit.util.OutOfMemory` naming the argument ``name`` that sets it, also when a deeper call (a
    ``decode`` of the caller's, say) restated it first."""
    if size == 1:  # nothing smaller to try
        advice = "one image does not fit: sample on a device with more memory, or at precision bf16"
    with out_of_memory_as(
        lambda tried: OutOfMemory(
            f"{name}: sampling a batch of {size} image(s) ran out of memory on {device}{tried}; {advice}"
        ),
        restate_inner=True,
    ):
        yield


@torch.no_grad()
def generate(
    model: nn.Module,
    *,
    sampler: Sampler,
    sigmas: Float[Tensor, " n"],
    seeds: Sequence[int],
    labels: Int[Tensor, " b"] | None = None,
    guidance: Guidance = Guidance(),
    objective: Objective | None = None,
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
    A batch that cannot allocate its memory raises :class:`~diffit.util.OutOfMemory` naming ``batch_size`` (all
    the images together, ``seeds``); other errors pass unchanged.
    """
    check_backbone(model)
    check_integer("batch_size", batch_size)
    # here too: a rank without seeds must not pass silently
    check_sample_args(seeds, labels, precision, sampler=sampler, sigmas=sigmas)
    check_guidance_interval(guidance, sigmas)
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    device = next(model.parameters()).device

    def positions(r: int) -> range:  # the seeds rank r samples, and so the order of its images
        return range(r, len(seeds), world)

    mine = list(positions(rank))
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    images, done, broken = [], 0, []
    for b, idx in enumerate(batches):

        def report(state: dict[str, Any], b: int = b, done: int = done, size: int = len(idx)) -> None:
            if callback is not None:
                callback({**state, "batch": b, "batches": len(batches), "batch_size": size, "images_done": done})

        with _batch_memory("batch_size", len(idx), device, "lower the batch size (the images do not depend on it)"):
            x = _sample(
                model, sampler, sigmas, [seeds[i] for i in idx], None if labels is None else labels[idx], guidance,
                objective, precision, report, sampler_kwargs,
            )  # fmt: skip
            pixels = decode(x) if decode is not None else x
            finite = pixels.flatten(1).isfinite().all(1).cpu()
            broken += [i for i, ok in zip(idx, finite.tolist(), strict=True) if not ok]  # positions in seeds
            images.append(to_uint8(pixels))
        done += len(idx)
    with _all_images_memory(len(seeds), images):
        local = torch.cat(images) if images else torch.zeros(0, 0, 0, 0, dtype=torch.uint8)
    if dist is not None and dist.enabled:  # every rank learns of every broken seed, so all of them raise
        broken = sorted(torch.cat(all_gather(torch.tensor(broken, dtype=torch.int64), dist)).tolist())
    if broken:  # to_uint8 would have made them black (NaN) or white (inf) without a word
        raise ValueError(
            f"model: the images of {len(broken)} seed(s) hold NaN or inf (first: seed {seeds[broken[0]]}); "
            "the weights, the sampler or guidance settings or the precision are broken"
        )
    if dist is None or not dist.enabled:
        return local
    # Every rank's images, back in seed order
    with _all_images_memory(len(seeds), images):
        gathered = torch.cat([g for g in all_gather(local, dist) if len(g)])
        order = torch.argsort(torch.cat([torch.tensor(positions(r), dtype=torch.int64) for r in range(world)]))
        return gathered[order]


@contextmanager
def _all_images_memory(count: int, images: list[Tensor]) -> Iterator[None]:
    """The images of every batch, put together, that do not fit in memory: OutOfMemory naming ``seeds`` (a
    smaller batch_size would not help)."""
    each = images[0][0].numel() if images else 0
    with out_of_memory_as(
        lambda tried: OutOfMemory(
            f"seeds: the {count} images of this call ({count * each / 2**30:.1f} GiB as uint8) do not fit in memory "
            f"together{tried}; sample fewer seeds per call (split the seed range) and gather them afterwards"
        )
    ):
        yield


def latent_decoder(vae: nn.Module, *, scale: float = SD_SCALE_FACTOR) -> Callable[[Tensor], Tensor]:
    """Scaled latents -> pixels in [-1, 1] through a diffusers AutoencoderKL (the release's VAE scale)."""

    @torch.no_grad()
    def decode(z: Tensor) -> Tensor:
        return vae.decode(z / scale).sample.float()

    return decode


def to_uint8(images: Float[Tensor, "b c h w"]) -> UInt8[Tensor, "b h w c"]:
    """[-1, 1] floats -> uint8 NHWC (the ADM reference-batch layout), rounding to the nearest level."""
    if images.ndim != 4:  # torch's permute() error named no argument
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def make_grid(images: UInt8[Tensor, "b h w c"], *, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images into one (rows*H, cols*W, C) uint8 array with ``pad`` pixels of black between them."""
    if images.dtype != torch.uint8 or images.ndim != 4:  # floats were cast to uint8: a black grid
        raise ValueError(f"images must be uint8 (b, h, w, c), got {images.dtype} {list(images.shape)}")
    if nrow is not None:
        check_integer("nrow", nrow)  # 0 fell back to the square grid without a word
    check_integer("pad", pad, minimum=0)
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
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def images_out_kind(out: str | Path) -> str:
    """What :func:`save_images` writes at ``out``: "png" (a grid), "npz" (ADM layout) or "dir" (one PNG per
    image, a new or empty directory). ValueError (one line) for anything else, checked before any sampling."""
    path = Path(out)
    if not str(out).strip():
        raise ValueError(f"out must be a .png file, an .npz file or a directory, got {str(out)!r}")
    kind = {".png": "png", ".npz": "npz", "": "dir"}.get(path.suffix.lower())
    if path.name.lower() in (".png", ".npz"):  # Path('.png').suffix is '': it was taken for a directory
        raise ValueError(f"out {path}: a .png or .npz file needs a name before its suffix")
    if kind is None:
        raise ValueError(f"out must be a .png file, an .npz file or a directory (no suffix), got {path}")
    # A file among its parents, a folder nothing can be written to, a name too long (the protocol's too): an
    # existing out file is replaced.
    check_output_path(path, name="out", file=kind != "dir")
    if kind != "dir":
        check_output_path(path.with_suffix(".json"), name="out", file=True)
    if not path.parent.is_dir():
        raise ValueError(f"out {path}: directory {path.parent} does not exist")
    if kind == "dir" and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"out {path} exists and is not an empty directory: images are never mixed with older ones")
    if kind != "dir" and path.is_dir():
        raise ValueError(f"out {path} is a directory")
    if kind != "dir" and path.with_suffix(".json").is_dir():  # where the protocol goes
        raise ValueError(f"out {path}: its protocol {path.with_suffix('.json')} would replace a directory")
    return kind


def save_images(
    images: UInt8[Tensor, "b h w c"],
    out: str | Path,
    *,
    labels: Tensor | None = None,
    protocol: dict[str, Any] | None = None,
) -> Path:
    """Write uint8 NHWC images to ``out`` (see :func:`images_out_kind`), atomically: a ``.png`` grid (10 per
    row for labelled sets of multiples of 10), an ``.npz`` with ``arr_0`` (and ``arr_1`` labels) as the ADM
    evaluation suite reads, or a directory of ``000000.png`` ... filled under a temporary name and renamed.
    ``protocol`` (see :func:`sampling_protocol`) is written beside them as JSON: ``out`` with a ``.json``
    suffix, or ``protocol.json`` inside the directory. Returns the protocol's path (``out`` without one)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be non-empty uint8 (b, h, w, c), got {images.dtype} {list(images.shape)}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"labels must hold one class id per image ({len(images)}), got {len(labels)}")
    try:  # before any image is written: a protocol that cannot be saved must not leave images without it
        json.dumps(protocol, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"protocol: cannot be written as JSON ({exc})") from None
    out = Path(out)
    kind = images_out_kind(out)  # checked again: nothing is written where the protocol could not follow
    if kind == "png":
        nrow = 10 if labels is not None and len(images) % 10 == 0 else None
        save_png(make_grid(images, nrow=nrow), out, upscale=max(1, 128 // images.shape[1]))
    elif kind == "npz":
        arrays = {"arr_0": images.numpy()} | ({} if labels is None else {"arr_1": labels.numpy()})
        with atomic_path(out) as tmp, open(tmp, "wb") as f:  # a file object: np.savez appends .npz to a path
            np.savez(f, **arrays)
    else:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            for i, img in enumerate(images.numpy()):
                save_png(img, tmp / f"{i:06d}.png")  # renamed onto out (new, or an empty directory) at the end
    if protocol is None:
        return out
    record_path = out / "protocol.json" if kind == "dir" else out.with_suffix(".json")
    write_json(record_path, protocol)
    return record_path


def preview_writer(
    run_dir: str | Path,
    *,
    objective: Objective | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
    upscale: int = 1,
) -> Callable[[int, nn.Module], None]:
    """``on_sample(step, ema_model)`` for :func:`diffit.train.train`: writes the :func:`preview_grid` of the EMA
    model to ``run_dir/samples-<step>.png``, each pixel ``upscale`` times."""

    def on_sample(step: int, ema_model: nn.Module) -> None:
        grid = preview_grid(ema_model, objective=objective, decode=decode)
        save_png(grid, Path(run_dir) / f"samples-{step:08d}.png", upscale=upscale)

    return on_sample


@torch.no_grad()
def preview_grid(
    model: nn.Module,
    *,
    objective: Objective | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
    max_steps: int = 100,
) -> np.ndarray:
    """The fixed-seed grid a training run writes to show progress: seeds 0..n-1 with, for a class-conditional
    model, 8 images of each of its first 10 classes (one class per column), else 64 images; the objective's
    default sampler with at most ``max_steps`` steps. Returns the (H, W, C) uint8 grid."""
    objective = objective if objective is not None else default_objective(model)
    num_classes = getattr(model, "num_classes", None)
    n = 64 if num_classes is None else 8 * min(num_classes, 10)
    steps = min(objective.default_steps, max_steps)
    images = generate(
        model, sampler=SAMPLERS[objective.default_sampler], sigmas=objective.sampling_sigmas(steps),
        seeds=list(range(n)), labels=None if num_classes is None else torch.arange(n) % min(num_classes, 10),
        objective=objective, batch_size=16 if decode is not None else n, decode=decode,
    )  # fmt: skip
    return make_grid(images, nrow=min(num_classes, 10) if num_classes else 8)
