"""Nothing leaks: threads, file descriptors, sockets and the Storage SCP port.

1,000 C-FINDs and 50 pulls (C-GET and C-MOVE, to memory and to disk, some cancelled
mid-pull, some failing: a target the PACS does not hold, a closed port, a PACS that
rejects our AE title) run against real Orthanc peers through the notebook API.  Before
and after, we count our threads (``/proc/self/task`` and ``threading``), our file
descriptors and our sockets (``/proc/self/fd``, matched with ``/proc/self/net/tcp*``).

Accounting: one round of every kind of call runs first and its client is closed, so
that one-time resources made on first use (clarinet_nb's private event-loop thread,
pyarrow's and asyncio's pools) exist at the baseline.  While the client is open it may
hold at most ``max_associations`` worker threads more than the baseline; once it is
closed, exactly the baseline threads, file descriptors and sockets remain (no slack:
every socket and file we open per call has a bounded lifetime) and the SCP port is free.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import clarinet_nb as cnb
from clarinet_nb.errors import DicomError
from clarinet_nb.notebook.runner import run_sync
from clarinet_nb.testing import Cohort, OrthancServer, free_port
from tests.support import TEST_TIMEOUTS, port_is_free

pytestmark = pytest.mark.timeout(600)

QUERIES = 1000
PULLS = 50
MAX_ASSOCIATIONS = 4


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Snapshot:
    """Our process's threads, file descriptors and TCP sockets at one moment."""

    threads: frozenset[threading.Thread]
    os_threads: int
    fds: dict[int, str]
    tcp: dict[str, str]  # socket inode -> "local remote state" for our TCP sockets

    @property
    def sockets(self) -> set[str]:
        return {target for target in self.fds.values() if target.startswith("socket:")}

    def describe(self, baseline: Snapshot) -> str:
        threads = sorted(t.name for t in self.threads - baseline.threads)
        fds = sorted(t for t in self.fds.values() if t not in set(baseline.fds.values()))
        tcp = [v for k, v in self.tcp.items() if k not in baseline.tcp]
        return f"new threads {threads}, new fds {fds}, new TCP sockets {tcp}"


def _tcp_table() -> dict[str, str]:
    """inode -> "local remote state" of every TCP socket in our network namespace."""
    table = {}
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/self/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            table[fields[9]] = f"{fields[1]} {fields[2]} {fields[3]}"
    return table


