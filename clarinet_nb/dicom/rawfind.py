"""C-FIND responses as the identifier bytes the peer sent, decoded without pydicom's reader.

pynetdicom's ``send_c_find`` decodes every identifier with ``pydicom.read_dataset`` (a
generator over a file object, one call per element).  :func:`find_responses` drives the
same DIMSE exchange on the association but yields the identifier bytes, and
:func:`identifier_dataset` walks them with :mod:`struct` into the very
``RawDataElement``\\ s pydicom's reader would have made (same tags, VRs, lengths, values,
offsets, flags), wrapped in a :class:`~pydicom.dataset.Dataset` with the same original
encoding.  Anything off the common path (an undefined length, a VR that is not one,
a truncated element, an implicit/explicit mismatch, big endian or deflated syntaxes)
is handed to pydicom's reader unchanged, so the result is identical either way.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator, MutableSequence
from io import BytesIO
from typing import Any, Final, cast

from pydicom import Dataset
from pydicom.charset import convert_encodings, default_encoding, python_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.filereader import ENCODED_VR, EXPLICIT_VR_LENGTH_32
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode
from pynetdicom.status import code_to_category

__all__ = ["find_responses", "identifier_dataset", "walk"]

logger = logging.getLogger("clarinet_nb")

_PENDING_CATEGORY: Final = "Pending"
_CHARSET: Final = 0x00080005
_END_ITEM: Final = 0xFFFEE00D
_UNDEFINED: Final = 0xFFFFFFFF
_HEAD: Final = struct.Struct("<HHL")
_EXPLICIT: Final = struct.Struct("<HH2sH")
_LONG: Final = struct.Struct("<L")
_VR_TEXT: Final = {vr: vr.decode(default_encoding) for vr in ENCODED_VR}
_LONG_VRS: Final = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_EMPTY: dict[str | None, Any] = {}
_TAGS: dict[int, BaseTag] = {}
_ENCODINGS: dict[tuple[str | None, bytes], list[str]] = {}


def _empty(vr: str | None) -> Any:
    """What pydicom's reader stores as the value of a zero-length element."""
    if vr not in _EMPTY:
        _EMPTY[vr] = empty_value_for_VR(vr, raw=True)
    return _EMPTY[vr]


def _tag(tag: int) -> BaseTag:
    found = _TAGS.get(tag)
    if found is None:
        found = _TAGS[tag] = BaseTag(tag)
    return found


def walk(raw: bytes, implicit: bool) -> dict[BaseTag, RawDataElement] | None:
    """The top-level elements of a Little Endian identifier, as pydicom's reader makes them.

    ``None`` when the bytes leave the common path (see the module docstring): the caller
    then uses pydicom's reader.
    """
    size = len(raw)
    if size >= 6:  # pydicom's implicit/explicit check on the first element
        looks_implicit = not (0x40 < raw[4] < 0x5B and 0x40 < raw[5] < 0x5B)
        if looks_implicit != implicit:
            return None
    elements: dict[BaseTag, RawDataElement] = {}
    pos = 0
    head = _HEAD.unpack_from
    explicit = _EXPLICIT.unpack_from
    long = _LONG.unpack_from
    vrs = _VR_TEXT
    while size - pos >= 8:
        vr: str | None
        if implicit:
            group, elem, length = head(raw, pos)
            vr = None
            pos += 8
        else:
            group, elem, vr_bytes, length = explicit(raw, pos)
            vr = vrs.get(vr_bytes)
            if vr is None:
                return None
            pos += 8
            if vr in _LONG_VRS:
                if size - pos < 4:
                    return None
                length = long(raw, pos)[0]
                pos += 4
        tag = group << 16 | elem
        if tag == _END_ITEM or length == _UNDEFINED or size - pos < length:
            return None
        value = raw[pos : pos + length] if length else _empty(vr)
        elements[_tag(tag)] = RawDataElement(
            _tag(tag), vr, length, value, pos, implicit, True
        )
        pos += length
    if pos != size:
        return None  # trailing bytes: pydicom decides what they mean
    return elements


