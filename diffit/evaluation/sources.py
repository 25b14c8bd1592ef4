"""Images to evaluate, as uint8 batches: an ADM-layout ``.npz``, an image folder, or WebDataset shards.

Every source yields uint8 ``(B, C, H, W)`` tensors (C = 1 or 3) in a stable order, each image exactly once,
at its stored size (the Inception network resizes). Formats:

- ``.npz`` in the layout of ADM's sample and reference batches: ``arr_0`` uint8 ``(N, H, W, C)`` (or
  ``(N, H, W)``), optional ``arr_1`` labels (ignored). It is streamed from the archive batch by batch, so a
  50k x 256 x 256 file never sits in memory whole.
- a folder: every PNG/JPEG/WebP/BMP/PPM below it (recursive, sorted paths), decoded like shard members
  (L stays one channel, anything else becomes RGB); consecutive images of equal size share a batch.
- shards: a folder holding ``dataset.json``, a ``.tar`` path, a brace pattern or ``::``-joined list (any URL
  ``diffit.data.eval_pipeline`` reads); its [-1, 1] floats are mapped back to the exact uint8 values.
"""

import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import UInt8
from torch import Tensor

from diffit.data import (
    BadSample,
    decode_image,
    eval_pipeline,
    expand_urls,
    find_manifest,
    image_files,
    read_manifest,
    shard_counts,
)
from diffit.data.images import IMAGE_EXTENSIONS
from diffit.util import check_integer

__all__ = ["ImageBatches", "npz_keys", "open_images"]

Batch = UInt8[Tensor, "b c h w"]


@dataclass(frozen=True)
class ImageBatches:
    """A re-iterable source: ``batches()`` yields uint8 (B, C, H, W); ``count`` is the number of images it will
    yield when known up front (None for remote shards without a manifest)."""

    batches: Callable[[], Iterator[Batch]]
    count: int | None
    kind: str  # "npz", "folder" or "shards"


def npz_keys(path: str, name: str = "src") -> list[str]:
    """The array names of an ``.npz`` (without loading them); ValueError (starting with ``name``) when it is not a
    readable npz."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{name}: {path!r} is not a readable .npz ({exc})") from None


def _npz_header(f: object, path: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if fortran:
        raise ValueError(f"{name}: arr_0 in {path!r} is Fortran-ordered; save it C-ordered (np.ascontiguousarray)")
    if dtype != np.uint8:
        raise ValueError(f"{name}: arr_0 in {path!r} must be uint8 (0..255), got {dtype}")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3))):
        raise ValueError(
            f"{name}: arr_0 in {path!r} must be (N, H, W) or (N, H, W, C) with C in {{1, 3}}, got shape {shape}"
        )
    return shape, dtype


def _npz_source(path: str, batch_size: int, limit: int | None, name: str) -> ImageBatches:
    if "arr_0" not in npz_keys(path, name):
        raise ValueError(f"{name}: {path!r} has no image array 'arr_0' (ADM layout: uint8 N x H x W x C)")
    with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
        shape, _ = _npz_header(f, path, name)
    count = shape[0] if limit is None else min(shape[0], limit)

    def batches() -> Iterator[Batch]:
        per_image = int(np.prod(shape[1:]))
        with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
            _npz_header(f, path, name)
            for start in range(0, count, batch_size):
                n = min(batch_size, count - start)
                data = f.read(n * per_image)
                if len(data) != n * per_image:
                    raise ValueError(f"{name}: {path!r} is truncated (arr_0 ends before image {start + n})")
                images = np.frombuffer(data, np.uint8).reshape(n, *shape[1:])
                # (N, H, W[, C]) -> (N, C, H, W)
                images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
                yield torch.from_numpy(np.array(images, order="C"))  # a writable copy

    return ImageBatches(batches, count, "npz")


def _folder_source(folder: str, batch_size: int, limit: int | None, name: str) -> ImageBatches:
    files = image_files(folder)[:limit]
    if not files:
        raise ValueError(f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder!r}")

    def batches() -> Iterator[Batch]:
        pending: list[np.ndarray] = []
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            try:
                image = decode_image(data, key=path)
            except BadSample as exc:
                raise ValueError(f"{name}: {path!r}: {exc}") from None
            if pending and (len(pending) == batch_size or image.shape != pending[0].shape):
                yield torch.from_numpy(np.stack(pending))
                pending = []
            pending.append(image)
        if pending:
            yield torch.from_numpy(np.stack(pending))

    return ImageBatches(batches, len(files), "folder")


def _shard_source(urls: list[str], batch_size: int, limit: int | None, name: str) -> ImageBatches:
    manifest = find_manifest(urls)
    if manifest is not None and manifest.kind != "image":
        raise ValueError(f"{name}: {urls[0]!r} holds {manifest.kind}, not images")
    counts = shard_counts(urls, manifest)  # the shards given, which may be a part of the set
    count = None if counts is None else (sum(counts) if limit is None else min(sum(counts), limit))

    def batches() -> Iterator[Batch]:
        done = 0
        for x, _, _ in eval_pipeline(urls, batch_size=batch_size, labelled=False):
            if limit is not None and done + len(x) > limit:
                x = x[: limit - done]
            # eval_pipeline maps u to x = u / 127.5 - 1; invert it exactly.
            yield ((x + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
            done += len(x)
            if limit is not None and done >= limit:
                return

    return ImageBatches(batches, count, "shards")


def open_images(src: str, *, batch_size: int = 50, max_count: int | None = None, name: str = "src") -> ImageBatches:
    """The images of ``src`` (see the module docstring), at most ``max_count`` of them, in batches of at most
    ``batch_size``. Checks existence and format up front; ValueError names the problem in one line, starting
    with ``name`` (the argument ``src`` is to the caller, e.g. "ref"), also for problems found while reading."""
    check_integer("batch_size", batch_size)
    if max_count is not None:
        check_integer("max_count", max_count)
    if src.endswith(".npz"):
        if not os.path.isfile(src):
            raise ValueError(f"{name}: {src!r} does not exist")
        return _npz_source(src, batch_size, max_count, name)
    manifest_path = os.path.join(src, "dataset.json")
    if os.path.isdir(src) and not os.path.isfile(manifest_path):
        return _folder_source(src, batch_size, max_count, name)
    if os.path.isdir(src) or any(s in src for s in (".tar", "{", "::", "://")) or src.startswith("pipe:"):
        try:
            shards = read_manifest(manifest_path).shards if os.path.isdir(src) else None
            urls = expand_urls(src.split("::") if shards is None else [os.path.join(src, s.name) for s in shards])
        except ValueError as exc:  # "manifest: ..." and "urls: ..." name the data package's arguments
            raise ValueError(f"{name}:{str(exc).partition(':')[2]}") from None
        return _shard_source(urls, batch_size, max_count, name)
    if not os.path.exists(src):
        raise ValueError(f"{name}: {src!r} does not exist")
    raise ValueError(f"{name}: {src!r} is not an images .npz, an image folder or WebDataset shards (.tar)")