def snapshot() -> Snapshot:
    fds = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            fds[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue  # the descriptor listdir itself used, already closed
    table = _tcp_table()
    ours = {t[len("socket:[") : -1] for t in fds.values() if t.startswith("socket:[")}
    return Snapshot(
        threads=frozenset(threading.enumerate()),
        os_threads=len(os.listdir("/proc/self/task")),
        fds=fds,
        tcp={inode: table[inode] for inode in ours if inode in table},
    )


def listening(port: int) -> bool:
    """True when any socket of this host listens on ``port`` (state 0A in /proc/net/tcp)."""
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/self/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def settle(baseline: Snapshot, limit: float = 30.0) -> Snapshot:
    """Join the threads started since the baseline (bounded), then measure again.

    Association threads end on their own after release; joining them is waiting on
    their end, not sleeping.
    """
    deadline = time.monotonic() + limit
    for thread in set(threading.enumerate()) - baseline.threads:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return snapshot()


class _FindCounter(logging.Handler):
    """Counts pynetdicom's "Sending Find Request" INFO records: C-FINDs really sent."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self._lock_count = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Sending Find Request"):
            with self._lock_count:
                self.count += 1


@contextmanager
def count_find_requests() -> Iterator[_FindCounter]:
    logger = logging.getLogger("pynetdicom")
    counter, level = _FindCounter(), logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)


# --------------------------------------------------------------------------- the work


@dataclass
class Tally:
    """What the calls did (so that the test proves they really ran)."""

    queries: int = 0
    rows: int = 0
    pulled: int = 0
    cancelled: int = 0
    failed: int = 0
    kinds: set[str] | None = None

    def __post_init__(self) -> None:
        self.kinds = set()


class _Canceller:
    """A progress sink that cancels the pull when its first instance arrives.

    The worker thread that reports the instance waits until the loop has run
    ``task.cancel()``, so the pull cannot finish first: the cancellation is mid-pull.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Future[Any] | None = None
        self.fired = threading.Event()
        self.total: int | None = None

    def update(self, n: float = 1) -> None:
        if self.task is None or self.fired.is_set():
            return
        task = self.task
        if _running_loop() is self.loop:
            task.cancel()
            self.fired.set()
            return
        self.loop.call_soon_threadsafe(task.cancel)
        self.loop.call_soon_threadsafe(self.fired.set)
        assert self.fired.wait(30), "the loop did not run the cancellation"

    def refresh(self) -> None:
        return None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _cancelled_pull(pacs: cnb.Pacs, frame: pd.DataFrame, **kw: Any) -> bool:
    """Pull and cancel when the first instance arrives; True if it was cancelled."""
    canceller = _Canceller(asyncio.get_running_loop())
    task = asyncio.ensure_future(pacs.aget(frame, progress=canceller, **kw))
    canceller.task = task
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


def _pull(pacs: cnb.Pacs, tally: Tally, kind: str, frame: pd.DataFrame, **kw: Any) -> None:
    """One pull of ``kind`` (ok / cancelled / failed), counted in ``tally``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ClarinetWarnings about failures and interrupts
        if kind == "cancelled":
            assert run_sync(_cancelled_pull(pacs, frame, **kw)), "the pull was not cancelled"
            tally.cancelled += 1
        elif kind == "failed":
            try:
                got = pacs.get(frame, progress=False, **kw)
            except DicomError:
                pass
            else:
                failures = got.failures if isinstance(got, list) else got.attrs["failures"]
                assert failures, f"a pull that must fail reported none: {pacs} {kw} {got!r}"
            tally.failed += 1
        else:
            got = pacs.get(frame, progress=False, **kw)
            count = len(got) if isinstance(got, list) else int(got["status"].ne("failed").sum())
            assert count > 0
            tally.pulled += count
    assert tally.kinds is not None
    tally.kinds.add(f"{kind}:{kw.get('method', 'get')}:{'disk' if 'output_dir' in kw else 'mem'}")


def queries(pacs: cnb.Pacs, cohort: Cohort, total: int, tally: Tally) -> None:
    """``total`` distinct C-FINDs: batches at three levels plus single calls."""
    patients = cohort.patients()
    studies = cohort.studies()
    batch = max(total // 4, 1)
    ids = patients + [f"ZZ-{n:05d}" for n in range(batch - len(patients))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = pacs.find_studies(pd.DataFrame({"PatientID": ids}), progress=False)
    assert set(found["StudyInstanceUID"]) == set(studies)
    found = pacs.find_patients(pd.DataFrame({"PatientID": ids}), progress=False)
    assert set(found["PatientID"]) == set(patients)
    uids = studies + [f"1.2.826.0.1.3680043.99.{n}" for n in range(batch - len(studies))]
    found = pacs.find_series(pd.DataFrame({"StudyInstanceUID": uids}), progress=False)
    assert set(found["SeriesInstanceUID"]) == set(cohort.series())
    singles = total - 3 * batch
    for n in range(singles):
        found = pacs.find_studies(PatientID=patients[n % len(patients)] if n % 2 else f"Q{n}")
        assert len(found) == (len(cohort.studies(patients[n % len(patients)])) if n % 2 else 0)
    tally.queries += 3 * batch + singles
    tally.rows += 3 * batch + singles


def pulls(
    pacs: cnb.Pacs,
    cohort: Cohort,
    total: int,
    tally: Tally,
    out: Path,
    unreachable: cnb.Pacs,
    rejecting: cnb.Pacs,
) -> None:
    """``total`` pulls mixing methods, memory/disk, cancelled and failed ones."""
    series = pacs.find_series(pacs.find_studies(PatientID="*"))
    biggest = series.sort_values("NumberOfSeriesRelatedInstances", ascending=False).head(1)
    unknown = pd.DataFrame({"StudyInstanceUID": ["1.2.826.0.1.3680043.99.404"]})
    plan: list[tuple[cnb.Pacs, str, pd.DataFrame, dict[str, Any]]] = []
    for n in range(total):
        method = "get" if n % 2 else "move"
        disk = {"output_dir": out / f"pull{n}"} if n % 3 == 0 else {}
        step = n % 10
        if step in (1, 6):
            plan.append((pacs, "cancelled", biggest, {"method": method, **disk}))
        elif step == 3:
            plan.append((pacs, "failed", unknown, {"method": method, **disk}))
        elif step == 5:
            plan.append((unreachable, "failed", biggest, {"method": method, **disk}))
        elif step == 8:
            plan.append((rejecting, "failed", biggest, {"method": method, **disk}))
        else:
            row = series.iloc[[n % len(series)]]
            plan.append((pacs, "ok", row, {"method": method, **disk}))
    for target, kind, frame, kw in plan:
        _pull(target, tally, kind, frame, **kw)


def connect(peer: Any, scp_port: int, **kw: Any) -> cnb.Pacs:
    if "retries" in inspect.signature(cnb.connect).parameters:
        kw["retries"] = 0  # a refused connection is retried with backoff otherwise: slow here
    return cnb.connect(
        f"{peer.aet}@{peer.host}:{peer.port}",
        scp_port=scp_port,
        timeouts=TEST_TIMEOUTS,
        max_associations=MAX_ASSOCIATIONS,
        **kw,
    )


@dataclass(frozen=True)
class _ClosedPort:
    aet: str = "NOBODY"
    host: str = "127.0.0.1"
    port: int = 0


@pytest.fixture(scope="module")
def rejecting_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc that admits only another AE title: it rejects our association."""
    server = OrthancServer(tmp_path_factory.mktemp("rejecting"), loopback_clients=["SOMEONE"])
    with server:
        yield server


def test_no_growth_after_1000_queries_and_50_pulls(
    orthanc_tuned: OrthancServer,
    rejecting_orthanc: OrthancServer,
    cohort: Cohort,
    move_scp_port: int,
    tmp_path: Path,
) -> None:
    closed = _ClosedPort(port=free_port())

    def session(nq: int, npulls: int, out: Path, during: Callable[[], None] | None) -> Tally:
        tally = Tally()
        pacs = connect(orthanc_tuned, move_scp_port)
        unreachable = connect(closed, move_scp_port)
        rejecting = connect(rejecting_orthanc, move_scp_port)
        try:
            queries(pacs, cohort, nq, tally)
            pulls(pacs, cohort, npulls, tally, out, unreachable, rejecting)
            if during is not None:
                during()
        finally:
            for p in (pacs, unreachable, rejecting):
                p.close()
        return tally

    # Warm-up: one round of every kind, so that one-time resources exist at the baseline.
    warm = session(8, 10, tmp_path / "warm", None)
    assert warm.cancelled and warm.failed and warm.pulled
    baseline = settle(snapshot())
    assert port_is_free(move_scp_port)

    def while_open() -> None:
        now = snapshot()
        extra = len(now.threads - baseline.threads)
        assert extra <= 3 * MAX_ASSOCIATIONS, now.describe(baseline)  # three open clients
        assert extra >= 1, "the open clients' worker threads are not seen: measuring is blind"
        assert now.os_threads <= baseline.os_threads + 3 * MAX_ASSOCIATIONS

    with count_find_requests() as sent:
        tally = session(QUERIES, PULLS, tmp_path / "run", while_open)
    assert tally.queries == QUERIES
    assert sent.count >= QUERIES, "fewer C-FIND requests went out than the test counts"
    assert tally.cancelled == 10 and tally.failed == 15
    assert tally.kinds is not None
    assert {"cancelled:get:mem", "cancelled:move:disk", "failed:move:mem", "ok:get:disk"} <= (
        tally.kinds
    )

    # No growth.  (A warm-up association thread may still have been ending at the
    # baseline: what the baseline had may be gone, nothing may be new.)
    after = settle(baseline)
    assert after.threads <= baseline.threads, after.describe(baseline)
    assert after.os_threads <= baseline.os_threads, after.describe(baseline)
    assert after.sockets <= baseline.sockets, after.describe(baseline)
    assert len(after.fds) <= len(baseline.fds), after.describe(baseline)
    assert port_is_free(move_scp_port)
    assert not listening(move_scp_port)
