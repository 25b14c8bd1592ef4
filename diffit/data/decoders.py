"""Per-sample decoders (raw shard members -> arrays) and batch collation (arrays -> model tensors).

Decoders are picklable so DataLoader workers can run them. They take the raw sample and a NumPy generator
for the random choices (horizontal flip, latent noise); ``rng=None`` means evaluation: no flip, latent mean.
A decoder raises ``BadSample`` for a sample to skip (undecodable, label missing or outside the dataset's
classes, non-finite latent) and ValueError for a dataset that does not match the
request (wrong resolution or channels), which stops the run.
"""

import io
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int64
from torch import Tensor

from diffit.data.badinput import BadSample
from diffit.data.images import IMAGE_EXTENSIONS, decode_image

SD_SCALE_FACTOR = 0.18215  # Stable Diffusion VAE: scales latents to roughly unit variance (LDM, Rombach 2022)

__all__ = ["ImageDecoder", "LatentDecoder", "collate_images", "collate_latents", "decode_label"]

UNLABELLED = -1  # label of every sample of an unconditional dataset


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

    def __call__(self, sample: dict[str, object], rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise BadSample(f"no image member ({'/'.join(IMAGE_EXTENSIONS)})")
        label = decode_label(sample, self.labelled, self.classes)
        image = decode_image(
            bytes(sample[ext]),
            resolution=self.resolution,
            channels=self.channels,
            resize=self.resize,
            key=str(sample["__key__"]),
        )
        if self.flip and rng is not None and rng.random() < 0.5:
            image = image[:, :, ::-1]
        return image, label


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def _load_npy(data: object, name: str) -> np.ndarray:
    """``np.load`` of .npy bytes, remembering each header once: every sample of a shard has the same one, and
    ``np.load`` parses it with ``ast.literal_eval`` (measured: about half the cost of a small latent)."""
    raw = bytes(data)  # type: ignore[call-overload]
    try:
        # Layout: magic (6) + version (2) + header length (2 or 4 bytes, little endian) + header + data.
        wide = raw[6] != 1
        offset = int.from_bytes(raw[8 : 12 if wide else 10], "little") + (12 if wide else 10)
        if raw[:offset] not in _NPY_HEADERS:
            probe = np.load(io.BytesIO(raw), allow_pickle=False)
            if probe.dtype.hasobject or (probe.ndim > 1 and not probe.flags.c_contiguous):
                return probe  # Fortran order: not worth a fast path
            _NPY_HEADERS[raw[:offset]] = (probe.dtype, probe.shape, offset)
        dtype, shape, offset = _NPY_HEADERS[raw[:offset]]
        return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)
    except (ValueError, OSError, EOFError, IndexError) as exc:
        raise BadSample(f"undecodable {name} ({exc})") from None


@dataclass(frozen=True)
class LatentDecoder:
    """Latent members -> float32 (C, h, w) of the raw (unscaled) VAE latent.

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
        label = decode_label(sample, self.labelled, self.classes)
        if "mean.npy" in sample:
            mean = _load_npy(sample["mean.npy"], "mean.npy")
            std = _load_npy(sample["std.npy"], "std.npy") if "std.npy" in sample else None
        elif "latent.npy" in sample:
            mean, std = _load_npy(sample["latent.npy"], "latent.npy"), None
        else:
            raise BadSample("no latent member (mean.npy or latent.npy)")
        if mean.ndim == 3:  # no mirrored variant stored
            mean, std = mean[None], None if std is None else std[None]
        if mean.ndim != 4 or (std is not None and std.shape != mean.shape):
            raise BadSample(f"latent arrays have unexpected shapes {mean.shape}, {None if std is None else std.shape}")
        view = 1 if self.flip and rng is not None and len(mean) > 1 and rng.random() < 0.5 else 0
        z = mean[view].astype(np.float32)
        if self.sample and rng is not None and std is not None:
            # Reparameterised draw from the posterior N(mean, diag(std^2)).
            z = z + std[view].astype(np.float32) * rng.standard_normal(z.shape, dtype=np.float32)
        if not np.isfinite(z).all():
            raise BadSample("latent holds non-finite values (nan or inf)")
        return z, label


def collate_images(images: list[np.ndarray], labels: list[int]) -> tuple[Float[Tensor, "b c h w"], Int64[Tensor, " b"]]:
    """Stack uint8 images and map 0..255 to [-1, 1]: x = u / 127.5 - 1."""
    x = np.stack(images).astype(np.float32)
    x /= 127.5
    x -= 1.0
    return torch.from_numpy(x), torch.tensor(labels, dtype=torch.int64)


def collate_latents(
    latents: list[np.ndarray], labels: list[int], scale_factor: float
) -> tuple[Float[Tensor, "b c h w"], Int64[Tensor, " b"]]:
    """Stack latents and multiply by the VAE scale factor (``SD_SCALE_FACTOR`` for SD VAEs: unit-variance latents)."""
    z = np.stack(latents)
    z *= np.float32(scale_factor)
    return torch.from_numpy(z), torch.tensor(labels, dtype=torch.int64)
