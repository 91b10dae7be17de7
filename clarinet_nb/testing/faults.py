"""Fault injection for tests: a loopback TCP proxy that cuts or stalls on command, and
freezing/killing a peer process with a guaranteed resume.

:class:`FaultProxy` sits between a client and a REAL peer and forwards bytes both
ways unchanged; it is a fault injector, not a fake PACS.  On command, or when a
:class:`Trigger` is reached (after N bytes, or at a byte offset inside the n-th
PDU of a type, so that a connection can be cut mid-PDU), it

- ``"cut"``s the connection: both sides get a TCP RST (``SO_LINGER`` 0), or
- ``"stall"``s it: nothing more is forwarded either way, the sockets stay open, or
- calls a function (freeze or kill the peer at an exact point of the exchange).

:class:`PeerFreezer` SIGSTOPs / SIGCONTs / SIGKILLs a peer process and always
resumes a frozen peer when closed, so that nothing is left stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, Self

__all__ = ["Action", "FaultProxy", "PeerFreezer", "Trigger", "frozen", "rst_close"]

LOGGER = logging.getLogger(__name__)

Direction = Literal["from_peer", "from_client"]
Action = Literal["cut", "stall"] | Callable[[], object]

#: PDU types (PS3.8 9.3): A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, A-RELEASE-RQ/RP, A-ABORT
ASSOCIATE_RQ, ASSOCIATE_AC, P_DATA_TF = 0x01, 0x02, 0x04
_HEADER = 6
_LOOPBACK = "127.0.0.1"


def rst_close(sock: socket.socket) -> None:
    """Close ``sock`` so that the other end gets a TCP RST, not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class Trigger:
    """Where, in one direction of a proxied connection, an action happens.

    Either ``after_bytes`` (exactly that many bytes of the direction are forwarded
    first) or ``pdu_number`` (the n-th PDU, 1-based, of ``pdu_type`` in that
    direction) with ``offset`` bytes of it forwarded first: ``offset=0`` acts just
    before the PDU, ``offset=10`` cuts inside it (after the 6-byte header and 4
    bytes of the body).  ``connection`` is the index of the proxied connection
    (0 = the first accepted after the proxy started); None matches any.  A
    trigger fires once; ``fired`` is set when it fires (after a callback ran, just
    before a reset).
    """

    action: Action
    direction: Direction = "from_peer"
    after_bytes: int | None = None
    pdu_number: int | None = None
    pdu_type: int = P_DATA_TF
    offset: int = 0
    connection: int | None = None
    fired: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if (self.after_bytes is None) == (self.pdu_number is None):
            raise ValueError("give after_bytes or pdu_number")
        if self.offset < 0 or (self.pdu_number is not None and self.pdu_number < 1):
            raise ValueError("pdu_number starts at 1 and offset is >= 0")


class _Stream:
    """One direction of a link: bytes forwarded so far and where its PDUs start."""

    def __init__(self) -> None:
        self.position = 0  # bytes of this direction seen (scanned) so far
        self.forwarded = 0
        self._header = bytearray()
        self._body_left = 0
        self.pdu_counts: dict[int, int] = {}

    def scan(self, data: bytes) -> list[tuple[int, int, int]]:
        """Advance over ``data``; the (stream position, type, number) of each PDU starting in it."""
        starts: list[tuple[int, int, int]] = []
        i = 0
        while i < len(data):
            if self._body_left:
                take = min(self._body_left, len(data) - i)
                self._body_left -= take
                i += take
                continue
            if not self._header:
                kind = data[i]
                self.pdu_counts[kind] = self.pdu_counts.get(kind, 0) + 1
                starts.append((self.position + i, kind, self.pdu_counts[kind]))
            take = min(_HEADER - len(self._header), len(data) - i)
            self._header += data[i : i + take]
            i += take
            if len(self._header) == _HEADER:
                self._body_left = int.from_bytes(self._header[2:6], "big")
                self._header.clear()
        self.position += len(data)
        return starts


