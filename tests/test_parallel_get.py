"""A C-GET split over several associations, against real Orthanc (stock, tuned) and dcmqrscp.

The peers here are our own (started for this module) and hold a study of 3 series
of 60 instances and a one-series study of 160.  The data path is real; only
``open_association`` / ``release`` / ``_send_listed`` of the operations module are
wrapped to count how many associations are open at once and which are inside a
C-GET request.  Which associations sent a C-CANCEL-RQ is read on the wire, by a
forwarding tap between client and peer (:class:`CancelTap`), so that the proof is
the same on the lean receive path (``settings.fast_path``, which sends its own
C-CANCEL) and on pynetdicom's.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

import clarinet_nb.dicom.operations as ops
from clarinet_nb import DicomClient, DicomNode, RetrieveStatus, StorageConfig, StorageMode
from clarinet_nb.dicom.cancel import CancelToken
from clarinet_nb.dicom.plan import PlannedInstance, RetrievePlan
from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.dicom.requests import RetrieveRequest, listed_sop_uids
from clarinet_nb.dicom.split import SplitProbe, WorkQueue, work_items
from clarinet_nb.dicom.wire import command_us, parse_command
from clarinet_nb.testing import DcmqrscpServer, OrthancServer, PeerProcess, generate_bulk
from tests.support import TEST_TIMEOUTS

pytestmark = pytest.mark.timeout(300)

SERIES, PER_SERIES, LONG = 3, 60, 160
KINDS = ("orthanc-stock", "orthanc-tuned", "dcmqrscp")


class Data:
    """The module's studies: UIDs and the instances of each."""

    def __init__(self, root: Path) -> None:
        multi = generate_bulk(root / "multi", n_studies=SERIES, per_study=PER_SERIES, seed="par")
        self.multi = multi.instances[0].study_uid
        self.paths = []
        self.sops: dict[str, set[str]] = {self.multi: set()}
        for inst in multi.instances:  # one study of SERIES series: rewrite the study UID
            ds = pydicom.dcmread(inst.path)
            ds.StudyInstanceUID = self.multi
            ds.save_as(inst.path)
            self.paths.append(inst.path)
            self.sops[self.multi].add(inst.sop_uid)
        long = generate_bulk(root / "long", n_studies=1, per_study=LONG, seed="parlong")
        self.long = long.instances[0].study_uid
        self.long_series = long.instances[0].series_uid
        self.sops[self.long] = {i.sop_uid for i in long.instances}
        self.paths += long.paths()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    return Data(tmp_path_factory.mktemp("parallel-data"))


@pytest.fixture(scope="module", params=KINDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: Data
) -> Iterator[PeerProcess]:
    workdir = tmp_path_factory.mktemp(request.param)
    peer: PeerProcess
    if request.param == "dcmqrscp":
        peer = DcmqrscpServer(workdir)
    else:
        peer = OrthancServer(workdir, tuned=request.param.endswith("tuned"))
    with peer:
        assert peer.load(data.paths) == len(data.paths)
        yield peer


def node(peer: PeerProcess) -> DicomNode:
    return DicomNode(aet=peer.aet, host=peer.host, port=peer.port)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
C_CANCEL_RQ = 0x0FFF
C_GET_RQ = 0x0010


