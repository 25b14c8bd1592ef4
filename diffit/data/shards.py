"""Shards on webdataset's own tar stages: URLs, deterministic writing, reading with bad-sample accounting, and
``dataset.json``. The formats and what diffit adds to webdataset: docs/data-format.md.
"""

import gzip
import hashlib
import json
import multiprocessing
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import webdataset as wds
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls as _wds_expand
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from diffit.util import atomic_path, check_integer, check_output_path

MANIFEST_NAME = "dataset.json"
FORMAT = "diffit-shards/1"
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_SHARDS = 1_000_000  # a URL pattern naming more is a typo (LAION-5B is 500k shards of 10k samples)
LOST = "__lost__"  # marks a placeholder for a sample that dataset.json lists but the shard no longer holds
MAX_RESOLUTION = 8192  # a larger side is a typo: one such RGB image is 200 MB decoded, and minutes to resize


def check_resolution(resolution: int) -> None:
    """ValueError unless ``resolution`` is an integer side length in [1, ``MAX_RESOLUTION``]."""
    check_integer("resolution", resolution, maximum=MAX_RESOLUTION)


def is_local(url: str) -> bool:
    """Whether ``url`` names a file on this machine (a bare path or ``file:``), as opposed to a stream."""
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a one-letter scheme is a Windows drive letter


def _envsubst(part: str) -> str:
    """``part`` with each ``${X}`` replaced by the environment variable ``WDS_X``, as webdataset's expand_urls
    does before it expands braces (up to ten rounds); ValueError for an unset one (webdataset asserts)."""

    def value(match: re.Match) -> str:
        if (name := f"WDS_{match[1]}") not in os.environ:
            raise ValueError(f"urls: {part!r} uses ${{{match[1]}}}, which webdataset reads from ${name}; it is not set")
        return os.environ[name]

    for _ in range(10):
        last, part = part, re.sub(r"\$\{(\w+)\}", value, part)
        if part == last:
            break
    return part


def brace_count(pattern: str) -> int:
    """How many names a brace pattern expands to, at most (nested alternatives count as a product), without
    expanding it: ``{a..b}`` / ``{a..b..step}`` ranges of integers or letters, ``{x,y}`` lists, ``::`` joins,
    after webdataset's ``${X}`` -> ``$WDS_X`` substitution (so a variable cannot hide a huge range)."""
    total = 0
    for part in pattern.split("::"):
        part, count = _envsubst(part), 1
        while group := re.search(r"\{([^{}]*)\}", part):
            bounds = group[1].split("..")
            if len(bounds) in (2, 3) and all(re.fullmatch(r"-?\d+|[A-Za-z]", b) for b in bounds[:2]):
                lo, hi = (int(b) if b.lstrip("-").isdigit() else ord(b) for b in bounds[:2])
                step = abs(int(bounds[2])) if len(bounds) == 3 and bounds[2].lstrip("-").isdigit() else 1
                count *= abs(hi - lo) // max(step, 1) + 1
            else:
                count *= group[1].count(",") + 1
            part = part[: group.start()] + part[group.end() :]
        total += count
    return total


