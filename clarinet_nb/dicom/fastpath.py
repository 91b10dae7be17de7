"""The lean C-STORE receive path of a C-GET association (``settings.fast_path``), and
the lean response path of a C-MOVE association (:meth:`FastGet.move`).

pynetdicom negotiates the association (contexts, SCP/SCU roles, max PDU) and
releases it; between the C-GET-RQ and its final C-GET-RSP the socket is ours:

- pynetdicom's DUL reader thread is held between two PDUs (:class:`DulGate`, a
  checkpoint at the top of its loop) and the socket is made non-blocking;
- PDUs are read into one reusable buffer, PDVs parsed with ``struct``
  (:mod:`clarinet_nb.dicom.wire`): fragments may be split across PDUs and a PDU
  may carry several PDVs; command sets are parsed without pydicom, dataset
  fragments joined into one ``bytearray``;
- each C-STORE-RQ goes to ``StorageHandler.receive`` as a
  :class:`~clarinet_nb.dicom.received.RawInstance` (no pydicom object unless the
  sink wants one) and is answered with a C-STORE-RSP encoded from a template,
  fragmented under the peer's max PDU;
- C-CANCEL is sent when the cancel token fires (a wake-up pipe interrupts the
  wait), the association aborted if the peer ignores it for ``cancel`` seconds;
- ``dimse`` seconds without a complete DIMSE message (as pynetdicom), or ``network``
  seconds without a byte, abort the association (DicomTimeoutError);
- an A-ABORT, A-RELEASE-RQ or closed connection from the peer is handed to
  pynetdicom's state machine, exactly as if its reader had read it.

Works on plain and TLS sockets alike.  Everything the peer may do wrong ends in
the same typed errors as pynetdicom's path.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any, TypeVar

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_CANCEL_RQ, C_GET_RQ, C_MOVE_RQ
from pynetdicom.dimse_primitives import C_CANCEL, C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF

from clarinet_nb.dicom.association import Timeouts, abort
from clarinet_nb.dicom.cancel import CancelToken
from clarinet_nb.dicom.handlers import StorageHandler, plain_address
from clarinet_nb.dicom.models import DicomNode
from clarinet_nb.dicom.received import RawInstance
from clarinet_nb.dicom.takeover import DulGate, Lease
from clarinet_nb.dicom.wire import (
    TRAILING,
    PeerPduError,
    ProtocolError,
    WireClosedError,
    WireTimeoutError,
    command_uid,
    command_us,
    pdata_pdus,
    store_response,
)
from clarinet_nb.errors import AssociationAbortedError, DicomTimeoutError

__all__ = ["DulGate", "FastGet"]

logger = logging.getLogger("clarinet_nb")

C_STORE_RQ = 0x0001
C_GET_RSP = 0x8010
C_MOVE_RSP = 0x8021
NO_DATASET = 0x0101
PENDING = (0xFF00, 0xFF01)
NO_SUCH_CONTEXT = 0x0122  # what pynetdicom answers: SOP class not supported
HANDLER_FAILED = 0xC211
_COUNTS = (
    (0x1020, "NumberOfRemainingSuboperations"),
    (0x1021, "NumberOfCompletedSuboperations"),
    (0x1022, "NumberOfFailedSuboperations"),
    (0x1023, "NumberOfWarningSuboperations"),
)


class FastGet:
    """C-GETs (and C-MOVEs: their responses only) on one established association, on
    the lean path."""

    def __init__(
        self, assoc: Association, handler: StorageHandler, peer: DicomNode, timeouts: Timeouts
    ) -> None:
        self.assoc = assoc
        self.handler = handler
        self.peer = peer
        self.timeouts = timeouts
        self.gate = DulGate(assoc)
        acceptor = assoc.acceptor
        self.peer_max_pdu = int(acceptor.maximum_length or 0)
        self.sender_aet = str(acceptor.ae_title or "").strip()
        try:
            self.sender_address = plain_address(acceptor.address)
        except ValueError:
            self.sender_address = ""
        self.contexts = {int(cx.context_id or 0): cx for cx in assoc.accepted_contexts}

    # -- one C-GET or C-MOVE ------------------------------------------------------------

    def get(
        self, identifier: Dataset, model: str, msg_id: int, cancel: CancelToken | None
    ) -> tuple[Dataset, Dataset | None] | None:
        """Send a C-GET-RQ and receive until its final C-GET-RSP.

        Returns (status, identifier) of the final response, or None when it was
        cancelled and the peer did not answer the C-CANCEL in time (aborted)."""
        request = C_GET()
        request.MessageID = msg_id
        request.AffectedSOPClassUID = UID(model)
        request.Priority = 2
        return self._retrieve(request, C_GET_RQ(), identifier, model, cancel, "C-GET")

    def move(
        self,
        identifier: Dataset,
        model: str,
        msg_id: int,
        cancel: CancelToken | None,
        destination: str,
    ) -> tuple[Dataset, Dataset | None] | None:
        """Send a C-MOVE-RQ to ``destination`` and read its responses until the final one
        (the instances arrive on other associations: our Storage SCP).  As :meth:`get`."""
        request = C_MOVE()
        request.MessageID = msg_id
        request.AffectedSOPClassUID = UID(model)
        request.Priority = 2
        request.MoveDestination = destination
        return self._retrieve(request, C_MOVE_RQ(), identifier, model, cancel, "C-MOVE")

    def _retrieve(
        self,
        request: Any,
        message: Any,
        identifier: Dataset,
        model: str,
        cancel: CancelToken | None,
        what: str,
    ) -> tuple[Dataset, Dataset | None] | None:
        rq, syntax, context_id = request_pdus(
            self.assoc, request, message, identifier, model, self.peer_max_pdu, what
        )
        msg_id = int(request.MessageID)
        run = start_run(self, lambda: _Run(self, context_id, msg_id, what), what)
        remove = cancel.on_cancel(run.request_cancel) if cancel is not None else None
        try:
            return run.go(rq, syntax)
        finally:
            if remove is not None:
                remove()
            run.close()

    def cancel_pdus(self, context_id: int, msg_id: int) -> bytes:
        """C-CANCEL-RQ for ``msg_id`` as P-DATA-TF PDUs."""
        return cancel_pdus(context_id, msg_id, self.peer_max_pdu)


def request_pdus(
    assoc: Association,
    request: Any,
    message: Any,
    identifier: Dataset,
    model: str,
    max_pdu: int,
    what: str,
) -> tuple[bytes, UID, int]:
    """A C-GET/C-MOVE/C-FIND request (``request``, a pynetdicom primitive, encoded as
    ``message``) with ``identifier`` on the context of ``model``: (PDUs, the context's
    transfer syntax, its ID)."""
    context = assoc._get_valid_context(model, "", "scu")
    syntax = context.transfer_syntax[0]
    context_id = int(context.context_id or 0)
    encoded = encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    if encoded is None:
        raise ValueError(f"could not encode the {what} identifier")
    request.Identifier = BytesIO(encoded)
    message.primitive_to_message(request)
    return message_pdus(message, context_id, max_pdu), syntax, context_id


RunT = TypeVar("RunT", bound=Lease)


def start_run(owner: Any, make: Callable[[], RunT], what: str) -> RunT:
    """Park ``owner.gate``'s reader and take the socket with ``make()``; the typed
    error (gate released) when the association is gone before the request."""
    if not owner.gate.hold(owner.timeouts.acse):
        owner.gate.release()
        raise AssociationAbortedError(
            f"the association with {owner.peer} was aborted or the connection dropped "
            f"before the {what} request"
        )
    try:
        return make()
    except (WireClosedError, OSError) as exc:
        owner.gate.release()
        raise AssociationAbortedError(
            f"the association with {owner.peer} lost its connection before the {what} "
            f"request ({exc})"
        ) from None


def message_pdus(message: Any, context_id: int, max_pdu: int) -> bytes:
    """A pynetdicom DIMSE message as P-DATA-TF PDUs under the peer's ``max_pdu``."""
    parts = []
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        parts.append(pdu.encode())
    return b"".join(parts)


