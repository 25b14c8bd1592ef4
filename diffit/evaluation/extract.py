"""From an image source to Inception statistics: one pass, batched, with an injected progress callback."""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from diffit.evaluation.inception import FEATURE_DIM, InceptionV3
from diffit.evaluation.sources import ImageBatches, npz_keys, open_images
from diffit.evaluation.statistics import FeatureStats, StatsAccumulator, load_statistics
from diffit.util import OutOfMemory, out_of_memory_as

__all__ = [
    "Progress",
    "ImageEvaluation",
    "evaluate_images",
    "extract_features",
    "evaluate_reference",
    "is_statistics_file",
    "open_reference",
    "reference_statistics",
]

Progress = Callable[[int, int | None], None]  # progress(images done, total or None)


@dataclass(frozen=True)
class ImageEvaluation:
    """Feature statistics of a set of images, and the classifier's probabilities and the pool features (float32,
    on the CPU, in the source's order) when they were asked for."""

    stats: FeatureStats
    probabilities: Float[Tensor, "n k"] | None
    features: Float[Tensor, "n 2048"] | None = None


def _source(src: str | ImageBatches, batch_size: int, max_count: int | None) -> ImageBatches:
    return open_images(src, batch_size=batch_size, max_count=max_count) if isinstance(src, str) else src


@contextmanager
def _batch_memory(inception: InceptionV3, size: Callable[[], int]) -> Iterator[None]:
    """An allocation failure reading a batch or computing its Inception outputs raises
    :class:`~diffit.util.OutOfMemory` naming batch_size; ``size()`` is the size of the batch it was at."""
    device = next(inception.parameters()).device

    def error(tried: str) -> OutOfMemory:
        n = size()
        what = f"Inception features of a batch of {n} image(s)" if n else "reading the first batch of images"
        advice = "lower the batch size" if n != 1 else "one image does not fit: use a device with more memory"
        return OutOfMemory(f"batch_size: {what} ran out of memory on {device}{tried}; {advice}")

    with out_of_memory_as(error):
        yield


def evaluate_images(
    src: str | ImageBatches,
    inception: InceptionV3,
    *,
    batch_size: int = 50,
    max_count: int | None = None,
    probabilities: bool = False,
    features: bool = False,
    progress: Progress | None = None,
) -> ImageEvaluation:
    """Inception pool-feature mean/covariance of every image of ``src`` (a path for ``open_images``, or an
    opened source), plus the softmax probabilities for the Inception Score when ``probabilities``, and every
    pool feature (for :func:`~diffit.evaluation.precision_recall`) when ``features``: one pass over the images.
    ValueError when fewer than 2 images were read (no covariance); :class:`~diffit.util.OutOfMemory` naming
    ``batch_size`` when a batch does not fit in memory (other errors pass unchanged)."""
    if probabilities and not inception.has_probabilities:
        raise ValueError(f"inception: {inception.path!r} has no classifier head, so no Inception Score")
    source = _source(src, batch_size, max_count)
    acc = StatsAccumulator()
    probs: list[Tensor] = []
    kept: list[Tensor] = []
    size = 0
    with _batch_memory(inception, lambda: size):
        for images in source.batches():
            size = len(images)
            pool = inception(images).cpu()
            acc.update(pool)
            if features:
                kept.append(pool)
            if probabilities:
                probs.append(inception.probabilities(images).cpu())
            if progress is not None:
                progress(acc.count, source.count)
    if acc.count < 2:
        raise ValueError(f"src: a covariance needs at least 2 images, got {acc.count}")
    return ImageEvaluation(
        acc.result(), torch.cat(probs) if probabilities else None, torch.cat(kept) if features else None
    )


