"""Image bytes <-> uint8 arrays, with the write-time crop/resize and the read-time shape checks.

Arrays are uint8 ``(C, H, W)`` with C = 1 (grayscale, PIL mode "L") or 3 (RGB).
"""

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffit.data.badinput import BadSample
from diffit.data.png import encode_png

__all__ = ["IMAGE_EXTENSIONS", "center_crop_resize", "decode_image", "encode_image", "resize_square"]

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "ppm", "bmp")
_MODES = {1: "L", 3: "RGB"}


def center_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    """ADM-style center crop (Dhariwal & Nichol 2021): shrink the short side to ``resolution``, crop the middle.

    Halving with a box filter while the image is at least twice the target avoids aliasing before the
    final bicubic step.
    """
    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.Resampling.BOX)
    scale = resolution / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.Resampling.BICUBIC)
    left, top = (img.size[0] - resolution) // 2, (img.size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def resize_square(img: Image.Image, resolution: int) -> Image.Image:
    """Resize to ``resolution x resolution`` (bicubic; a non-square image changes aspect ratio)."""
    if img.size == (resolution, resolution):
        return img
    return img.resize((resolution, resolution), resample=Image.Resampling.BICUBIC)


def encode_image(
    img: Image.Image, image_format: str = "png", *, quality: int = 95, png_compress_level: int = 6
) -> bytes:
    """PNG (lossless; Up-filtered, see ``diffit.data.png``) or JPEG (``quality`` 1..95) bytes of an image."""
    if image_format == "png":
        if img.mode in ("L", "RGB"):
            return encode_png(np.asarray(img), level=png_compress_level)
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=png_compress_level)
        return buf.getvalue()
    buf = io.BytesIO()
    if image_format in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"image_format: expected 'png' or 'jpg', got {image_format!r}")
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
                f"image {key!r} has mode {img.mode} ({have or '?'} channels) but channels={channels} "
                "was requested; pass resize=True (--resize) to convert"
            )
        img = img.convert(_MODES[channels])
    elif have is None:
        img = img.convert("RGB")
    if resolution is not None and img.size != (resolution, resolution):
        if not resize:
            raise ValueError(
                f"image {key!r} is {img.size[0]}x{img.size[1]} but resolution={resolution} was "
                "requested; pass resize=True to center-crop and resize, or re-shard at that size"
            )
        img = center_crop_resize(img, resolution)
    array = np.asarray(img)
    # (H, W) or (H, W, C) -> (C, H, W)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
