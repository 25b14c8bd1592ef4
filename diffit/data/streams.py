"""Streaming pipelines over shards: endless training streams that resume exactly, and a finite exact-once pass.
Their conventions (batch shapes, labels, bad samples): docs/data-format.md#pipelines.

Readers. With R ranks and W DataLoader workers (W = 1 without workers) there are N = R * W readers; reader
``i = r * W + q`` serves rank r. A DataLoader hands out its workers' batches round-robin, so in a run started
at step s worker w delivers steps s + w, s + w + W, ...: it plays reader slot ``q = (s + w) mod W`` from its
batch ``(s + w) // W`` on. The batches of step t are therefore the same whatever step a run started at.

Training stream of reader i (``TrainStream``), a pure function of (seed, rank, W, shards):

    epoch e:  shard order   pi_e = permutation of the shards seeded by (seed, e), shared by all readers
              reader i reads shards pi_e[i::N] (no two readers share a shard in an epoch; with fewer
              shards than readers, every reader reads them all and keeps samples i, i + N, ...)
              samples pass a shuffle buffer seeded by (seed, e, i), flushed at the end of the epoch
    batch j:  raw samples [j*b, (j+1)*b) of the epochs joined end to end; decoding (flips, latent noise)
              uses a generator seeded by (seed, step, rank)

Batch boundaries are positions in the raw (undecoded) stream: a bad sample's place is filled by a good
sample of the same batch (or of the next ones), so a resumed stream fast-forwards by reading the skipped
samples without decoding them, and whole epochs are skipped without reading when dataset.json gives every
shard's count (a shard that lost samples still takes its declared place; see ``read_shard(pad=True)``).

Evaluation (``EvalStream``): one pass in file order, every sample yielded by exactly one reader.
"""

import itertools
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import chain, islice
from typing import no_type_check

import numpy as np
import torch
import webdataset as wds
from jaxtyping import Float, Int64
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from diffit.data.images import SD_SCALE_FACTOR, ImageDecoder, LatentDecoder, collate_images, collate_latents
from diffit.data.shards import (
    LOST,
    BadSample,
    BadSampleLog,
    Manifest,
    check_kind,
    expand_urls,
    find_manifest,
    label_spec,
    read_shard,
    shard_counts,
)
from diffit.util import check_integer, mix_seed, split_batch

LOOKAHEAD_BATCHES = 64  # how far a batch of only bad samples looks for good ones before the stream gives up
Decoder = Callable[[dict, np.random.Generator | None], tuple[np.ndarray, int]]
Batch = tuple[Float[Tensor, "b c h w"], Int64[Tensor, " b"]]  # (x or z, labels)
Collate = Callable[[list[np.ndarray], list[int], np.random.Generator | None], Batch]


def reader_shards(n_shards: int, *, seed: int, epoch: int, index: int, total: int, shuffle: bool) -> list[int]:
    """Shard indices reader ``index`` of ``total`` reads in ``epoch`` (all of them when shards < readers).

    webdataset's ``split_by_node`` / ``split_by_worker`` are this same slice, but they take the slot from
    the environment and the DataLoader; exact resume needs the slot ``(start_step + worker) mod W``.
    """
    order = np.random.default_rng(mix_seed(seed, epoch)).permutation(n_shards) if shuffle else np.arange(n_shards)
    return [int(k) for k in (order[index::total] if n_shards >= total else order)]


