"""What a training or sampling run decides before it starts, for Python callers and the CLI alike.

- :func:`training_data`: the shards' resolution, channels and classes (from ``dataset.json``), checked against
  what was asked, and the batches: exact in-memory batches for image sets that fit in RAM, else streams;
- :func:`build_backbone`: a preset by name, or a model factory of the user's own, sized for that data;
- :func:`preview_needs_vae`: whether the run's sample grids need the VAE it was given;
- :func:`check_resume_data`: a resumed run must train on the data its checkpoints were trained on;
- :func:`import_factory`: ``"mypkg.nets:make_net"`` -> the callable (code named by the user, never by a file);
- an output path that can be written is checked by :func:`diffit.util.check_output_path`, before any work.
"""

import importlib
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from diffit.augment import AUGMENT_DIM
from diffit.checkpoint import checkpoint_dirs, readable_state
from diffit.data import (
    digits_urls,
    expand_urls,
    find_manifest,
    image_pipeline,
    latent_pipeline,
    load_images,
    memory_batches,
    shard_counts,
)
from diffit.nn import (
    check_backbone,
    diffit_cifar10,
    diffit_ffhq64,
    diffit_tiny,
    latent_diffit_b_2,
    latent_diffit_l_2,
    latent_diffit_s_2,
    latent_diffit_xl_2,
)
from diffit.train import DataFn
from diffit.util import OutOfMemory, out_of_memory_as

__all__ = [
    "IMAGE_PRESETS",
    "LATENT_PRESETS",
    "MEMORY_LIMIT_BYTES",
    "VAE_FACTOR",
    "TrainingData",
    "build_backbone",
    "check_resume_data",
    "import_factory",
    "latent_side",
    "preview_needs_vae",
    "training_data",
]

VAE_FACTOR = 8  # the Stable Diffusion VAE maps H x W x 3 pixels to H/8 x W/8 x 4 latents
# Image datasets up to this size are held in RAM as uint8: their batches are exact, seekable and shared by
# nothing; larger sets (and every latent set) are streamed from the shards.
MEMORY_LIMIT_BYTES = 2 << 30

IMAGE_PRESETS: dict[str, Callable[..., nn.Module]] = {
    "tiny": diffit_tiny,
    "cifar10": diffit_cifar10,
    "ffhq64": diffit_ffhq64,
}
LATENT_PRESETS: dict[str, Callable[..., nn.Module]] = {
    "s2": latent_diffit_s_2,
    "b2": latent_diffit_b_2,
    "l2": latent_diffit_l_2,
    "xl2": latent_diffit_xl_2,
}


def latent_side(resolution: int) -> int:
    """Latent grid side of an image resolution (the SD VAE downsamples by 8)."""
    if resolution < VAE_FACTOR or resolution % VAE_FACTOR:
        raise ValueError(f"res must be a multiple of {VAE_FACTOR} for latent models (the VAE downsamples by 8)")
    return resolution // VAE_FACTOR


@dataclass
class TrainingData:
    """Shards to train on and what they hold. ``resolution`` is the image side in pixels; ``side`` the model
    input's (the latent side for latent data); ``num_classes`` is None for unlabelled data; ``kind`` says
    whether batches come from RAM ("memory") or are streamed ("stream")."""

    urls: list[str]
    latent: bool
    resolution: int
    side: int
    channels: int
    num_classes: int | None
    count: int | None
    content_hash: str | None
    kind: str
    flip: bool
    _images: Any = None
    _labels: Any = None

    def batches(
        self, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, num_workers: int = 0
    ) -> DataFn:
        """``data(start_step)`` for :func:`diffit.train.train`: this rank's slice of every global batch."""
        split = dict(batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, flip=self.flip)
        if self.kind == "memory":
            return lambda start: memory_batches(self._images, self._labels, start_step=start, **split)
        if self.latent:
            return lambda start: iter(latent_pipeline(self.urls, num_workers=num_workers, start_step=start, **split))
        return lambda start: iter(
            image_pipeline(
                self.urls, resolution=self.resolution, channels=self.channels, num_workers=num_workers,
                start_step=start, **split,
            )
        )  # fmt: skip

    def describe(self, *, world_size: int = 1, num_workers: int = 0) -> dict[str, Any]:
        """What a checkpoint records of the data (``run_info``), for a run read as :meth:`batches` reads it. The shard
        count tells a subset of a set (the same dataset.json, so the same content hash) from the whole; a stream
        records its readers too: its batches depend on the ranks and workers (RAM-held data's do not)."""
        readers = f"{world_size} rank(s) x {max(num_workers, 1)} reader(s)"
        return {
            "urls": self.urls[0] if len(self.urls) == 1 else f"{self.urls[0]} .. {self.urls[-1]} ({len(self.urls)})",
            "latent": self.latent, "resolution": self.resolution, "channels": self.channels,
            "num_classes": self.num_classes, "count": self.count, "content_hash": self.content_hash,
            "kind": self.kind, "flip": self.flip, "shards": len(self.urls),
            **({"readers": readers} if self.kind == "stream" else {}),
        }  # fmt: skip


