"""Fast encoding of the Part-10 preamble and File Meta Information for received instances.

pydicom builds and encodes a FileMetaDataset per file, which costs about as much
as the rest of storing an instance; the group is tiny and fixed, so we encode it
directly (Explicit VR Little Endian, as Part 10 requires).
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

__all__ = ["file_header"]

_PREAMBLE = b"\x00" * 128 + b"DICM"
_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def _short(element: int, vr: bytes, value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", "replace")
    if len(raw) % 2:
        raw += pad
    return struct.pack("<HH2sH", 0x0002, element, vr, len(raw)) + raw


_IMPLEMENTATION = _short(0x0012, b"UI", str(PYNETDICOM_IMPLEMENTATION_UID), b"\x00") + _short(
    0x0013, b"SH", str(PYNETDICOM_IMPLEMENTATION_VERSION), b" "
)


def file_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_aet: str = ""
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group, ready to precede a dataset."""
    body = b"".join(
        (
            _VERSION,
            _short(0x0002, b"UI", sop_class_uid, b"\x00"),
            _short(0x0003, b"UI", sop_instance_uid, b"\x00"),
            _short(0x0010, b"UI", transfer_syntax_uid, b"\x00"),
            _IMPLEMENTATION,
            _short(0x0016, b"AE", source_aet.strip(), b" ") if source_aet.strip() else b"",
        )
    )
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return _PREAMBLE + length + body
