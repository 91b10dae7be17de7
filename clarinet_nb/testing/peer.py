"""The :class:`Peer` protocol and the process management shared by test peers.

A test peer is a real DICOM server (Orthanc, DCMTK dcmqrscp) run as a child
process in its own session, listening on a free port. Readiness is a real
C-ECHO polled against a deadline, never a sleep.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, Self, runtime_checkable

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from clarinet_nb.dicom.tls import TLSConfig, client_tls
from clarinet_nb.testing.loading import store_files

__all__ = ["Peer", "PeerProcess", "echo", "log_tail"]

LOGGER = logging.getLogger(__name__)

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_POLL_INTERVAL = 0.05

_live: set[PeerProcess] = set()  # running peers, killed at interpreter exit
# one long-lived thread for starts that must not block the caller (restart_in_background)
_launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peer-launcher")


@runtime_checkable
class Peer(Protocol):
    """What a test needs to know to talk to a running peer (read-only)."""

    @property
    def kind(self) -> str: ...  # "orthanc" or "dcmqrscp"

    @property
    def name(self) -> str: ...  # e.g. "orthanc-stock", "dcmqrscp-tuned"

    @property
    def aet(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def tuned(self) -> bool: ...


def echo(
    aet: str,
    host: str,
    port: int,
    *,
    calling_aet: str = "ECHOSCU",
    timeout: float = 5.0,
    tls: TLSConfig | None = None,
) -> bool:
    """Return True if a C-ECHO to ``aet`` at ``host:port`` succeeds (over TLS with ``tls``)."""
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    tls_args = client_tls(tls, host).tls_args if tls is not None else None
    assoc = ae.associate(host, port, ae_title=aet, tls_args=tls_args)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status.get("Status") == 0x0000)
    finally:
        if assoc.is_established:
            assoc.release()


def _listening(port: int) -> bool:
    """True once something listens on TCP ``port`` (IPv4 or IPv6, any address).

    Reads ``/proc/net/tcp*`` so that probing opens no connection (a bare
    connect-and-close makes DCMTK log a DUL state machine error); falls back
    to a TCP connect where ``/proc`` is not available.
    """
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return True
        except OSError:
            return False
    suffix = f":{port:04X}"
    for table in tables:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[1].endswith(suffix) and fields[3] == "0A":
                return True
    return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" if it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# Resolved in the parent: the child must not dlopen() between fork and exec.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Have Linux SIGTERM the peer when the thread that started it dies.

    A safety net against orphaned peers when the test process is killed; it
    also means a peer started from a short-lived thread ends with that thread.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class PeerProcess(ABC):
    """A DICOM server child process with start/stop/kill/restart and C-ECHO readiness."""

    kind: str = "peer"
    #: :meth:`load` restarts a stock peer tuned for at least this many files.
    FAST_LOAD_MIN_FILES: int = 100
    #: how the rig itself (readiness C-ECHO, :meth:`load`) reaches a DICOM TLS peer
    client_tls: TLSConfig | None = None

    def __init__(self, workdir: Path, *, aet: str, port: int, tuned: bool) -> None:
        self._workdir = Path(workdir)
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._aet = aet
        self._port = port
        self._tuned = tuned
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        return f"{self.kind}-{'tuned' if self._tuned else 'stock'}"

    @property
    def aet(self) -> str:
        return self._aet

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def tuned(self) -> bool:
        return self._tuned

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    @abstractmethod
    def log_path(self) -> Path:
        """The peer's own log file."""

    @property
    def output_path(self) -> Path:
        """Where the child's stdout/stderr go."""
        return self._workdir / f"{self.kind}.out"

    # ------------------------------------------------------------- subclass hooks
    @abstractmethod
    def _write_config(self) -> None:
        """Write the peer's configuration files into the workdir."""

    @abstractmethod
    def _command(self) -> list[str]:
        """The command line that runs the peer."""

    # ------------------------------------------------------------- lifecycle
    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("TCP_NODELAY", None)
        if self._tuned:
            env["TCP_NODELAY"] = "1"
        return env

    def start(self) -> None:
        """Write the config, launch the peer and wait until it answers C-ECHO."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._write_config()
        begin = time.monotonic()
        self._output = open(self.output_path, "ab")  # noqa: SIM115 - closed in _reap
        self._proc = subprocess.Popen(
            self._command(),
            cwd=self._workdir,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl(2)
        )
        _live.add(self)
        try:
            self._wait_ready(begin + STARTUP_TIMEOUT)
        except BaseException:
            self.kill()
            raise
        self.startup_seconds = time.monotonic() - begin
        LOGGER.info(
            "%s (%s) ready on %s:%d in %.2f s",
            self.name, self._aet, HOST, self._port, self.startup_seconds,
        )  # fmt: skip

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(f"{self.name} exited with code {code} while starting"
                                   f"{self._logs()}")  # fmt: skip
            if _listening(self._port) and echo(self._aet, HOST, self._port, tls=self.client_tls):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not answer C-ECHO on {HOST}:{self._port} within "
                    f"{STARTUP_TIMEOUT:.0f} s{self._logs()}"
                )
            # Pause between probes; returns at once if the peer dies.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=_POLL_INTERVAL)

    def _logs(self) -> str:
        parts = []
        for path in dict.fromkeys((self.log_path, self.output_path)):
            tail = log_tail(path)
            if tail:
                parts.append(f"\n--- tail of {path} ---\n{tail}")
        return "".join(parts)

    def _signal_group(self, sig: int) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _reap(self) -> None:
        # Forked children (dcmqrscp --fork) share the process group: end them too.
        self._signal_group(signal.SIGKILL)
        # A killed child holds the inherited listening socket until the kernel has
        # torn it down: wait (bounded) until nothing listens on our port any more.
        deadline = time.monotonic() + STOP_TIMEOUT
        while _listening(self._port) and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL)
        if self._output is not None:
            self._output.close()
            self._output = None
        self._proc = None
        _live.discard(self)

    def stop(self) -> None:
        """Terminate the peer (SIGTERM), and SIGKILL it if it does not exit in time."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                LOGGER.warning("%s ignored SIGTERM for %.0f s: killing", self.name, STOP_TIMEOUT)
                self._signal_group(signal.SIGKILL)
                self._proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the peer at once (for crash tests); storage is left as it is."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._proc.wait()
        self._reap()

    def restart(self) -> None:
        """Stop and start again with the same ports, storage and configuration."""
        self.stop()
        self.start()

    def start_in_background(self) -> Future[None]:
        """:meth:`start` from the rig's launcher thread; the Future completes once it answers.

        The launcher thread lives as long as the process, so ``PR_SET_PDEATHSIG``
        (which follows the thread that started a peer) does not end the peer.
        """
        return _launcher.submit(self.start)

    def restart_in_background(self, *, kill: bool = False) -> Future[None]:
        """Stop now (SIGKILL with ``kill``) and :meth:`start_in_background` the same peer.

        Returns while the peer is down; it comes back with the same ports,
        storage and configuration.
        """
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start_in_background()

    def load(self, paths: Iterable[Path | str], *, fast: bool | None = None) -> int:
        """C-STORE ``paths`` into the running peer; returns the number stored.

        A stock peer stalls ~45 ms per C-STORE (Nagle + delayed ACK). With
        ``fast`` a stock peer is restarted tuned for the load, then restarted
        stock again (same ports, storage and configuration). ``None`` (default)
        does so for at least :attr:`FAST_LOAD_MIN_FILES` files, where the two
        restarts cost less than the stalls.
        """
        files = list(paths)
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        if fast is None:
            fast = len(files) >= self.FAST_LOAD_MIN_FILES
        if self._tuned or not fast:
            return store_files(self._aet, HOST, self._port, files, tls=self.client_tls)
        self.stop()
        self._tuned = True
        try:
            self.start()
            return store_files(self._aet, HOST, self._port, files, tls=self.client_tls)
        finally:
            self.stop()
            self._tuned = False
            self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.name} {self._aet}@{HOST}:{self._port} {state}>"


@atexit.register
def _stop_all() -> None:
    for peer in list(_live):
        peer.kill()
