"""One received instance, as both receive paths hand it to the storage handler.

pynetdicom's path wraps its ``EVT_C_STORE`` event (:class:`EventInstance`); the lean
paths (:mod:`clarinet_nb.dicom.fastpath` for C-GET, :mod:`clarinet_nb.dicom.fastscp`
for our C-MOVE Storage SCP) hand the raw bytes they joined (:class:`RawInstance`).
Sinks see only :class:`ReceivedInstance`: the command's UIDs, the context's transfer
syntax, the sender and the dataset bytes as received, decoded into a pydicom Dataset
only when a sink asks for one.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, cast

from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.dimse_primitives import C_STORE

from clarinet_nb.dicom.rawfind import identifier_dataset

__all__ = ["EventInstance", "RawInstance", "ReceivedInstance"]


class ReceivedInstance(Protocol):
    """What a sink needs of one received C-STORE request."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    sender_aet: str
    """The peer's AE title (stripped)."""
    sender_address: str
    """The peer's IP address ('' when unknown)."""

    def buffer(self) -> memoryview:
        """The encoded dataset as received (no copy)."""

    def dataset(self) -> Dataset:
        """The dataset decoded by pydicom (lazily parsed elements), without file meta."""

    def file_meta(self) -> FileMetaDataset:
        """pynetdicom's File Meta Information for the instance."""


class RawInstance:
    """An instance the lean receive path joined from its PDVs."""

    __slots__ = (
        "data",
        "sender_address",
        "sender_aet",
        "sop_class_uid",
        "sop_instance_uid",
        "transfer_syntax",
    )

    def __init__(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        sender_aet: str,
        sender_address: str,
        data: bytes | bytearray,
    ) -> None:
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax = transfer_syntax
        self.sender_aet = sender_aet
        self.sender_address = sender_address
        self.data = data

    def buffer(self) -> memoryview:
        return memoryview(self.data)

    def dataset(self) -> Dataset:
        """The dataset as pynetdicom's ``decode`` returns it, its top-level elements
        walked with :mod:`struct` (:func:`~clarinet_nb.dicom.rawfind.identifier_dataset`:
        pydicom's reader for anything off the common path)."""
        syntax = UID(self.transfer_syntax)
        return identifier_dataset(
            bytes(self.data),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            syntax.is_deflated,
        )

    def file_meta(self) -> FileMetaDataset:
        """The same elements as pynetdicom's ``create_file_meta``, built from raw
        elements (decoded when first read) rather than validated one by one."""
        meta = _new_meta()
        meta._dict.update(_meta_template(self.sop_class_uid, self.transfer_syntax))
        meta._dict[_SOP_INSTANCE] = _raw_ui(_SOP_INSTANCE, self.sop_instance_uid)
        return meta


_SOP_INSTANCE = Tag(0x00020003)


def _fresh_state() -> dict[str, Any]:
    """What ``FileMetaDataset()`` sets on a new instance (its mutable parts new)."""
    state = dict(vars(_META_PROTO))
    for name, value in state.items():
        if isinstance(value, dict):
            state[name] = dict(value)
    return state


def _new_meta() -> FileMetaDataset:
    """An empty ``FileMetaDataset``, without the constructor's ~13 checked attribute
    sets (a quarter of the per-instance CPU of a small in-memory C-GET)."""
    if not _FAST_META:
        return FileMetaDataset()
    meta = FileMetaDataset.__new__(FileMetaDataset)
    meta.__dict__.update(_fresh_state())
    return meta


def _fast_meta_matches() -> bool:
    try:
        made = FileMetaDataset.__new__(FileMetaDataset)
        made.__dict__.update(_fresh_state())
        return vars(made) == vars(FileMetaDataset()) and type(made) is FileMetaDataset
    except Exception:  # noqa: BLE001 - any surprise: the constructor it is
        return False


_META_PROTO = FileMetaDataset()
_FAST_META = _fast_meta_matches()


def _raw(tag: BaseTag, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(tag, vr, len(value), value, 0, False, True, True, False)


def _raw_ui(tag: BaseTag, uid: str) -> RawDataElement:
    value = uid.encode("ascii", "replace")
    return _raw(tag, "UI", value + b"\x00" * (len(value) % 2))


@functools.lru_cache(maxsize=256)
def _meta_template(sop_class_uid: str, transfer_syntax: str) -> dict[BaseTag, RawDataElement]:
    """The File Meta elements shared by the instances of one SOP class and syntax."""
    version = str(PYNETDICOM_IMPLEMENTATION_VERSION).encode("ascii")
    return {
        Tag(0x00020000): _raw(Tag(0x00020000), "UL", b"\x00" * 4),
        Tag(0x00020001): _raw(Tag(0x00020001), "OB", b"\x00\x01"),
        Tag(0x00020002): _raw_ui(Tag(0x00020002), sop_class_uid),
        Tag(0x00020010): _raw_ui(Tag(0x00020010), transfer_syntax),
        Tag(0x00020012): _raw_ui(Tag(0x00020012), str(PYNETDICOM_IMPLEMENTATION_UID)),
        Tag(0x00020013): _raw(Tag(0x00020013), "SH", version + b" " * (len(version) % 2)),
    }


class EventInstance:
    """pynetdicom's ``EVT_C_STORE`` event seen as a :class:`ReceivedInstance`."""

    __slots__ = (
        "event",
        "sender_address",
        "sender_aet",
        "sop_class_uid",
        "sop_instance_uid",
        "transfer_syntax",
    )

    def __init__(self, event: evt.Event) -> None:
        from clarinet_nb.dicom.handlers import sender_of

        request = cast(C_STORE, event.request)
        self.event = event
        self.sop_class_uid = str(request.AffectedSOPClassUID or "")
        self.sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
        self.transfer_syntax = str(event.context.transfer_syntax)
        self.sender_aet, self.sender_address = sender_of(event)

    def buffer(self) -> memoryview:
        stream = cast(C_STORE, self.event.request).DataSet
        return stream.getbuffer() if stream is not None else memoryview(b"")

    def dataset(self) -> Dataset:
        return self.event.dataset

    def file_meta(self) -> FileMetaDataset:
        return self.event.file_meta