class _Link(threading.Thread):
    """One proxied connection: a single thread selects on both sockets and a wake-up pair."""

    def __init__(self, proxy: FaultProxy, index: int, client: socket.socket) -> None:
        super().__init__(name=f"fault-proxy-{index}", daemon=True)
        self.proxy = proxy
        self.index = index
        self.client = client
        self.upstream: socket.socket | None = None
        self.streams: dict[Direction, _Stream] = {"from_peer": _Stream(), "from_client": _Stream()}
        self.stalled = False
        self.ended = threading.Event()
        self._commands: list[str] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        # a trigger found in this direction but not reached yet: (absolute position, trigger)
        self._pending: dict[Direction, list[tuple[int, Trigger]]] = {
            "from_peer": [],
            "from_client": [],
        }

    # commands from other threads ---------------------------------------------------------
    def command(self, what: str) -> None:
        with self._lock:
            self._commands.append(what)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # the link thread -------------------------------------------------------------------
    def run(self) -> None:
        try:
            try:
                self.upstream = socket.create_connection(self.proxy.upstream, timeout=10)
            except OSError as exc:
                LOGGER.debug("fault proxy: upstream connect failed: %s", exc)
                rst_close(self.client)
                return
            self.upstream.settimeout(None)
            self._loop()
        finally:
            self._finish()

    def _loop(self) -> None:
        assert self.upstream is not None
        ends: dict[Direction, tuple[socket.socket, socket.socket]] = {
            "from_client": (self.client, self.upstream),
            "from_peer": (self.upstream, self.client),
        }
        while True:
            watch = [self._wake_r] if self.stalled else [self._wake_r, self.client, self.upstream]
            readable, _, _ = select.select(watch, [], [])
            if self._wake_r in readable:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
                with self._lock:
                    commands, self._commands = self._commands, []
                for what in commands:
                    if what in ("cut", "close"):
                        self._cut()
                        return
                    if what == "stall":
                        self.stalled = True
                continue
            for direction, (src, dst) in ends.items():
                if src not in readable or self.stalled:
                    continue
                try:
                    data = src.recv(65536)
                except OSError:  # reset by that side: pass the reset on
                    self._cut()
                    return
                if not data:  # orderly close by that side: pass it on
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    if direction == "from_peer":
                        self._cut_after_eof()
                        return
                    continue
                if not self._forward(direction, data, dst):
                    return

    def _forward(self, direction: Direction, data: bytes, dst: socket.socket) -> bool:
        """Forward ``data``, running triggers at their exact positions; False when cut."""
        stream = self.streams[direction]
        base = stream.position
        pending = self._pending[direction]
        for trig in self.proxy.triggers_for(self.index, direction):
            if trig.after_bytes is not None and all(t is not trig for _, t in pending):
                pending.append((trig.after_bytes, trig))
        for start, kind, number in stream.scan(data):
            for trig in self.proxy.triggers_for(self.index, direction):
                wanted = trig.pdu_number == number and trig.pdu_type == kind
                if wanted and all(t is not trig for _, t in pending):
                    pending.append((start + trig.offset, trig))
        sent = 0
        pending.sort(key=lambda item: item[0])
        while pending and pending[0][0] <= base + len(data):
            at, trig = pending.pop(0)
            cut_at = max(at - base, sent)
            if not self._send(dst, data[sent:cut_at], stream):
                return False
            sent = cut_at
            if not self.proxy.claim(trig):
                continue
            LOGGER.info(
                "fault proxy: %s on connection %d after %d bytes %s",
                trig.action if isinstance(trig.action, str) else "callback",
                self.index,
                stream.forwarded,
                direction.replace("_", " "),
            )
            if trig.action == "cut":
                trig.fired.set()  # before the reset: whoever sees the reset sees it fired
                self._cut()
                return False
            if trig.action == "stall":
                self.stalled = True
                trig.fired.set()
                return True  # the rest of this chunk is never forwarded
            assert callable(trig.action)
            trig.action()
            trig.fired.set()
        return self._send(dst, data[sent:], stream)

    def _send(self, dst: socket.socket, data: bytes, stream: _Stream) -> bool:
        if not data:
            return True
        try:
            dst.sendall(data)
        except OSError:
            self._cut()
            return False
        stream.forwarded += len(data)
        return True

    def _cut(self) -> None:
        rst_close(self.client)
        if self.upstream is not None:
            rst_close(self.upstream)

    def _cut_after_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.client.close()
        if self.upstream is not None:
            with contextlib.suppress(OSError):
                self.upstream.close()

    def _finish(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()
        self.ended.set()


class FaultProxy:
    """A loopback TCP proxy to ``upstream`` (host, port) that cuts or stalls on command.

    Use as a context manager; connect clients to ``proxy.host:proxy.port`` (``port``:
    a free one by default, or the one a peer was configured to call).
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((_LOOPBACK, port))
        self._listener.listen(16)
        self.host = _LOOPBACK
        self.port: int = self._listener.getsockname()[1]
        self.links: list[_Link] = []
        self._triggers: list[Trigger] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._acceptor.start()

    # -- triggers and commands ------------------------------------------------------------
    def arm(self, action: Action, **where: object) -> Trigger:
        """Add a :class:`Trigger` (keywords as its fields) and return it."""
        trigger = Trigger(action, **where)  # type: ignore[arg-type]
        with self._lock:
            self._triggers.append(trigger)
        return trigger

    def triggers_for(self, index: int, direction: Direction) -> list[Trigger]:
        with self._lock:
            return [
                t
                for t in self._triggers
                if t.direction == direction
                and t.connection in (None, index)
                and not t.fired.is_set()
            ]

    def claim(self, trigger: Trigger) -> bool:
        """Take a trigger for one link (a trigger matching any connection fires once)."""
        with self._lock:
            if trigger not in self._triggers:
                return False
            self._triggers.remove(trigger)
            return True

    def cut(self) -> None:
        """RST every open proxied connection now."""
        for link in list(self.links):
            link.command("cut")

    def stall(self) -> None:
        """Stop forwarding on every open proxied connection (they stay open)."""
        for link in list(self.links):
            link.command("stall")

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return len(self.links)

    def bytes_forwarded(self, direction: Direction = "from_peer") -> int:
        """Bytes forwarded in ``direction`` over all connections."""
        return sum(link.streams[direction].forwarded for link in self.links)

    # -- lifecycle -----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], 0.05)
                if not readable:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                link = _Link(self, len(self.links), client)
                self.links.append(link)
            link.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, reset every connection and wait for the threads to end."""
        self._closed.set()
        self._acceptor.join(timeout)
        with contextlib.suppress(OSError):
            self._listener.close()
        for link in list(self.links):
            link.command("close")
        for link in list(self.links):
            link.join(timeout)
            if link.is_alive():
                LOGGER.warning("fault proxy link %d did not end", link.index)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Process(Protocol):
    @property
    def pid(self) -> int | None: ...

    def kill(self) -> None: ...


class PeerFreezer:
    """Freeze (SIGSTOP), resume (SIGCONT) or kill (SIGKILL) a peer process on command.

    ``close()`` (or leaving the ``with`` block) resumes a peer left frozen, so
    that stopping it afterwards works and nothing stays stopped.
    """

    def __init__(self, peer: _Process) -> None:
        self.peer = peer
        self.frozen = False
        self.killed = False
        self.events: list[str] = []

    def _pid(self) -> int:
        pid = self.peer.pid
        if pid is None:
            raise RuntimeError("the peer is not running")
        return pid

    def freeze(self) -> None:
        """SIGSTOP the peer's process group."""
        os.killpg(self._pid(), signal.SIGSTOP)
        self.frozen = True
        self.events.append("freeze")

    def resume(self) -> None:
        """SIGCONT the peer's process group if it was frozen."""
        if self.frozen and self.peer.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.peer.pid, signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        """SIGKILL the peer (and reap it)."""
        # recorded first: the client may see the connection drop (and a test look at
        # ``events``) while the reaping below still waits for the port to close
        self.events.append("kill")
        self.killed = True
        self.peer.kill()
        self.frozen = False

    def action(self, what: Literal["freeze", "kill"]) -> Callable[[], None]:
        """``freeze`` or ``kill`` as a callable (for a trigger or a callback)."""
        return self.freeze if what == "freeze" else self.kill

    def close(self) -> None:
        self.resume()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def frozen(peer: _Process) -> Iterator[PeerFreezer]:
    """Freeze ``peer`` for the block; it is resumed however the block ends."""
    with PeerFreezer(peer) as freezer:
        freezer.freeze()
        yield freezer
