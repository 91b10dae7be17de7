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

import contextlib
import logging
import os
import struct
import threading
import time
from collections.abc import Generator, MutableSequence
from io import BytesIO
from typing import Any, Final, cast

from pydicom import Dataset
from pydicom.charset import convert_encodings, default_encoding, python_encoding
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.filereader import ENCODED_VR
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.status import code_to_category

__all__ = ["FindReceiver", "fast_receive_enabled", "find_responses", "identifier_dataset", "walk"]

logger = logging.getLogger("clarinet_nb")
_pynetdicom_logger = logging.getLogger("pynetdicom")  # its records, as send_c_find logs them

_PENDING_CATEGORY: Final = "Pending"
_CHARSET_TAG: Final = BaseTag(0x00080005)
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


def walk(raw: bytes, implicit: bool) -> dict[BaseTag, RawDataElement | DataElement] | None:
    """The top-level elements of a Little Endian identifier, as pydicom's reader makes them.

    ``None`` when the bytes leave the common path (see the module docstring): the caller
    then uses pydicom's reader.
    """
    size = len(raw)
    if size >= 6:  # pydicom's implicit/explicit check on the first element
        looks_implicit = not (0x40 < raw[4] < 0x5B and 0x40 < raw[5] < 0x5B)
        if looks_implicit != implicit:
            return None
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    pos = 0
    head = _HEAD.unpack_from
    explicit = _EXPLICIT.unpack_from
    long = _LONG.unpack_from
    vrs = _VR_TEXT
    tags = _TAGS
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
        key = tags.get(tag)
        if key is None:
            key = _tag(tag)
        elements[key] = RawDataElement(key, vr, length, value, pos, implicit, True)
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
    char_set = cast(str | MutableSequence[str] | None, convert_raw_data_element(elem).value)
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
    charset = elements.get(_CHARSET_TAG)
    encoding = default_encoding if charset is None else _encoding(cast(RawDataElement, charset))
    if _FAST_STATE:
        ds = Dataset.__new__(Dataset)
        ds.__dict__.update(_state(elements, implicit, encoding))
        return ds
    ds = Dataset(elements, parent_encoding=default_encoding)
    ds.set_original_encoding(implicit, True, encoding)
    return ds


def _state(
    elements: dict[BaseTag, RawDataElement | DataElement],
    implicit: bool,
    encoding: str | MutableSequence[str],
) -> dict[str, Any]:
    """The attributes ``Dataset(elements)`` + ``set_original_encoding`` give a dataset
    (pydicom 3.0), set without ``Dataset.__setattr__``'s keyword checks."""
    return {
        "_parent_encoding": default_encoding,
        "_dict": elements,
        "is_decompressed": False,
        "_read_little": True,
        "_read_implicit": implicit,
        "_read_charset": encoding,
        "_is_little_endian": None,
        "_is_implicit_VR": None,
        "is_undefined_length_sequence_item": False,
        "_private_blocks": {},
        "_pixel_array": None,
        "_pixel_array_opts": {"use_pdh": False},
        "_pixel_id": {},
    }


def _state_matches_pydicom() -> bool:
    """True when :func:`_state` is exactly what this pydicom's constructor makes."""
    try:
        made = Dataset({}, parent_encoding=default_encoding)
        made.set_original_encoding(True, True, ["latin_1"])
        return vars(made) == _state({}, True, ["latin_1"])
    except Exception:  # noqa: BLE001 - any surprise: the constructor it is
        return False


_FAST_STATE: Final = _state_matches_pydicom()


def find_responses(
    assoc: Association, identifier: Dataset, model: str, msg_id: int
) -> Generator[tuple[int | None, bytes | None, UID], None, None]:
    """``assoc.send_c_find`` yielding the identifier bytes instead of a decoded dataset.

    Yields ``(status code, identifier bytes or None, transfer syntax)``; like pynetdicom,
    ``None`` as the code when no response came (DIMSE timeout, abort) or the response was
    not a valid C-FIND-RSP (the association is then aborted).  The C-FIND-RQ is sent when
    this is called, not at the first ``next()``, so a C-CANCEL cannot overtake it.
    Pending responses are assembled from the P-DATA PDVs by :class:`FindReceiver`.
    """
    if not assoc.is_established:
        raise RuntimeError("the association must be established before a C-FIND")
    context = assoc._get_valid_context(model, "", "scu")
    syntax = context.transfer_syntax[0]
    request = C_FIND()
    request.MessageID = msg_id
    request.AffectedSOPClassUID = UID(model)
    request.Priority = 2
    encoded = encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    if encoded is None:
        raise ValueError("failed to encode the C-FIND identifier")
    request.Identifier = BytesIO(encoded)
    assoc._reactor_checkpoint.clear()  # pause the reactor, as send_c_find does
    while not assoc._is_paused:
        time.sleep(0.0001)
    _pynetdicom_logger.info("Sending Find Request: MsgID %d", msg_id)
    receiver = FindReceiver(assoc) if fast_receive_enabled() else None
    if receiver is not None and not receiver.install():
        receiver = None
    try:
        assoc.dimse.send_msg(request, cast(int, context.context_id))
    except BaseException:
        if receiver is not None:
            receiver.uninstall()
        assoc._reactor_checkpoint.set()
        raise
    return _responses(assoc, syntax, receiver)


