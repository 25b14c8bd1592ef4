"""Skipping bad samples: count them (across DataLoader worker processes) and warn once per shard.

A corrupt or truncated shard, an undecodable image, a missing or out-of-range label or a non-finite latent
does not stop a run: the sample is skipped, counted, and the first skip in each shard raises a one-line
``BadSampleWarning`` naming the shard and the sample's key. The count lives in shared memory so that
``log.count`` in the main process includes what workers skipped.
"""

import multiprocessing
import warnings

__all__ = ["BadSample", "BadSampleLog", "BadSampleWarning", "IgnoreLog"]


class BadSample(Exception):
    """Raised by a decoder for a sample that must be skipped (undecodable, missing label...)."""


class BadSampleWarning(UserWarning):
    """A sample (or the rest of a shard) was skipped because it could not be read."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


class BadSampleLog:
    """Counter of skipped samples shared by the processes of one pipeline; warns once per shard.

    ``count`` is shared between a DataLoader's workers (a ``multiprocessing.Value`` handed to them when
    they start); the "once per shard" memory is per process, so with W workers a bad shard warns at most
    W times.
    """

    def __init__(self) -> None:
        self._count = multiprocessing.Value("q", 0)
        self._warned: set[str] = set()

    @property
    def count(self) -> int:
        """Samples skipped so far by every process of this pipeline."""
        return int(self._count.value)

    def skip(self, url: str, key: str, reason: str, count: int = 1) -> None:
        """Record ``count`` skipped samples (the first has key ``key``) of shard ``url``; warn if it is the
        shard's first."""
        with self._count.get_lock():
            self._count.value += count
        self.warn(url, f"skipping bad sample {key!r} in shard {url}: {one_line(reason)}")

    def warn(self, url: str, message: str) -> None:
        """Warn ``message`` if shard ``url`` has not warned yet in this process."""
        if url not in self._warned:
            self._warned.add(url)
            warnings.warn(
                f"{one_line(message)} (later bad samples of this shard are counted without a warning)",
                BadSampleWarning,
                stacklevel=3,
            )

    def report(self, what: str) -> None:
        """Warn with the final count, if anything was skipped (called when a finite pass ends)."""
        if self.count:
            warnings.warn(f"{what}: skipped {self.count} bad sample(s) in total", BadSampleWarning, stacklevel=2)


class IgnoreLog(BadSampleLog):
    """A log that records nothing: for readers that scan samples another reader is responsible for."""

    def __init__(self) -> None:
        self._warned = set()

    @property
    def count(self) -> int:
        return 0

    def skip(self, url: str, key: str, reason: str, count: int = 1) -> None:
        pass

    def warn(self, url: str, message: str) -> None:
        pass
