"""Shared helpers and fixtures for the library's tests (imported by test modules)."""

from __future__ import annotations

import socket
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from clarinet_nb import DicomClient, DicomNode, Timeouts
from clarinet_nb.testing import Cohort, Peer


def node(peer: Peer) -> DicomNode:
    """The DicomNode of a test peer."""
    return DicomNode(aet=peer.aet, host=peer.host, port=peer.port)


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


TEST_TIMEOUTS = Timeouts(connect=5, acse=10, dimse=30, network=30, cancel=5)


@pytest_asyncio.fixture
async def client(move_scp_port: int) -> AsyncIterator[DicomClient]:
    """A client whose Storage SCP is the move destination the test peers know."""
    async with DicomClient(scp_port=move_scp_port, timeouts=TEST_TIMEOUTS) as c:
        yield c


def expected_files(cohort: Cohort, root: Path, study_uid: str | None = None) -> set[Path]:
    """Where DISK mode must write the cohort's instances (of one study)."""
    return {
        root / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm"
        for i in cohort.instances_in(study_uid)
    }


class ConnectionCounter:
    """A real TCP listener that counts connections (and never answers)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        """Stop accepting; connections still in the backlog are counted too."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.thread.join()
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                break
            self.accepted.append(conn)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_listener() -> Iterator[ConnectionCounter]:
    """A port that accepts TCP connections and never says a DICOM word."""
    listener = ConnectionCounter()
    yield listener
    listener.close()


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    """("ok", result) or ("error", exception type) of ``fn(*args)``, warnings silenced:
    two readers compared on hostile input must succeed alike or fail alike."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", fn(*args)
        except Exception as exc:  # noqa: BLE001 - both readers must fail alike
            return "error", type(exc)
