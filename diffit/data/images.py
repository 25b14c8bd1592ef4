"""Sample bytes <-> arrays: the PNG writer (deterministic bytes: docs/data-format.md), image decoding with its
checks, and the per-sample decoders.

Arrays are uint8 ``(C, H, W)`` with C = 1 (grayscale) or 3 (RGB). Decoders are picklable, for DataLoader
workers; they take the raw sample and a NumPy generator for the random choices (flip, latent noise), ``None``
for evaluation (no flip, latent mean). A decoder raises ``BadSample`` for a sample to skip, and ValueError for
a dataset that does not match the request (wrong resolution or channels), which stops the run.
"""

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int64
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from diffit.data.shards import BadSample, check_resolution
from diffit.util import check_integer

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "ppm", "bmp")
SD_SCALE_FACTOR = 0.18215  # Stable Diffusion VAE: scales latents to roughly unit variance (LDM, Rombach 2022)
UNLABELLED = -1  # label of every sample of an unconditional dataset


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray, *, level: int = 6) -> bytes:
    """PNG bytes of a uint8 (H, W) grayscale or (H, W, 3) RGB array; ``level`` is the zlib level (0..9).

    Deterministic for a given zlib: level 0 stores the data uncompressed, which makes the bytes
    independent of the zlib implementation.
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"pixels: expected uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    # Up filter (type 2): each row minus the row above (the row above the first is zero), modulo 256.
    filtered = np.diff(rows, axis=0, prepend=np.zeros((1, rows.shape[1]), np.uint8))
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), filtered], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if pixels.ndim == 2 else 2, 0, 0, 0)  # colour 0: gray, 2: RGB
    idat = _chunk(b"IDAT", zlib.compress(raw, level))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + idat + _chunk(b"IEND", b"")


def center_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    """ADM-style center crop (Dhariwal & Nichol 2021): shrink the short side to ``resolution``, crop the middle.

    Halving with a box filter while the image is at least twice the target avoids aliasing before the
    final bicubic step.
    """
    check_resolution(resolution)  # 0 reached PIL's "height and width must be > 0"
    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.Resampling.BOX)
    scale = resolution / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.Resampling.BICUBIC)
    left, top = (img.size[0] - resolution) // 2, (img.size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def image_extension(image_format: str, quality: int, png_compress_level: int, *, quality_name: str = "quality") -> str:
    """The member extension ("png" or "jpg") of ``image_format``, after checking the encoder's settings: JPEG
    ``quality`` 1..100 (named ``quality_name`` in the error) and zlib level 0..9."""
    if image_format not in ("png", "jpg", "jpeg"):
        raise ValueError(f"image_format: expected 'png' or 'jpg', got {image_format!r}")
    check_integer(quality_name, quality, maximum=100)  # PIL took 0 and 500 without a word
    check_integer("png_compress_level", png_compress_level, minimum=0, maximum=9)  # zlib.error: Bad compression level
    return "png" if image_format == "png" else "jpg"


def encode_image(
    img: Image.Image, image_format: str = "png", *, quality: int = 95, png_compress_level: int = 6
) -> bytes:
    """PNG (lossless; Up-filtered, see the module docstring) or JPEG (``quality`` 1..100) bytes of an image."""
    if not isinstance(img, Image.Image):  # an array raised "'numpy.ndarray' object has no attribute 'mode'"
        hint = "Image.fromarray converts a uint8 array"
        raise ValueError(f"img: expected a PIL image ({hint}), got {type(img).__name__}")
    image_format = image_extension(image_format, quality, png_compress_level)
    if image_format == "png" and img.mode in ("L", "RGB"):
        return encode_png(np.asarray(img), level=png_compress_level)
    buf = io.BytesIO()
    if image_format == "png":
        img.save(buf, format="PNG", compress_level=png_compress_level)
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(
    data: bytes, *, resolution: int | None = None, channels: int | None = None, resize: bool = False, key: str = ""
) -> np.ndarray:
    """Decode image bytes to a uint8 ``(C, H, W)`` array, checking its size and channel count.

    Undecodable bytes raise ``BadSample`` (the reader skips and counts the sample). An image of another
    resolution or channel count raises ValueError unless ``resize`` (then it is converted and
    center-cropped/resized); ``None`` accepts whatever the image has (L -> 1 channel, else RGB).
    """
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadSample(f"undecodable image ({type(exc).__name__}: {exc})") from None
    have = {"L": 1, "RGB": 3}.get(img.mode)
    if channels is not None and have != channels:
        if not resize:
            raise ValueError(
                f"image {key!r} has mode {img.mode} ({have or '?'} channels) but channels={channels} was "
                f"requested; pass resize=True to convert, or re-shard with `diffit data shard --channels {channels}`"
            )
        img = img.convert("L" if channels == 1 else "RGB")
    elif have is None:
        img = img.convert("RGB")
    if resolution is not None and img.size != (resolution, resolution):
        if not resize:
            raise ValueError(
                f"image {key!r} is {img.size[0]}x{img.size[1]} but resolution={resolution} was requested; pass "
                f"resize=True to center-crop and resize, or re-shard with `diffit data shard --res {resolution}`"
            )
        img = center_crop_resize(img, resolution)
    array = np.asarray(img)
    # (H, W) or (H, W, C) -> (C, H, W)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_label(sample: dict[str, object], labelled: bool, classes: int | None = None) -> int:
    """The sample's ``cls`` as an int in ``[0, classes)``; ``UNLABELLED`` (-1) when the dataset is unlabelled."""
    if not labelled:
        return UNLABELLED
    raw = sample.get("cls")
    if raw is None:
        raise BadSample("missing label 'cls' in a labelled dataset")
    try:
        label = int(bytes(raw).decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise BadSample(f"label 'cls' is not an integer ({bytes(raw)[:20]!r})") from None
    if label < 0 or (classes is not None and label >= classes):
        raise BadSample(f"label 'cls' is {label}, outside the dataset's classes 0..{(classes or 0) - 1}")
    return label


@dataclass(frozen=True)
class ImageDecoder:
    """Image member -> uint8 (C, H, W), random horizontal flip with probability 1/2 when ``flip``."""

    resolution: int | None
    channels: int | None
    resize: bool
    labelled: bool
    classes: int | None  # labels must lie in [0, classes) when known (dataset.json)
    flip: bool

    def __post_init__(self) -> None:
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.resolution is not None:
            check_resolution(self.resolution)

    def __call__(self, sample: dict[str, object], rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        """``(image, label)`` of a raw sample; BadSample when it must be skipped."""
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            latent = {"mean.npy", "latent.npy"} & sample.keys()
            hint = "; a latent sample: read latent shards with latent_pipeline (`diffit train --latent`)"
            raise BadSample(f"no image member ({'/'.join(IMAGE_EXTENSIONS)}){hint if latent else ''}")
        label = decode_label(sample, self.labelled, self.classes)
        key, size = str(sample["__key__"]), self.resolution
        image = decode_image(sample[ext], resolution=size, channels=self.channels, resize=self.resize, key=key)
        if self.flip and rng is not None and rng.random() < 0.5:
            image = image[:, :, ::-1]
        return image, label


def _load_npy(sample: dict[str, object], name: str) -> np.ndarray:
    """``np.load`` of the sample's member ``name`` (no pickles); BadSample when it is not a .npy array."""
    try:
        return np.load(io.BytesIO(bytes(sample[name])), allow_pickle=False)  # type: ignore[call-overload]
    except (ValueError, OSError, EOFError) as exc:
        raise BadSample(f"undecodable {name} ({exc})") from None


@dataclass(frozen=True)
class LatentDecoder:
    """Latent members -> (C, h, w) raw (unscaled) VAE latent in its stored dtype (float16 from ``encode_latents``),
    or with ``sample`` its stacked (mean, std), (2, C, h, w), from which ``collate_latents`` draws.

    Stored layouts (see ``encode``): ``mean.npy`` and ``std.npy`` of shape (2, C, h, w), index 0 for the
    image and 1 for its horizontal mirror, or ``latent.npy`` (2, C, h, w) of one posterior sample. ``flip``
    picks the mirrored encoding with probability 1/2 (an exact flip augmentation: the VAE is not
    equivariant, so flipping the latent itself would be wrong); ``sample`` draws z = mean + std * eps
    from the stored diagonal Gaussian posterior instead of taking its mean.
    """

    labelled: bool
    classes: int | None
    flip: bool
    sample: bool

    def __call__(self, sample: dict[str, object], rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        """``(latent, label)`` of a raw sample; BadSample when it must be skipped."""
        label = decode_label(sample, self.labelled, self.classes)
        name = next((n for n in ("mean.npy", "latent.npy") if n in sample), None)
        if name is None:
            raise BadSample("no latent member (mean.npy or latent.npy)")
        mean = _load_npy(sample, name)
        std = _load_npy(sample, "std.npy") if name == "mean.npy" and "std.npy" in sample else None
        if mean.ndim == 3:  # no mirrored variant stored
            mean, std = mean[None], None if std is None else std[None]
        if mean.ndim != 4 or (std is not None and std.shape != mean.shape):
            raise BadSample(f"latent arrays have unexpected shapes {mean.shape}, {None if std is None else std.shape}")
        view = 1 if self.flip and rng is not None and len(mean) > 1 and rng.random() < 0.5 else 0
        if self.sample and rng is not None:  # collate_latents draws z = mean + std * eps for the whole batch at once
            z = np.stack([mean[view], np.zeros_like(mean[view]) if std is None else std[view]])
        else:
            z = mean[view]
        # NumPy's isfinite is slow on float16; a half is inf or nan exactly when its 5 exponent bits are all set.
        if not (np.isfinite(z).all() if z.dtype != np.float16 else ((z.view(np.uint16) & 0x7C00) != 0x7C00).all()):
            raise BadSample("latent holds non-finite values (nan or inf)")
        return z, label


def collate_images(
    images: list[np.ndarray], labels: list[int], rng: np.random.Generator | None = None
) -> tuple[Float[Tensor, "b c h w"], Int64[Tensor, " b"]]:
    """Stack uint8 images and map 0..255 to [-1, 1]: x = u / 127.5 - 1 (``rng`` is unused)."""
    x = np.stack(images).astype(np.float32)
    x /= 127.5
    x -= 1.0
    return torch.from_numpy(x), torch.tensor(labels, dtype=torch.int64)


def collate_latents(
    latents: list[np.ndarray], labels: list[int], rng: np.random.Generator | None = None, *, scale_factor: float
) -> tuple[Float[Tensor, "b c h w"], Int64[Tensor, " b"]]:
    """Stack latents and multiply by the VAE scale factor (``SD_SCALE_FACTOR`` for SD VAEs: unit-variance latents).

    Stacked (mean, std) pairs (``LatentDecoder`` with ``sample``) become posterior draws z = mean + std * eps, the
    noise of the whole batch drawn at once by torch (seeded from ``rng``): a fraction of per-sample NumPy draws.
    """
    z = torch.from_numpy(np.stack(latents)).float()  # float16 as stored: one conversion for the batch
    if z.ndim == 5:
        eps = torch.randn(z[:, 0].shape, generator=torch.Generator().manual_seed(int(rng.integers(2**63))))
        z = torch.addcmul(z[:, 0], z[:, 1], eps)
    return z.mul_(scale_factor), torch.tensor(labels, dtype=torch.int64)
