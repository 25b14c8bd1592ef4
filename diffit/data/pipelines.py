"""Streaming pipelines over shards: image training, latent training, and a finite evaluation pass.

Conventions shared by every pipeline:
- ``batch_size`` is the *global* batch; rank r receives ``batch_size // world_size`` samples per batch
  (batch_size must be divisible by world_size). ``rank``/``world_size`` default to torch.distributed's
  when it is initialised, else (0, 1).
- images come out as float32 (B, C, H, W) in [-1, 1]; latents as float32 (B, C, h, w) already multiplied
  by the scale factor; labels as int64 (B,), -1 for an unlabelled (unconditional) dataset.
- ``labelled=None`` reads ``dataset.json`` beside local shards (classes > 0); without one, labelled. A label
  outside dataset.json's class range is a bad sample.
- bad samples are skipped and counted (``BadSampleWarning`` once per shard); ``.skipped`` gives the count
  so far, and a finite pass warns the total when it ends.
- resume: ``start_step=k`` yields exactly the batches an uninterrupted run yields from step k on (same seed,
  ranks and workers); see ``diffit.data.streams`` for how, and for what a resume reads.
- URLs: brace patterns, local paths, ``http(s):`` and ``pipe:`` URLs (anything WebDataset's gopen opens).
"""

from collections.abc import Iterator
from functools import partial

from torch.utils.data import DataLoader, Dataset

from diffit.data.badinput import BadSampleLog
from diffit.data.decoders import SD_SCALE_FACTOR, ImageDecoder, LatentDecoder, collate_images, collate_latents
from diffit.data.manifest import Manifest, find_manifest, label_spec, shard_counts
from diffit.data.streams import EvalStream, Shards, TrainStream
from diffit.data.urls import expand_urls, resolve_rank

__all__ = ["SD_SCALE_FACTOR", "Batches", "eval_pipeline", "image_pipeline", "latent_pipeline"]


class Batches:
    """An iterable of batches read by a DataLoader, with the count of skipped bad samples."""

    def __init__(self, dataset: Dataset, *, num_workers: int, log: BadSampleLog, finite: bool, name: str) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
        self.dataset, self.num_workers, self.log, self.finite, self.name = dataset, num_workers, log, finite, name

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far, by this process and its workers."""
        return self.log.count

    def __iter__(self) -> Iterator[tuple]:
        loader = DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, prefetch_factor=4 if self.num_workers else None
        )
        yield from loader
        if self.finite:
            self.log.report(self.name)


def _shards(urls: str | list[str], batch_size: int, rank: int | None, world_size: int | None) -> Shards:
    expanded = expand_urls(urls)
    rank, world_size = resolve_rank(rank, world_size)
    if batch_size < 1 or batch_size % world_size:
        raise ValueError(
            f"batch_size: expected a positive multiple of world_size={world_size} (the global "
            f"batch is split between ranks), got {batch_size}"
        )
    manifest = find_manifest(expanded)
    counts = shard_counts(expanded, manifest)
    return Shards(expanded, counts, manifest, BadSampleLog(), batch_size // world_size, rank, world_size)


def _check_images(manifest: Manifest | None, resolution: int | None, channels: int | None, resize: bool) -> None:
    """Fail before streaming when dataset.json already says the images do not match the request."""
    if manifest is None or resize:
        return
    if manifest.kind != "image":
        raise ValueError(f"urls: these are {manifest.kind} shards; expected image shards")
    if resolution is not None and manifest.resolution is not None and manifest.resolution != resolution:
        raise ValueError(
            f"resolution: the shards hold {manifest.resolution}x{manifest.resolution} images but "
            f"resolution={resolution} was requested; pass resize=True to resize"
        )
    if channels is not None and manifest.channels != channels:
        raise ValueError(
            f"channels: the shards hold {manifest.channels}-channel images but channels={channels} "
            "was requested; pass resize=True to convert"
        )


def image_pipeline(
    urls: str | list[str],
    *,
    batch_size: int,
    resolution: int,
    channels: int,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    start_step: int = 0,
    flip: bool = True,
    resize: bool = False,
    labelled: bool | None = None,
    shuffle_buffer: int = 1000,
) -> Batches:
    """Endless shuffled ``(x, y)`` training batches of images from shards (see the module docstring).

    ``flip``: random horizontal flips. ``resize``: convert/center-crop images of another channel count or
    size instead of failing. Resume: pass the training step as ``start_step``; the batches are exactly those
    of an uninterrupted run from that step on.
    """
    shards = _shards(urls, batch_size, rank, world_size)
    _check_images(shards.manifest, resolution, channels, resize)
    decoder = ImageDecoder(resolution, channels, resize, *label_spec(labelled, shards.manifest), flip=flip)
    stream = TrainStream(
        shards, decoder, collate_images, seed=seed, start_step=start_step, shuffle_buffer=shuffle_buffer
    )
    return Batches(stream, num_workers=num_workers, log=shards.log, finite=False, name="image_pipeline")


def latent_pipeline(
    urls: str | list[str],
    *,
    batch_size: int,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    start_step: int = 0,
    flip: bool = True,
    sample: bool = True,
    scale_factor: float | None = None,
    labelled: bool | None = None,
    shuffle_buffer: int = 1000,
) -> Batches:
    """Endless shuffled ``(z, y)`` training batches of pre-encoded latents (from ``encode_latents``).

    ``flip``: use the stored encoding of the mirrored image with probability 1/2. ``sample``: draw from the
    stored posterior N(mean, std^2) rather than its mean. ``z`` is multiplied by ``scale_factor`` (default:
    dataset.json's, else ``SD_SCALE_FACTOR``). Seeding and resume as in ``image_pipeline``.
    """
    shards = _shards(urls, batch_size, rank, world_size)
    manifest = shards.manifest
    if manifest is not None and manifest.kind != "latent":
        raise ValueError(f"urls: these are {manifest.kind} shards; expected latent shards (diffit data encode)")
    if scale_factor is None:
        stored = None if manifest is None else manifest.extra.get("scale_factor")
        scale_factor = float(stored) if isinstance(stored, (int, float)) else SD_SCALE_FACTOR
    decoder = LatentDecoder(*label_spec(labelled, manifest), flip=flip, sample=sample)
    collate = partial(collate_latents, scale_factor=scale_factor)  # a partial pickles into workers
    stream = TrainStream(shards, decoder, collate, seed=seed, start_step=start_step, shuffle_buffer=shuffle_buffer)
    return Batches(stream, num_workers=num_workers, log=shards.log, finite=False, name="latent_pipeline")


def eval_pipeline(
    urls: str | list[str],
    *,
    batch_size: int,
    resolution: int | None = None,
    channels: int | None = None,
    resize: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    labelled: bool | None = None,
) -> Batches:
    """One finite pass of ``(x, y, keys)`` image batches, no augmentation; across all ranks and workers
    every readable sample is yielded exactly once (the last batch of each reader may be smaller)."""
    shards = _shards(urls, batch_size, rank, world_size)
    _check_images(shards.manifest, resolution, channels, resize)
    decoder = ImageDecoder(resolution, channels, resize, *label_spec(labelled, shards.manifest), flip=False)
    return Batches(
        EvalStream(shards, decoder, collate_images),
        num_workers=num_workers,
        log=shards.log,
        finite=True,
        name="eval_pipeline",
    )
