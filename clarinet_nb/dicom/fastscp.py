"""The lean C-STORE receive path of our C-MOVE Storage SCP (``settings.fast_path``).

pynetdicom accepts the association (admission in ``EVT_REQUESTED``, contexts,
max PDU) and answers its release; between the two the socket is ours:

- :func:`arm` (``EVT_REQUESTED``, once admitted) installs a
  :class:`~clarinet_nb.dicom.takeover.DulGate` that parks pynetdicom's DUL reader
  right after it sent the A-ASSOCIATE-AC, before it can read the first P-DATA-TF;
- :func:`serve` (``EVT_ESTABLISHED``, in the association's own thread, before
  pynetdicom's reactor starts) reads PDUs and PDVs raw; each C-STORE-RQ becomes a
  :class:`~clarinet_nb.dicom.received.RawInstance` handed to the listener's policy
  (the same function pynetdicom's ``EVT_C_STORE`` path calls) and is answered with
  a C-STORE-RSP from a template, under the peer's max PDU;
- an A-RELEASE-RQ, A-ABORT or closed connection is handed to pynetdicom's state
  machine, whose reactor then answers it; any other DIMSE message (C-ECHO, a
  C-STORE pynetdicom would not serve as storage) is handed to pynetdicom whole, with
  the rest of the association;
- ``dimse`` seconds without a complete message or ``network`` seconds without a
  byte abort the association; an abort from elsewhere (the listener stopping) ends
  the loop at once.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from clarinet_nb.dicom.association import Timeouts
from clarinet_nb.dicom.handlers import plain_address
from clarinet_nb.dicom.received import RawInstance, ReceivedInstance
from clarinet_nb.dicom.takeover import ESTABLISHED, DulGate, Lease, LeaseEndedError, decoded
from clarinet_nb.dicom.wire import (
    PDU_HEAD,
    PDV_HEAD,
    PeerPduError,
    ProtocolError,
    WireClosedError,
    WireTimeoutError,
    command_uid,
    command_us,
    pdata_pdus,
    store_response,
)

__all__ = ["arm", "serve"]

logger = logging.getLogger("clarinet_nb")

C_STORE_RQ = 0x0001
HANDLER_FAILED = 0xC211  # what pynetdicom answers when the handler raised

#: The policy: one received instance -> its C-STORE status.
Route = Callable[[ReceivedInstance], int]


def arm(assoc: Association) -> DulGate:
    """Install and arm the gate of an association being accepted (``EVT_REQUESTED``)."""
    gate = DulGate(assoc, after_accept=True)
    gate.arm()
    return gate


def serve(assoc: Association, gate: DulGate, route: Route, timeouts: Timeouts) -> None:
    """Receive the association's C-STOREs on the lean path (``EVT_ESTABLISHED``).

    Returns when the rest of the association is pynetdicom's (release, abort, closed
    connection, another kind of message); never raises."""
    try:
        if not gate.wait_parked(timeouts.acse) or not _quiet(assoc):
            gate.release()  # pynetdicom already has part of the exchange: its path
            return
        try:
            session = _Session(assoc, gate, timeouts, route)
        except (WireClosedError, OSError) as exc:
            logger.debug("lean C-STORE path not taken: %s", exc)
            gate.release()
            return
        session.run()
    except Exception:
        logger.exception("the lean C-STORE receive path failed")
        gate.release()


def _quiet(assoc: Association) -> bool:
    """True when pynetdicom holds nothing of the exchange yet (the DUL is parked)."""
    dul = assoc.dul
    dimse = assoc.dimse
    return (
        assoc.is_established
        and not assoc._kill
        and dul.state_machine.current_state == ESTABLISHED
        and dimse.message is None
        and dimse.msg_queue.empty()
        and dul.event_queue.empty()
        and dul._recv_pdu.empty()
        and dul.to_user_queue.empty()
    )


class _Session(Lease):
    """The socket side of one accepted association, until it is pynetdicom's again."""

    def __init__(self, assoc: Association, gate: DulGate, timeouts: Timeouts, route: Route) -> None:
        super().__init__(assoc, gate, timeouts)
        self.route = route
        requestor = assoc.requestor
        self.peer_max_pdu = int(requestor.maximum_length or 0)
        self.sender_aet = str(requestor.ae_title or "").strip()
        try:
            self.sender_address = plain_address(requestor.address)
        except ValueError:
            self.sender_address = ""
        self.contexts = {int(cx.context_id or 0): cx for cx in assoc.accepted_contexts}
        self.common = set(assoc.acceptor.accepted_common_extended)
        self.peer = f"{self.sender_aet} at {self.sender_address or '?'}"

    def run(self) -> None:
        reader = self.reader
        dimse = self.timeouts.dimse
        try:
            reader.deadline = time.monotonic() + dimse
            while True:
                self.check_gate()
                context_id, command, data = reader.next_message()
                if not self.store(context_id, command, data):
                    self.give_back(context_id, data)
                    return
                reader.deadline = time.monotonic() + dimse
        except LeaseEndedError:
            self.restore()  # aborted from elsewhere: pynetdicom's abort goes on
        except PeerPduError as exc:
            self.hand_back(exc)
        except WireClosedError:
            self.hand_back(None)
        except WireTimeoutError as exc:
            limit = self.timeouts.network if exc.args[0] == "network" else dimse
            logger.error(
                "%s sent %s for %g s (%s_timeout): association aborted",
                self.peer,
                "nothing" if exc.args[0] == "network" else "no complete message",
                limit,
                exc.args[0],
            )
            self.abort()
        except ProtocolError as exc:
            logger.error("invalid data from %s on our Storage SCP: %s", self.peer, exc)
            self.abort()
        except BaseException:
            self.abort()
            raise
        finally:
            self.close()

    def store(self, context_id: int, command: dict[int, bytes], data: bytearray | None) -> bool:
        """Serve one C-STORE-RQ as pynetdicom's Storage SCP would; False: not one that
        pynetdicom would hand to its storage service (its business, not ours)."""
        if command_us(command, 0x0100) != C_STORE_RQ or data is None:
            return False
        msg_id = command_us(command, 0x0110)
        sop_class = command_uid(command, 0x0002)
        sop_instance = command_uid(command, 0x1000)
        context = self.contexts.get(context_id)
        if msg_id is None or not sop_class or not sop_instance or context is None:
            return False  # pynetdicom refuses or aborts such a message its own way
        if not _is_storage(sop_class) or sop_class in self.common:
            return False
        instance = RawInstance(
            sop_class,
            sop_instance,
            str(context.transfer_syntax[0]),
            self.sender_aet,
            self.sender_address,
            data,
        )
        try:
            status = self.route(instance)
        except Exception:
            logger.exception("the C-STORE handler failed")
            status = HANDLER_FAILED
        rsp = store_response(msg_id, sop_class, sop_instance, status)
        self.reader.send(pdata_pdus(context_id, rsp, self.peer_max_pdu))
        return True

    def give_back(self, context_id: int, data: bytearray | None) -> None:
        """Hand the message just read, and the rest of the association, to pynetdicom."""
        pdus = [_pdu(context_id, 0x03, self.reader.last_command)]
        if data is not None:
            pdus.append(_pdu(context_id, 0x02, data))
        rest = self.rest_of_pdu()
        if rest is not None:
            pdus.append(rest)
        pdus += self.reader.leftover()  # whole PDUs the peer sent after it
        self.restore()
        self.gate.release([decoded(raw) for raw in pdus])
        logger.debug("a DIMSE message other than a C-STORE: the association is pynetdicom's")


def _pdu(context_id: int, control: int, fragment: Any) -> bytes:
    """One P-DATA-TF PDU holding one PDV."""
    return b"".join(
        (
            PDU_HEAD.pack(0x04, len(fragment) + 6),
            PDV_HEAD.pack(len(fragment) + 2, context_id, control),
            bytes(fragment),
        )
    )


def _is_storage(sop_class: str) -> bool:
    """True when pynetdicom would serve a C-STORE of ``sop_class`` as storage."""
    return bool(_config.UNRESTRICTED_STORAGE_SERVICE or _storage_class(sop_class))


@functools.lru_cache(maxsize=512)
def _storage_class(sop_class: str) -> bool:
    return uid_to_service_class(sop_class) is StorageServiceClass
