"""Retries of transient failures: the policy, and a real Orthanc restarted mid-batch, mid-pull.

The restarts are triggered from inside the operation (after the k-th C-FIND
answer, after k received instances), so where they land does not depend on
timing; the module runs its own Orthanc so the shared session peers are never
restarted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import clarinet_nb as cnb
from clarinet_nb.dicom.retry import (
    MAX_RETRIES,
    RetryPolicy,
    attempts_of,
    call_with_retries,
    is_transient,
)
from clarinet_nb.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    DicomError,
    DicomTimeoutError,
    InvalidInputError,
    MoveDestinationUnknownError,
    NotFoundError,
    PartialRetrieveError,
    PeerUnreachableError,
    QueryError,
)
from clarinet_nb.settings import Settings
from clarinet_nb.testing import Cohort, OrthancServer, free_port, generate_bulk
from tests.support import TEST_TIMEOUTS

AET = "CLARINET"
FAST = RetryPolicy(retries=10, base=0.05, cap=1.0)  # small pauses, long enough to outlast a restart
RESTART_TIMEOUT = 60.0  # a restarted Orthanc answers C-ECHO well within this


# -- the policy (pure logic) ---------------------------------------------------------------


def _result() -> cnb.RetrieveResult:
    return cnb.RetrieveResult(
        method="get", level=cnb.QueryLevel.STUDY, peer="X@127.0.0.1:1", status="partial"
    )


def _broken(cause: Exception) -> PartialRetrieveError:
    try:
        raise PartialRetrieveError("GET broke off", result=_result()) from cause
    except PartialRetrieveError as exc:
        return exc


class LocalStorageError(DicomError):
    """Stands for the class helper 'faults' defines: matched by name."""


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (PeerUnreachableError("could not connect: connection refused"), True),
        (AssociationAbortedError("aborted while waiting for a C-FIND response"), True),
        (AssociationRejectedError("rejected", result=2, source=1, reason=1), True),
        (AssociationRejectedError("congested", result=1, source=3, reason=1), True),
        (AssociationRejectedError("limit reached", result=1, source=3, reason=2), True),
        (AssociationRejectedError("calling AE unknown", result=1, source=1, reason=3), False),
        (AssociationRejectedError("called AE unknown", result=1, source=1, reason=7), False),
        (AssociationRejectedError("no C-FIND service"), False),
        (DicomTimeoutError("could not connect to X within 5 s"), True),
        (DicomTimeoutError("X sent no C-FIND response within 30 s (dimse_timeout)"), False),
        (DicomTimeoutError("X did not answer the association request within 10 s"), False),
        (ConnectionResetError(104, "reset"), True),
        (_broken(AssociationAbortedError("dropped")), True),
        (_broken(PeerUnreachableError("refused")), True),
        (PartialRetrieveError("0xA702", result=_result()), False),
        (NotFoundError("nothing", result=_result()), False),
        (MoveDestinationUnknownError("unknown", result=_result()), False),
        (QueryError("0xC000", status=0xC000), False),
        (InvalidInputError("bad criteria"), False),
        (LocalStorageError("disk full"), False),
        (OSError(28, "No space left on device"), False),
        (asyncio.CancelledError(), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_which_errors_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_an_unknown_host_is_permanent_a_slow_dns_is_not() -> None:
    import socket

    for code, transient in ((socket.EAI_NONAME, False), (socket.EAI_AGAIN, True)):
        try:
            try:
                raise socket.gaierror(code, "name resolution")
            except socket.gaierror as exc:
                raise PeerUnreachableError("could not resolve the host") from exc
        except PeerUnreachableError as exc:
            assert is_transient(exc) is transient


@given(
    retries=st.integers(0, MAX_RETRIES),
    base=st.floats(0.001, 5),
    factor=st.floats(1, 4),
    cap_extra=st.floats(0, 30),
    jitter=st.floats(0, 1),
)
def test_backoff_is_exponential_capped_and_bounded(
    retries: int, base: float, factor: float, cap_extra: float, jitter: float
) -> None:
    policy = RetryPolicy(retries=retries, base=base, factor=factor, cap=base + cap_extra,
                         jitter=jitter)  # fmt: skip
    total = 0.0
    for n in range(1, retries + 1):
        nominal = policy.nominal(n)
        assert nominal == pytest.approx(min(policy.cap, base * factor ** (n - 1)))
        assert n == 1 or nominal >= policy.nominal(n - 1)
        pause = policy.delay(n)
        assert nominal * (1 - jitter) - 1e-9 <= pause <= nominal + 1e-9
        total += pause
    assert total <= policy.max_wait + 1e-6
    assert policy.max_wait <= retries * policy.cap * (1 + 1e-9)


def test_defaults_are_documented() -> None:
    policy = RetryPolicy()
    assert (policy.retries, policy.base, policy.cap) == (3, 0.5, 8.0)
    assert [policy.nominal(n) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1, 2, 4, 8, 8]
    assert policy.max_wait == 3.5
    assert RetryPolicy(retries=MAX_RETRIES).max_wait == 55.5
    assert Settings().retries == 3


@pytest.mark.parametrize("bad", [-1, 11, True, 2.5, "3"])
def test_retries_out_of_range_are_refused_up_front(bad: Any) -> None:
    with pytest.raises(InvalidInputError):
        RetryPolicy(retries=bad)
    with pytest.raises(InvalidInputError):
        cnb.connect("PACS@127.0.0.1:104", retries=bad)


def test_retries_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARINET_RETRIES", "0")
    assert Settings().retries == 0
    assert cnb.DicomClient(config=Settings()).retries == 0
    monkeypatch.setenv("CLARINET_RETRIES", "11")
    with pytest.raises(ValueError, match="retries"):
        Settings()


async def test_transient_failures_are_retried_then_given_up() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise PeerUnreachableError("connection refused")

    with pytest.raises(PeerUnreachableError) as info:
        await call_with_retries(refused, RetryPolicy(retries=2, base=0.001), "C-FIND")
    assert calls == 3 and attempts_of(info.value) == 3

    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise AssociationAbortedError("dropped")
        return "ok"

    assert await call_with_retries(flaky, RetryPolicy(retries=5, base=0.001), "C-FIND") == ("ok", 3)


async def test_permanent_failures_and_retries_zero_are_not_retried() -> None:
    calls = 0

    async def rejected() -> None:
        nonlocal calls
        calls += 1
        raise AssociationRejectedError("calling AE unknown", result=1, source=1, reason=3)

    with pytest.raises(AssociationRejectedError) as info:
        await call_with_retries(rejected, RetryPolicy(retries=5, base=0.001), "C-FIND")
    assert calls == 1 and attempts_of(info.value) == 1

    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise PeerUnreachableError("connection refused")

    with pytest.raises(PeerUnreachableError):
        await call_with_retries(refused, RetryPolicy(retries=0), "C-FIND")
    assert calls == 1


async def test_an_interrupt_is_not_retried_and_ends_a_pause_at_once() -> None:
    calls = 0
    failed = asyncio.Event()

    async def refused() -> None:
        nonlocal calls
        calls += 1
        failed.set()
        raise PeerUnreachableError("connection refused")

    # a pause of an hour: only a prompt cancellation lets this test end
    slow = RetryPolicy(retries=3, base=3600, cap=3600, jitter=0)
    task = asyncio.ensure_future(call_with_retries(refused, slow, "C-FIND"))
    await failed.wait()
    await asyncio.sleep(0)  # let the task reach its pause
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=30)
    assert calls == 1

    async def interrupted() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    calls = 0
    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(interrupted, RetryPolicy(retries=5, base=0.001), "C-FIND")
    assert calls == 1


# -- against a real Orthanc ----------------------------------------------------------------


class Rig:
    """This module's own Orthanc (restarted by the tests) and what it holds."""

    def __init__(self, server: OrthancServer, cohort: Cohort, bulk: Cohort, scp_port: int):
        self.server, self.cohort, self.bulk, self.scp_port = server, cohort, bulk, scp_port

    def pacs(self, retries: int | RetryPolicy = FAST, **kw: Any) -> cnb.Pacs:
        target = kw.pop("target", f"{self.server.aet}@{self.server.host}:{self.server.port}")
        return cnb.connect(
            target, scp_port=self.scp_port, timeouts=TEST_TIMEOUTS, retries=retries, **kw
        )


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, cohort: Cohort) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("retries")
    bulk = generate_bulk(root / "bulk", n_studies=50, per_study=1, patients=50, seed="retry")
    scp_port = free_port()
    server = OrthancServer(
        root / "orthanc",
        move_destinations={"clarinet": (AET, "127.0.0.1", scp_port)},
        loopback_clients=[AET],  # anyone else is rejected: a permanent error
        check_called_aet=True,
    )
    with server:
        paths = [*cohort.paths(), *bulk.paths()]
        assert server.load(paths) == len(paths)
        yield Rig(server, cohort, bulk, scp_port)


