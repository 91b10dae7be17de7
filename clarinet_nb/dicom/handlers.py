"""C-STORE handling: where instances received by C-GET or C-MOVE go.

``StorageHandler`` is bound to ``evt.EVT_C_STORE``; it hands each instance to
a small sink for the storage mode (DISK, MEMORY, FORWARD) and keeps the tally
that becomes the :class:`~clarinet_nb.dicom.models.RetrieveResult`.  A second
copy of a SOP Instance UID already received in this retrieve is refused
(``DUPLICATE``) before it reaches the sink: the first copy always stays.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol, cast

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from clarinet_nb.dicom.association import (
    Timeouts,
    make_ae,
    open_association,
    release,
    status_of,
)
from clarinet_nb.dicom.filemeta import file_header
from clarinet_nb.dicom.identity import fast_identity, pydicom_identity
from clarinet_nb.dicom.models import DicomNode, RefusedStore, StorageConfig, StorageMode
from clarinet_nb.dicom.paths import safe_component
from clarinet_nb.dicom.received import EventInstance, RawInstance, ReceivedInstance
from clarinet_nb.errors import DicomError

__all__ = [
    "Locator",
    "RawInstance",
    "ReceivedInstance",
    "StorageHandler",
    "Tally",
    "plain_address",
    "read_identity",
    "sender_of",
    "storage_reason",
    "syntax_flags",
]

logger = logging.getLogger("clarinet_nb")

#: SOP Instance UID -> (Study Instance UID, Series Instance UID), from the pre-query.
Locator = Callable[[str], tuple[str, str] | None]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
NOT_AUTHORISED = 0x0124
"""C-STORE refused: the sender or the instance is not part of a retrieve we run."""
DUPLICATE = 0x0111
"""C-STORE refused: this SOP Instance UID was already received in this retrieve."""

#: (Study Instance UID, Series Instance UID) of a received instance.
Location = tuple[str, str]


def store_request(event: evt.Event) -> C_STORE:
    """The C-STORE request of an EVT_C_STORE event."""
    return cast(C_STORE, event.request)


def received_bytes(event: evt.Event) -> BytesIO:
    """The encoded dataset of an EVT_C_STORE event, as received."""
    return cast(BytesIO, store_request(event).DataSet)


def sender_of(event: evt.Event) -> tuple[str, str]:
    """(calling AE title, IP address) of whoever sent this event's C-STORE."""
    assoc = event.assoc
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    try:
        address = plain_address(peer.address)
    except ValueError:  # no address information (never for a real connection)
        address = ""
    return str(peer.ae_title or "").strip(), address


def plain_address(address: str | None) -> str:
    """An IP address without its IPv4-mapped IPv6 prefix (``::ffff:127.0.0.1``)."""
    text = str(address or "")
    return text[7:] if text.lower().startswith("::ffff:") and "." in text else text


@dataclass
class Tally:
    """What a handler received; guarded by ``lock`` (SCP threads may run concurrently)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    received: dict[str, None] = field(default_factory=dict)
    """Kept: stored, decoded, or accepted by the forward node."""
    arrived: dict[str, None] = field(default_factory=dict)
    """Handed to us by the peer and accepted by the sink (FORWARD may still fail)."""
    failed: dict[str, str] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    bytes_received: int = 0
    claimed: set[str] = field(default_factory=set)
    """UIDs being stored or kept: a second copy is a duplicate."""
    refused: list[RefusedStore] = field(default_factory=list)
    """What our Storage SCP refused during this retrieve (no patient data)."""
    located: dict[str, tuple[str, str]] = field(default_factory=dict)
    """(study, series) of each arrived instance, when the handler tracks locations."""


class _Sink(Protocol):
    #: False when the sink counts an instance received only later (FORWARD).
    immediate: bool

    def store(
        self, inst: ReceivedInstance, sop_uid: str, tally: Tally, location: Location | None
    ) -> None:
        """Keep one instance, updating ``tally``; raise to fail the sub-operation.

        ``location`` is the instance's (study, series) when already read from it."""

    def close(self, tally: Tally) -> None:
        """Finish pending work (FORWARD)."""


