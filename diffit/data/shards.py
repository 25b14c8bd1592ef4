"""WebDataset shards on webdataset's own tar stages: deterministic writing, reading with bad-shard accounting.

A shard is a tar of members ``<key>.<ext>``; the members of one sample share a key and are contiguous.
Writing goes through ``webdataset.ShardWriter``; diffit adds only what it lacks: byte-identical output
(fixed tar metadata: mtime 0, uid/gid 0, no user names, mode 0644, members in sorted extension order; gzip
with mtime 0 and no file name), shards written to a temporary name and renamed when complete, and each
shard's ``sha256`` taken over its *uncompressed* tar bytes, so it does not depend on the zlib build.

Reading goes through webdataset's ``tar_file_expander`` and ``group_by_keys`` (the stages behind
``tarfile_to_samples``) with a per-shard exception handler that counts and names what a corrupt or
truncated shard loses; the shard's file is closed even when it breaks.
"""

import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

import webdataset as wds
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from diffit.data.atomic import check_output_path
from diffit.data.badinput import BadSampleLog, IgnoreLog

__all__ = ["ShardInfo", "ShardWriter", "check_out_folder", "existing_shards", "read_shard", "shard_digest"]

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LOST = "__lost__"  # marks a placeholder for a sample that dataset.json lists but the shard no longer holds


class _ShardErrors:
    """A webdataset exception handler for one shard: remembers the member being read, stops the shard."""

    def __init__(self) -> None:
        self.member: str | None = None
        self.error: str | None = None

    def select(self, name: str) -> bool:
        """``select_files`` hook: webdataset calls it with each member's name before reading its data."""
        self.member = name
        return True

    def __call__(self, exc: Exception) -> bool:
        # webdataset appends the stream and URL to exc.args; the first argument is the message.
        self.error = f"{type(exc).__name__}: {str(exc.args[0]).split(' @ ')[0] if exc.args else ''}"
        return False  # stop reading this shard

    @property
    def broken_key(self) -> str | None:
        """Key of the sample that was being read when the shard broke (None: no member read yet)."""
        return base_plus_ext(self.member)[0] if self.error and self.member else None


def read_shard(url: str, log: BadSampleLog, expected: int | None = None, pad: bool = False) -> Iterator[dict]:
    """Samples of one shard in file order, as ``{'__key__': str, '__url__': str, ext: bytes, ...}``.

    A shard that cannot be opened, or that is corrupt or truncated, ends early: the sample being read is
    dropped, and the loss is counted in ``log`` (one warning naming the shard). With ``expected`` (the
    shard's count in dataset.json) every sample missing from the shard counts as lost, a shard that holds
    no samples is reported, and ``pad`` yields a ``__lost__`` placeholder for each missing sample, so the
    stream keeps its declared length (exact resume counts positions without reading).
    """
    errors, yielded = _ShardErrors(), 0
    try:
        stream = gopen(url, "rb")
    except Exception as exc:  # any opener failure (missing file, failing pipe command, HTTP error)
        errors.error = f"cannot open shard ({type(exc).__name__}: {exc})"
    else:
        try:
            files = tar_file_expander([{"url": url, "stream": stream}], handler=errors, select_files=errors.select)
            for sample in group_by_keys(files, handler=errors):
                if sample["__key__"] != errors.broken_key:
                    yielded += 1
                    yield sample
        finally:
            stream.close()
    lost = (expected - yielded) if expected is not None else int(errors.broken_key is not None)
    if errors.error:
        what = f"corrupt or truncated shard, rest of the shard skipped ({errors.error})"
        if lost > 0:
            log.skip(url, errors.broken_key or "<shard>", what, count=lost)
        else:
            log.warn(url, f"shard {url}: {what}")
    elif lost > 0:
        log.skip(url, "<shard>", f"the shard holds {yielded} of the {expected} samples in dataset.json", count=lost)
    elif yielded == 0:
        log.warn(url, f"shard {url} holds no samples")
    for i in range(max(lost, 0) if pad else 0):
        yield {"__key__": f"<lost {i}>", "__url__": url, LOST: True}


