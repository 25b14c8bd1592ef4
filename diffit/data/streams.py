"""Iterable datasets that read shards, split across DDP ranks and DataLoader workers, and batch.

Training (``TrainStream``): every reader (rank r, worker w) streams an endless sequence of epochs; in
epoch e it visits *all* shards in a random order drawn from ``mix_seed(seed, start_step, e, r, w)``, passes
samples through a shuffle buffer and draws its flips/noise from a generator seeded by
``mix_seed(seed, start_step, r, w)``. Readers therefore never share a random stream, the whole stream is a
pure function of (seed, start_step, rank, worker count), and a restart at ``start_step`` > 0 starts fresh
streams instead of replaying the first batches. It is *not* bit-identical to an uninterrupted run (use
``memory_batches`` for that).

Evaluation (``EvalStream``): a finite pass in which each sample is yielded by exactly one reader. With at
least as many shards as readers, reader i takes shards i, i + R*W, ...; otherwise every reader scans all
shards and keeps the samples whose running index is i modulo R*W.
"""

import itertools
from collections.abc import Callable, Iterator

import numpy as np
from torch import Tensor
from torch.utils.data import IterableDataset

from diffit.data.badinput import BadSample, BadSampleLog, IgnoreLog
from diffit.data.shards import read_shard
from diffit.data.urls import StreamSlot, mix_seed

__all__ = ["EvalStream", "TrainStream"]

Decoder = Callable[[dict[str, object], np.random.Generator | None], tuple[np.ndarray, int]]
Collate = Callable[[list[np.ndarray], list[int]], tuple[Tensor, Tensor]]


def _decode(
    decoder: Decoder, raw: dict[str, object], rng: np.random.Generator | None, log: BadSampleLog
) -> tuple[np.ndarray, int] | None:
    try:
        return decoder(raw, rng)
    except BadSample as exc:
        log.skip(str(raw["__url__"]), str(raw["__key__"]), str(exc))
        return None


class TrainStream(IterableDataset):
    """Endless, shuffled batches of ``batch_size`` for one rank (see the module docstring)."""

    def __init__(
        self,
        urls: list[str],
        decoder: Decoder,
        collate: Collate,
        *,
        batch_size: int,
        seed: int,
        start_step: int,
        rank: int,
        world_size: int,
        shuffle_buffer: int,
        log: BadSampleLog,
    ) -> None:
        super().__init__()
        self.urls, self.decoder, self.collate, self.log = urls, decoder, collate, log
        self.batch_size, self.seed, self.start_step = batch_size, seed, start_step
        self.rank, self.world_size, self.shuffle_buffer = rank, world_size, max(1, shuffle_buffer)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        slot = StreamSlot.current(self.rank, self.world_size)
        rng = np.random.default_rng(mix_seed(self.seed, self.start_step, slot.rank, slot.worker, slot.num_workers))
        buffer: list[dict[str, object]] = []
        items: list[np.ndarray] = []
        labels: list[int] = []
        attempts = decoded = 0
        for epoch in itertools.count():
            order = np.random.default_rng(
                mix_seed(self.seed, self.start_step, epoch, slot.rank, slot.worker, slot.num_workers)
            ).permutation(len(self.urls))
            seen = 0
            for index in order:
                for raw in read_shard(self.urls[index], self.log):
                    seen += 1
                    # Shuffle buffer: emit a uniformly chosen buffered sample, put the new one in its place.
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append(raw)
                        continue
                    j = int(rng.integers(len(buffer)))
                    raw, buffer[j] = buffer[j], raw
                    attempts += 1
                    item = _decode(self.decoder, raw, rng, self.log)
                    if item is None:
                        continue
                    decoded += 1
                    items.append(item[0])
                    labels.append(item[1])
                    if len(items) == self.batch_size:
                        yield self.collate(items, labels)
                        items, labels = [], []
            if seen == 0:
                raise RuntimeError(
                    f"no readable samples in any of the {len(self.urls)} shard(s) "
                    f"(first: {self.urls[0]}); see the BadSampleWarning above"
                )
            if attempts >= self.shuffle_buffer and decoded == 0:
                raise RuntimeError(
                    f"no sample of the {len(self.urls)} shard(s) could be decoded "
                    f"(first: {self.urls[0]}); see the BadSampleWarning above"
                )


class EvalStream(IterableDataset):
    """One finite pass: ``(x, y, keys)`` batches, every sample exactly once over all ranks and workers."""

    def __init__(
        self,
        urls: list[str],
        decoder: Decoder,
        collate: Collate,
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        log: BadSampleLog,
    ) -> None:
        super().__init__()
        self.urls, self.decoder, self.collate, self.log = urls, decoder, collate, log
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def _raw_samples(self, slot: StreamSlot) -> Iterator[dict[str, object]]:
        if len(self.urls) >= slot.total:  # split by shard
            for url in self.urls[slot.index :: slot.total]:
                yield from read_shard(url, self.log)
        else:  # split by sample: every reader scans everything, keeps its residue class
            # A truncated shard is seen by every reader; only reader 0 counts and reports it.
            shard_log = self.log if slot.index == 0 else IgnoreLog()
            running = 0
            for url in self.urls:
                for raw in read_shard(url, shard_log):
                    if running % slot.total == slot.index:
                        yield raw
                    running += 1

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, list[str]]]:
        slot = StreamSlot.current(self.rank, self.world_size)
        items: list[np.ndarray] = []
        labels: list[int] = []
        keys: list[str] = []
        for raw in self._raw_samples(slot):
            item = _decode(self.decoder, raw, None, self.log)
            if item is None:
                continue
            items.append(item[0])
            labels.append(item[1])
            keys.append(str(raw["__key__"]))
            if len(items) == self.batch_size:
                yield (*self.collate(items, labels), keys)
                items, labels, keys = [], [], []
        if items:
            yield (*self.collate(items, labels), keys)