class DiskSink:
    """Write ``{root}/{study}/{series}/{sop}.dcm`` with the bytes as received."""

    immediate = True

    def __init__(self, root: Path, locator: Locator | None, overwrite: bool) -> None:
        self.root = root
        self.locator = locator
        self.overwrite = overwrite
        self._folders: dict[tuple[str, str], Path] = {}
        """(study, series) -> its folder, made once per retrieve."""
        self._lock = threading.Lock()

    def _folder(self, study: str, series: str) -> Path:
        folder = self._folders.get((study, series))
        if folder is None:
            folder = self.root / safe_component(study) / safe_component(series)
            folder.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._folders[(study, series)] = folder
        return folder

    def store(
        self, inst: ReceivedInstance, sop_uid: str, tally: Tally, location: Location | None
    ) -> None:
        located = self.locator(sop_uid) if self.locator else None
        if located is None:
            located = location or read_identity(inst)[:2]
        path = self._folder(*located) / f"{safe_component(sop_uid)}.dcm"
        if self.overwrite or not os.path.exists(path):
            _write_atomically(path, inst)
        with tally.lock:
            tally.paths.append(path)

    def close(self, tally: Tally) -> None:
        return None


def read_identity(received: ReceivedInstance | evt.Event) -> tuple[str, str, str]:
    """(Study, Series, SOP Instance) UIDs read from the received bytes, stopping at
    (0020,000E): the rest of the dataset (pixel data) is never parsed.  Little Endian
    heads are walked with ``struct`` (:mod:`clarinet_nb.dicom.identity`), anything
    else by pydicom, with the same answer."""
    inst = EventInstance(received) if isinstance(received, evt.Event) else received
    deflated, little, implicit = syntax_flags(inst.transfer_syntax)
    if deflated:
        ds = inst.dataset()
        study, series, sop = (
            str(ds.get(key, "") or "").strip().rstrip("\x00")
            for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        )
        return study, series, sop
    if little:
        with inst.buffer() as view:  # read in place: no copy of a large dataset
            found = fast_identity(view, implicit)
        if found is not None:
            return found
    if isinstance(inst, EventInstance):  # pydicom reads the received stream in place
        stream = received_bytes(inst.event)
        stream.seek(0)
        try:
            return pydicom_identity(stream, implicit, little)
        finally:
            stream.seek(0)
    with inst.buffer() as view:
        return pydicom_identity(view, implicit, little)


@functools.lru_cache(maxsize=64)
def syntax_flags(uid: str) -> tuple[bool, bool, bool]:
    """(deflated, little endian, implicit VR) of a transfer syntax (pydicom's UID
    properties cost tens of microseconds per call)."""
    syntax = UID(uid)
    return syntax.is_deflated, syntax.is_little_endian, syntax.is_implicit_VR


_TEMP_NAMES = itertools.count()
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _write_atomically(path: Path, inst: ReceivedInstance) -> None:
    """Write preamble, file meta and the raw dataset to a temp name, then rename.

    The temp name (``.{name}.{pid}-{n}.part`` next to the file) is created
    exclusively; the bytes go out in one ``writev`` where the system allows."""
    header = file_header(
        inst.sop_class_uid, inst.sop_instance_uid, inst.transfer_syntax, inst.sender_aet
    )
    final = os.fspath(path)
    folder, _, name = final.rpartition(os.sep)
    while True:
        tmp = f"{folder}{os.sep}.{name}.{_PID}-{next(_TEMP_NAMES):x}.part"
        try:
            fd = os.open(tmp, _CREATE, 0o666)
            break
        except FileExistsError:  # a leftover of an earlier process with our pid: next name
            continue
    try:
        try:
            with inst.buffer() as view:
                _write_all(fd, header, view)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_PID = os.getpid()


def _write_all(fd: int, header: bytes, view: memoryview) -> None:
    """Write ``header`` then ``view`` to ``fd`` whole (partial writes resumed)."""
    total = len(header) + len(view)
    written = os.writev(fd, (header, view)) if _HAS_WRITEV else 0
    if written == total:
        return
    rest = memoryview(header)[written:] if written < len(header) else b""
    body = view[max(written - len(header), 0) :]
    for chunk in (rest, body):
        part = memoryview(chunk)
        while part:
            part = part[os.write(fd, part) :]


_HAS_WRITEV = hasattr(os, "writev")


class MemorySink:
    """Decode each instance into a pydicom Dataset (with ``file_meta``)."""

    immediate = True

    def store(
        self, inst: ReceivedInstance, sop_uid: str, tally: Tally, location: Location | None
    ) -> None:
        ds = inst.dataset()
        ds.file_meta = inst.file_meta()
        with tally.lock:
            tally.datasets.append(ds)

    def close(self, tally: Tally) -> None:
        return None