def extract_features(
    src: str | ImageBatches,
    inception: InceptionV3,
    *,
    batch_size: int = 50,
    max_count: int | None = None,
    progress: Progress | None = None,
) -> Float[Tensor, "n 2048"]:
    """All pool features of ``src``, in the source's order (float32, on the CPU); OutOfMemory as
    :func:`evaluate_images`."""
    source = _source(src, batch_size, max_count)
    features: list[Tensor] = []
    done = 0
    size = 0
    with _batch_memory(inception, lambda: size):
        for images in source.batches():
            size = len(images)
            features.append(inception(images).cpu())
            done += len(images)
            if progress is not None:
                progress(done, source.count)
    if not features:
        raise ValueError("src: no images were read")
    return torch.cat(features)


def is_statistics_file(path: str) -> bool:
    """Whether ``path`` is a readable ``.npz`` holding ``mu`` and ``sigma`` (ours or an ADM reference batch)."""
    try:  # an unreadable one is no statistics file: opening it as images names the argument it was given as
        keys = npz_keys(path) if path.endswith(".npz") and os.path.isfile(path) else []
    except ValueError:
        return False
    return "mu" in keys and "sigma" in keys


def open_reference(
    ref: str, *, features: bool = False, batch_size: int = 50, max_count: int | None = None
) -> ImageBatches | None:
    """The images of the reference ``ref`` that have to be read: none for a statistics ``.npz`` (its stored
    ``mu``/``sigma`` are used) unless ``features`` (precision and recall) are asked for, when an ADM reference
    batch gives its images ``arr_0`` (as ADM computes precision and recall from them); any other ``ref`` is
    opened with :func:`open_images`. ValueError starting with ``ref`` for a statistics file without images
    when ``features`` are asked for, or for images that cannot be opened."""
    if is_statistics_file(ref):
        if not features:
            return None
        if "arr_0" not in npz_keys(ref, "ref"):
            raise ValueError(
                f"ref: {ref!r} holds statistics only (mu, sigma), no images; precision and recall need the "
                "reference images (an images .npz, a folder, shards, or an ADM reference batch with arr_0)"
            )
    return open_images(ref, batch_size=batch_size, max_count=max_count, name="ref")


def evaluate_reference(
    ref: str,
    inception: InceptionV3,
    *,
    features: bool = False,
    source: ImageBatches | None = None,
    batch_size: int = 50,
    max_count: int | None = None,
    progress: Progress | None = None,
) -> ImageEvaluation:
    """The reference side of FID (and of precision and recall): its statistics, read from a statistics ``.npz``
    (precomputed ``mu``/``sigma`` win over the images an ADM reference batch also carries), else computed from
    its images; with ``features``, also the pool features of its images, read in the same single pass (ValueError
    for a statistics file without images, see :func:`open_reference`). ``source``: the images
    :func:`open_reference` gave for the same arguments, when the caller opened them already."""
    if source is None:
        source = open_reference(ref, features=features, batch_size=batch_size, max_count=max_count)
    if source is not None and not is_statistics_file(ref):
        return evaluate_images(source, inception, features=features, progress=progress)
    stats = load_statistics(ref)  # open_reference opened every ref but a statistics file
    if stats.mu.shape != (FEATURE_DIM,):
        raise ValueError(
            f"ref: {ref!r} holds {stats.mu.shape[0]}-d statistics, expected {FEATURE_DIM}-d Inception pool features"
        )
    if not features or source is None:
        return ImageEvaluation(stats, None, None)
    return ImageEvaluation(stats, None, extract_features(source, inception, progress=progress))


def reference_statistics(
    ref: str,
    inception: InceptionV3,
    *,
    batch_size: int = 50,
    max_count: int | None = None,
    progress: Progress | None = None,
) -> FeatureStats:
    """The statistics of ``ref``: read from a statistics ``.npz`` (precomputed ``mu``/``sigma`` win over the
    images an ADM reference batch also carries), else computed from its images (:func:`evaluate_reference`)."""
    return evaluate_reference(ref, inception, batch_size=batch_size, max_count=max_count, progress=progress).stats
