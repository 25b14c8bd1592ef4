"""``dataset.json``: what a folder of shards holds, so that training can verify what it reads.

Written beside the shards (the folder of the output pattern). Fields::

    format         "diffit-shards/1"
    kind           "image" or "latent"
    count          samples in all shards
    resolution     image side (image kind) or latent side (latent kind); null if sizes vary
    channels       image channels, or latent channels
    classes        number of classes; 0 for an unlabelled (unconditional) dataset
    class_names    label -> name (folder names), when known
    shards         [{name, count, bytes, sha256}] in order; bytes and sha256 of the uncompressed tar
    content_hash   sha256 over the shards' sha256 in order: the dataset's identity
    extra          source-specific facts (image format, VAE, scale factor, citation...)
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

from diffit.data.atomic import atomic_path
from diffit.data.shards import ShardInfo, shard_digest
from diffit.data.urls import is_local

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "content_hash",
    "find_manifest",
    "read_manifest",
    "shard_counts",
    "verify_shards",
    "write_manifest",
]

MANIFEST_NAME = "dataset.json"
FORMAT = "diffit-shards/1"


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
        return self.classes > 0


def label_spec(labelled: bool | None, manifest: Manifest | None) -> tuple[bool, int | None]:
    """The one decision on labels: whether samples carry them (``labelled``, else dataset.json's classes > 0,
    else True without a dataset.json), and the class count they must lie below (None: unchecked)."""
    classes = manifest.classes if manifest is not None and manifest.classes > 0 else None
    return (manifest is None or manifest.labelled) if labelled is None else labelled, classes


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
    manifest = Manifest(
        kind=kind,
        count=sum(s.count for s in shards),
        resolution=resolution,
        channels=channels,
        classes=classes,
        shards=list(shards),
        content_hash=content_hash(shards),
        class_names=list(class_names or []),
        extra=dict(extra or {}),
    )
    body = {"format": FORMAT, **asdict(manifest)}
    path = os.path.join(folder, MANIFEST_NAME)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(body, f, indent=1, sort_keys=True)
        f.write("\n")
    return manifest


def read_manifest(path: str) -> Manifest:
    """Read a ``dataset.json`` (or the one inside folder ``path``)."""
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    try:
        with open(path) as f:
            body = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"manifest: cannot read {path!r} ({exc})") from None
    if body.get("format") != FORMAT:
        raise ValueError(f"manifest: {path!r} is not a {FORMAT} dataset.json (format={body.get('format')!r})")
    body.pop("format")
    body["shards"] = [ShardInfo(**s) for s in body["shards"]]
    return Manifest(**body)


def find_manifest(urls: list[str]) -> Manifest | None:
    """The ``dataset.json`` beside the first shard, when the shards are local and it exists."""
    if not urls or not is_local(urls[0]):
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(urls[0].removeprefix("file:"))), MANIFEST_NAME)
    return read_manifest(path) if os.path.isfile(path) else None


def shard_counts(urls: list[str], manifest: Manifest | None) -> list[int] | None:
    """Each shard's sample count from ``manifest``, in ``urls`` order; None unless it lists every shard."""
    if manifest is None:
        return None
    listed = {s.name: s.count for s in manifest.shards}
    names = [os.path.basename(u.removeprefix("file:")) for u in urls]
    return [listed[n] for n in names] if all(n in listed for n in names) else None


def verify_shards(folder: str) -> Manifest:
    """Check every shard of ``folder`` against its ``dataset.json``; raise ValueError on any difference."""
    manifest = read_manifest(folder)
    folder = folder if os.path.isdir(folder) else os.path.dirname(folder)
    for shard in manifest.shards:
        path = os.path.join(folder, shard.name)
        if not os.path.isfile(path):
            raise ValueError(f"shards: {path!r} listed in {MANIFEST_NAME} is missing")
        count, _, sha = shard_digest(path)
        if (count, sha) != (shard.count, shard.sha256):
            raise ValueError(
                f"shards: {path!r} does not match {MANIFEST_NAME} "
                f"(count {count} vs {shard.count}, sha256 {sha[:12]} vs {shard.sha256[:12]})"
            )
    if content_hash(manifest.shards) != manifest.content_hash:
        raise ValueError(f"shards: content_hash of {folder!r}/{MANIFEST_NAME} does not match its shard list")
    return manifest
