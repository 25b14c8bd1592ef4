"""A minimal PNG codec for the images diffit writes: 8-bit grayscale or RGB, every row "Up"-filtered.

Why: for small images (16x16 .. 64x64) PIL's per-image Python overhead, not inflation, bounds how fast
shards can be decoded. With the Up filter (PNG spec, filter type 2: stored(x) = pixel(x) - pixel above(x)
mod 256) reconstruction is a cumulative sum down the columns, one vectorised NumPy call, so decoding
is zlib inflate plus a cumsum. The files are ordinary PNGs that every reader opens; ``decode_png_fast``
returns None for any PNG it does not handle (other filters, bit depths, palettes, interlacing) so the
caller can fall back to PIL.
"""

import struct
import zlib

import numpy as np

__all__ = ["PNG_SIGNATURE", "decode_png_fast", "encode_png"]

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


def decode_png_fast(data: bytes) -> np.ndarray | None:
    """uint8 (C, H, W) of an 8-bit gray/RGB, non-interlaced PNG whose rows all use filter None or Up;
    None for any other PNG. Raises ValueError (or zlib.error) for a corrupt file."""
    if data[:8] != PNG_SIGNATURE:
        return None
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4 or zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"corrupt PNG chunk {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise ValueError("PNG without IHDR or IDAT")
    w, h, depth, color_type, _, _, interlace = header
    if depth != 8 or color_type not in (0, 2) or interlace:
        return None
    c = 1 if color_type == 0 else 3
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    if raw.size != h * (1 + w * c):
        raise ValueError(f"PNG data has {raw.size} bytes, expected {h * (1 + w * c)}")
    rows = raw.reshape(h, 1 + w * c)
    filters = rows[:, 0]
    if (filters == _UP).all():
        pixels = np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8)  # undo Up: running sum mod 256
    elif not filters.any():
        pixels = rows[:, 1:]
    else:
        return None
    return np.ascontiguousarray(pixels.reshape(h, w, c).transpose(2, 0, 1))