def training_data(
    data: str | list[str] | None,
    *,
    latent: bool = False,
    resolution: int | None = None,
    flip: bool | None = None,
    memory_limit: int = MEMORY_LIMIT_BYTES,
) -> TrainingData:
    """Open shards for training: ``data`` is a URL pattern (``"d/train-{000000..000127}.tar"``) or list, or
    None for the bundled digits. ``resolution`` (image pixels, also for latent data) defaults to the one
    ``dataset.json`` records and must equal it when both are known. ``flip`` defaults to True for the user's
    data and False for the digits (not mirror-symmetric). Image sets of at most ``memory_limit`` bytes are
    loaded into RAM here. Raises ValueError (one line, naming the argument) before loading anything else."""
    if latent and data is None:
        raise ValueError("data is required for latent training: latent shards made by `diffit data encode`")
    try:
        urls = digits_urls() if data is None else expand_urls(data)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"data {data!r}: {err}") from None
    manifest = find_manifest(urls)
    if manifest is None and data is not None:
        raise ValueError(
            f"data: no dataset.json beside {urls[0]}; write shards with `diffit data shard` or `diffit data encode`"
        )
    if manifest is not None and (manifest.kind == "latent") != latent:
        hint = "latent training needs `diffit data encode`" if latent else "train with latent=True (--latent)"
        raise ValueError(f"data: these are {manifest.kind} shards; {hint}")
    if resolution is not None and resolution < 1:
        raise ValueError(f"res must be >= 1, got {resolution}")
    # Latent shards record the image resolution as image_resolution and their own (latent) side as resolution.
    data_res = manifest.resolution if manifest is not None else None
    if latent and manifest is not None:
        data_res = manifest.extra.get("image_resolution", (manifest.resolution or 0) * VAE_FACTOR)
    resolution = resolution if resolution is not None else data_res
    if resolution is None:
        raise ValueError("res is required: the dataset does not record its resolution")
    if data_res is not None and resolution != data_res:
        raise ValueError(f"res {resolution} does not match the data's resolution {data_res} (dataset.json)")
    side = (manifest.resolution or latent_side(resolution)) if latent and manifest is not None else resolution
    channels = manifest.channels if manifest is not None else 1
    num_classes = manifest.classes if manifest is not None and manifest.classes > 0 else None
    counts = shard_counts(urls, manifest)  # the shards given, which may be a part of the set
    count = sum(counts) if counts is not None else manifest.count if manifest is not None else None
    flip = data is not None if flip is None else flip
    fits = not latent and (count or 0) * channels * resolution * resolution <= memory_limit
    td = TrainingData(
        urls=urls, latent=latent, resolution=resolution, side=side, channels=channels, num_classes=num_classes,
        count=count, content_hash=manifest.content_hash if manifest is not None else None,
        kind="memory" if fits else "stream", flip=flip,
    )  # fmt: skip
    if fits:
        td._images, td._labels = load_images(urls, resolution=resolution, channels=channels)
    return td


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """``"package.module:function"`` (or ``:Class``) -> that callable, imported because the user named it.
    The working directory is searched first, as ``uvicorn`` and ``python -m`` do."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model_factory must be 'module:function', got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model_factory {spec!r}: cannot import {module_name!r} ({err})") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model_factory {spec!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model_factory {spec!r} is not callable")
    return target


def build_backbone(
    data: TrainingData,
    *,
    model: str = "tiny",
    factory: Callable[..., nn.Module] | None = None,
    augment: float = 0.0,
    grad_checkpointing: bool = False,
) -> nn.Module:
    """A fresh backbone for ``data``: ``factory(resolution=side, in_channels=channels, num_classes=...)`` when
    given, else the preset ``model`` (image: tiny | cifar10 | ffhq64; latent: s2 | b2 | l2 | xl2). Unlabelled
    data gives an unconditional model. ``grad_checkpointing`` switches it on through the model's
    ``set_grad_checkpointing``. Seed torch's RNG first for reproducible initial weights. A model too large for
    memory (a dataset.json claiming 10^12 classes, say) raises :class:`~diffit.util.OutOfMemory` naming
    model (or factory)."""
    if not 0 <= augment <= 1:
        raise ValueError(f"augment must be in [0, 1], got {augment}")
    if augment > 0 and data.latent:
        raise ValueError("augment is for image-space training only")
    name = f"factory {getattr(factory, '__qualname__', factory)}" if factory is not None else f"model {model}"
    with out_of_memory_as(
        lambda tried: OutOfMemory(
            f"{name}: a model for the data ({data.side}x{data.side}, {data.channels} channel(s), "
            f"{data.num_classes or 0} classes, as its dataset.json says) does not fit in memory{tried}; choose a "
            "smaller model, or check the data's dataset.json"
        )
    ):
        net = _backbone(data, model=model, factory=factory, augment=augment)
    check_backbone(net, what="model_factory returned a model that")
    if grad_checkpointing:
        if not hasattr(net, "set_grad_checkpointing"):
            raise ValueError("grad_checkpointing: the model has no set_grad_checkpointing(enabled) method")
        net.set_grad_checkpointing(True)
    return net


def _backbone(data: TrainingData, *, model: str, factory: Callable[..., nn.Module] | None, augment: float) -> nn.Module:
    """:func:`build_backbone`'s model, before its checks."""
    if factory is not None:
        try:
            net = factory(resolution=data.side, in_channels=data.channels, num_classes=data.num_classes)
        except TypeError as err:  # a factory that does not take the three keyword arguments
            name = getattr(factory, "__qualname__", factory)
            raise ValueError(f"factory {name} must accept resolution=, in_channels=, num_classes= ({err})") from None
    else:
        presets = LATENT_PRESETS if data.latent else IMAGE_PRESETS
        if model not in presets:
            kind = "with" if data.latent else "without"
            raise ValueError(f"model must be one of {', '.join(presets)} {kind} latent, got {model!r}")
        try:
            if data.latent:
                net = presets[model](input_size=data.side, in_channels=data.channels, num_classes=data.num_classes)
            else:
                net = presets[model](
                    resolution=data.resolution, in_channels=data.channels, num_classes=data.num_classes,
                    augment_dim=AUGMENT_DIM if augment > 0 else 0,
                )  # fmt: skip
        except ValueError as err:
            raise ValueError(f"model {model} at res {data.resolution}: {err}") from None
    return net


