"""One received instance, as both receive paths hand it to the storage handler.

pynetdicom's path wraps its ``EVT_C_STORE`` event (:class:`EventInstance`); the lean
C-GET path (:mod:`clarinet_nb.dicom.fastpath`) hands the raw bytes it joined
(:class:`RawInstance`).  Sinks see only :class:`ReceivedInstance`: the command's
UIDs, the context's transfer syntax, the sender and the dataset bytes as received,
decoded into a pydicom Dataset only when a sink asks for one.
"""

from __future__ import annotations

from io import BytesIO
from typing import Protocol, cast

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, decode

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
        syntax = UID(self.transfer_syntax)
        return decode(
            BytesIO(self.data),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            syntax.is_deflated,
        )

    def file_meta(self) -> FileMetaDataset:
        return create_file_meta(
            sop_class_uid=UID(self.sop_class_uid),
            sop_instance_uid=UID(self.sop_instance_uid),
            transfer_syntax=UID(self.transfer_syntax),
        )


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