def shard_digest(path: str) -> tuple[int, int, str]:
    """``(samples, uncompressed bytes, sha256 of the uncompressed tar)`` of a local shard (see dataset.json)."""
    opener = gzip.open if path.endswith((".gz", ".tgz")) else open
    sha, size = hashlib.sha256(), 0
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sum(1 for _ in read_shard(path, IgnoreLog())), size, sha.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: file ``name`` (relative to the dataset folder), samples, bytes and tar sha256."""

    name: str
    count: int
    bytes: int
    sha256: str


class _HashingSink(io.RawIOBase):
    """Write-through file that hashes and counts the uncompressed tar bytes, gzipping them for ``.gz``."""

    def __init__(self, path: str) -> None:
        self.path, self.raw = path, open(path + ".tmp", "wb")
        # filename="" and mtime=0 keep the gzip header free of names and times (determinism).
        gz = path.endswith((".gz", ".tgz"))
        self.target = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, mtime=0, compresslevel=9) if gz else None
        self.sha, self.size = hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        (self.target or self.raw).write(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            if self.target is not None:
                self.target.close()
            self.raw.close()
        super().close()


class ShardWriter:
    """Writes samples into numbered shards ``pattern % index`` with ``webdataset.ShardWriter``.

    ``pattern`` is printf-style (``out/train-%06d.tar``, or ``.tar.gz`` for gzip). A shard is closed once it
    holds ``max_count`` samples or ``max_size`` bytes of member data (webdataset's rule, so a shard may end
    one sample past ``max_size``). ``close()`` returns the ``ShardInfo`` of every shard written.
    """

    def __init__(self, pattern: str, *, max_count: int = 10_000, max_size: int = 1 << 30, start_index: int = 0) -> None:
        if "%" not in pattern:
            raise ValueError(
                f"out_pattern: expected a printf-style shard name such as 'out/train-%06d.tar', got {pattern!r}"
            )
        try:
            pattern % 0
        except (TypeError, ValueError) as exc:
            raise ValueError(f"out_pattern: {pattern!r} is not a valid printf-style pattern ({exc})") from None
        for name, value in (("max_count", max_count), ("max_size", max_size)):
            if value < 1:
                raise ValueError(f"{name}: expected a positive limit, got {value}")
        self.pattern, self.max_count, self.max_size, self.start_index = pattern, max_count, max_size, start_index
        self.shards: list[ShardInfo] = []
        self._writer: wds.ShardWriter | None = None
        self._sink: _HashingSink | None = None
        self._keys: set[str] = set()

    def _open(self, path: str) -> _HashingSink:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._sink = _HashingSink(path)
        return self._sink

    def _finished(self, path: str) -> None:
        """webdataset's ``post`` hook: the shard's tar stream is closed; rename it into place."""
        sink, self._sink = self._sink, None
        assert sink is not None and self._writer is not None
        sink.close()
        os.replace(path + ".tmp", path)  # atomic: a shard exists only once complete
        self.shards.append(ShardInfo(os.path.basename(path), self._writer.count, sink.size, sink.sha.hexdigest()))

    def write(self, key: str, fields: dict[str, bytes]) -> None:
        """Add sample ``key`` with members ``{ext: bytes}`` (written in sorted extension order)."""
        if not key or "." in key.rpartition("/")[2]:
            raise ValueError(f"key: expected a non-empty sample key without dots, got {key!r}")
        if key in self._keys:
            raise ValueError(f"key: duplicate sample key {key!r}")
        self._keys.add(key)
        if self._writer is None:  # webdataset opens its first shard on construction: only once there is data
            self._writer = wds.ShardWriter(
                self.pattern, maxcount=self.max_count, maxsize=self.max_size, start_shard=self.start_index,
                verbose=0, opener=self._open, post=self._finished,
                encoder=False, user="", group="", mode=0o644, mtime=0, compress=False,
            )  # fmt: skip
        self._writer.write({"__key__": key, **fields})

    def close(self) -> list[ShardInfo]:
        """Finish the current shard and return every shard written."""
        if self._writer is not None:
            self._writer.finish()
            self._writer = None
        return list(self.shards)

    def abort(self) -> None:
        """Drop the shard being written (its temporary file); finished shards stay."""
        if self._sink is not None:
            self._writer.tarstream.close()  # the tar's end blocks go to the file that is removed next
            self._sink.close()
            os.remove(self._sink.path + ".tmp")
        self._sink = self._writer = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_out_folder(out_pattern: str) -> str:
    """The folder of ``out_pattern``, after checking that it is, or can be created as, a writable folder."""
    folder = os.path.dirname(os.path.abspath(out_pattern))
    check_output_path(os.path.join(folder, ""), name="out_pattern")
    return folder


def existing_shards(folder: str) -> list[str]:
    """Shard files and the dataset.json already in ``folder`` (names; empty if it does not exist)."""
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.endswith(SHARD_SUFFIXES) or f == "dataset.json")
