"""A minimal PNG encoder (8-bit grayscale and RGB) so the library needs no Pillow."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import numpy.typing as npt

__all__ = ["PNG_SIGNATURE", "encode_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY = 0  # PNG colour types
_RGB = 2


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_png(pixels: npt.ArrayLike, *, level: int = 6) -> bytes:
    """PNG bytes of a ``(rows, columns)`` grayscale or ``(rows, columns, 3)`` RGB array.

    Values are taken as 8-bit (``uint8``); scale them first.
    """
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        colour = _GRAY
    elif array.ndim == 3 and array.shape[2] == 3:
        colour = _RGB
    else:
        raise ValueError(
            f"encode_png needs (rows, columns) or (rows, columns, 3), got {array.shape}"
        )
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ValueError("encode_png needs a non-empty image")
    rows = np.ascontiguousarray(array).reshape(height, -1)
    # every scanline starts with its filter type: 0, no filter
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, level))
        + _chunk(b"IEND", b"")
    )