def epoch_length(counts: list[int], *, seed: int, epoch: int, index: int, total: int) -> int:
    """Raw samples reader ``index`` sees in a shuffled ``epoch``, from the shards' declared counts."""
    if len(counts) >= total:
        return sum(
            counts[k]
            for k in reader_shards(len(counts), seed=seed, epoch=epoch, index=index, total=total, shuffle=True)
        )
    return max(0, (sum(counts) - index + total - 1) // total)


def epoch_samples(
    urls: list[str],
    counts: list[int] | None,
    log: BadSampleLog,
    *,
    seed: int,
    epoch: int,
    index: int,
    total: int,
    shuffle_buffer: int,
    pad: bool,
) -> Iterator[dict]:
    """Raw samples of reader ``index`` in ``epoch``: its shards, then webdataset's seeded ``shuffle``
    (``shuffle_buffer`` 0: file order and no shard permutation)."""
    shuffle = shuffle_buffer > 0
    chosen = reader_shards(len(urls), seed=seed, epoch=epoch, index=index, total=total, shuffle=shuffle)
    # With fewer shards than readers every reader scans every shard: only reader 0 reports a broken one.
    shared = len(urls) < total
    shard_log = None if shared and index else log
    samples = chain.from_iterable(
        read_shard(urls[k], shard_log, None if counts is None else counts[k], pad) for k in chosen
    )
    if shared:
        samples = islice(samples, index, None, total)
    if shuffle:
        rng = random.Random(mix_seed(seed, epoch, index))
        samples = wds.filters.shuffle(shuffle_buffer, shuffle_buffer, rng=rng)(samples)
    return samples


def decode_or_skip(
    raw: dict, decoder: Decoder, rng: np.random.Generator | None, log: BadSampleLog | None
) -> tuple | None:
    """``decoder(raw, rng)``, or None for a bad sample (counted and warned in ``log`` unless it is None)."""
    if raw.get(LOST):  # already counted when its shard was read
        return None
    try:
        return decoder(raw, rng)
    except BadSample as exc:
        if log is not None:
            log.skip(str(raw["__url__"]), str(raw["__key__"]), str(exc))
        return None


def good_batches(
    raws: Iterator[dict], decoder: Decoder, log: BadSampleLog, batch_size: int
) -> Iterator[tuple[list[str], list[np.ndarray], list[int]]]:
    """``(keys, arrays, labels)`` of the good samples of ``raws`` (no augmentation), ``batch_size`` at a time."""
    decoded = ((raw["__key__"], decode_or_skip(raw, decoder, None, log)) for raw in raws)
    good = ((key, *item) for key, item in decoded if item is not None)
    for batch in wds.filters.batched(batch_size, collation_fn=None, partial=True)(good):
        keys, items, labels = zip(*batch, strict=True)
        yield list(keys), list(items), list(labels)


@dataclass(frozen=True)
class Shards:
    """What every stream of one pipeline shares: the shards, their declared counts, the log, the rank."""

    urls: list[str]
    counts: list[int] | None  # samples per shard from dataset.json; None when it does not list them all
    manifest: Manifest | None
    log: BadSampleLog
    batch_size: int  # this rank's share of the global batch
    rank: int
    world_size: int


def _slot() -> tuple[int, int]:
    """``(worker, workers)`` of the calling DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class TrainStream(IterableDataset):
    """Endless, shuffled batches of ``shards.batch_size`` for one rank, from step ``start_step`` on."""

    def __init__(
        self, shards: Shards, decoder: Decoder, collate: Collate, *, seed: int, start_step: int, shuffle_buffer: int
    ) -> None:
        super().__init__()
        check_integer("start_step", start_step, minimum=0)
        check_integer("shuffle_buffer", shuffle_buffer)
        self.shards, self.decoder, self.collate = shards, decoder, collate
        self.seed, self.start_step, self.shuffle_buffer = seed, start_step, shuffle_buffer

    def raw_samples(self, index: int, total: int, skip: int) -> Iterator[dict]:
        """Reader ``index``'s endless raw stream from position ``skip``; nothing skipped is decoded."""
        urls, counts, log = self.shards.urls, self.shards.counts, self.shards.log
        for epoch in itertools.count():
            where = dict(seed=self.seed, epoch=epoch, index=index, total=total)
            length = None if counts is None else epoch_length(counts, **where)
            if length is not None and 0 < length <= skip:
                skip -= length  # a whole epoch: skipped without reading
                continue
            seen = 0
            for raw in epoch_samples(urls, counts, log, **where, shuffle_buffer=self.shuffle_buffer, pad=True):
                seen += 1
                if skip:
                    skip -= 1
                else:
                    yield raw
            if seen == 0:
                raise RuntimeError(
                    f"no readable samples in the {len(urls)} shard(s) of reader {index} of {total} "
                    f"(first: {urls[0]}); see the BadSampleWarning above"
                )

    def __iter__(self) -> Iterator[Batch]:
        (worker, workers), b, rank = _slot(), self.shards.batch_size, self.shards.rank
        slot, first = (self.start_step + worker) % workers, (self.start_step + worker) // workers
        raw = self.raw_samples(rank * workers + slot, self.shards.world_size * workers, first * b)
        batches, ahead = wds.filters.batched(b, collation_fn=None, partial=False)(raw), deque()
        for j in itertools.count(first):
            batch = ahead.popleft() if ahead else next(batches)
            step = slot + workers * j
            rng = np.random.default_rng(mix_seed(self.seed, step, rank))
            good = [d for d in (decode_or_skip(s, self.decoder, rng, self.shards.log) for s in batch) if d]
            # A bad sample's place goes to a good sample of the same batch, so that the batch keeps its size
            # and its boundaries stay positions in the raw stream. A batch without one (a stretch of samples
            # a shard lost) borrows from the batches after it, which both a resumed and an uninterrupted
            # run read; they are decoded again, silently, in their own step.
            for n in range(LOOKAHEAD_BATCHES if not good else 0):
                if len(ahead) == n:
                    ahead.append(next(batches))
                if good := [d for d in (decode_or_skip(s, self.decoder, rng, None) for s in ahead[n]) if d]:
                    break
            if not good:
                raise RuntimeError(
                    f"no sample could be decoded in the {LOOKAHEAD_BATCHES} batches from step {step} on (first: "
                    f"{batch[0]['__key__']!r} in {batch[0]['__url__']}); see the BadSampleWarning above"
                )
            yield self.collate(
                [good[i % len(good)][0] for i in range(b)], [good[i % len(good)][1] for i in range(b)], rng
            )


class EvalStream(IterableDataset):
    """One finite pass: ``(x, y, keys)`` batches, every sample exactly once over all ranks and workers."""

    def __init__(self, shards: Shards, decoder: Decoder, collate: Collate) -> None:
        super().__init__()
        self.shards, self.decoder, self.collate = shards, decoder, collate

    def __iter__(self) -> Iterator[tuple[Float[Tensor, "b c h w"], Int64[Tensor, " b"], list[str]]]:
        (worker, workers), sh = _slot(), self.shards
        where = dict(seed=0, epoch=0, index=sh.rank * workers + worker, total=sh.world_size * workers)
        raws = epoch_samples(sh.urls, sh.counts, sh.log, **where, shuffle_buffer=0, pad=False)
        for keys, items, labels in good_batches(raws, self.decoder, sh.log, sh.batch_size):
            yield (*self.collate(items, labels), keys)


class Batches:
    """An iterable of batches read by a DataLoader, with the count of skipped bad samples."""

    @no_type_check  # checked here: beartype warns on torch's typing.Iterable base of IterableDataset (PEP 585)
    def __init__(self, dataset: "TrainStream | EvalStream", *, num_workers: int, name: str) -> None:
        if not isinstance(dataset, (TrainStream, EvalStream)):
            raise TypeError(f"dataset: expected a TrainStream or EvalStream, got {type(dataset).__name__}")
        check_integer("num_workers", num_workers, minimum=0)
        self.dataset, self.num_workers, self.log, self.name = dataset, num_workers, dataset.shards.log, name

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far, by this process and its workers."""
        return self.log.count

    def __iter__(self) -> Iterator[tuple]:
        loader = DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, prefetch_factor=4 if self.num_workers else None
        )
        yield from loader
        if isinstance(self.dataset, EvalStream):  # a finite pass: warn the total
            self.log.report(self.name)


def _shards(urls: str | list[str], batch_size: int, rank: int | None, world_size: int | None) -> Shards:
    expanded = expand_urls(urls)
    rank, world_size, per_rank = split_batch(batch_size, rank, world_size)
    manifest = find_manifest(expanded)
    counts = shard_counts(expanded, manifest)
    return Shards(expanded, counts, manifest, BadSampleLog(), per_rank, rank, world_size)


def _check_images(manifest: Manifest | None, resolution: int | None, channels: int | None, resize: bool) -> None:
    """Fail before streaming when dataset.json already says the images do not match the request."""
    check_kind(manifest, "image")  # resize cannot make images of latents
    if manifest is None or resize:
        return
    if resolution is not None and manifest.resolution is not None and manifest.resolution != resolution:
        raise ValueError(
            f"resolution: the shards hold {manifest.resolution}x{manifest.resolution} images but resolution="
            f"{resolution} was requested; pass resize=True, or re-shard with `diffit data shard --res {resolution}`"
        )
    if channels is not None and manifest.channels != channels:
        raise ValueError(
            f"channels: the shards hold {manifest.channels}-channel images but channels={channels} was "
            f"requested; pass resize=True, or re-shard with `diffit data shard --channels {channels}`"
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
    return Batches(stream, num_workers=num_workers, name="image_pipeline")


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
    check_kind(manifest, "latent")
    if scale_factor is None:
        stored = None if manifest is None else manifest.extra.get("scale_factor")
        scale_factor = float(stored) if isinstance(stored, (int, float)) else SD_SCALE_FACTOR
    decoder = LatentDecoder(*label_spec(labelled, manifest), flip=flip, sample=sample)
    collate = partial(collate_latents, scale_factor=scale_factor)  # a partial pickles into workers
    stream = TrainStream(shards, decoder, collate, seed=seed, start_step=start_step, shuffle_buffer=shuffle_buffer)
    return Batches(stream, num_workers=num_workers, name="latent_pipeline")


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
    return Batches(EvalStream(shards, decoder, collate_images), num_workers=num_workers, name="eval_pipeline")
