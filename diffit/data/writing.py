"""Writing image shards from an image folder, a NumPy array file, any iterable of labelled images, or the
bundled digits (their provenance: docs/data-format.md). On any error the shards written by a call are removed
again, so the output is complete or absent.
"""

import multiprocessing
import os
import re
import signal
import unicodedata
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from itertools import islice

import numpy as np
from PIL import Image

from diffit.data.images import IMAGE_EXTENSIONS, center_crop_resize, encode_image, image_extension
from diffit.data.shards import (
    BadSampleLog,
    Manifest,
    ShardWriter,
    check_out_folder,
    check_resolution,
    existing_shards,
    read_manifest,
    write_manifest,
)
from diffit.util import check_integer

LabelledImage = tuple[str, Image.Image | str, int | None]  # (key, image or the path of an image file, label)
MAX_CLASSES = 1_000_000  # labels are class indices 0..C-1; a larger one is no class index (it would name C classes)
DIGITS_RESOLUTION = 16
DIGITS_PATTERN = "digits-%06d.tar.gz"
DIGITS_CITATION = (
    "E. Alpaydin and C. Kaynak, Optical Recognition of Handwritten Digits, UCI Machine Learning "
    "Repository, 1998, https://doi.org/10.24432/C50P49 (CC BY 4.0)"
)


@dataclass(frozen=True)
class ImageSource:
    """Images to shard: ``samples()`` yields ``(key, image, label or None)`` in a stable order; an image is a PIL
    image or the path of an image file, which the writer opens (in its worker processes, when it has any)."""

    samples: Callable[[], Iterator[LabelledImage]]
    count: int
    class_names: list[str]
    labelled: bool
    channels: int | None = None
    extra: dict[str, object] | None = None