def _encoding(elem: RawDataElement) -> str | MutableSequence[str]:
    """The Python encodings of a SpecificCharacterSet element, as pydicom's reader finds them."""
    key = (elem.VR, bytes(elem.value or b""))
    cached = _ENCODINGS.get(key)
    if cached is not None:
        return list(cached)
    char_set = cast(
        str | MutableSequence[str] | None, convert_raw_data_element(elem).value
    )
    encodings = convert_encodings(char_set)
    terms = [char_set] if isinstance(char_set, str) else list(char_set or [])
    if all(t in python_encoding for t in terms):  # known terms: pydicom warns about nothing
        _ENCODINGS[key] = list(encodings)
    return encodings


def identifier_dataset(raw: bytes, implicit: bool, little: bool, deflated: bool) -> Dataset:
    """The identifier as pynetdicom's ``decode`` would return it (same dataset, faster)."""
    elements = walk(raw, implicit) if little and not deflated else None
    if elements is None:
        return decode(BytesIO(raw), implicit, little, deflated)
    ds = Dataset(elements, parent_encoding=default_encoding)
    charset = elements.get(_CHARSET)
    encoding = default_encoding if charset is None else _encoding(charset)
    ds.set_original_encoding(implicit, True, encoding)
    return ds


def find_responses(
    assoc: Association, identifier: Dataset, model: str, msg_id: int
) -> Iterator[tuple[Dataset, bytes | None, UID]]:
    """``assoc.send_c_find`` yielding the identifier bytes instead of a decoded dataset.

    Yields ``(status, identifier bytes or None, transfer syntax)``; like pynetdicom, an
    empty status dataset when no response came (DIMSE timeout, abort) or the response
    was not a valid C-FIND-RSP (the association is then aborted).  The C-FIND-RQ is
    sent when this is called, not at the first ``next()``, so a C-CANCEL cannot
    overtake it.
    """
    if not assoc.is_established:
        raise RuntimeError("the association must be established before a C-FIND")
    context = assoc._get_valid_context(model, "", "scu")
    syntax = cast(UID, context.transfer_syntax[0])
    request = C_FIND()
    request.MessageID = msg_id
    request.AffectedSOPClassUID = UID(model)
    request.Priority = 2
    encoded = encode(
        identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
    )
    if encoded is None:
        raise ValueError("failed to encode the C-FIND identifier")
    request.Identifier = BytesIO(encoded)
    assoc._reactor_checkpoint.clear()  # pause the reactor, as send_c_find does
    while not assoc._is_paused:
        time.sleep(0.0001)
    assoc.dimse.send_msg(request, cast(int, context.context_id))
    return _responses(assoc, syntax)


def _responses(
    assoc: Association, syntax: UID
) -> Iterator[tuple[Dataset, bytes | None, UID]]:
    try:
        while True:
            _cx, rsp = assoc.dimse.get_msg(block=True)
            if rsp is None:
                assoc._handle_no_response()
                yield Dataset(), None, syntax
                return
            if not isinstance(rsp, C_FIND) or not rsp.is_valid_response:
                logger.error("received an unexpected or invalid C-FIND response; aborting")
                assoc.abort()
                yield Dataset(), None, syntax
                return
            status = Dataset()
            status.Status = rsp.Status
            for keyword in rsp.STATUS_OPTIONAL_KEYWORDS:
                if getattr(rsp, keyword) is not None:
                    setattr(status, keyword, getattr(rsp, keyword))
            if code_to_category(cast(int, status.Status)) == _PENDING_CATEGORY:
                stream = rsp.Identifier
                raw = stream.getvalue() if isinstance(stream, BytesIO) else None
                yield status, raw, syntax
                continue
            yield status, None, syntax
            return
    finally:
        assoc._reactor_checkpoint.set()  # unpause the reactor

