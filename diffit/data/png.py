"""The PNG writer for the images diffit shards: 8-bit grayscale or RGB, every row "Up"-filtered.

Why not PIL's writer: its adaptive filter choice is an implementation detail, while these bytes are part of
a dataset's ``content_hash`` (the bundled digits regenerate byte-identically). With a fixed filter (PNG
spec, filter type 2: stored(x) = pixel(x) - pixel above(x) mod 256) and zlib level 0 (stored, no
compression) the file depends on nothing but the pixels. Reading is PIL's.
"""

import struct
import zlib

import numpy as np

__all__ = ["encode_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UP = 2  # PNG filter type "Up"


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
    # Up filter: each row minus the row above (the row above the first is zero), modulo 256.
    filtered = np.diff(rows, axis=0, prepend=np.zeros((1, rows.shape[1]), np.uint8))
    raw = np.concatenate([np.full((h, 1), _UP, np.uint8), filtered], axis=1).tobytes()
    color_type = 0 if pixels.ndim == 2 else 2  # 0: grayscale, 2: truecolour
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b"")