def _is_image(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def _key(relpath: str) -> str:
    """A stable WebDataset key from a relative path: no extension, and no dots (they split keys) or separators.
    Letters and digits of any script stay (ASCII-only keys made the folders ü/ and 名前/ collide)."""
    stem = unicodedata.normalize("NFC", relpath.rsplit(".", 1)[0])  # macOS names are NFD: ü is u + U+0308
    return re.sub(r"[^\w\-]", "_", stem)


def image_files(folder: str) -> list[str]:
    """Paths of the image files below ``folder`` (by extension, hidden files excluded), recursively, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in sorted(files) if _is_image(f))
    return found


def folder_source(root: str) -> ImageSource:
    """Images under ``root``: one subfolder per class (labels = sorted folder names) or flat (unlabelled).

    Keys are the relative paths with separators and dots replaced by ``_`` (stable across rewrites). The
    samples are file paths: the writer decodes them, and skips and counts the undecodable ones.
    """
    if not os.path.isdir(root):
        raise ValueError(f"src: {root!r} is not a folder")
    entries = sorted(os.listdir(root))
    subfolders = {d: image_files(os.path.join(root, d)) for d in entries if os.path.isdir(os.path.join(root, d))}
    classes = [d for d, found in subfolders.items() if found]  # a folder without images is no class
    flat = [(os.path.join(root, f), None) for f in entries if _is_image(f) and os.path.isfile(os.path.join(root, f))]
    if classes and flat:
        raise ValueError(f"src: {root!r} mixes images and class subfolders; use only one layout")
    files = [(p, i) for i, c in enumerate(classes) for p in subfolders[c]] or flat
    if not files:
        raise ValueError(f"src: no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root!r}")
    keys = [_key(os.path.relpath(p, root)) for p, _ in files]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"src: two files in {root!r} map to the same sample key {dup!r}; rename one")

    def samples() -> Iterator[LabelledImage]:
        for key, (path, label) in zip(keys, files, strict=True):
            yield key, path, label

    return ImageSource(samples, len(files), classes, bool(classes), extra={"source": "folder"})


def _array_layout(images: np.ndarray, path: str) -> np.ndarray:
    """Bring an image array to (N, H, W, C): accepts NHW, NHWC and NCHW with C in {1, 3}."""
    if images.dtype != np.uint8:
        raise ValueError(f"src: images in {path!r} must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        return images[..., None]
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return images
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images.transpose(0, 2, 3, 1)
    raise ValueError(
        f"src: images in {path!r} must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in "
        f"{{1, 3}}, got shape {images.shape}"
    )


def array_source(path: str) -> ImageSource:
    """Images from ``.npy`` (images only, unlabelled) or ``.npz`` (``images`` or ``x`` or ``arr_0``, and
    optional ``labels`` or ``y`` or ``arr_1``). Keys are ``%08d`` indices."""
    if not os.path.isfile(path):
        raise ValueError(f"src: {path!r} does not exist")
    if not path.endswith((".npy", ".npz")):
        raise ValueError(f"src: expected a folder, .npy or .npz, got {path!r}")
    labels = None
    try:  # a damaged file fails on open or on reading an array; object arrays are refused (no unpickling)
        if path.endswith(".npy"):
            images = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as npz:
                images = next((npz[k] for k in ("images", "x", "arr_0") if k in npz), None)
                if images is None:
                    raise ValueError(f"src: {path!r} has no 'images', 'x' or 'arr_0' array (has {list(npz)})")
                labels = next((npz[k].reshape(-1) for k in ("labels", "y", "arr_1") if k in npz), None)
    except (OSError, EOFError, ValueError, MemoryError, zipfile.BadZipFile, zlib.error) as exc:
        if str(exc).startswith("src:"):
            raise
        reason = (str(exc).splitlines() or [""])[0]
        if "pickled" in reason:  # NumPy's advice to unpickle a file that has neither header would mislead
            reason = "no .npy or .npz header; pickled data is never loaded"
        elif "Object arrays" in reason:
            reason = "an object array; only uint8 image and integer label arrays are read"
        raise ValueError(f"src: cannot read {path!r} as .npy/.npz ({type(exc).__name__}: {reason})") from None
    images = _array_layout(images, path)
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"src: {path!r} has {len(images)} images but {len(labels)} labels")
    if labels is not None and len(labels) and labels.dtype.kind not in "iu":  # whole-number floats are accepted
        i = int(np.argmax(labels % 1 != 0)) if labels.dtype.kind == "f" else 0
        if labels.dtype.kind != "f" or labels[i] % 1 != 0:  # 0.5 used to be stored as class 0
            raise ValueError(
                f"src: labels in {path!r} must be integers (class indices), got {labels[i].item()!r} at index {i}"
            )
    if labels is not None and (labels.min(initial=0) < 0 or labels.max(initial=0) >= MAX_CLASSES):
        raise ValueError(  # checked before the cast, which wraps 1e300 to a negative int
            f"src: labels in {path!r} must be class indices 0..C-1 with C <= {MAX_CLASSES:,}, "
            f"got {labels.min()}..{labels.max()}"
        )
    labels = None if labels is None else labels.astype(np.int64)
    channels = images.shape[-1]

    def samples() -> Iterator[LabelledImage]:
        for i, image in enumerate(images):
            img = Image.fromarray(np.ascontiguousarray(image[..., 0] if channels == 1 else image))
            yield f"{i:08d}", img, None if labels is None else int(labels[i])

    names = [] if labels is None else [str(i) for i in range(labels.max(initial=-1) + 1)]
    return ImageSource(
        samples, len(images), names, labels is not None, channels=channels, extra={"source": os.path.basename(path)}
    )


# (key, members, (width, height)), or for a file that could not be decoded (key, None, (path, why))
Encoded = tuple[str, dict[str, bytes] | None, tuple[int, int] | tuple[str, str]]
CHUNK = 16  # samples per task of a worker process


@dataclass(frozen=True)
class _Encoder:
    """Samples -> shard members: each image opened (a path), converted, resized or cropped, and encoded. A
    picklable callable, run by the writer's worker processes."""

    channels: int
    resolution: int | None
    center_crop: bool
    ext: str
    jpeg_quality: int
    png_compress_level: int

    def __call__(self, samples: list[tuple[str, object, int | None]]) -> list[Encoded]:  # images checked below
        encoded: list[Encoded] = []
        for key, img, label in samples:
            if isinstance(img, str):
                try:
                    img = Image.open(path := img)
                    img.load()
                except Exception as exc:  # PIL raises many types for bad files
                    encoded.append((key, None, (path, f"undecodable image ({type(exc).__name__}: {exc})")))
                    continue
            if not isinstance(img, Image.Image):
                raise ValueError(f"source: sample {key!r}: expected a PIL image or a path, got {type(img).__name__}")
            img = img.convert("L" if self.channels == 1 else "RGB")
            if self.resolution is not None and self.center_crop:
                img = center_crop_resize(img, self.resolution)
            elif self.resolution is not None:  # a plain bicubic resize (PIL returns a copy when the size matches)
                img = img.resize((self.resolution, self.resolution), resample=Image.Resampling.BICUBIC)
            q, level = self.jpeg_quality, self.png_compress_level
            fields = {self.ext: encode_image(img, self.ext, quality=q, png_compress_level=level)}
            if label is not None:
                fields["cls"] = str(label).encode()
            encoded.append((key, fields, img.size))
        return encoded


def _encoded(samples: Iterable[LabelledImage], encoder: _Encoder, workers: int) -> Iterator[Encoded]:
    """``encoder`` over ``samples``, in order, in ``workers`` processes (0: in this one). At most 4 tasks per
    worker are in flight, so a large source is never read far ahead of the shards written."""
    samples = iter(samples)  # a list would be sliced from its start again and again
    chunks = iter(lambda: list(islice(samples, CHUNK)), [])
    if workers == 0:
        for chunk in chunks:
            yield from encoder(chunk)
        return
    # spawn: no forked copy of this process's threads; the workers ignore Ctrl-C, which this process handles.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(encoder, (chunk,)))
            if len(pending) >= 4 * workers:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def write_image_shards(
    source: ImageSource,
    out_pattern: str,
    *,
    resolution: int | None = None,
    center_crop: bool = False,
    channels: int | None = None,
    image_format: str = "png",
    jpeg_quality: int = 95,
    png_compress_level: int = 6,
    max_count: int = 10_000,
    max_size: int = 1 << 30,
    replace: bool = False,
    workers: int = 0,
    log: BadSampleLog | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Write ``source`` as shards ``out_pattern % i`` plus ``dataset.json``; return the manifest.

    ``resolution``: square side to produce (``center_crop``: ADM center crop, else a plain resize);
    None keeps the sizes. ``channels``: 1 or 3 (default: the source's, else 3). A folder that already
    holds shards or a dataset.json is refused (ValueError) unless ``replace``: then the old set is deleted
    first, so no stale shard ever sits beside the new dataset.json. ``workers``: processes that open, resize and
    encode the images (0: this process); the shards are byte-identical for every count. Image files that cannot
    be decoded are skipped and counted in ``log``. ``progress(done, total)`` is called after each sample.
    """
    if resolution is not None:
        check_resolution(resolution)
    elif center_crop:
        raise ValueError("center_crop: crops to a square of side resolution (--res), which is not given")
    channels = channels if channels is not None else source.channels or 3
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {channels}")
    ext = image_extension(image_format, jpeg_quality, png_compress_level, quality_name="jpeg_quality")
    check_integer("workers", workers, minimum=0)
    encoder = _Encoder(channels, resolution, center_crop, ext, jpeg_quality, png_compress_level)
    log = log or BadSampleLog()
    writer = ShardWriter(out_pattern, max_count=max_count, max_size=max_size)
    folder = check_out_folder(out_pattern)
    old = existing_shards(folder)
    if old and not replace:
        raise ValueError(
            f"out_pattern: {folder!r} already holds a shard set ({', '.join(old[:3])}"
            f"{', ...' if len(old) > 3 else ''}); choose an empty folder, or replace the whole set "
            "(replace=True, --replace)"
        )
    for name in old:
        os.remove(os.path.join(folder, name))
    sides: set[int] = set()  # every width and height written: a single value when all are the same square
    try:
        with closing(_encoded(source.samples(), encoder, workers)) as encoded:
            for done, (key, fields, size) in enumerate(encoded, 1):
                if fields is None:
                    log.skip(str(size[0]), key, str(size[1]))
                else:
                    sides.update(size)
                    writer.write(key, fields)
                if progress is not None:
                    progress(done, source.count)
        shards = writer.close()
        if not shards:
            raise ValueError("src: no readable images to write")
    except BaseException:
        writer.abort()
        for shard in writer.shards:
            os.remove(os.path.join(folder, shard.name))
        raise
    return write_manifest(
        folder,
        kind="image",
        shards=shards,
        resolution=sides.pop() if len(sides) == 1 else None,
        channels=channels,
        classes=len(source.class_names) if source.labelled else 0,
        class_names=source.class_names,
        extra={**(source.extra or {}), "image_format": ext, **({"jpeg_quality": jpeg_quality} if ext == "jpg" else {})},
    )


def digits_folder() -> str:
    """The installed folder holding the digits shards and their ``dataset.json``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", f"digits{DIGITS_RESOLUTION}")


def digits_manifest() -> Manifest:
    """The bundled digits' ``dataset.json``: 1,797 samples, resolution 16, 1 channel, 10 classes."""
    return read_manifest(digits_folder())


def digits_urls() -> list[str]:
    """Paths of the installed digits shards, in order (pass them to any pipeline or ``load_images``)."""
    folder = digits_folder()
    return [os.path.join(folder, s.name) for s in digits_manifest().shards]


def digits_source(resolution: int = DIGITS_RESOLUTION) -> ImageSource:
    """scikit-learn's digits upsampled (bicubic) from 8x8 to ``resolution``, labels 0..9."""
    check_resolution(resolution)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError(
            "digits: scikit-learn is needed to regenerate the digits (pip install scikit-learn); "
            "the bundled shards need nothing: use digits_urls()"
        ) from None
    digits = load_digits()
    # Values 0..16 -> 0..255 (exact integer rounding, so the result is platform independent).
    images = ((digits.images.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)

    def samples() -> Iterator[LabelledImage]:
        for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
            img = Image.fromarray(image).resize((resolution, resolution), resample=Image.Resampling.BICUBIC)
            yield f"digit_{i:04d}", img, int(label)

    return ImageSource(
        samples,
        len(images),
        [str(d) for d in range(10)],
        True,
        channels=1,
        extra={
            "source": "sklearn.datasets.load_digits",
            "citation": DIGITS_CITATION,
            "license": "CC BY 4.0",
            "original_resolution": 8,
            "resample": "bicubic",
        },
    )


def write_digits_shards(out_pattern: str, *, resolution: int = DIGITS_RESOLUTION, replace: bool = False) -> Manifest:
    """Write the digits as deterministic shards at ``resolution`` (``.tar.gz`` patterns are gzipped);
    ``replace``: replace a shard set already in the folder."""
    return write_image_shards(
        digits_source(resolution), out_pattern, channels=1, png_compress_level=0, max_count=1_000_000, replace=replace
    )
