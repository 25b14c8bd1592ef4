"""Exact, in-memory batches for datasets that fit in RAM (the bundled digits, small shard sets).

The global batch at step k is a pure function of (seed, k):

    position p = k * B + i  (i = 0..B-1)   epoch e = p // N   offset = p mod N
    index(p) = perm_e[offset],   perm_e = a random permutation of 0..N-1 seeded by (seed, e)
    flip(p)  = Bernoulli(1/2), drawn for the whole global batch from a generator seeded by (seed, k)

so epochs are sampled without replacement, a run resumed at step k sees exactly the batches of an
uninterrupted run, and rank r's slice [r * B/W, (r + 1) * B/W) of the global batch means W ranks together
see exactly the single-process batch (so, unlike a stream, a run may resume on another world size).
"""

from collections.abc import Iterator
from itertools import chain, count

import numpy as np
import torch
from jaxtyping import Float, Int64, UInt8
from torch import Tensor

from diffit.data.images import ImageDecoder
from diffit.data.shards import (
    BadSampleLog,
    check_kind,
    expand_urls,
    find_manifest,
    label_spec,
    read_shard,
    shard_counts,
)
from diffit.data.streams import decode_or_skip
from diffit.util import check_integer, mix_seed, split_batch

_FLIP_STREAM = 1  # separates the flip generator's seeds from the permutations'


def load_images(
    urls: str | list[str],
    *,
    resolution: int | None = None,
    channels: int | None = None,
    resize: bool = False,
    labelled: bool | None = None,
    log: BadSampleLog | None = None,
) -> tuple[UInt8[Tensor, "n c h w"], Int64[Tensor, " n"]]:
    """Every readable image of the shards, in shard and file order, as uint8 (N, C, H, W) and labels (N,).

    Labels are -1 when the dataset is unlabelled. Bad samples are skipped (``BadSampleWarning``); images
    must all have one size and channel count (the first one's, unless given), else ValueError.
    """
    expanded = expand_urls(urls)
    manifest = find_manifest(expanded)
    check_kind(manifest, "image")
    labelled, classes = label_spec(labelled, manifest)
    log = log or BadSampleLog()
    counts = shard_counts(expanded, manifest) or [None] * len(expanded)
    raws = chain.from_iterable(read_shard(url, log, n) for url, n in zip(expanded, counts, strict=True))
    decoder = ImageDecoder(resolution, channels, resize, labelled, classes, flip=False)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for raw in raws:
        if (item := decode_or_skip(raw, decoder, None, log)) is None:
            continue
        if not images:  # the first image fixes the shape for the rest
            c, h, w = item[0].shape
            if h != w:
                raise ValueError(
                    f"urls: image {raw['__key__']!r} in {raw['__url__']} is not square ({w}x{h}); "
                    "pass resolution= and resize=True, or re-shard with `diffit data shard --res N --center-crop`"
                )
            decoder = ImageDecoder(h, c, resize, labelled, classes, flip=False)
        images.append(item[0])
        labels.append(item[1])
    if not images:
        raise ValueError(f"urls: no readable images in {urls!r}")
    log.report("load_images")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng(mix_seed(seed, epoch)).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Dataset indices of the global batch at ``step`` (epochs without replacement; see module docstring)."""
    positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, n)
    indices = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        mask = epochs == epoch
        indices[mask] = _permutation(n, seed, int(epoch))[offsets[mask]]
    return indices


def memory_batches(
    images: UInt8[Tensor, "n c h w"],
    labels: Int64[Tensor, " n"],
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    flip: bool = True,
) -> Iterator[tuple[Float[Tensor, "b c h w"], Int64[Tensor, " b"]]]:
    """Endless training batches ``(x in [-1, 1], y)`` from images in memory, from step ``start_step`` on.

    ``batch_size`` is the global batch; this rank yields its ``batch_size // world_size`` contiguous slice.
    """
    rank, world_size, local = split_batch(batch_size, rank, world_size)
    check_integer("start_step", start_step, minimum=0)
    # Float images were scaled as if 0..255 (garbage), and no images or labels of another length raised IndexError.
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) < 1:
        raise ValueError(f"images: expected uint8 (N, C, H, W) with N >= 1, got {images.dtype} {tuple(images.shape)}")
    if tuple(labels.shape) != (len(images),):
        raise ValueError(f"labels: expected one label per image ({len(images)},), got {tuple(labels.shape)}")
    n = images.shape[0]
    lo, hi = rank * local, (rank + 1) * local
    for step in count(start_step):
        index = torch.from_numpy(batch_indices(n, batch_size, seed, step)[lo:hi])
        x = images[index].float().div_(127.5).sub_(1.0)  # uint8 0..255 -> [-1, 1]
        if flip:
            flips = np.random.default_rng(mix_seed(seed, step, _FLIP_STREAM)).random(batch_size)[lo:hi] < 0.5
            mask = torch.from_numpy(flips)
            x[mask] = x[mask].flip(-1)
        yield x, labels[index]