class ForwardSink:
    """C-STORE each instance to another node, from a worker thread.

    An instance counts as received once the node accepted it.  After the node
    could not be reached once, the rest fail at once rather than each waiting
    for the connection timeout again.
    """

    immediate = False

    def __init__(self, node: DicomNode, calling_aet: str, timeouts: Timeouts, max_pdu: int) -> None:
        self.node = node
        self.calling_aet = calling_aet
        self.timeouts = timeouts
        self.max_pdu = max_pdu
        self.queue: queue.Queue[tuple[str, Dataset] | None] = queue.Queue(maxsize=64)
        self.tally: Tally | None = None
        self.thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def store(
        self, inst: ReceivedInstance, sop_uid: str, tally: Tally, location: Location | None
    ) -> None:
        with self._start_lock:  # a split C-GET stores from several threads at once
            if self.thread is None:
                self.tally = tally
                self.thread = threading.Thread(
                    target=self._run, name="clarinet-forward", daemon=True
                )
                self.thread.start()
        ds = inst.dataset()
        ds.file_meta = inst.file_meta()
        self.queue.put((sop_uid, ds))

    def close(self, tally: Tally) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()

    def _run(self) -> None:
        tally = self.tally
        assert tally is not None
        ae: AE = make_ae(self.calling_aet, self.timeouts)
        assoc: Association | None = None
        negotiated: set[tuple[str, str]] = set()
        unreachable: str | None = None
        while (item := self.queue.get()) is not None:
            sop_uid, ds = item
            if unreachable is not None:
                with tally.lock:
                    tally.failed[sop_uid] = unreachable
                continue
            key = (str(ds.file_meta.MediaStorageSOPClassUID), str(ds.file_meta.TransferSyntaxUID))
            try:
                if assoc is None or not assoc.is_established or key not in negotiated:
                    if assoc is not None:
                        release(assoc)
                        assoc = None
                    negotiated.add(key)
                    contexts = [build_context(cls, ts) for cls, ts in sorted(negotiated)]
                    try:
                        assoc = open_association(
                            ae,
                            self.node,
                            contexts=contexts[-127:],
                            max_pdu=self.max_pdu,
                            purpose="forward",
                            carries_instances=True,
                        )
                    except DicomError as exc:
                        unreachable = f"forward destination failed: {exc}"
                        raise
                status = status_of(assoc.send_c_store(ds))
                if status is None or (status & 0xF000) not in (0x0000, 0xB000):
                    raise DicomError(f"forward C-STORE status {status}")
                with tally.lock:
                    tally.forwarded.append(sop_uid)
                    tally.received[sop_uid] = None
            except DicomError as exc:
                logger.warning("forwarding one instance to %s failed: %s", self.node, exc)
                with tally.lock:
                    tally.failed[sop_uid] = f"forward failed: {exc}"
        if assoc is not None:
            release(assoc)


def storage_reason(exc: OSError) -> str:
    """An OSError without its file name (paths carry UIDs): ``No space left on device (ENOSPC)``."""
    name = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or type(exc).__name__
    return f"{reason} ({name})" if name else reason