def _responses(
    assoc: Association, syntax: UID, receiver: FindReceiver | None
) -> Generator[tuple[int | None, bytes | None, UID], None, None]:
    try:
        while True:
            _cx, rsp = assoc.dimse.get_msg(block=True)
            if isinstance(rsp, _Pending):
                yield rsp.status, rsp.identifier, syntax
                continue
            if rsp is None:
                assoc._handle_no_response()
                yield None, None, syntax
                return
            if not isinstance(rsp, C_FIND) or not rsp.is_valid_response:
                logger.error("received an unexpected or invalid C-FIND response; aborting")
                assoc.abort()
                yield None, None, syntax
                return
            code = int(cast(int, rsp.Status))
            if code_to_category(code) == _PENDING_CATEGORY:
                stream = rsp.Identifier
                raw = stream.getvalue() if isinstance(stream, BytesIO) else None
                yield code, raw, syntax
                continue
            yield code, None, syntax
            return
    finally:
        if receiver is not None:
            receiver.uninstall()
        assoc._reactor_checkpoint.set()  # unpause the reactor


# --------------------------------------------------------------------------- receiving

_PENDING_CODES: Final = frozenset({0xFF00, 0xFF01})
_C_FIND_RSP: Final = 0x8020
_NO_DATASET: Final = 0x0101
_COMMAND_ELEMENT: Final = struct.Struct("<HHL")
_US: Final = struct.Struct("<H")


def fast_receive_enabled() -> bool:
    """``CLARINET_FIND_FAST`` (default on): pending C-FIND-RSPs assembled by us."""
    return os.environ.get("CLARINET_FIND_FAST", "1").strip().lower() not in ("0", "false", "no")


class _Pending:
    """A pending C-FIND-RSP assembled by :class:`FindReceiver` (status and identifier)."""

    __slots__ = ("identifier", "status")

    def __init__(self, status: int, identifier: bytes) -> None:
        self.status = status
        self.identifier = identifier


def _command_us(raw: bytes) -> dict[int, int] | None:
    """The US elements (and which elements exist) of a command set; None if malformed."""
    out: dict[int, int] = {}
    pos, size = 0, len(raw)
    unpack = _COMMAND_ELEMENT.unpack_from
    while pos < size:
        if size - pos < 8:
            return None
        group, element, length = unpack(raw, pos)
        pos += 8
        if group != 0x0000 or length > size - pos:
            return None
        out[element] = _US.unpack_from(raw, pos)[0] if length == 2 else -1
        pos += length
    return out


class FindReceiver:
    """Stands in for ``assoc.dimse.receive_primitive`` (the DUL thread calls it) during one
    C-FIND: a pending C-FIND-RSP with an identifier is assembled from its PDVs with
    ``struct`` and queued as a :class:`_Pending`; every other message (final responses,
    anything unexpected) is handed, PDV by PDV, to pynetdicom's own decoder.

    pynetdicom's path decodes each command set into a pydicom Dataset and converts it
    into a primitive: most of the CPU a C-FIND answer of 20,000 rows costs us.
    """

    def __init__(self, assoc: Association) -> None:
        self._dimse = assoc.dimse
        self._original = type(assoc.dimse).receive_primitive.__get__(assoc.dimse)
        self._lock = threading.Lock()
        self._active = False
        self._held: list[tuple[int, bytes]] = []  # PDVs of the message being assembled
        self._command = bytearray()
        self._status: int | None = None  # set once the command is complete (fast path)
        self._data: list[bytes] = []

    def install(self) -> bool:
        """Take over; False (nothing done) when pynetdicom is inside a message."""
        with self._lock:
            if self._dimse.message is not None:
                return False
            self._active = True
            self._dimse.receive_primitive = self.receive  # type: ignore[method-assign]
            return True

    def uninstall(self) -> None:
        """Give the DIMSE provider back; a message half assembled goes to pynetdicom."""
        with self._lock:
            if not self._active:
                return
            self._active = False
            with contextlib.suppress(AttributeError):
                del self._dimse.receive_primitive  # the class's method again
            self._give_up()

    def receive(self, primitive: P_DATA) -> None:
        with self._lock:
            if not self._active:
                self._original(primitive)
                return
            for pdv in list(primitive.presentation_data_value_list):
                self._take(int(pdv[0]), bytes(pdv[1]))

    def _delegate(self, context_id: int, data: bytes) -> None:
        one = P_DATA()
        one._presentation_data_value_list = [[context_id, data]]  # type: ignore[list-item]
        self._original(one)

    def _give_up(self) -> None:
        held, self._held = self._held, []
        self._reset()
        for context_id, data in held:
            self._delegate(context_id, data)

    def _reset(self) -> None:
        self._held = []
        self._command = bytearray()
        self._status = None
        self._data = []

    def _take(self, context_id: int, data: bytes) -> None:
        if self._dimse.message is not None or not data:  # pynetdicom owns this message
            self._delegate(context_id, data)
            return
        if self._held and self._held[0][0] != context_id:
            self._give_up()
            self._delegate(context_id, data)
            return
        self._held.append((context_id, data))
        control = data[0]
        if control & 1:  # a command fragment
            if self._status is not None:
                self._give_up()
                return
            self._command += data[1:]
            if control & 2:
                elements = _command_us(bytes(self._command))
                status = None if elements is None else elements.get(0x0900)
                if (
                    elements is None
                    or elements.get(0x0100) != _C_FIND_RSP
                    or status not in _PENDING_CODES
                    or 0x0120 not in elements
                    or elements.get(0x0800, _NO_DATASET) == _NO_DATASET
                ):
                    self._give_up()
                    return
                self._status = status
            return
        if self._status is None:  # a data fragment before its command
            self._give_up()
            return
        self._data.append(data[1:])
        if control & 2:
            pending = _Pending(self._status, b"".join(self._data))
            self._reset()
            self._dimse.msg_queue.put((context_id, pending))  # type: ignore[arg-type]
