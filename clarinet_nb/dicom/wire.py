"""PDU and DIMSE command-set codec of the lean receive path (pure logic, no threads).

:class:`PduReader` reads PDUs from a non-blocking socket into one reusable buffer and
hands out PDVs; :func:`parse_command` decodes a command set (always Implicit VR Little
Endian, PS3.7 6.3.1) with ``struct``; :func:`store_response` and :func:`pdata_pdus`
encode a C-STORE-RSP and split a message into P-DATA-TF PDUs under a peer's max PDU.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable

__all__ = [
    "PduReader",
    "PeerPduError",
    "ProtocolError",
    "WireClosedError",
    "WireTimeoutError",
    "command_uid",
    "command_us",
    "TRAILING",
    "parse_command",
    "pdata_pdus",
    "store_response",
]

PDU_HEAD = struct.Struct(">BxI")
PDV_HEAD = struct.Struct(">IBB")
_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
P_DATA_TF = 0x04
NO_DATASET = 0x0101  # Command Data Set Type: no dataset follows
#: largest non-P-DATA PDU we read whole (A-RELEASE-RQ, A-ABORT are 10 bytes)
_SMALL_PDU = 1 << 16
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid PDU, PDV or command set."""


class WireClosedError(Exception):
    """The connection was closed or reset by the peer."""


class WireTimeoutError(Exception):
    """No data within a deadline; ``args[0]`` names it ('dimse', 'network', 'cancel')."""


# -- command sets ------------------------------------------------------------------------


#: Key of :func:`parse_command`'s result holding elements of other groups that a peer
#: appended to the command set itself (Implicit VR LE).  DCMTK-based peers (Orthanc)
#: do this with the Failed SOP Instance UID List of a final C-GET-RSP whose Command
#: Data Set Type says that no dataset follows; pynetdicom reads them too.
TRAILING = 0x10000