def cancel_pdus(context_id: int, msg_id: int, max_pdu: int) -> bytes:
    """C-CANCEL-RQ for ``msg_id`` as P-DATA-TF PDUs."""
    primitive = C_CANCEL()
    primitive.MessageIDBeingRespondedTo = msg_id
    message = C_CANCEL_RQ()
    message.primitive_to_message(primitive)
    return message_pdus(message, context_id, max_pdu)


class _Run(Lease):
    """The socket side of one C-GET: owns the socket until :meth:`close`."""

    def __init__(self, owner: FastGet, context_id: int, msg_id: int, what: str) -> None:
        self.owner = owner
        self.what = what
        self.rsp_field = C_GET_RSP if what == "C-GET" else C_MOVE_RSP
        self.context_id = context_id
        self.msg_id = msg_id
        self.cancel_requested = False
        self.cancel_sent = False
        super().__init__(owner.assoc, owner.gate, owner.timeouts, on_wake=self.service_cancel)

    # cancellation (request_cancel runs in any thread; the rest in ours) --------------------

    def request_cancel(self) -> None:
        self.cancel_requested = True
        self.wake()

    def service_cancel(self) -> None:
        if self.cancel_requested and not self.cancel_sent:
            self.cancel_sent = True
            logger.info("cancelling: sending C-CANCEL (message %d)", self.msg_id)
            self.reader.send(self.owner.cancel_pdus(self.context_id, self.msg_id))
            self.reader.grace = time.monotonic() + self.owner.timeouts.cancel

    # the exchange ---------------------------------------------------------------------------

    def begin(self, rq: bytes) -> None:
        """Send the request; the ``dimse`` timeout runs from now."""
        self.reader.send(rq)
        self.reader.deadline = time.monotonic() + self.owner.timeouts.dimse

    def next_message(self) -> tuple[int, dict[int, bytes], bytearray | None]:
        """The next DIMSE message; a requested C-CANCEL goes out first, and a peer that
        ignores it past the grace period is a WireTimeoutError('cancel')."""
        reader = self.reader
        if self.cancel_requested:
            self.service_cancel()
            if time.monotonic() >= reader.grace:
                raise WireTimeoutError("cancel")
        message = reader.next_message()
        reader.deadline = time.monotonic() + self.owner.timeouts.dimse
        return message

    def go(self, rq: bytes, syntax: UID) -> tuple[Dataset, Dataset | None] | None:
        try:
            self.begin(rq)
            while True:
                context_id, command, data = self.next_message()
                field = command_us(command, 0x0100)
                if field == C_STORE_RQ:
                    self.store(context_id, command, data)
                elif field == self.rsp_field:
                    status = command_us(command, 0x0900)
                    if status is None:
                        raise ProtocolError(f"{self.what}-RSP without a Status")
                    if status in PENDING:
                        continue
                    return self.final(status, command, data, syntax)
                else:
                    raise ProtocolError(f"unexpected DIMSE message (command field {field})")
        except (PeerPduError, WireClosedError, WireTimeoutError, ProtocolError) as exc:
            self.ended(exc)
            return None  # cancelled: the peer did not answer the C-CANCEL in time
        except BaseException:
            self.abort()
            raise

    def ended(self, exc: Exception) -> None:
        """The exchange broke off with ``exc`` (from the wire): give the socket back or
        abort, then return when it was cancelled (no final response is coming), else
        raise the typed error of the fault."""
        peer, what, timeouts = self.owner.peer, self.what, self.owner.timeouts
        if isinstance(exc, PeerPduError):
            self.hand_back(exc)
            if self.cancel_sent:
                return
            raise AssociationAbortedError(
                f"{peer} {'released' if exc.kind == 0x05 else 'aborted'} the association "
                f"while we waited for a {what} response"
            ) from None
        if isinstance(exc, WireClosedError):
            self.hand_back(None)
            if self.cancel_sent:
                return
            raise AssociationAbortedError(
                f"the association with {peer} was aborted or the connection dropped "
                f"while waiting for a {what} response ({exc})"
            ) from None
        if isinstance(exc, WireTimeoutError):
            self.abort()
            if exc.args[0] == "cancel" or self.cancel_sent:
                logger.warning(
                    "%s did not honour C-CANCEL within %g s: association aborted",
                    peer,
                    timeouts.cancel,
                )
                return
            if exc.args[0] == "network":
                raise DicomTimeoutError(
                    f"{peer} sent nothing for {timeouts.network:g} s "
                    f"(network_timeout) during the {what}; the association was aborted"
                ) from None
            raise DicomTimeoutError(
                f"{peer} sent no {what} response within {timeouts.dimse:g} s "
                "(dimse_timeout); the association was aborted"
            ) from None
        logger.error("invalid data from %s during a %s: %s", peer, what, exc)
        self.abort()
        raise AssociationAbortedError(
            f"{peer} sent an invalid message during the {what} ({exc}); the association was aborted"
        ) from None

    def store(self, context_id: int, command: dict[int, bytes], data: bytearray | None) -> None:
        """Hand one C-STORE-RQ to the storage handler and answer it."""
        msg_id = command_us(command, 0x0110)
        sop_class = command_uid(command, 0x0002)
        sop_instance = command_uid(command, 0x1000)
        if msg_id is None or not sop_class or not sop_instance or data is None:
            raise ProtocolError("C-STORE-RQ without Message ID, SOP Class/Instance UID or dataset")
        owner = self.owner
        context = owner.contexts.get(context_id)
        if context is None:  # pynetdicom then looks at every accepted context
            context = next(
                (c for c in owner.contexts.values() if c.abstract_syntax == sop_class and c.as_scp),
                None,
            )
        if context is None or context.abstract_syntax != sop_class or not context.as_scp:
            status = NO_SUCH_CONTEXT
        else:
            instance = RawInstance(
                sop_class,
                sop_instance,
                str(context.transfer_syntax[0]),
                owner.sender_aet,
                owner.sender_address,
                data,
            )
            try:
                status = owner.handler.receive(instance)
            except Exception:
                logger.exception("the C-STORE handler failed")
                status = HANDLER_FAILED
        rsp = store_response(msg_id, sop_class, sop_instance, status)
        self.reader.send(pdata_pdus(context_id, rsp, owner.peer_max_pdu))

    def final(
        self, status: int, command: dict[int, bytes], data: bytearray | None, syntax: UID
    ) -> tuple[Dataset, Dataset | None]:
        ds = Dataset()
        ds.Status = status
        for element, keyword in _COUNTS:
            value = command_us(command, element)
            if value is not None:
                setattr(ds, keyword, value)
        identifier: Dataset | None = None
        trailing = command.get(TRAILING)
        if data or trailing:
            try:
                if data:
                    identifier = decode(
                        BytesIO(bytes(data)),
                        syntax.is_implicit_VR,
                        syntax.is_little_endian,
                        syntax.is_deflated,
                    )
                else:  # appended to the command set itself: Implicit VR Little Endian
                    identifier = decode(BytesIO(trailing or b""), True, True, False)
            except Exception:  # noqa: BLE001 - as pynetdicom: no identifier
                logger.error("could not decode the identifier of the final %s response", self.what)
        return ds, identifier

    # giving the socket back ------------------------------------------------------------------

    def hand_back(self, pdu: PeerPduError | None) -> None:
        """Give pynetdicom what the peer sent; answer an A-RELEASE-RQ (we are the requestor:
        no reactor of pynetdicom's runs to answer it)."""
        super().hand_back(pdu)
        if pdu is not None and pdu.kind == 0x05:
            self._answer_release()

    def _answer_release(self) -> None:
        """The peer asked to release mid-C-GET: answer it, as pynetdicom's acceptor does."""
        assoc = self.assoc
        deadline = time.monotonic() + self.owner.timeouts.acse
        while time.monotonic() < deadline and assoc.dul.is_alive():
            if assoc.acse.is_release_requested():
                with contextlib.suppress(Exception):
                    assoc.acse.send_release(is_response=True)
                assoc.is_released = True
                assoc.is_established = False
                assoc.kill()
                return
            time.sleep(0.001)  # the DUL thread is handling the PDU
        abort(assoc)
