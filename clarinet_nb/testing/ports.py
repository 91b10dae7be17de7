"""Free TCP port selection for test peers (loopback only)."""

from __future__ import annotations

import socket
import threading

__all__ = ["free_port"]

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """Return a TCP port that is currently free on 127.0.0.1.

    The port is found by binding to port 0 and reading what the kernel chose,
    then closing the socket. A port is never handed out twice by one process,
    so two peers started in a row cannot be given the same number.
    """
    with _lock:
        for _ in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free TCP port on 127.0.0.1")