def parse_command(raw: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """Element number -> value of a command set (group 0000, Implicit VR LE, any order).

    Elements of other groups after the group 0000 ones are kept, undecoded, under
    :data:`TRAILING`; a command set that does not start with group 0000 is refused."""
    view = memoryview(raw)
    size = len(view)
    pos = 0
    out: dict[int, bytes] = {}
    while pos < size:
        if size - pos < 8:
            raise ProtocolError("command set: truncated element header")
        group, element, length = _ELEMENT.unpack_from(view, pos)
        pos += 8
        if group != 0x0000:
            if not out:
                raise ProtocolError(f"command set: element of group {group:04X}")
            out[TRAILING] = bytes(view[pos - 8 :])
            return out
        if length > size - pos:
            raise ProtocolError("command set: element longer than the command set")
        out[element] = bytes(view[pos : pos + length])
        pos += length
    return out


def command_us(command: dict[int, bytes], element: int) -> int | None:
    """An US value of ``command`` (None when absent)."""
    value = command.get(element)
    if value is None:
        return None
    if len(value) != 2:
        raise ProtocolError(f"command set: (0000,{element:04X}) is not a US")
    return int(_US.unpack(value)[0])


def command_uid(command: dict[int, bytes], element: int) -> str:
    """A UI value of ``command`` ('' when absent), without its padding."""
    value = command.get(element)
    if value is None:
        return ""
    return value.decode("ascii", "replace").rstrip("\x00 ")


def _ui(element: int, uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    if len(raw) % 2:
        raw += b"\x00"
    return _ELEMENT.pack(0, element, len(raw)) + raw


def _us(element: int, value: int) -> bytes:
    return _ELEMENT.pack(0, element, 2) + _US.pack(value)


_RSP_FIELD = _us(0x0100, 0x8001)  # Command Field: C-STORE-RSP
_NO_DATASET = _us(0x0800, 0x0101)
_MSG_ID_HEAD = _ELEMENT.pack(0, 0x0120, 2)
_STATUS_HEAD = _ELEMENT.pack(0, 0x0900, 2)
_GROUP_LENGTH_HEAD = _ELEMENT.pack(0, 0x0000, 4)


def store_response(msg_id: int, sop_class_uid: str, sop_instance_uid: str, status: int) -> bytes:
    """The command set of a C-STORE-RSP, as pynetdicom encodes it (tags ascending)."""
    body = b"".join(
        (
            _ui(0x0002, sop_class_uid),
            _RSP_FIELD,
            _MSG_ID_HEAD,
            _US.pack(msg_id & 0xFFFF),
            _NO_DATASET,
            _STATUS_HEAD,
            _US.pack(status & 0xFFFF),
            _ui(0x1000, sop_instance_uid),
        )
    )
    return _GROUP_LENGTH_HEAD + _UL.pack(len(body)) + body


def pdata_pdus(context_id: int, command: bytes, max_pdu: int) -> bytes:
    """``command`` (a whole command set, no dataset) as P-DATA-TF PDUs of at most
    ``max_pdu`` bytes each (0: unlimited), one PDV per PDU."""
    room = len(command) if max_pdu == 0 else max_pdu - 6
    if room <= 0:
        raise ValueError(f"max PDU {max_pdu} leaves no room for a PDV")
    parts: list[bytes] = []
    for start in range(0, len(command), room):
        chunk = command[start : start + room]
        control = 0x03 if start + room >= len(command) else 0x01
        parts.append(PDU_HEAD.pack(P_DATA_TF, len(chunk) + 6))
        parts.append(PDV_HEAD.pack(len(chunk) + 2, context_id, control))
        parts.append(chunk)
    return b"".join(parts)


# -- the socket reader -------------------------------------------------------------------


class PduReader:
    """Reads PDUs and PDVs from a non-blocking socket (plain or TLS) into one buffer.

    Waiting happens in :meth:`_wait` only when the socket has nothing to read:
    it wakes on data, on ``wake_fd`` (calls ``on_wake``), and gives up at the
    earliest of ``deadline`` ('dimse', moved on by the owner), ``grace``
    ('cancel') and ``network`` seconds without a byte.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        network: float | None,
        wake_fd: int | None = None,
        on_wake: Callable[[], None] | None = None,
        check: Callable[[], None] | None = None,
        size: int = 1 << 18,
    ) -> None:
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.pos = 0
        self.end = 0
        self.network = network
        self.deadline = float("inf")
        self.grace = float("inf")
        self.last_data = time.monotonic()
        self.wake_fd = wake_fd
        self.on_wake = on_wake
        self.check = check
        self.pdu_left = 0
        """Bytes of the current P-DATA-TF PDU not yet handed out as PDVs."""
        self.last_command = bytearray()
        """The encoded command set of the last message (for handing it to pynetdicom)."""
        self.quickack = _TCP_QUICKACK
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        if wake_fd is not None:
            self.poller.register(wake_fd, select.POLLIN)

    # low level --------------------------------------------------------------------------

    def _recv(self, into: memoryview) -> int:
        while True:
            if self.quickack is not None:
                try:
                    self.sock.setsockopt(socket.IPPROTO_TCP, self.quickack, 1)
                except OSError:
                    self.quickack = None
            try:
                count = self.sock.recv_into(into)
            except _WOULD_BLOCK:
                self._wait(select.POLLIN)
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                raise WireClosedError(str(exc)) from exc
            if not count:
                raise WireClosedError("the peer closed the connection")
            self.last_data = time.monotonic()
            return count

    def _wait(self, events: int) -> None:
        """Block until the socket is ready for ``events`` or a deadline passes."""
        if events != select.POLLIN:  # sending: the socket alone (no wake-ups mid-PDU)
            self._wait_writable()
            return
        while True:
            now = time.monotonic()
            limits = [(self.deadline, "dimse"), (self.grace, "cancel")]
            if self.network:
                limits.append((self.last_data + self.network, "network"))
            limit, name = min(limits)
            if now >= limit:
                raise WireTimeoutError(name)
            ready = self.poller.poll(min(limit - now, 0.25) * 1000 + 1)
            woke = False
            for fd, _ in ready:
                if fd == self.wake_fd:
                    woke = True
                else:
                    return
            if woke:
                _drain(self.wake_fd)
                if self.on_wake is not None:
                    self.on_wake()
            if self.check is not None:
                self.check()

    def _wait_writable(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLOUT)
        limit = time.monotonic() + (self.network or 120.0)
        while not poller.poll(250):
            if time.monotonic() >= limit:
                raise WireTimeoutError("network")
            if self.check is not None:
                self.check()

    def leftover(self) -> list[bytes]:
        """Whole PDUs already (partly) read past the last message, read to their end:
        what the peer sent after our exchange, for pynetdicom to handle."""
        pdus: list[bytes] = []
        while self.end > self.pos and not self.pdu_left:
            kind, length = self.pdu_header()
            body = bytearray()
            self.copy_into(body, length)
            pdus.append(PDU_HEAD.pack(kind, length) + bytes(body))
        return pdus

    def send(self, data: bytes) -> None:
        """Send all of ``data`` (the socket is non-blocking)."""
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                sent += self.sock.send(view[sent:])
            except _WOULD_BLOCK:
                self._wait(select.POLLOUT)
            except InterruptedError:
                continue
            except OSError as exc:
                raise WireClosedError(str(exc)) from exc

    def _fill(self, need: int) -> None:
        """Make ``need`` (<= buffer size) bytes available from ``pos``."""
        have = self.end - self.pos
        if have >= need:
            return
        if self.pos + need > len(self.buf):
            self.buf[:have] = bytes(self.view[self.pos : self.end])
            self.pos, self.end = 0, have
        while self.end - self.pos < need:
            self.end += self._recv(self.view[self.end :])

    def copy_into(self, target: bytearray, count: int) -> None:
        """Append the next ``count`` bytes of the stream to ``target``."""
        while count:
            if self.pos == self.end:
                self.pos = self.end = 0
                self.end = self._recv(self.view)
            take = min(count, self.end - self.pos)
            target += self.view[self.pos : self.pos + take]
            self.pos += take
            count -= take

    # PDUs and PDVs ------------------------------------------------------------------------

    def pdu_header(self) -> tuple[int, int]:
        """(type, length) of the next PDU."""
        self._fill(6)
        kind, length = PDU_HEAD.unpack_from(self.buf, self.pos)
        self.pos += 6
        return int(kind), int(length)

    def read_small(self, length: int) -> bytes:
        """The body of a small PDU (A-ABORT, A-RELEASE-RQ)."""
        if length > _SMALL_PDU:
            raise ProtocolError(f"a {length}-byte non-data PDU")
        body = bytearray()
        self.copy_into(body, length)
        return bytes(body)

    def next_pdv(self) -> tuple[int, int, int]:
        """(context ID, message control header, data length) of the next PDV.

        Raises :class:`PeerPduError` for a PDU other than P-DATA-TF; the PDV's data is
        read next with :meth:`copy_into`."""
        while self.pdu_left == 0:
            if self.check is not None:  # between PDUs: an abort from elsewhere ends us
                self.check()
            kind, length = self.pdu_header()
            if kind == P_DATA_TF:
                self.pdu_left = length
                continue
            raise PeerPduError(kind, PDU_HEAD.pack(kind, length) + self.read_small(length))
        if self.pdu_left < 6:
            raise ProtocolError("P-DATA-TF: truncated PDV item")
        self._fill(6)
        item, context_id, control = PDV_HEAD.unpack_from(self.buf, self.pos)
        self.pos += 6
        if item < 2 or item - 2 > self.pdu_left - 6:
            raise ProtocolError("P-DATA-TF: PDV item length beyond its PDU")
        self.pdu_left -= 4 + item
        return int(context_id), int(control), int(item - 2)

    def next_message(self) -> tuple[int, dict[int, bytes], bytearray | None]:
        """(context ID, command set, dataset or None) of the next DIMSE message.

        Command fragments are joined and parsed once the last one arrived; dataset
        fragments are appended to one ``bytearray`` straight from the read buffer."""
        raw = bytearray()
        command: dict[int, bytes] | None = None
        data: bytearray | None = None
        context: int | None = None
        while True:
            context_id, control, length = self.next_pdv()
            if context is None:
                context = context_id
            elif context_id != context:
                raise ProtocolError("fragments of one message on different contexts")
            if control & 0x01:
                if command is not None:
                    raise ProtocolError("a command fragment after the command set ended")
                self.copy_into(raw, length)
                if control & 0x02:
                    self.last_command = raw
                    command = parse_command(raw)
                    if command_us(command, 0x0800) == NO_DATASET:
                        return context, command, None
                    data = bytearray()
            else:
                if data is None:
                    raise ProtocolError("a dataset fragment before its command set")
                self.copy_into(data, length)
                if control & 0x02:
                    assert command is not None
                    return context, command, data


class PeerPduError(Exception):
    """The peer sent a PDU other than P-DATA-TF (``kind``, whole ``pdu`` bytes)."""

    def __init__(self, kind: int, pdu: bytes) -> None:
        super().__init__(f"PDU type 0x{kind:02X}")
        self.kind = kind
        self.pdu = pdu


def _drain(fd: int | None) -> None:
    if fd is None:
        return
    try:
        while True:
            if not os.read(fd, 64):
                return
    except BlockingIOError:
        return
