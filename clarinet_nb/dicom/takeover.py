"""Taking the socket of a pynetdicom association, and giving it back.

Shared by the lean receive paths (:mod:`clarinet_nb.dicom.fastpath` for C-GET,
:mod:`clarinet_nb.dicom.fastscp` for our C-MOVE Storage SCP):

- :class:`DulGate` holds pynetdicom's DUL reader thread at the top of its loop,
  between two PDUs, while we own the socket;
- :class:`Lease` makes the socket non-blocking, reads it with a
  :class:`~clarinet_nb.dicom.wire.PduReader` (with a wake-up pipe), and gives it
  back: PDUs the peer sent that are pynetdicom's business (A-RELEASE-RQ, A-ABORT,
  whatever followed our exchange) are handed to pynetdicom's state machine exactly
  as if its own reader had read them; a closed connection becomes Evt17.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP, A_RELEASE_RQ, P_DATA_TF

from clarinet_nb.dicom.association import Timeouts, abort
from clarinet_nb.dicom.wire import PDU_HEAD, PduReader, PeerPduError, WireClosedError

__all__ = ["DulGate", "Injected", "Lease", "LeaseEndedError", "decoded"]

logger = logging.getLogger("clarinet_nb")

#: the state of an established association (PS3.8 9.2): the A-ASSOCIATE-AC is sent
ESTABLISHED = "Sta6"
_EVENT_OF_PDU: dict[int, tuple[type[Any], str]] = {
    0x04: (P_DATA_TF, "Evt10"),
    0x05: (A_RELEASE_RQ, "Evt12"),
    0x06: (A_RELEASE_RP, "Evt13"),
    0x07: (A_ABORT_RQ, "Evt16"),
}


#: A PDU for pynetdicom's state machine (decoded, or None) and its event ('Evt10'...).
Injected = tuple[Any, str]


class LeaseEndedError(WireClosedError):
    """The association is being aborted from elsewhere (the gate saw an intrusion)."""


class DulGate:
    """Holds pynetdicom's DUL reader thread at the top of its loop while we own the socket.

    Installed as the DUL's ``_process_recv_primitive`` (the first thing each pass of
    its loop calls, before it reads the socket): once asked to hold, the thread parks
    there between two PDUs, with nothing of its own queued, until :meth:`release` or
    until something is queued for it to send (an abort from elsewhere: ``intruded``
    is then set).

    ``after_accept`` (an association we accept): park only once the state machine is
    in Sta6, i.e. after the DUL itself sent the A-ASSOCIATE-AC and before it can read
    the first P-DATA-TF the peer sends in answer (the gate is armed before the accept
    is queued, so there is no pass of the loop in between)."""

    def __init__(self, assoc: Association, *, after_accept: bool = False) -> None:
        self._dul = assoc.dul
        self._process = self._dul._process_recv_primitive
        self._cond = threading.Condition()
        self._hold = False
        self.after_accept = after_accept
        self.parked = False
        self.intruded = False
        self._handed: list[Injected] = []
        self._dul._process_recv_primitive = self._checkpoint  # type: ignore[method-assign]

    def _checkpoint(self) -> bool:
        dul = self._dul
        if not self._handed and (
            self._hold
            and dul.event_queue.empty()
            and dul.to_provider_queue.empty()
            and (not self.after_accept or dul.state_machine.current_state == ESTABLISHED)
        ):
            with self._cond:
                self.parked = True
                self._cond.notify_all()
                while self._hold and not dul._kill_thread:
                    if not dul.to_provider_queue.empty():
                        self.intruded = True
                        break
                    self._cond.wait(0.05)
                self.parked = False
                self._cond.notify_all()
        if self._handed:  # one per pass of the loop, exactly as its own reads queue them
            pdu, event = self._handed.pop(0)
            if pdu is not None:
                dul._recv_pdu.put(pdu)
            dul.event_queue.put(event)
            return True
        return bool(self._process())

    def arm(self) -> None:
        """Ask the reader to park at its next checkpoint (does not wait)."""
        with self._cond:
            self._hold = True
            self.intruded = False

    def wait_parked(self, limit: float) -> bool:
        """True once the reader is parked (False: it died or did not park in time)."""
        deadline = time.monotonic() + limit
        dul = self._dul
        with self._cond:  # polled: a reader that dies or is killed notifies nobody
            while not self.parked and dul.is_alive() and not dul._kill_thread:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
            return self.parked

    def hold(self, limit: float) -> bool:
        """Park the reader; True once it is parked (False: it died or did not park)."""
        self.arm()
        return self.wait_parked(limit)

    def release(self, handed: list[Injected] | None = None) -> None:
        """Let the reader run again, first giving its state machine ``handed``: PDUs we
        read that are pynetdicom's business (None, 'Evt17': the connection closed).

        They are dropped when the reader already left on its own (an abort queued
        from elsewhere is under way): its state machine must not see them after it."""
        with self._cond:
            if handed and self.parked and not self.intruded:
                self._handed = list(handed)
            self._hold = False
            self._cond.notify_all()


class Lease:
    """The socket of one association while the DUL reader is parked: ours until
    :meth:`close` (or :meth:`hand_back`, :meth:`abort`)."""

    def __init__(
        self,
        assoc: Association,
        gate: DulGate,
        timeouts: Timeouts,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        self.assoc = assoc
        self.gate = gate
        self.timeouts = timeouts
        transport = assoc.dul.socket
        sock = getattr(transport, "socket", None)
        if sock is None:
            raise WireClosedError("no socket")
        self.sock = sock
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.saved_timeout = sock.gettimeout()
        sock.settimeout(0.0)
        self.reader = PduReader(
            sock,
            network=timeouts.network,
            wake_fd=self.wake_r,
            on_wake=on_wake,
            check=self.check_gate,
        )
        self.handed_back = False

    def wake(self) -> None:
        """Interrupt a wait of the reader (any thread)."""
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"w")

    def check_gate(self) -> None:
        """Raise :class:`LeaseEndedError` when the association is being aborted elsewhere."""
        if self.gate.intruded or self.assoc._kill:
            raise LeaseEndedError("the association is being aborted")

    def close(self) -> None:
        """Give the socket back to pynetdicom (if not yet) and free the wake-up pipe.

        PDUs the peer already sent after our exchange (partly read into our buffer)
        are read whole and handed to pynetdicom, as if its reader had read them."""
        leftovers: list[bytes] = []
        if not self.handed_back and self.reader.end > self.reader.pos:
            self.reader.deadline = time.monotonic() + self.timeouts.dimse
            try:
                leftovers = self.reader.leftover()
            except Exception as exc:  # noqa: BLE001 - the stream is unusable: abort
                logger.debug("unreadable data after our exchange: %s", exc)
                self.abort()
        self.restore()
        self.gate.release([decoded(pdu) for pdu in leftovers])
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def restore(self) -> None:
        """The socket as pynetdicom left it (blocking with its timeout), idle timer reset."""
        if not self.handed_back:
            self.handed_back = True
            with contextlib.suppress(OSError):
                self.sock.settimeout(self.saved_timeout)
            self.assoc.dul._idle_timer.restart()

    def hand_back(self, pdu: PeerPduError | None) -> None:
        """Give pynetdicom's state machine what the peer sent (None: connection closed)."""
        self.restore()
        self.gate.release([decoded(pdu.pdu) if pdu is not None else (None, "Evt17")])

    def rest_of_pdu(self) -> bytes | None:
        """The PDVs left in the current P-DATA-TF PDU, as a PDU of their own."""
        reader = self.reader
        if not reader.pdu_left:
            return None
        body = bytearray()
        reader.copy_into(body, reader.pdu_left)
        reader.pdu_left = 0
        return PDU_HEAD.pack(0x04, len(body)) + bytes(body)

    def abort(self) -> None:
        """Abort the association through pynetdicom (A-ABORT, state machine to idle)."""
        self.restore()
        self.gate.release()
        abort(self.assoc)


def decoded(raw: bytes) -> Injected:
    """One whole PDU read from the peer, as pynetdicom's reader would queue it."""
    known = _EVENT_OF_PDU.get(raw[0])
    if known is None:
        return None, "Evt19"  # unexpected here: pynetdicom aborts
    cls, event = known
    pdu = cls()
    try:
        pdu.decode(raw)
    except Exception:  # noqa: BLE001 - undecodable, as pynetdicom: Evt19
        return None, "Evt19"
    return pdu, event