class StorageHandler:
    """EVT_C_STORE handler: hands each instance to the mode's sink, keeps the tally."""

    def __init__(
        self,
        storage: StorageConfig,
        *,
        locator: Locator | None = None,
        calling_aet: str = "CLARINET",
        timeouts: Timeouts | None = None,
        max_pdu: int = 16384,
        on_received: Callable[[int], object] | None = None,
        on_stored: Callable[[str, int], object] | None = None,
        on_storage_error: Callable[[OSError], object] | None = None,
        track_locations: bool = False,
    ) -> None:
        self.storage = storage
        self.track_locations = track_locations
        """Record each arrived instance's (study, series) in ``tally.located`` (read from
        its head when the caller did not): a lean plan accounts per series with it."""
        self.tally = Tally()
        self.on_received = on_received
        self.on_stored = on_stored
        self.on_storage_error = on_storage_error
        """Called once, on the first local storage failure (disk full, read-only...)."""
        self.storage_error: OSError | None = None
        """The first local storage failure, if any."""
        self.sink: _Sink
        if storage.mode is StorageMode.DISK:
            assert storage.output_dir is not None
            self.sink = DiskSink(Path(storage.output_dir), locator, storage.overwrite)
        elif storage.mode is StorageMode.MEMORY:
            self.sink = MemorySink()
        else:
            assert storage.forward_to is not None
            self.sink = ForwardSink(
                storage.forward_to, calling_aet, timeouts or Timeouts(), max_pdu
            )

    def __call__(self, event: evt.Event, location: Location | None = None) -> int:
        """Handle one C-STORE request (pynetdicom's ``EVT_C_STORE``); returns its status.

        ``location``: the instance's (study, series) when the caller already read it."""
        return self.receive(EventInstance(event), location)

    def receive(self, inst: ReceivedInstance, location: Location | None = None) -> int:
        """Handle one received instance (either receive path); returns the C-STORE status."""
        sop_uid = inst.sop_instance_uid
        with self.tally.lock:
            duplicate = sop_uid in self.tally.claimed
            if not duplicate:
                self.tally.claimed.add(sop_uid)
        if duplicate:
            self.refuse(inst, "duplicate SOP Instance UID", DUPLICATE)
            return DUPLICATE
        with inst.buffer() as view:
            size = len(view)
        if self.track_locations and location is None:
            try:
                location = read_identity(inst)[:2]
            except Exception as exc:  # noqa: BLE001 - unaccounted: its series gets listed
                logger.debug("could not read the head of a received dataset: %s", exc)
        try:
            self.sink.store(inst, sop_uid, self.tally, location)
        except OSError as exc:
            self._fail(sop_uid, f"local storage failed: {storage_reason(exc)}")
            with self.tally.lock:
                first = self.storage_error is None
                if first:
                    self.storage_error = exc
            if first:
                logger.error("could not store a received instance: %s", storage_reason(exc))
                if self.on_storage_error is not None:
                    self.on_storage_error(exc)
            else:
                logger.debug("could not store a received instance: %s", exc)
            return OUT_OF_RESOURCES
        except Exception as exc:  # noqa: BLE001 - a bad instance must not kill the pull
            logger.error("could not handle a received instance: %s", exc)
            self._fail(sop_uid, f"could not handle: {exc}")
            return CANNOT_UNDERSTAND
        with self.tally.lock:
            self.tally.arrived[sop_uid] = None
            if self.track_locations and location is not None:
                self.tally.located[sop_uid] = location
            if self.sink.immediate:
                self.tally.received[sop_uid] = None
            self.tally.bytes_received += size
        if self.on_received is not None:
            self.on_received(1)
        if self.on_stored is not None:
            self.on_stored(sop_uid, size)
        return SUCCESS

    def has(self, sop_uid: str) -> bool:
        """True when a copy of ``sop_uid`` is kept or being stored."""
        return sop_uid in self.tally.claimed

    def _fail(self, sop_uid: str, reason: str) -> None:
        with self.tally.lock:
            self.tally.failed[sop_uid] = reason
            self.tally.claimed.discard(sop_uid)  # a later copy may still be kept

    def refuse(
        self,
        event: evt.Event | ReceivedInstance | None,
        reason: str,
        status: int | None,
        **sender: str,
    ) -> None:
        """Count one refused C-STORE (``event``) or association (``sender``: calling_aet,
        address); the first refusal of a retrieve is logged as a warning."""
        if event is not None:
            inst = EventInstance(event) if isinstance(event, evt.Event) else event
            record = RefusedStore(
                reason=reason,
                calling_aet=inst.sender_aet,
                address=inst.sender_address,
                sop_class_uid=inst.sop_class_uid,
                sop_instance_uid=inst.sop_instance_uid,
                status=status,
            )
        else:
            record = RefusedStore(reason=reason, status=status, **sender)
        with self.tally.lock:
            self.tally.refused.append(record)
            first = len(self.tally.refused) == 1
        if first:
            logger.warning(
                "our Storage SCP refused %s from AE %r at %s: %s (every refusal of this "
                "retrieve is listed in RetrieveResult.refused)",
                "an instance" if event is not None else "an association",
                record.calling_aet,
                record.address or "?",
                reason,
            )
        else:
            logger.debug("refused %s from %r at %s", reason, record.calling_aet, record.address)

    def close(self) -> None:
        """Finish pending work (waits for FORWARD to drain)."""
        self.sink.close(self.tally)

    def handlers(self) -> list[tuple[Any, Callable[[evt.Event], int]]]:
        """``evt_handlers`` to bind this handler."""
        return [(evt.EVT_C_STORE, self)]