class CancelTap:
    """A loopback forwarder in front of a real peer that reads the client's PDUs.

    Bytes go both ways unchanged (TCP_NODELAY, TCP_QUICKACK re-armed before each
    read, so that it adds no delayed-ACK stall); the client-to-peer stream is cut
    into PDUs and the command sets of its P-DATA-TF PDUs decoded, and the client
    port of every connection that sent a C-CANCEL-RQ is kept in ``cancelled``."""

    def __init__(self, upstream: PeerProcess) -> None:
        self.upstream = (upstream.host, upstream.port)
        self.aet = upstream.aet
        self.lock = threading.Lock()
        self.cancelled: set[int] = set()
        self.cancels = 0
        self.gets = 0  # C-GET-RQs
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="cancel-tap", daemon=True)
        self._accepting.start()

    def node(self) -> DicomNode:
        return DicomNode(aet=self.aet, host="127.0.0.1", port=self.port)

    def _accept(self) -> None:
        while True:
            try:
                client, address = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:  # the peer is gone (torn down): the client sees a close
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.socks += [client, server]
            port = int(address[1])
            for src, dst, watch in ((client, server, port), (server, client, None)):
                thread = threading.Thread(
                    target=self._pump, args=(src, dst, watch), name="cancel-tap", daemon=True
                )
                thread.start()
                self.threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket, port: int | None) -> None:
        stream = bytearray()
        commands: dict[int, bytearray] = {}
        while True:
            if _QUICKACK is not None:
                with contextlib.suppress(OSError):
                    src.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            try:
                data = src.recv(262144)
                if data:
                    dst.sendall(data)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            if port is not None:
                stream += data
                self._scan(stream, commands, port)

    def _scan(self, stream: bytearray, commands: dict[int, bytearray], port: int) -> None:
        while len(stream) >= 6:
            kind, length = stream[0], struct.unpack_from(">I", stream, 2)[0]
            if len(stream) < 6 + length:
                return
            body = bytes(stream[6 : 6 + length])
            del stream[: 6 + length]
            pos = 0
            while kind == 0x04 and pos + 6 <= len(body):  # P-DATA-TF: its PDV items
                size = struct.unpack_from(">I", body, pos)[0]
                context, header = body[pos + 4], body[pos + 5]
                fragment = body[pos + 6 : pos + 4 + size]
                pos += 4 + size
                if not header & 0x01:
                    continue  # a dataset fragment
                commands.setdefault(context, bytearray()).extend(fragment)
                if header & 0x02:  # the last fragment of a command set
                    field = command_us(parse_command(commands.pop(context)), 0x0100)
                    if field == C_CANCEL_RQ:
                        with self.lock:
                            self.cancelled.add(port)
                            self.cancels += 1
                    elif field == C_GET_RQ:
                        with self.lock:
                            self.gets += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        with self.lock:
            socks = list(self.socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._accepting.join(10)
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def tap(server: PeerProcess) -> Iterator[CancelTap]:
    found = CancelTap(server)
    try:
        yield found
    finally:
        found.close()


def _local_port(assoc: Any) -> int:
    """The client port of an established association (the tap sees it as the peer's)."""
    return int(assoc.dul.socket.socket.getsockname()[1])


class Spy:
    """Counts the associations a retrieve holds at once, and which are inside a C-GET
    request (by client port), on either receive path."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: set[int] = set()
        self.most = 0
        self.opened = 0
        self.ports: dict[int, int] = {}  # thread -> client port of its open association
        self.in_get: set[int] = set()  # client ports

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open, real_release = ops.open_association, ops.release
        real_send = ops.DicomOperations._send_listed

        def open_association(*args: Any, **kwargs: Any) -> Any:
            assoc = real_open(*args, **kwargs)
            with self.lock:
                self.open.add(id(assoc))
                self.opened += 1
                self.most = max(self.most, len(self.open))
                with contextlib.suppress(AttributeError, OSError):
                    self.ports[threading.get_ident()] = _local_port(assoc)
            return assoc

        def release(assoc: Any) -> None:
            real_release(assoc)
            with self.lock:
                self.open.discard(id(assoc))

        def send_listed(*args: Any, **kwargs: Any) -> None:
            with self.lock:
                port = self.ports.get(threading.get_ident())
                if port is not None:
                    self.in_get.add(port)
            try:
                real_send(*args, **kwargs)
            finally:
                with self.lock:
                    self.in_get.discard(port or 0)

        monkeypatch.setattr(ops, "open_association", open_association)
        monkeypatch.setattr(ops, "release", release)
        monkeypatch.setattr(ops.DicomOperations, "_send_listed", send_listed)


@pytest.fixture(autouse=True)
def always_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """The split probe (SplitProbe) measures, then always splits: whether splitting
    pays depends on the machine's load, what a split does must not.  Plans are listed
    (IMAGE level pre-query): a lean plan names no instance and is never split."""
    from clarinet_nb.settings import settings

    monkeypatch.setattr(ops, "SPLIT_BUSY", float("inf"))
    monkeypatch.setattr(settings, "lean_plan", False)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    found = Spy()
    found.install(monkeypatch)
    return found


def _sops(result: Any) -> set[str]:
    return set(result.received_sop_instance_uids)


# --------------------------------------------------------------------------- pure logic


def _plan(series: int, per: int) -> RetrievePlan:
    return RetrievePlan(
        [
            PlannedInstance("1.2", f"1.2.{s}", f"1.2.{s}.{i}", "1.2.840.10008.5.1.4.1.1.2")
            for s in range(1, series + 1)
            for i in range(1, per + 1)
        ]
    )


@pytest.mark.parametrize(("series", "per", "workers"), [(3, 60, 4), (1, 160, 4), (4, 7, 2)])
def test_work_items_cover_the_plan_exactly(series: int, per: int, workers: int) -> None:
    plan = _plan(series, per)
    items = work_items(RetrieveRequest.study("1.2"), plan, workers)
    listed = [u for item in items for u in listed_sop_uids(item)]
    whole = {str(i.SeriesInstanceUID) for i in items if i.QueryRetrieveLevel == "SERIES"}
    assert len(listed) == len(set(listed))  # no instance asked twice
    covered = set(listed) | {i.sop_uid for i in plan.instances if i.series_uid in whole}
    assert covered == set(plan.sop_uids)
    assert all(len(listed_sop_uids(i)) <= max(50, -(-len(plan) // (2 * workers))) for i in items)


def test_instance_requests_are_never_widened_to_series() -> None:
    plan = _plan(2, 30)
    request = RetrieveRequest.instances(plan.sop_uids)
    items = work_items(request, plan, 4)
    assert {str(i.QueryRetrieveLevel) for i in items} == {QueryLevel.IMAGE.value}
    assert sorted(u for i in items for u in listed_sop_uids(i)) == sorted(plan.sop_uids)


def test_work_queue_hands_each_item_once_and_stops_when_closed() -> None:
    plan = _plan(1, 200)
    queue = WorkQueue(work_items(RetrieveRequest.study("1.2"), plan, 4))
    first = queue.take()
    assert first is not None and queue.left == len(queue.items) - 1
    queue.close()
    assert queue.take() is None and list(queue) == [] and queue.left == 0


# --------------------------------------------------------------------------- real peers


@pytest.mark.parametrize("mode", ["memory", "disk"])
async def test_study_of_several_series_over_several_associations(
    server: PeerProcess, data: Data, spy: Spy, mode: str, tmp_path: Path
) -> None:
    storage = (
        StorageConfig(mode=StorageMode.DISK, output_dir=tmp_path)
        if mode == "disk"
        else StorageConfig(mode=StorageMode.MEMORY)
    )
    async with DicomClient(max_associations=3, timeouts=TEST_TIMEOUTS) as client:
        result = await client.get_study(data.multi, peer=node(server), storage=storage)
    assert result.status is RetrieveStatus.SUCCESS
    assert _sops(result) == data.sops[data.multi]
    assert result.received == result.expected == SERIES * PER_SERIES
    assert len(result.received_sop_instance_uids) == SERIES * PER_SERIES  # counted once
    assert not result.failed_sop_instance_uids and not result.missing_sop_instance_uids
    # the probe's whole request (cancelled), then up to 3 at once for the rest
    assert 1 < result.associations <= 1 + 3
    assert spy.opened == result.associations + 1  # + the pre-query's C-FIND association
    assert spy.most <= 3 and not spy.open
    if mode == "disk":
        files = {p.stem for p in tmp_path.rglob("*.dcm")}
        assert files == data.sops[data.multi]
        assert not list(tmp_path.rglob("*.part"))
    else:
        assert {str(ds.SOPInstanceUID) for ds in result.datasets} == data.sops[data.multi]


async def test_one_long_series_in_chunks(server: PeerProcess, data: Data, spy: Spy) -> None:
    async with DicomClient(max_associations=4, timeouts=TEST_TIMEOUTS) as client:
        client.operations.split_busy = None  # no probe: every association opened at once
        result = await client.get_series(data.long_series, study_uid=data.long, peer=node(server))
    assert result.status is RetrieveStatus.SUCCESS
    assert _sops(result) == data.sops[data.long] and result.received == LONG
    assert 1 < result.associations <= 4 and spy.most <= 4


async def test_one_association_at_a_time_with_max_associations_1(
    server: PeerProcess, data: Data, spy: Spy
) -> None:
    async with DicomClient(max_associations=1, timeouts=TEST_TIMEOUTS) as client:
        result = await client.get_study(data.multi, peer=node(server))
    assert _sops(result) == data.sops[data.multi]
    assert result.associations == 1 and spy.most == 1


async def test_many_retrieves_at_once_share_the_bound(
    server: PeerProcess, data: Data, spy: Spy
) -> None:
    """Four retrieves on a client of 3 associations: never more than 3 open at once."""
    import asyncio

    async with DicomClient(max_associations=3, timeouts=TEST_TIMEOUTS) as client:
        studies = [data.multi, data.long, data.multi, data.long]
        results = await asyncio.gather(*(client.get_study(s, peer=node(server)) for s in studies))
    for study, result in zip(studies, results, strict=True):
        assert _sops(result) == data.sops[study]
    assert spy.most <= 3 and not spy.open


async def test_forward_mode_split(
    server: PeerProcess, data: Data, spy: Spy, tmp_path: Path
) -> None:
    """FORWARD: instances received on several associations all reach the forward node."""
    with OrthancServer(tmp_path / "sink", tuned=True) as sink:
        storage = StorageConfig(mode=StorageMode.FORWARD, forward_to=node(sink))
        async with DicomClient(max_associations=3, timeouts=TEST_TIMEOUTS) as client:
            result = await client.get_study(data.multi, peer=node(server), storage=storage)
        assert result.status is RetrieveStatus.SUCCESS and result.associations > 1
        assert set(result.forwarded_sop_instance_uids) == data.sops[data.multi]
        async with DicomClient(timeouts=TEST_TIMEOUTS) as client:
            back = await client.get_study(data.multi, peer=node(sink))
        assert _sops(back) == data.sops[data.multi]


async def test_cancel_mid_way_cancels_every_running_association(
    tap: CancelTap, data: Data, spy: Spy
) -> None:
    """Cancelled once two associations are receiving: the associations inside a C-GET
    at that moment send a C-CANCEL-RQ (seen on the wire), one each; all are released."""
    token = CancelToken()
    lock = threading.Lock()
    per_thread: dict[int, int] = {}
    at_cancel: set[int] = set()

    def on_stored(sop_uid: str, nbytes: int) -> None:
        # each association receives on its own thread: cancel once two are receiving
        with lock:
            me = threading.get_ident()
            per_thread[me] = per_thread.get(me, 0) + 1
            if token.cancelled or sum(1 for n in per_thread.values() if n >= 2) < 2:
                return
        with spy.lock:
            at_cancel.update(spy.in_get)
        token.cancel()
        with spy.lock:  # and any that entered its C-GET while the token was set
            at_cancel.update(spy.in_get)

    baseline = set(threading.enumerate())
    async with DicomClient(max_associations=4, timeouts=TEST_TIMEOUTS) as client:
        client.operations.split_busy = None  # split at once: no C-CANCEL of the probe's
        result = await client.get_study(
            data.multi, peer=tap.node(), cancel=token, on_stored=on_stored
        )
    assert result.status is RetrieveStatus.CANCELLED
    assert 0 < result.received < SERIES * PER_SERIES
    # The associations with a C-GET running send their C-CANCEL.  The spy's view (inside
    # _send_listed, by client port) and the wire race by a few packets: one about to send
    # its C-GET-RQ sends none, one whose final response was on the wire has nothing left
    # to cancel; so at least two of those seen inside, and never two from one.
    assert len(tap.cancelled & at_cancel) >= 2
    assert tap.cancels == len(tap.cancelled)  # one per association
    assert not spy.open and spy.most <= 4
    # the event loop's default executor (asyncio_N, used by aclose) lives on: not ours
    ours = {
        t
        for t in set(threading.enumerate()) - baseline
        if not t.name.startswith(("asyncio", "cancel-tap"))  # the tap's are not the client's
    }
    for thread in ours:
        thread.join(30)  # association threads end after release: wait on their end
    assert not {t for t in ours if t.is_alive()}


async def test_small_retrieve_is_not_split(server: PeerProcess, data: Data, spy: Spy) -> None:
    """Below the split threshold one association does it all, as before."""
    async with DicomClient(max_associations=4, timeouts=TEST_TIMEOUTS) as client:
        client.operations.split_min = SERIES * PER_SERIES + 1
        result = await client.get_study(data.multi, peer=node(server))
    assert _sops(result) == data.sops[data.multi] and result.associations == 1


class FakeClock:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def step(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


@pytest.mark.parametrize(("cpu_per_instance", "splits"), [(0.2, True), (0.9, False)])
def test_split_probe_measures_the_instances_after_the_first(
    cpu_per_instance: float, splits: bool
) -> None:
    """1 s of wall per instance; the client used ``cpu_per_instance`` of it.  The
    stretch before the first instance (association, C-GET request) is not counted."""
    clock, started = FakeClock(), []
    probe = SplitProbe(
        lambda: started.append(1), instances=4, busy=0.75,
        clock=lambda: clock.wall, cpu=lambda: clock.cpu,
    )  # fmt: skip
    clock.step(100.0, 100.0)  # before the first instance: a busy start must not count
    probe.tick()
    for _ in range(3):
        clock.step(1.0, cpu_per_instance)
        probe.tick()
    assert not probe.decided and not started
    clock.step(1.0, cpu_per_instance)
    probe.tick()  # the 4th instance after the first: decided
    assert probe.decided and probe.load == pytest.approx(cpu_per_instance)
    assert probe.split is splits and started == ([1] if splits else [])
    for _ in range(10):
        probe.tick()
    assert len(started) <= 1  # decides once


def test_busy_seconds_counts_cpu_and_run_queue_wait() -> None:
    """Process CPU plus this thread's run-queue delay: never less than the CPU alone,
    and it grows with work done."""
    import time

    from clarinet_nb.dicom.split import busy_seconds

    before = busy_seconds()
    assert before >= time.process_time() - 1e-3
    end = time.process_time() + 0.05
    while time.process_time() < end:  # burn 50 ms of CPU
        pass
    assert busy_seconds() - before >= 0.05 - 1e-3


def test_split_probe_stopped_before_deciding_starts_nothing() -> None:
    clock, started = FakeClock(), []
    probe = SplitProbe(
        lambda: started.append(1), instances=2, busy=1.0,
        clock=lambda: clock.wall, cpu=lambda: clock.cpu,
    )  # fmt: skip
    probe.tick()
    probe.stop()
    clock.step(1.0, 0.0)
    probe.tick()
    probe.tick()
    assert not started and probe.split is None


@pytest.mark.parametrize(("busy", "split"), [(0.0, False), (float("inf"), True)])
async def test_the_probe_decides_whether_to_split(
    tap: CancelTap,
    data: Data,
    spy: Spy,
    busy: float,
    split: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The request goes out whole.  A client measured as too busy lets it run to its
    end: one association, one C-GET-RQ, no C-CANCEL.  One measured as waiting cancels
    it (C-CANCEL on the wire) and fetches what is missing over several associations.
    Either way every instance arrives exactly once and the result is SUCCESS."""
    import logging

    caplog.set_level(logging.DEBUG, logger="clarinet_nb")
    async with DicomClient(max_associations=3, timeouts=TEST_TIMEOUTS) as client:
        client.operations.split_busy = busy
        result = await client.get_study(data.multi, peer=tap.node())
    assert result.status is RetrieveStatus.SUCCESS
    assert _sops(result) == data.sops[data.multi]
    assert result.received == len(result.received_sop_instance_uids) == SERIES * PER_SERIES
    assert not result.failed_sop_instance_uids and not result.missing_sop_instance_uids
    decisions = [r.getMessage() for r in caplog.records if "split probe" in r.getMessage()]
    assert len(decisions) == 1
    assert ("splitting" in decisions[0]) is split
    assert (result.associations > 1) is split and spy.most <= 3 and not spy.open
    if split:
        assert tap.cancels == 1 and tap.gets > 2  # the whole request, then the parts
    else:
        assert tap.cancels == 0 and tap.gets == 1  # the whole request, as never split


async def test_default_probe_is_consistent(server: PeerProcess, data: Data, spy: Spy) -> None:
    """With the default threshold the decision depends on this machine's load: whatever
    it is, the retrieve is complete and the associations match it."""
    from clarinet_nb.dicom.split import SPLIT_BUSY, SplitProbe

    probes: list[SplitProbe] = []

    class Recording(SplitProbe):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            probes.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ops, "SplitProbe", Recording)
        async with DicomClient(max_associations=3, timeouts=TEST_TIMEOUTS) as client:
            client.operations.split_busy = SPLIT_BUSY
            result = await client.get_study(data.multi, peer=node(server))
    assert _sops(result) == data.sops[data.multi] and result.received == SERIES * PER_SERIES
    assert len(probes) == 1 and probes[0].decided and probes[0].load is not None
    assert probes[0].busy == SPLIT_BUSY
    assert (result.associations > 1) is bool(probes[0].split)


