"""The Study, Series and SOP Instance UIDs at the head of a received dataset, cheaply.

Our Storage SCP checks every instance of a C-MOVE without an expected list against
the move's scope, and DISK mode needs the study and series of an instance the plan
does not locate: both read (0008,0018), (0020,000D) and (0020,000E) from the
received bytes.  :func:`fast_identity` walks the elements before (0020,000E) with
``struct`` (Explicit or Implicit VR Little Endian); whenever the bytes are anything
but plain (an undefined length, an unknown VR, a UID element with another VR or a
value list, a truncated element, a VR encoding other than the syntax says) it
answers None and :func:`pydicom_identity` reads them, so the answer is always the
one pydicom gives.
"""

from __future__ import annotations

import functools
import struct
import warnings
from io import BytesIO
from typing import BinaryIO, cast

from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.values import convert_string

__all__ = ["fast_identity", "pydicom_identity"]

Identity = tuple[str, str, str]

_CHARSET = 0x00080005
_SOP = 0x00080018
_STUDY = 0x0020000D
_SERIES = 0x0020000E
_WANTED = frozenset((_SOP, _STUDY, _SERIES))
_NOTED = frozenset((_CHARSET, _SOP, _STUDY, _SERIES))
_UNDEFINED = 0xFFFFFFFF
_ITEM_DELIMITER = 0xFFFEE00D
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_SHORT_VRS = frozenset(
    (
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO",
        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    )
)  # fmt: skip
_IMPLICIT = struct.Struct("<HHL")
_EXPLICIT = struct.Struct("<HH2sH")
_U32 = struct.Struct("<L")


def _past_series_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag > _SERIES)


def _clean(value: object) -> str:
    """What :func:`read_identity` has always made of a value pydicom decoded."""
    return str(value or "").strip().rstrip("\x00")


def pydicom_identity(
    data: bytes | bytearray | memoryview | BinaryIO, implicit: bool, little: bool
) -> Identity:
    """(study, series, sop) as pydicom reads them, stopping past (0020,000E)."""
    ds = read_dataset(
        BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data,
        is_implicit_VR=implicit,
        is_little_endian=little,
        stop_when=_past_series_uid,
    )
    study, series, sop = (
        _clean(ds.get(key, ""))
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )
    return study, series, sop


@functools.lru_cache(maxsize=64)
def _charset_ok(raw: bytes, vr: str | None, implicit: bool) -> bool:
    """True when pydicom reads this (0008,0005) value without raising (it decodes it
    while reading and again at the end of ``read_dataset``)."""
    value = raw if raw else cast(bytes | None, empty_value_for_VR(vr, raw=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            convert_encodings(convert_string(value or b"", True))
            element = RawDataElement(BaseTag(_CHARSET), vr, len(raw), value, 0, implicit, True)
            convert_encodings(convert_raw_data_element(element).value)
        except Exception:  # noqa: BLE001 - any failure: pydicom reads (and raises) itself
            return False
    return True


def fast_identity(data: bytes | memoryview, implicit: bool) -> Identity | None:
    """(study, series, sop) of a Little Endian dataset, or None when pydicom must say."""
    n = len(data)
    if n < 6:
        return None
    first_vr = bytes(data[4:6])
    looks_implicit = not (0x40 < first_vr[0] < 0x5B and 0x40 < first_vr[1] < 0x5B)
    if looks_implicit != implicit:
        return None  # pydicom would switch VR encodings (or warn): let it
    found: dict[int, tuple[int, int]] = {}
    pos = 0
    if implicit:
        unpack = _IMPLICIT.unpack_from
        while True:
            if pos + 8 > n:
                return None  # the dataset ends before (0020,000E): rare, let pydicom say
            group, elem, length = unpack(data, pos)
            tag = group << 16 | elem
            if tag == _ITEM_DELIMITER:
                return None
            if tag > _SERIES:
                break
            end = pos + 8 + length
            if length == _UNDEFINED or end > n:
                return None
            if tag in _NOTED:
                if tag == _CHARSET and tag in found:
                    return None
                found[tag] = (pos + 8, end)
            pos = end
    else:
        unpack, unpack_32 = _EXPLICIT.unpack_from, _U32.unpack_from
        charset_vr = b""
        while True:
            if pos + 8 > n:
                return None
            group, elem, vr, length = unpack(data, pos)
            tag = group << 16 | elem
            start = pos + 8
            if vr not in _SHORT_VRS:
                if vr not in _LONG_VRS or pos + 12 > n:
                    return None  # an unknown VR: pydicom guesses; let it
                length = unpack_32(data, start)[0]
                start = pos + 12
            if tag in _WANTED and vr != b"UI":
                return None
            if tag == _ITEM_DELIMITER:
                return None
            if tag > _SERIES:
                break
            end = start + length
            if length == _UNDEFINED or end > n:
                return None
            if tag in _NOTED:
                if tag == _CHARSET:
                    if tag in found:
                        return None
                    charset_vr = vr
                found[tag] = (start, end)
            pos = end
    charset = found.get(_CHARSET)
    if charset is not None:
        raw = bytes(data[charset[0] : charset[1]])
        if not _charset_ok(raw, None if implicit else charset_vr.decode("latin-1"), implicit):
            return None  # pydicom would raise on it: let it
    values: list[str] = []
    for tag in (_STUDY, _SERIES, _SOP):
        span = found.get(tag)
        if span is None:
            values.append("")
            continue
        text = bytes(data[span[0] : span[1]]).decode("latin-1").rstrip("\0 ")
        if "\\" in text:
            return None  # a value list: pydicom's MultiValue text
        values.append(_clean(text))
    return values[0], values[1], values[2]
