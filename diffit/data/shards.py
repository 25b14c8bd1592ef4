"""WebDataset tar shards: a deterministic writer and a fault-tolerant reader.

Format (WebDataset's): a POSIX tar whose members ``<key>.<ext>`` are grouped into samples by ``<key>``
(everything before the first dot of the base name); ``.tar.gz`` shards are gzip-compressed tars.

The writer is byte-deterministic (fixed member order, mtime 0, uid/gid 0, empty owner names, gzip header
without name or time) so regenerating a dataset gives identical shards, and each shard is written to a
temporary name and renamed when complete, so an interrupted write never leaves a half shard behind.
A shard's ``sha256`` is taken over its *uncompressed* tar bytes, so it does not depend on the zlib build.
"""

import gzip
import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from webdataset.gopen import gopen

from diffit.data.badinput import BadSampleLog

__all__ = ["ShardInfo", "ShardWriter", "TarFormatError", "iter_tar", "read_shard", "shard_digest", "split_member_name"]

Sample = dict[str, bytes]


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/abc.seg.png -> ('dir/abc', 'seg.png')``: WebDataset's key/extension split (first dot)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext.lower() if dot else ""


class TarFormatError(Exception):
    """A tar stream that is corrupt (bad header checksum, bad number) or truncated; ``member`` names the
    member whose data was cut off, when its header could still be read."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")  # regular file (old and new flags), contiguous file


def _octal(field: bytes) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"bad number {field!r} in tar header") from None


def _pax_path(data: bytes) -> bytes | None:
    """The ``path`` record of a pax extended header ("<len> path=<value>\\n" records)."""
    pos = 0
    while pos < len(data):
        length = int(data[pos : data.index(b" ", pos)])
        record = data[pos : pos + length]
        key, _, value = record[record.index(b" ") + 1 : -1].partition(b"=")
        if key == b"path":
            return value
        pos += length
    return None


@runtime_checkable
class Readable(Protocol):
    """A binary stream: a file, a gzip stream, a WebDataset pipe."""

    def read(self, size: int = -1, /) -> bytes: ...


def iter_tar(stream: Readable) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of the regular files of a tar stream, in order.

    A small streaming parser of the POSIX/GNU tar layout (512-byte headers, octal fields, ustar prefix,
    GNU long names, pax paths): several times faster than ``tarfile`` for many small members, which is
    what limits shard throughput. Raises TarFormatError on a bad checksum or a truncated member.
    """
    read = stream.read
    long_name: bytes | None = None
    while True:
        header = read(_BLOCK)
        if len(header) < _BLOCK:
            if header:
                raise TarFormatError("truncated tar header")
            return  # end of data without the end-of-archive blocks: accepted, as tar does
        if header == _ZERO_BLOCK:
            return
        # Header checksum: the byte sum with the checksum field read as 8 spaces. adler32's low half is
        # (1 + byte sum) mod 65521: one C call instead of summing 512 bytes in Python.
        if zlib.adler32(header[:148] + b"        " + header[156:]) & 0xFFFF != (1 + _octal(header[148:156])) % 65521:
            raise TarFormatError("bad tar header checksum")
        size = _octal(header[124:136])
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        data = read(padded)
        if len(data) < padded:
            member = (long_name or header[:100].split(b"\0", 1)[0]).decode("utf-8", "replace")
            raise TarFormatError(f"truncated tar member ({len(data)} of {padded} bytes)", member)
        data = data[:size]
        kind = header[156:157]
        if kind == b"L":  # GNU long name for the next member
            long_name = data.rstrip(b"\0")
            continue
        if kind == b"x":  # pax extended header for the next member
            long_name = _pax_path(data) or long_name
            continue
        if kind not in _FILE_TYPES:
            long_name = None
            continue
        name = long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0]
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix + b"/" + name
        long_name = None
        yield name.decode("utf-8", "replace"), data


def _open_tar_stream(url: str) -> Readable:
    """Open ``url`` with WebDataset's gopen; gunzip when the name or the first bytes say gzip."""
    stream = gopen(url, "rb")
    magic = stream.peek(2)[:2] if hasattr(stream, "peek") else b""
    if url.endswith((".gz", ".tgz")) or magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    return stream