async def test_a_lean_plan_is_not_split(
    server: PeerProcess, data: Data, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lean plan (series counts, no instance list: settings.lean_plan) cannot be cut
    into UID lists nor re-asked by UID after a cancel: one association, all arrive."""
    from clarinet_nb.settings import settings

    monkeypatch.setattr(settings, "lean_plan", True)
    async with DicomClient(max_associations=3, timeouts=TEST_TIMEOUTS) as client:
        result = await client.get_study(data.multi, peer=node(server))
    assert result.status is RetrieveStatus.SUCCESS
    assert _sops(result) == data.sops[data.multi] and result.received == SERIES * PER_SERIES
    if isinstance(server, DcmqrscpServer):
        # no counts: its plan is listed even with lean_plan, and may be split
        assert result._plan is None or result._plan.listed
        return
    assert result.associations == 1 and not spy.open


def test_workers_count_free_threads() -> None:
    """Free threads: the pool size less every job submitted and not ended (queued too)."""
    from concurrent.futures import ThreadPoolExecutor

    from clarinet_nb.dicom.split import Workers

    gate = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        workers = Workers(pool, 2)
        assert workers.free() == 2 and not workers.inside()
        first = workers.submit(lambda: gate.wait(30) and workers.inside())
        second = workers.submit(lambda: gate.wait(30))
        queued = workers.submit(lambda: True)
        assert first is not None and second is not None and queued is not None
        assert workers.free() == 0
        assert workers.cancel(queued)  # not started: dropped, its thread promise returned
        gate.set()
        assert first.result(30) is True and second.result(30) is True
    assert workers.free() == 2


async def test_interrupted_split_pull_keeps_and_lists_what_arrived(
    tap: CancelTap, data: Data, spy: Spy, tmp_path: Path
) -> None:
    """A notebook pull of one split study, interrupted (task cancelled) once two
    associations are receiving: C-CANCEL, all released, the files listed as retrieved."""
    import asyncio
    import warnings

    import pandas as pd

    import clarinet_nb as cnb

    loop = asyncio.get_running_loop()
    task: asyncio.Task[Any] | None = None
    lock = threading.Lock()
    per_thread: dict[int, int] = {}

    class Interrupt:
        total: float | None = None

        def update(self, n: float = 1) -> None:
            with lock:
                me = threading.get_ident()
                per_thread[me] = per_thread.get(me, 0) + 1
                if sum(1 for k in per_thread.values() if k >= 2) == 2 and task is not None:
                    loop.call_soon_threadsafe(task.cancel)

        def refresh(self) -> None:
            return None

        def close(self) -> None:
            return None

    pacs = cnb.connect(tap.node(), max_associations=4, timeouts=TEST_TIMEOUTS)
    pacs.client.operations.split_busy = None  # split at once: no C-CANCEL of the probe's
    try:
        studies = pd.DataFrame({"StudyInstanceUID": [data.multi]})
        out = tmp_path / "out"
        task = asyncio.ensure_future(pacs.aget(studies, output_dir=out, progress=Interrupt()))
        with warnings.catch_warnings(), pytest.raises(asyncio.CancelledError):
            warnings.simplefilter("ignore")
            await task
    finally:
        pacs.client.close()
    assert tap.cancelled and not spy.open and spy.most <= 4  # C-CANCEL on the wire
    files = {p.stem for p in out.rglob("*.dcm")}
    assert 4 <= len(files) < SERIES * PER_SERIES and files <= data.sops[data.multi]
    assert not list(out.rglob(".*")), "temporary files left behind"
    manifest = pacs.interrupted
    assert isinstance(manifest, pd.DataFrame)
    retrieved = set(manifest[manifest["status"] == "retrieved"]["SOPInstanceUID"])
    assert retrieved == files


@pytest.fixture(scope="module")
def qrscp(tmp_path_factory: pytest.TempPathFactory, data: Data) -> Iterator[PeerProcess]:
    from clarinet_nb.testing.qrscp import QrscpServer

    with QrscpServer(tmp_path_factory.mktemp("qrscp-par")) as peer:
        assert peer.load(data.paths) == len(data.paths)
        yield peer


async def test_split_against_a_peer_that_refuses_uid_lists(
    qrscp: PeerProcess, data: Data, spy: Spy, caplog: pytest.LogCaptureFixture
) -> None:
    """pynetdicom's qrscp refuses UID lists: the split parts fall back to one UID at a
    time (said once), and still every instance arrives exactly once."""
    import logging

    caplog.set_level(logging.WARNING, logger="clarinet_nb")
    async with DicomClient(max_associations=3, timeouts=TEST_TIMEOUTS) as client:
        result = await client.get_study(data.multi, peer=node(qrscp))
    assert result.status is RetrieveStatus.SUCCESS
    assert _sops(result) == data.sops[data.multi] and result.received == SERIES * PER_SERIES
    assert 1 < result.associations <= 1 + 3 and spy.most <= 3  # the probe's, then 3
    refusals = [r for r in caplog.records if "list of UIDs" in r.getMessage()]
    assert len(refusals) == 1
    assert client.operations.refuses_uid_lists(node(qrscp))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KB tmpfs (root): room for a few dozen instances."""
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_disk_full_stops_every_association(
    tap: CancelTap, data: Data, spy: Spy, small_disk: Path
) -> None:
    """A full disk during a split C-GET: C-CANCEL on the running associations, all
    released, LocalStorageError whose result lists exactly the complete files."""
    from clarinet_nb.errors import LocalStorageError

    async with DicomClient(max_associations=3, timeouts=TEST_TIMEOUTS) as client:
        # every association opened at once: the disk fills after a few dozen instances,
        # before a probe of 16 would have let the others start
        client.operations.split_busy = None
        with pytest.raises(LocalStorageError, match="No space left on device") as caught:
            await client.get_study(data.multi, peer=tap.node(), output_dir=small_disk)
    result = caught.value.result
    assert result is not None and result.associations > 1
    files = {p.stem for p in small_disk.rglob("*.dcm")}
    assert 0 < result.received < SERIES * PER_SERIES
    assert set(result.received_sop_instance_uids) == files
    assert not list(small_disk.rglob(".*")), "temporary files left behind"
    # stopped (C-CANCEL), not every remaining instance failed one by one
    assert result.failed_sop_instance_uids
    assert len(result.failed_sop_instance_uids) < SERIES * PER_SERIES - result.received
    assert tap.cancelled and not spy.open  # C-CANCEL on the wire


async def test_one_association_cut_mid_pdu(server: PeerProcess, data: Data, spy: Spy) -> None:
    """The connection of one extra association is reset inside a PDU: the retrieve
    reports it broke off (PartialRetrieveError), every association is released, and
    what arrived (on every association) is listed exactly, the rest missing."""
    from clarinet_nb.errors import PartialRetrieveError
    from clarinet_nb.testing import FaultProxy

    with FaultProxy(server.host, server.port) as proxy:
        # connection 0: the pre-query, 1: the first C-GET association, 2: an extra one
        cut = proxy.arm("cut", connection=2, pdu_number=20, offset=10)
        through = DicomNode(aet=server.aet, host=proxy.host, port=proxy.port)
        async with DicomClient(max_associations=3, timeouts=TEST_TIMEOUTS) as client:
            with pytest.raises(PartialRetrieveError, match="broke off") as caught:
                await client.get_study(data.multi, peer=through)
        assert cut.fired.is_set()
    result = caught.value.result
    assert result is not None and result.associations > 1
    received = set(result.received_sop_instance_uids)
    assert 0 < len(received) < SERIES * PER_SERIES and received <= data.sops[data.multi]
    assert {str(ds.SOPInstanceUID) for ds in result.datasets} == received
    accounted = received | set(result.missing_sop_instance_uids)
    accounted |= set(result.failed_sop_instance_uids)
    assert accounted == data.sops[data.multi]
    assert not spy.open and spy.most <= 3
