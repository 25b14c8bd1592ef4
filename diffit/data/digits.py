"""The bundled real dataset: scikit-learn's handwritten digits as 16x16 grayscale shards.

Source: UCI "Optical Recognition of Handwritten Digits" (Alpaydin & Kaynak, 1998; CC BY 4.0,
https://doi.org/10.24432/C50P49), as shipped by ``sklearn.datasets.load_digits``: 1,797 8x8 images with
values 0..16 and labels 0..9. Each image is scaled to 0..255 and upsampled to 16x16 with PIL's bicubic
filter, stored as a PNG (compression level 0, so the bytes do not depend on the zlib build) with its ``cls``,
key ``digit_NNNN``, in one gzip-compressed shard under ``diffit/data/assets/digits16/``.
``examples/make_digits_shards.py`` regenerates byte-identical tar contents (same ``content_hash``).
"""

import os
from collections.abc import Iterator

import numpy as np
from PIL import Image

from diffit.data.manifest import Manifest, read_manifest
from diffit.data.writing import ImageSource, LabelledImage, write_image_shards

__all__ = [
    "DIGITS_CITATION",
    "DIGITS_RESOLUTION",
    "digits_folder",
    "digits_manifest",
    "digits_source",
    "digits_urls",
    "write_digits_shards",
]

DIGITS_RESOLUTION = 16
DIGITS_PATTERN = "digits-%06d.tar.gz"
DIGITS_CITATION = (
    "E. Alpaydin and C. Kaynak, Optical Recognition of Handwritten Digits, UCI Machine Learning "
    "Repository, 1998, https://doi.org/10.24432/C50P49 (CC BY 4.0)"
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
    if resolution < 1:
        raise ValueError(f"resolution: expected a positive side length, got {resolution}")
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
    labels = digits.target.astype(np.int64)

    def samples() -> Iterator[LabelledImage]:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
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