def _wait_restarted(restarts: list[Future[None]], server: OrthancServer) -> None:
    assert restarts, "the restart was never triggered"
    restarts[0].result(timeout=RESTART_TIMEOUT)
    assert server.running


def test_orthanc_restarted_in_the_middle_of_a_50_row_batch(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    patients = rig.bulk.patients()
    assert len(patients) == 50
    expected = {(i.patient_id, i.study_uid) for i in rig.bulk.instances}
    pacs = rig.pacs()
    original = pacs.client.find
    state = {"answers": 0, "calls": 0, "refused": 0}
    stopped = threading.Event()
    restarts: list[Future[None]] = []

    async def find(query: Any, *, peer: cnb.DicomNode, cancel: Any = None, **kw: Any) -> Any:
        state["calls"] += 1
        try:
            outcome = await original(query, peer=peer, cancel=cancel, **kw)
        except PeerUnreachableError:
            state["refused"] += 1
            if stopped.is_set() and not restarts:
                restarts.append(rig.server.start_in_background())  # it comes back meanwhile
            raise
        state["answers"] += 1
        if state["answers"] == 20:
            rig.server.stop()  # every later row meets a closed port first
            stopped.set()
        return outcome

    monkeypatch.setattr(pacs.client, "find", find)
    try:
        frame = pacs.find_studies(pd.DataFrame({"PatientID": patients}), progress=False)
    finally:
        pacs.close()
    _wait_restarted(restarts, rig.server)
    assert frame.attrs["failures"] == []
    assert len(frame) == 50
    assert set(zip(frame["PatientID"], frame["StudyInstanceUID"], strict=True)) == expected
    assert state["refused"] >= 1
    assert frame.attrs["attempts"] == state["calls"] > 50  # every query issued, retries too


class RestartAfter:
    """A progress sink that kills the PACS after ``n`` instances and starts it again."""

    def __init__(self, server: OrthancServer, n: int) -> None:
        self.server, self.n, self.count = server, n, 0
        self.total: float | None = None
        self.restarts: list[Future[None]] = []
        self.lock = threading.Lock()

    def update(self, n: float = 1) -> None:
        with self.lock:
            self.count += int(n)
            if self.count >= self.n and not self.restarts:
                self.restarts.append(self.server.restart_in_background(kill=True))


@pytest.mark.parametrize("method", ["get", "move"])
def test_orthanc_restarted_in_the_middle_of_a_pull_to_disk(
    rig: Rig, tmp_path: Path, method: str
) -> None:
    pacs = rig.pacs(max_associations=2)
    try:
        studies = pacs.find_studies(PatientID="CLN-*")
        assert len(studies) == 6
        trigger = RestartAfter(rig.server, 8)
        manifest = pacs.get(studies, output_dir=tmp_path, method=method, progress=trigger)
    finally:
        pacs.close()
    _wait_restarted(trigger.restarts, rig.server)
    assert isinstance(manifest, pd.DataFrame)
    expected = {i.sop_uid for i in rig.cohort.instances}
    assert manifest.attrs["failures"] == []
    assert len(manifest) == len(expected)
    assert set(manifest["SOPInstanceUID"]) == expected
    assert set(manifest["status"]) == {"retrieved"}
    assert sorted(p.stem for p in tmp_path.rglob("*.dcm")) == sorted(expected)
    assert manifest["attempts"].max() > 1  # the units the restart cut were retried
    assert manifest["attempts"].min() >= 1
    stored = pd.read_parquet(tmp_path / "manifest.parquet")
    assert set(stored["attempts"]) == set(manifest["attempts"])


def test_orthanc_restarted_in_the_middle_of_a_pull_to_memory(rig: Rig) -> None:
    pacs = rig.pacs(max_associations=2)
    try:
        studies = pacs.find_studies(PatientID="CLN-*")
        trigger = RestartAfter(rig.server, 8)
        datasets = pacs.get(studies, progress=trigger)
    finally:
        pacs.close()
    _wait_restarted(trigger.restarts, rig.server)
    assert isinstance(datasets, cnb.DatasetList)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    assert len(uids) == len(set(uids))  # a retry asked only for what had not arrived
    assert set(uids) == {i.sop_uid for i in rig.cohort.instances}
    assert datasets.failures == []
    assert all(r.ok for r in datasets.results), [r.summary() for r in datasets.results]
    assert any(r.attempts > 1 for r in datasets.results)
    assert sum(r.received for r in datasets.results) == len(uids)


def test_an_unknown_calling_ae_title_is_not_retried(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    pacs = rig.pacs(calling_aet="STRANGER")
    calls = _count_finds(pacs, monkeypatch)
    try:
        with pytest.raises(cnb.AssociationRejectedError) as info:
            pacs.find_studies(PatientID="CLN-*")
    finally:
        pacs.close()
    assert attempts_of(info.value) == 1 and calls == [1]


def test_a_wrong_called_ae_title_is_not_retried_in_a_batch(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    pacs = rig.pacs(target=f"NOT_ORTHANC@{rig.server.host}:{rig.server.port}")
    calls = _count_finds(pacs, monkeypatch)
    frame = pd.DataFrame({"PatientID": ["CLN-0001", "CLN-0002"]})
    try:
        with pytest.raises(cnb.AssociationRejectedError) as info:
            pacs.find_studies(frame, progress=False)  # every row failed: the first error
    finally:
        pacs.close()
    assert attempts_of(info.value) == 1 and calls == [2]


def test_retries_zero_disables_retrying_and_a_closed_port_is_retried_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = f"NOBODY@127.0.0.1:{free_port()}"
    for retries, attempts in ((0, 1), (RetryPolicy(retries=2, base=0.01), 3)):
        pacs = cnb.connect(closed, timeouts=TEST_TIMEOUTS, retries=retries)
        calls = _count_finds(pacs, monkeypatch)
        try:
            with pytest.raises(cnb.PeerUnreachableError) as info:
                pacs.find_studies(PatientID="CLN-*")
        finally:
            pacs.close()
        assert attempts_of(info.value) == attempts and calls == [attempts]


def test_rows_that_outlast_the_retries_fail_with_their_attempts(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orthanc stopped for good after 2 answers: the later rows fail after 1 + 2 attempts."""
    pacs = rig.pacs(retries=RetryPolicy(retries=2, base=0.01), max_associations=1)
    original = pacs.client.find
    answers = [0]

    async def find(query: Any, *, peer: cnb.DicomNode, cancel: Any = None, **kw: Any) -> Any:
        outcome = await original(query, peer=peer, cancel=cancel, **kw)
        answers[0] += 1
        if answers[0] == 2:
            rig.server.stop()
        return outcome

    monkeypatch.setattr(pacs.client, "find", find)
    patients = rig.bulk.patients()[:5]
    try:
        with pytest.warns(cnb.ClarinetWarning, match="3 of 5 queries failed"):
            frame = pacs.find_studies(pd.DataFrame({"PatientID": patients}), progress=False)
    finally:
        pacs.close()
        rig.server.start()
    assert list(frame["PatientID"]) == patients[:2]
    failures = frame.attrs["failures"]
    assert [f["error"] for f in failures] == ["PeerUnreachableError"] * 3
    assert [f["attempts"] for f in failures] == [3, 3, 3]
    assert frame.attrs["attempts"] == 2 + 9


def _count_finds(pacs: cnb.Pacs, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = pacs.client.find

    async def find(query: Any, *, peer: cnb.DicomNode, cancel: Any = None, **kw: Any) -> Any:
        calls[0] += 1
        return await original(query, peer=peer, cancel=cancel, **kw)

    monkeypatch.setattr(pacs.client, "find", find)
    return calls


def test_pre_queries_are_retried_while_the_pacs_comes_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    pacs = rig.pacs(max_associations=1)
    studies = pacs.find_studies(PatientID="CLN-*").head(2)
    original = pacs.client.plan
    calls = [0]
    restarts: list[Future[None]] = []

    async def plan(request: Any, *, peer: cnb.DicomNode, cancel: Any = None, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            rig.server.stop()  # down when the first pre-query is sent
        try:
            return await original(request, peer=peer, cancel=cancel, **kw)
        except PeerUnreachableError:
            if not restarts:
                restarts.append(rig.server.start_in_background())
            raise

    monkeypatch.setattr(pacs.client, "plan", plan)
    try:
        datasets = pacs.get(studies, progress=False)
    finally:
        pacs.close()
    _wait_restarted(restarts, rig.server)
    expected = {i.sop_uid for s in studies["StudyInstanceUID"] for i in rig.cohort.instances_in(s)}
    assert isinstance(datasets, cnb.DatasetList)
    assert {str(ds.SOPInstanceUID) for ds in datasets} == expected
    assert datasets.failures == []
    assert calls[0] > 2  # the first pre-query was sent again


class _RetryLogged(logging.Handler):
    """Sets an event when clarinet_nb logs that it pauses before a retry."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self.loop, self.event = loop, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "transient, retry" in record.getMessage():
            self.loop.call_soon_threadsafe(self.event.set)


async def test_an_interrupt_during_a_retry_pause_ends_the_pull_at_once(
    rig: Rig, tmp_path: Path
) -> None:
    """The PACS dies mid-pull and stays down; the pull pausing an hour is interrupted."""
    patient = rig.pacs()
    studies = await patient.afind_studies(PatientID="CLN-*")
    patient.close()
    hour = RetryPolicy(retries=5, base=3600, cap=3600, jitter=0)
    pacs = rig.pacs(retries=hour, max_associations=1)
    handler = _RetryLogged(asyncio.get_running_loop())
    logger = logging.getLogger("clarinet_nb")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)

    class KillAfter:
        total: float | None = None
        count = 0

        def update(self, n: float = 1) -> None:
            self.count += int(n)
            if self.count == 3:
                rig.server.kill()

    try:
        task = asyncio.ensure_future(pacs.aget(studies, output_dir=tmp_path, progress=KillAfter()))
        await asyncio.wait_for(handler.event.wait(), timeout=60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError), warnings.catch_warnings():
            warnings.simplefilter("ignore", cnb.ClarinetWarning)
            await asyncio.wait_for(task, timeout=30)  # not an hour
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        pacs.close()
        if not rig.server.running:
            rig.server.start()
    manifest = pacs.interrupted
    assert isinstance(manifest, pd.DataFrame)
    retrieved = set(manifest[manifest["status"] == "retrieved"]["SOPInstanceUID"])
    assert len(retrieved) >= 3
    assert retrieved == {p.stem for p in tmp_path.rglob("*.dcm")}
    assert len(retrieved) < len(manifest)
    assert set(manifest["status"]) == {"retrieved", "missing"}