def preview_needs_vae(vae: str | None, *, latent: bool, sample_every: int) -> bool:
    """Whether a training run loads ``vae`` (a path or Hub id) to decode its sample grids: only a latent run
    that writes grids (``sample_every`` > 0) does. ValueError for a vae given to image-space training, which
    never decodes anything (a mistake: the run is not the latent one it was meant to be); a warning for one
    given with ``sample_every=0``, where it goes unused, and for a latent run that should write grids without
    one (it writes none)."""
    if vae is None:
        if latent and sample_every > 0:
            warnings.warn(
                f"sample_every={sample_every} writes no sample grids in latent training without a vae to decode "
                "them (--vae)",
                UserWarning,
                stacklevel=2,
            )
        return False
    if not latent:
        raise ValueError(
            f"vae {vae!r} is for latent training only (latent=True), where it decodes the sample grids; "
            "image-space training does not use it"
        )
    if sample_every == 0:
        warnings.warn(f"vae {vae!r} is unused: sample_every=0 writes no sample grids", UserWarning, stacklevel=2)
        return False
    return True


def check_resume_data(run_dir: str | Path, content_hash: str | None) -> None:
    """ValueError unless the run in ``run_dir`` (if any) was trained on data with this content hash."""
    states = (readable_state(c) for c in checkpoint_dirs(Path(run_dir))[::-1])  # a damaged newest is passed over
    state = next((s for s in states if s is not None), None)
    if state is None or content_hash is None:
        return
    recorded = state.get("run", {}).get("data", {}).get("content_hash")
    recorded = recorded or state.get("args", {}).get("data_content_hash")  # checkpoints of diffit 0.1.0
    if recorded is not None and recorded != content_hash:
        raise ValueError(
            f"data is not the data the run in {run_dir} was trained on (content hash {content_hash[:12]}, "
            f"run: {str(recorded)[:12]}); resume with the same shards"  # str: a hand-edited hash may be a number
        )
