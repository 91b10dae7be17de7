"""The lean C-FIND exchange: between the C-FIND-RQ and its final C-FIND-RSP the socket is ours.

The same mechanism as the C-GET receive path (:mod:`clarinet_nb.dicom.fastpath`):
pynetdicom's DUL reader is parked between two PDUs (:class:`DulGate`), the PDUs are
read by :class:`~clarinet_nb.dicom.wire.PduReader` and every pending response is
handed out as the identifier bytes the peer sent (decoded by the caller, see
:mod:`clarinet_nb.dicom.rawfind`).  No pynetdicom state machine, queue or DIMSE
message object runs per response, which is where a 20,000-row answer spent most of
its client time.

C-CANCEL is sent from the reading thread when the cancel token fires (a wake-up
pipe interrupts the wait); a peer that ignores it for ``cancel`` seconds gets the
association aborted.  ``dimse`` seconds without a complete response or ``network``
seconds without a byte abort the association (DicomTimeoutError); an A-ABORT,
A-RELEASE-RQ or dropped connection ends the exchange with AssociationAbortedError,
after the PDU was handed to pynetdicom's state machine as if its reader had read it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterator

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_FIND_RQ
from pynetdicom.dimse_primitives import C_FIND

from clarinet_nb.dicom.association import Timeouts
from clarinet_nb.dicom.cancel import CancelToken
from clarinet_nb.dicom.fastpath import (
    DulGate,
    _Run,
    cancel_pdus,
    request_pdus,
    start_run,
)
from clarinet_nb.dicom.models import DicomNode
from clarinet_nb.dicom.wire import (
    PeerPduError,
    ProtocolError,
    WireClosedError,
    WireTimeoutError,
    command_us,
)

__all__ = ["FastFind"]

logger = logging.getLogger("clarinet_nb")
_pynetdicom_logger = logging.getLogger("pynetdicom")  # its records, as send_c_find logs them

C_FIND_RSP = 0x8020
PENDING = (0xFF00, 0xFF01)

#: (status, identifier bytes or None, transfer syntax); status None: no final response
#: (cancelled and the peer did not answer in time, the association was aborted).
Response = tuple[int | None, bytes | None, UID]


class FastFind:
    """C-FINDs on one established association, exchanged on the lean path.

    One instance per association (it installs the DUL gate); C-FINDs run one
    after another, never concurrently."""

    def __init__(self, assoc: Association, peer: DicomNode, timeouts: Timeouts) -> None:
        self.assoc = assoc
        self.peer = peer
        self.timeouts = timeouts
        self.gate = DulGate(assoc)
        self.peer_max_pdu = int(assoc.acceptor.maximum_length or 0)
        self.cancel_sent = threading.Event()
        """Set once a C-CANCEL was sent for the current C-FIND."""

    def responses(
        self, identifier: Dataset, model: str, msg_id: int, cancel: CancelToken | None
    ) -> Generator[Response, None, None]:
        """Send a C-FIND-RQ and yield its responses up to and including the final one.

        The socket is ours while the generator runs: consume it to the end (or
        close it) before anything else uses the association."""
        self.cancel_sent.clear()
        request = C_FIND()
        request.MessageID = msg_id
        request.AffectedSOPClassUID = UID(model)
        request.Priority = 2
        rq, syntax, context_id = request_pdus(
            self.assoc, request, C_FIND_RQ(), identifier, model, self.peer_max_pdu, "C-FIND"
        )
        run = start_run(self, lambda: _FindRun(self, context_id, msg_id), "C-FIND")
        _pynetdicom_logger.info("Sending Find Request: MsgID %d", msg_id)
        remove = cancel.on_cancel(run.request_cancel) if cancel is not None else None
        try:
            yield from run.exchange(rq, syntax)
        finally:
            if remove is not None:
                remove()
            if not run.finished and not run.handed_back:
                run.abort()  # left mid-answer: the association cannot carry on
            run.close()

    # what _Run expects of its owner -------------------------------------------------------

    def cancel_pdus(self, context_id: int, msg_id: int) -> bytes:
        """C-CANCEL-RQ for ``msg_id`` as P-DATA-TF PDUs."""
        return cancel_pdus(context_id, msg_id, self.peer_max_pdu)


class _FindRun(_Run):
    """The socket side of one C-FIND."""

    def __init__(self, owner: FastFind, context_id: int, msg_id: int) -> None:
        super().__init__(owner, context_id, msg_id, "C-FIND")  # type: ignore[arg-type]
        self.finder = owner
        self.finished = False

    def service_cancel(self) -> None:
        if self.cancel_requested and not self.cancel_sent:
            self.finder.cancel_sent.set()
        super().service_cancel()

    def exchange(self, rq: bytes, syntax: UID) -> Iterator[Response]:
        try:
            self.begin(rq)
            while True:
                _context_id, command, data = self.next_message()
                field = command_us(command, 0x0100)
                if field != C_FIND_RSP:
                    raise ProtocolError(f"unexpected DIMSE message (command field {field})")
                if command_us(command, 0x0120) not in (None, self.msg_id):
                    raise ProtocolError("a C-FIND response to another message")
                status = command_us(command, 0x0900)
                if status is None:
                    raise ProtocolError("C-FIND-RSP without a Status")
                if status in PENDING:
                    yield status, (bytes(data) if data is not None else None), syntax
                    continue
                self.finished = True
                yield status, None, syntax
                return
        except (PeerPduError, WireClosedError, WireTimeoutError, ProtocolError) as exc:
            self.finished = True
            self.ended(exc)  # raises the typed error unless the C-FIND was cancelled
            yield None, None, syntax
