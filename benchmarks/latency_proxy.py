"""A loopback TCP proxy that delays every chunk by a fixed time each way (a WAN link).

For benchmarks only (sch_netem is not always available): bytes are forwarded
unchanged and in order, ``delay`` seconds after they arrived, so each request/
response exchange costs at least two delays, as over a network with that one-way
latency.  The proxy re-arms TCP_QUICKACK before each read and sets TCP_NODELAY, so
it adds no delayed-ACK stall of its own.  Runs in a child process (no GIL sharing).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import socket
import threading
import time

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def writer() -> None:
        while True:
            due, data = chunks.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    while True:
        if _QUICKACK is not None:
            with contextlib.suppress(OSError):
                src.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        try:
            data = src.recv(262144)
        except OSError:
            data = b""
        chunks.put((time.monotonic() + delay, data))
        if not data:
            break
    thread.join()


def _serve(listener: socket.socket, upstream: tuple[str, int], delay: float) -> None:
    while True:
        client, _ = listener.accept()
        server = socket.create_connection(upstream)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def link(a: socket.socket = client, b: socket.socket = server) -> None:
            back = threading.Thread(target=_pump, args=(b, a, delay), daemon=True)
            back.start()
            _pump(a, b, delay)
            back.join()
            a.close()
            b.close()

        threading.Thread(target=link, daemon=True).start()


def start(upstream_port: int, delay: float) -> tuple[multiprocessing.Process, int]:
    """Start the proxy to 127.0.0.1:``upstream_port``; returns (process, its port)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    proc = multiprocessing.get_context("fork").Process(
        target=_serve, args=(listener, ("127.0.0.1", upstream_port), delay), daemon=True
    )
    proc.start()
    listener.close()
    return proc, port