def read_shard(url: str, log: BadSampleLog) -> Iterator[dict[str, object]]:
    """Samples of one shard in file order, as ``{'__key__': str, '__url__': str, ext: bytes, ...}``.

    A shard that cannot be opened, or that is corrupt or truncated, ends early: the sample being read when
    the error happened is dropped and counted in ``log`` (which warns once, naming the shard).
    """
    try:
        stream = _open_tar_stream(url)
    except Exception as exc:  # any opener failure (missing file, failing pipe command, HTTP error)
        log.skip(url, "<shard>", f"cannot open shard ({exc})")
        return
    current: dict[str, object] | None = None
    try:
        for name, data in iter_tar(stream):
            key, ext = split_member_name(name)
            if current is not None and key != current["__key__"]:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            current[ext] = data
    except (TarFormatError, OSError, EOFError, zlib.error) as exc:
        cut = getattr(exc, "member", None)
        if cut is not None and current is not None and split_member_name(cut)[0] != current["__key__"]:
            yield current  # the cut-off member starts a new sample: the current one is complete
            current = None
        key = (
            split_member_name(cut)[0]
            if cut is not None
            else str(current["__key__"])
            if current is not None
            else "<shard>"
        )
        log.skip(url, key, f"corrupt or truncated shard, rest of the shard skipped ({type(exc).__name__}: {exc})")
        return
    finally:
        stream.close()
    if current is not None:
        yield current


def shard_digest(path: str) -> tuple[int, int, str]:
    """``(samples, uncompressed bytes, sha256 of the uncompressed tar)`` of a local shard (see dataset.json)."""
    opener = gzip.open if path.endswith(".gz") else open
    sha, size = hashlib.sha256(), 0
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    with opener(path, "rb") as f:
        keys = {split_member_name(name)[0] for name, _ in iter_tar(f)}
    return len(keys), size, sha.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: file ``name`` (relative to the dataset folder), samples, bytes and tar sha256."""

    name: str
    count: int
    bytes: int
    sha256: str


class _HashingSink(io.RawIOBase):
    """Write-through file object that hashes and counts the (uncompressed) tar bytes."""

    def __init__(self, target: "io.BufferedIOBase | gzip.GzipFile") -> None:
        self.target, self.sha, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)


class ShardWriter:
    """Writes samples into numbered shards ``pattern % index``, starting a new one by count or size.

    ``pattern`` is printf-style (``out/train-%06d.tar``, or ``.tar.gz`` for gzip). ``max_count`` bounds
    samples per shard and ``max_size`` the uncompressed bytes per shard (a single larger sample still gets
    its own shard). ``close()`` returns the ``ShardInfo`` of every shard written.
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
        if max_count < 1 or max_size < 1:
            raise ValueError(f"max_count/max_size: expected positive limits, got {max_count}, {max_size}")
        self.pattern, self.max_count, self.max_size = pattern, max_count, max_size
        self.index = start_index
        self.shards: list[ShardInfo] = []
        self._open: tuple[str, object, object, _HashingSink, tarfile.TarFile] | None = None
        self._count = 0
        self._keys: set[str] = set()

    def _start(self) -> None:
        path = self.pattern % self.index
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        raw = open(path + ".tmp", "wb")
        # filename="" and mtime=0 keep the gzip header free of names and times (determinism).
        comp = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9)
            if path.endswith(".gz")
            else raw
        )
        sink = _HashingSink(comp)
        tar = tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT)
        self._open, self._count = (path, raw, comp, sink, tar), 0

    def _finish(self) -> None:
        if self._open is None:
            return
        path, raw, comp, sink, tar = self._open
        tar.close()
        if comp is not raw:
            comp.close()
        raw.close()
        os.replace(path + ".tmp", path)  # atomic: a shard exists only once complete
        self.shards.append(ShardInfo(os.path.basename(path), self._count, sink.size, sink.sha.hexdigest()))
        self._open = None
        self.index += 1

    def write(self, key: str, fields: Sample) -> None:
        """Add sample ``key`` with members ``{ext: bytes}`` (written in sorted extension order)."""
        if not key or "." in key.rpartition("/")[2]:
            raise ValueError(f"key: expected a non-empty sample key without dots, got {key!r}")
        if key in self._keys:
            raise ValueError(f"key: duplicate sample key {key!r}")
        self._keys.add(key)
        size = sum(512 + -(-len(v) // 512) * 512 for v in fields.values())  # tar header + padded data
        if self._open is not None and (
            self._count >= self.max_count or (self._count and self._open[3].size + size > self.max_size)
        ):
            self._finish()
        if self._open is None:
            self._start()
        tar = self._open[4]
        for ext in sorted(fields):
            data = fields[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
        self._count += 1

    def close(self) -> list[ShardInfo]:
        """Finish the current shard and return every shard written."""
        self._finish()
        return list(self.shards)

    def abort(self) -> None:
        """Drop the shard being written (its temporary file); finished shards stay."""
        if self._open is not None:
            path, raw, comp, _, tar = self._open
            for f in (tar, comp, raw):
                try:
                    f.close()
                except Exception:
                    pass
            if os.path.exists(path + ".tmp"):
                os.remove(path + ".tmp")
            self._open = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._finish()
        else:
            self.abort()