def expand_urls(urls: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand brace patterns into a list of shard URLs, failing fast on an empty or nonexistent pattern.

    Raises ValueError naming the offending pattern when nothing matches or a local shard does not exist;
    remote and ``pipe:`` URLs are accepted unchecked (they fail when opened).
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    if not patterns or any(not p.strip() for p in patterns):
        raise ValueError(
            f"urls: expected a shard path or pattern such as 'data/train-{{000000..000009}}.tar', got {urls!r}"
        )
    for pattern in patterns:  # counted first: expanding train-{0..99999999999}.tar exhausts memory
        if brace_count(pattern) > MAX_SHARDS:
            raise ValueError(f"urls: {pattern!r} names more than {MAX_SHARDS:,} shards; check its brace ranges")
    try:
        expanded = [url for pattern in patterns for url in _wds_expand(pattern)]
    except ValueError as exc:  # braceexpand's UnbalancedBracesError
        raise ValueError(f"urls: cannot expand {urls!r} ({exc})") from None
    missing = [u for u in expanded if is_local(u) and not os.path.isfile(u.removeprefix("file:"))]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        folder = os.path.isdir(missing[0].removeprefix("file:"))  # it said "does not exist" of a folder
        what = "is a folder, not a shard: name its shards, e.g. with a brace pattern" if folder else "does not exist"
        raise ValueError(f"urls: shard {missing[0]!r} {what}{more} (pattern {urls!r})")
    return expanded


class BadSample(Exception):
    """Raised by a decoder for a sample that must be skipped (undecodable, missing label...)."""


class BadSampleWarning(UserWarning):
    """A sample (or the rest of a shard) was skipped because it could not be read."""


class BadSampleLog:
    """Counter of skipped samples shared by the processes of one pipeline; warns once per shard.

    ``count`` is shared between a DataLoader's workers (a ``multiprocessing.Value`` handed to them when
    they start); the "once per shard" memory is per process, so with W workers a bad shard warns at most
    W times. Readers that take ``log=None`` record nothing (they scan samples another reader reports).
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
        self.warn(url, f"skipping bad sample {key!r} in shard {url}: {reason}")

    def warn(self, url: str, message: str) -> None:
        """Warn ``message`` (on one line) if shard ``url`` has not warned yet in this process."""
        if url not in self._warned:
            self._warned.add(url)
            message = " ".join(f"{message} (later bad samples of this shard are counted without a warning)".split())
            warnings.warn(message, BadSampleWarning, stacklevel=3)

    def report(self, what: str) -> None:
        """Warn with the final count, if anything was skipped (called when a finite pass ends)."""
        if self.count:
            warnings.warn(f"{what}: skipped {self.count} bad sample(s) in total", BadSampleWarning, stacklevel=2)


def read_shard(url: str, log: BadSampleLog | None, expected: int | None = None, pad: bool = False) -> Iterator[dict]:
    """Samples of one shard in file order, as ``{'__key__': str, '__url__': str, ext: bytes, ...}``.

    A shard that cannot be opened, or that is corrupt or truncated, ends early: the sample being read is
    dropped, and the loss is counted in ``log`` (one warning naming the shard). With ``expected`` (the
    shard's count in dataset.json) every sample missing from the shard counts as lost, a shard that holds
    no samples is reported, ``pad`` yields a ``__lost__`` placeholder for each missing sample, and samples past
    the count are ignored (with a warning), so the stream keeps its declared length (exact resume counts
    positions without reading).
    """
    member, error, broken, yielded, extra = [""], [], None, 0, False  # member being read; why it broke; its key

    def select(name: str) -> bool:  # webdataset calls it with each member's name before reading its data
        member[0] = name
        return True

    def stop(exc: Exception) -> bool:  # webdataset's handler: it appends the stream and URL to exc.args
        error.append(f"{type(exc).__name__}: {str(exc.args[0]).split(' @ ')[0] if exc.args else ''}")
        return False  # stop reading this shard

    try:
        stream = gopen(url, "rb")
    except Exception as exc:  # any opener failure (missing file, failing pipe command, HTTP error)
        error.append(f"cannot open shard ({type(exc).__name__}: {exc})")
    else:
        try:
            files = tar_file_expander([{"url": url, "stream": stream}], handler=stop, select_files=select)
            for sample in group_by_keys(files, handler=stop):
                broken = base_plus_ext(member[0])[0] if error and member[0] else None
                if sample["__key__"] == broken:
                    continue
                if yielded == expected:  # dataset.json is the dataset: a stream's positions come from its counts
                    extra = True
                    break
                yielded += 1
                yield sample
        finally:
            stream.close()
    broken = base_plus_ext(member[0])[0] if error and member[0] else None
    lost = (expected - yielded) if expected is not None else int(broken is not None)
    if log is not None and error:
        what = f"corrupt or truncated shard, rest of the shard skipped ({error[0]})"
        if lost > 0:
            log.skip(url, broken or "<shard>", what, count=lost)
        else:
            log.warn(url, f"shard {url}: {what}")
    elif log is not None and lost > 0:
        log.skip(url, "<shard>", f"the shard holds {yielded} of the {expected} samples in dataset.json", count=lost)
    elif log is not None and yielded == 0:
        log.warn(url, f"shard {url} holds no samples")
    elif log is not None and extra:
        log.warn(url, f"shard {url} holds more than the {expected} samples dataset.json lists; the rest is ignored")
    for i in range(max(lost, 0) if pad else 0):
        yield {"__key__": f"<lost {i}>", "__url__": url, LOST: True}


def tar_digest(path: str) -> tuple[int, str]:
    """``(bytes, sha256)`` of a local shard's uncompressed tar."""
    sha, size = hashlib.sha256(), 0
    with (gzip.open if path.endswith((".gz", ".tgz")) else open)(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: file ``name`` (relative to the dataset folder), samples, bytes and tar sha256."""

    name: str
    count: int
    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: str) -> "ShardInfo":
        """The record of the local shard at ``path``, counted and hashed from its contents."""
        return cls(os.path.basename(path), sum(1 for _ in read_shard(path, None)), *tar_digest(path))


class ShardWriter:
    """Writes samples into numbered shards ``pattern % index`` with ``webdataset.ShardWriter``.

    ``pattern`` is printf-style (``out/train-%06d.tar``, or ``.tar.gz`` for gzip). A shard is closed once it
    holds ``max_count`` samples or ``max_size`` bytes of member data (webdataset's rule, so a shard may end
    one sample past ``max_size``). ``close()`` returns the ``ShardInfo`` of every shard written.
    """

    def __init__(self, pattern: str, *, max_count: int = 10_000, max_size: int = 1 << 30, start_index: int = 0) -> None:
        try:
            pattern % 0  # a name without %d raises TypeError: not all arguments converted
        except (TypeError, ValueError):
            raise ValueError(
                f"out_pattern: expected a printf-style shard name such as 'out/train-%06d.tar', got {pattern!r}"
            ) from None
        check_integer("max_count", max_count)
        check_integer("max_size", max_size)
        check_integer("start_index", start_index, minimum=0)
        self.pattern, self.max_count, self.max_size, self.start_index = pattern, max_count, max_size, start_index
        self.shards: list[ShardInfo] = []
        self._writer: wds.ShardWriter | None = None
        self._files: list = []  # the open temporary file of the current shard (and its gzip layer)
        self._keys: set[str] = set()

    def _open(self, path: str) -> object:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._files = [open(path + ".tmp", "wb")]
        if path.endswith((".gz", ".tgz")):  # filename="" and mtime=0: no names or times in the gzip header
            self._files.insert(0, gzip.GzipFile(filename="", mode="wb", fileobj=self._files[0], mtime=0))
        return self._files[0]

    def _finished(self, path: str) -> None:
        """webdataset's ``post`` hook: the shard's tar stream is closed; hash it and rename it into place."""
        for f in self._files:
            f.close()
        self._files = []
        os.replace(path + ".tmp", path)  # atomic: a shard exists only once complete
        self.shards.append(ShardInfo(os.path.basename(path), self._writer.count, *tar_digest(path)))

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
        if self._files:
            self._writer.tarstream.close()  # the tar's end blocks go to the file that is removed next
            for f in self._files:
                f.close()
            os.remove(self._files[-1].name)
        self._files, self._writer = [], None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close() if exc_type is None else self.abort()


def check_out_folder(out_pattern: str) -> str:
    """The folder of ``out_pattern`` (a valid pattern), after checking that it is, or can be created as, a writable
    folder, and that a shard's name fits its file system (as written: with ``.tmp`` added)."""
    folder = os.path.dirname(os.path.abspath(out_pattern))
    check_output_path(os.path.join(folder, ""), name="out_pattern")
    check_output_path(out_pattern % 0 + ".tmp", name="out_pattern", file=True)
    return folder


def existing_shards(folder: str) -> list[str]:
    """Shard files and the dataset.json already in ``folder`` (names; empty if it does not exist)."""
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.endswith(SHARD_SUFFIXES) or f == MANIFEST_NAME)


def content_hash(shards: list[ShardInfo]) -> str:
    """sha256 over the shards' tar digests, in shard order (independent of file names and compression)."""
    return hashlib.sha256("\n".join(s.sha256 for s in shards).encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The parsed ``dataset.json`` of a shard folder (see the module docstring for the fields)."""

    kind: str
    count: int
    resolution: int | None
    channels: int
    classes: int
    shards: list[ShardInfo]
    content_hash: str
    class_names: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        """Whether the samples carry labels (``classes > 0``)."""
        return self.classes > 0


def label_spec(labelled: bool | None, manifest: Manifest | None) -> tuple[bool, int | None]:
    """The one decision on labels: whether samples carry them (``labelled``, else dataset.json's classes > 0,
    else True without a dataset.json), and the class count they must lie below (None: unchecked)."""
    classes = manifest.classes if manifest is not None and manifest.classes > 0 else None
    return (manifest is None or manifest.labelled) if labelled is None else labelled, classes


def check_kind(manifest: Manifest | None, kind: str) -> None:
    """ValueError when dataset.json says the shards hold another ``kind`` ("image" or "latent") than the reader
    decodes (image readers failed later on with a channel count of 4, or skipped every sample)."""
    if manifest is not None and manifest.kind != kind:
        hint = (
            "read them with latent_pipeline (`diffit train --latent`)"
            if kind == "image"
            else "encode images with `diffit data encode`"
        )
        raise ValueError(f"urls: these are {manifest.kind} shards, not {kind}s; {hint}")


def write_manifest(
    folder: str,
    *,
    kind: str,
    shards: list[ShardInfo],
    resolution: int | None,
    channels: int,
    classes: int,
    class_names: list[str] | None = None,
    extra: dict[str, object] | None = None,
) -> Manifest:
    """Write ``folder/dataset.json`` atomically and return it."""
    count, shards, digest = sum(s.count for s in shards), list(shards), content_hash(shards)
    manifest = Manifest(kind, count, resolution, channels, classes, shards, digest, class_names or [], extra or {})
    with atomic_path(os.path.join(folder, MANIFEST_NAME)) as tmp, open(tmp, "w") as f:
        json.dump({"format": FORMAT, **asdict(manifest)}, f, indent=1, sort_keys=True)
        f.write("\n")
    return manifest


def read_manifest(path: str) -> Manifest:
    """Read a ``dataset.json`` (or the one inside folder ``path``)."""
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    try:
        with open(path) as f:
            body = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        raise ValueError(f"manifest: cannot read {path!r} ({type(exc).__name__}: {exc})") from None
    fmt = body.pop("format", None) if isinstance(body, dict) else None
    if fmt != FORMAT:
        raise ValueError(f"manifest: {path!r} is not a {FORMAT} dataset.json (format={fmt!r})")
    _check_fields(body, _FIELDS, path, "")
    for i, shard in enumerate(body["shards"]):
        _check_fields(shard, _SHARD_FIELDS, path, f"shards[{i}].")
    if body["count"] != (listed := sum(s["count"] for s in body["shards"])):
        raise ValueError(
            f"manifest: {path!r}: count must be the sum of the shards' counts ({listed}), got {body['count']}"
        )
    return Manifest(**{**body, "shards": [ShardInfo(**s) for s in body["shards"]]})


# dataset.json's fields: their JSON types (None: null), a test of the value (None: any) and what it must be.
_FIELDS = {
    "kind": (str, lambda v: v in ("image", "latent"), "'image' or 'latent'"),
    "count": (int, None, None),  # checked against the shards' sum
    "resolution": ((int, None), lambda v: v is None or 1 <= v <= MAX_RESOLUTION, f"in 1..{MAX_RESOLUTION} or null"),
    "channels": (int, lambda v: v >= 1, "a positive channel count"),
    "classes": (int, lambda v: v >= 0, "a class count >= 0"),
    "content_hash": (str, None, None),
    "class_names": (list, lambda v: all(isinstance(n, str) for n in v), "a list of strings"),
    "extra": (dict, None, None),
    "shards": (list, None, None),
}
_SHARD_FIELDS = {
    "name": (str, lambda v: v not in ("", ".", "..") and v == os.path.basename(v), "a file name beside it"),
    "count": (int, lambda v: v >= 0, "a count >= 0"),
    "bytes": (int, lambda v: v >= 0, "a size >= 0"),
    "sha256": (str, None, None),
}
_OPTIONAL = ("class_names", "extra")


def _check_fields(record: object, fields: dict, path: str, where: str) -> None:
    """ValueError naming the first field of ``record`` that is missing, unknown, of another type (a string
    resolution used to crash far from the file) or out of its range."""
    if not isinstance(record, dict):
        raise ValueError(f"manifest: {path!r}: {where.rstrip('.') or 'the file'} must be a JSON object, got {record!r}")
    for name in record.keys() - fields.keys():
        raise ValueError(f"manifest: {path!r}: unknown field {where}{name}")
    for name, (kind, test, want) in fields.items():
        if name not in record and name in _OPTIONAL:
            continue
        kinds, value = kind if isinstance(kind, tuple) else (kind,), record.get(name)
        typed = any(value is None if k is None else isinstance(value, k) for k in kinds)
        if name not in record or isinstance(value, bool) or not typed:
            want = " or ".join("null" if k is None else k.__name__ for k in kinds)
        elif test is None or test(value):
            continue
        raise ValueError(f"manifest: {path!r}: {where}{name} must be {want}, got {value!r}")


def find_manifest(urls: list[str]) -> Manifest | None:
    """The ``dataset.json`` beside the first shard, when the shards are local and it exists."""
    if not urls or not is_local(urls[0]):
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(urls[0].removeprefix("file:"))), MANIFEST_NAME)
    return read_manifest(path) if os.path.isfile(path) else None


def shard_counts(urls: list[str], manifest: Manifest | None) -> list[int] | None:
    """Each shard's sample count from ``manifest``, in ``urls`` order; None unless it lists every shard."""
    listed = {s.name: s.count for s in manifest.shards} if manifest is not None else {}
    names = [os.path.basename(u.removeprefix("file:")) for u in urls]
    return [listed[n] for n in names] if manifest is not None and all(n in listed for n in names) else None


def verify_shards(folder: str) -> Manifest:
    """Check every shard of ``folder`` against its ``dataset.json``; raise ValueError on any difference."""
    manifest = read_manifest(folder)
    folder = folder if os.path.isdir(folder) else os.path.dirname(folder)
    for shard in manifest.shards:
        path = os.path.join(folder, shard.name)
        if not os.path.isfile(path):
            raise ValueError(f"shards: {path!r} listed in {MANIFEST_NAME} is missing")
        found = ShardInfo.of(path)
        if (found.count, found.sha256) != (shard.count, shard.sha256):
            raise ValueError(
                f"shards: {path!r} does not match {MANIFEST_NAME} "
                f"(count {found.count} vs {shard.count}, sha256 {found.sha256[:12]} vs {shard.sha256[:12]})"
            )
    if content_hash(manifest.shards) != manifest.content_hash:
        raise ValueError(f"shards: content_hash of {folder!r}/{MANIFEST_NAME} does not match its shard list")
    return manifest
