"""A typed error for every fault, within the configured timeouts, with what arrived reported
exactly: a real Orthanc killed (SIGKILL) or frozen (SIGSTOP) during association, the
pre-query, C-GET and C-MOVE; connections reset mid-PDU or stalled by a fault-injecting
proxy; a DNS server that never answers; a full disk and a read-only output folder.

Faults are triggered at exact points (the k-th stored instance, the n-th PDU), never by
sleeping.  Every test checks that no association thread is left and, after a C-MOVE,
that our Storage SCP port is free again.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pandas as pd
import pytest
from pydicom import dcmread
from pynetdicom.association import Association

import clarinet_nb as cnb
from clarinet_nb import (
    AssociationAbortedError,
    DicomClient,
    DicomNode,
    DicomTimeoutError,
    LocalStorageError,
    NetworkError,
    PartialRetrieveError,
    PeerUnreachableError,
    RetrieveResult,
    StudyQuery,
    Timeouts,
)
from clarinet_nb.settings import settings
from clarinet_nb.testing import Cohort, OrthancServer, free_port, generate_bulk
from clarinet_nb.testing.faults import (
    ASSOCIATE_RQ,
    P_DATA_TF,
    Action,
    FaultProxy,
    PeerFreezer,
)
from tests.support import port_is_free

PER_STUDY = 30
QUICK = Timeouts(connect=3, acse=3, dimse=3, network=10, cancel=2)
Fault = Literal["kill", "freeze"]
JOIN_DEADLINE = 20.0


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return generate_bulk(tmp_path_factory.mktemp("faults-bulk"), per_study=PER_STUDY, seed="faults")


@pytest.fixture(scope="module")
def scp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxied_scp_port() -> int:
    """Where Orthanc sends C-MOVE instances for the AE title PROXIED: a FaultProxy."""
    return free_port()


@pytest.fixture(scope="module")
def victim_server(
    tmp_path_factory: pytest.TempPathFactory, bulk: Cohort, scp_port: int, proxied_scp_port: int
) -> Iterator[OrthancServer]:
    """A tuned Orthanc the tests may freeze or kill (restarted when a test killed it)."""
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc-victim"),
        tuned=True,
        move_destinations={
            "clarinet": ("CLARINET", "127.0.0.1", scp_port),
            "proxied": ("PROXIED", "127.0.0.1", proxied_scp_port),
        },
    )
    with server:
        assert server.load(bulk.paths()) == len(bulk.instances)
        yield server


@pytest.fixture
def victim(victim_server: OrthancServer) -> Iterator[PeerFreezer]:
    """Freeze/kill handle on the victim; a frozen victim is resumed at teardown."""
    if not victim_server.running:
        victim_server.start()  # same storage: the data is still there
    with PeerFreezer(victim_server) as freezer:
        yield freezer


@pytest.fixture
def quick_client(scp_port: int) -> Iterator[DicomClient]:
    client = DicomClient(scp_port=scp_port, timeouts=QUICK)
    yield client
    client.close()


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs file systems (root); each is unmounted at teardown."""
    mounted: list[Path] = []

    def mount(name: str, *, size: str = "1m", read_only: bool = False) -> Path:
        where = tmp_path / name
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    """Every thread a fault test starts ends with it (bounded join, no sleep)."""
    before = set(threading.enumerate())
    yield
    # the sync API's loop, asyncio's executor, tqdm's global monitor
    lasting = ("clarinet-nb-loop", "asyncio_", "tqdm_monitor")
    new = [t for t in threading.enumerate() if t not in before and not t.name.startswith(lasting)]
    for thread in new:
        thread.join(JOIN_DEADLINE)
    assert [t.name for t in new if t.is_alive()] == []


# -- helpers -----------------------------------------------------------------------------


def node_of(server: OrthancServer | FaultProxy, aet: str = "ORTHANC") -> DicomNode:
    return DicomNode(aet=aet, host=server.host, port=server.port)


def study_of(bulk: Cohort, index: int = 0) -> str:
    return bulk.studies()[index]


def assert_no_association_left() -> None:
    """Every pynetdicom association thread ends (bounded wait, no sleep)."""
    for thread in threading.enumerate():
        if isinstance(thread, Association):
            thread.join(JOIN_DEADLINE)
    alive = [t for t in threading.enumerate() if isinstance(t, Association) and t.is_alive()]
    assert alive == []


def assert_files_match(out: Path, result: RetrieveResult) -> None:
    """The files in ``out`` are exactly the ones reported, each complete; nothing half written."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.parquet")
    assert files == sorted(result.paths)
    assert not [p for p in out.rglob("*.part")]
    for path in files:
        assert dcmread(path).SOPInstanceUID == path.stem
    assert [p.stem for p in result.paths] == result.received_sop_instance_uids


class AfterK:
    """An ``on_stored`` callback that runs ``action`` when the k-th instance is stored."""

    def __init__(self, k: int, action: Callable[[], object]) -> None:
        self.k = k
        self.action = action
        self.seen: list[str] = []

    def __call__(self, sop_uid: str, nbytes: int) -> None:
        self.seen.append(sop_uid)
        if len(self.seen) == self.k:
            self.action()


def assert_partial(
    caught: pytest.ExceptionInfo[PartialRetrieveError],
    cause: type[NetworkError],
    seen: list[str],
    bulk: Cohort,
    study: str,
) -> RetrieveResult:
    """A PartialRetrieveError caused by ``cause`` listing exactly what arrived."""
    assert isinstance(caught.value.__cause__, cause), repr(caught.value.__cause__)
    result = caught.value.result
    assert result.received_sop_instance_uids == seen
    expected = {i.sop_uid for i in bulk.instances_in(study)}
    assert set(result.missing_sop_instance_uids) | set(result.failed_sop_instance_uids) == (
        expected - set(seen)
    )
    assert result.expected == len(expected)
    return result


# -- peer killed or frozen during the association ---------------------------------------


CAUSE: dict[str, type[NetworkError]] = {
    "kill": AssociationAbortedError,
    "freeze": DicomTimeoutError,
    "cut": AssociationAbortedError,
    "stall": DicomTimeoutError,
}


@pytest.mark.parametrize("fault", ["kill", "freeze"])
async def test_peer_dies_or_freezes_during_association(
    victim: PeerFreezer, victim_server: OrthancServer, quick_client: DicomClient, fault: Fault
) -> None:
    """The A-ASSOCIATE-RQ reaches a peer that was just killed or frozen."""
    with FaultProxy(victim_server.host, victim_server.port) as proxy:
        trigger = proxy.arm(
            victim.action(fault), direction="from_client", pdu_number=1, pdu_type=ASSOCIATE_RQ
        )
        with pytest.raises(CAUSE[fault]) as caught:
            await quick_client.find_studies(StudyQuery(), peer=node_of(proxy))
        assert trigger.fired.is_set()
    assert "association" in str(caught.value)
    assert_no_association_left()


# -- during the pre-query (C-FIND) ------------------------------------------------------


@pytest.mark.parametrize("fault", ["kill", "freeze", "cut", "stall"])
async def test_fault_during_pre_query(
    victim: PeerFreezer,
    victim_server: OrthancServer,
    quick_client: DicomClient,
    bulk: Cohort,
    tmp_path: Path,
    fault: Literal["kill", "freeze", "cut", "stall"],
) -> None:
    """The first C-FIND response of the pre-query is held back: the peer dies or freezes
    first, or the proxy resets the connection inside that PDU, or stops forwarding."""
    with FaultProxy(victim_server.host, victim_server.port) as proxy:
        action: Action = "cut"
        if fault in ("kill", "freeze"):
            action = victim.action(fault)
        elif fault in ("cut", "stall"):
            action = fault
        offset = 10 if fault == "cut" else 0  # cut after the PDU header and 4 bytes: mid-PDU
        trigger = proxy.arm(action, pdu_number=1, pdu_type=P_DATA_TF, offset=offset)
        with pytest.raises(CAUSE[fault]):
            await quick_client.get_study(study_of(bulk), peer=node_of(proxy), output_dir=tmp_path)
        assert trigger.fired.is_set()
        assert proxy.connections == 1  # nothing retrieved after the pre-query failed
    assert list(tmp_path.rglob("*")) == []
    assert_no_association_left()


# -- during C-GET and C-MOVE ------------------------------------------------------------


@pytest.mark.parametrize("plan", ["listed", "lean"])
@pytest.mark.parametrize("method", ["get", "move"])
@pytest.mark.parametrize("fault", ["kill", "freeze"])
async def test_peer_dies_or_freezes_mid_retrieve(
    victim: PeerFreezer,
    victim_server: OrthancServer,
    quick_client: DicomClient,
    bulk: Cohort,
    scp_port: int,
    tmp_path: Path,
    method: Literal["get", "move"],
    fault: Fault,
    plan: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the 7th instance is stored the PACS is killed or frozen.  Listed up front,
    the result names every instance that did not arrive; on a lean plan (counts) the
    PACS is gone before it could list them: the result counts them."""
    monkeypatch.setattr(settings, "lean_plan", plan == "lean")
    study = study_of(bulk)
    stored = AfterK(7, victim.action(fault))
    with pytest.raises(PartialRetrieveError) as caught:
        await quick_client.retrieve(
            method,
            cnb.RetrieveRequest.study(study),
            peer=node_of(victim_server),
            output_dir=tmp_path,
            on_stored=stored,
        )
    assert victim.events == [fault]
    if plan == "listed":
        result = assert_partial(caught, CAUSE[fault], stored.seen, bulk, study)
    else:
        assert isinstance(caught.value.__cause__, CAUSE[fault]), repr(caught.value.__cause__)
        result = caught.value.result
        assert result.received_sop_instance_uids == stored.seen
        assert result.expected == PER_STUDY and not result.missing_sop_instance_uids
        assert result.summary().startswith(f"{method}: {result.received}/{PER_STUDY} received")
    # the peer may have had the next instance on the wire when the signal landed
    assert 7 <= result.received < PER_STUDY
    assert_files_match(tmp_path, result)
    assert_no_association_left()
    assert port_is_free(scp_port)


# -- connection reset mid-PDU, or stalled, by the proxy ----------------------------------


@pytest.mark.parametrize("method", ["get", "move"])
@pytest.mark.parametrize("fault", ["cut", "stall"])
async def test_connection_cut_mid_pdu_or_stalled_mid_retrieve(
    victim: PeerFreezer,
    victim_server: OrthancServer,
    quick_client: DicomClient,
    bulk: Cohort,
    scp_port: int,
    tmp_path: Path,
    method: Literal["get", "move"],
    fault: Literal["cut", "stall"],
) -> None:
    """The C-GET (or C-MOVE) association, the proxy's second connection after the
    pre-query, is reset inside the 9th PDU from the peer, or stops being forwarded."""
    study = study_of(bulk, 1)
    stored = AfterK(10**9, lambda: None)
    with FaultProxy(victim_server.host, victim_server.port) as proxy:
        trigger = proxy.arm(fault, pdu_number=9, offset=10, connection=1)
        with pytest.raises(PartialRetrieveError) as caught:
            await quick_client.retrieve(
                method,
                cnb.RetrieveRequest.study(study),
                peer=node_of(proxy),
                output_dir=tmp_path,
                on_stored=stored,
            )
        assert trigger.fired.is_set()
    result = assert_partial(caught, CAUSE[fault], stored.seen, bulk, study)
    if method == "move" and fault == "stall":
        # the instances come on Orthanc's own association to our SCP: they may all
        # arrive while the C-MOVE's responses are held back; the final one never comes
        assert 0 < result.received <= PER_STUDY and result.dimse_status is None
    else:
        assert 0 < result.received < PER_STUDY
    assert_files_match(tmp_path, result)
    assert_no_association_left()
    assert port_is_free(scp_port)


@pytest.mark.parametrize("fault", ["cut", "stall"])
async def test_move_sub_association_cut_or_stalled_mid_pdu(
    victim: PeerFreezer,
    victim_server: OrthancServer,
    bulk: Cohort,
    scp_port: int,
    proxied_scp_port: int,
    tmp_path: Path,
    fault: Literal["cut", "stall"],
) -> None:
    """Orthanc's own association to our Storage SCP (C-STOREs of a C-MOVE) goes through
    the proxy: it is reset inside the 9th PDU Orthanc sends, or stops being forwarded
    there (our SCP is then left waiting inside a PDU, and must still shut down)."""
    study = study_of(bulk, 1)
    stored = AfterK(10**9, lambda: None)
    with FaultProxy("127.0.0.1", scp_port, port=proxied_scp_port) as proxy:
        trigger = proxy.arm(fault, direction="from_client", pdu_number=9, offset=10)
        client = DicomClient("PROXIED", scp_port=scp_port, timeouts=QUICK)
        try:
            with pytest.raises(PartialRetrieveError) as caught:
                await client.move_study(
                    study, peer=node_of(victim_server), output_dir=tmp_path, on_stored=stored
                )
        finally:
            client.close()
        assert trigger.fired.is_set()
    result = caught.value.result
    assert result.received_sop_instance_uids == stored.seen
    assert 0 < result.received < PER_STUDY
    if fault == "stall":
        assert isinstance(caught.value.__cause__, DicomTimeoutError)
    assert_files_match(tmp_path, result)
    assert_no_association_left()
    assert port_is_free(scp_port)


# -- DNS that never answers --------------------------------------------------------------

_DNS_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from clarinet_nb import DicomClient, DicomNode, Timeouts

    async def main():
        node = DicomNode(aet="PACS", host=sys.argv[1], port=104)
        started = time.monotonic()
        async with DicomClient(timeouts=Timeouts(connect=2)) as client:
            try:
                await client.echo(node)
                kind, message = "none", ""
            except BaseException as exc:
                kind, message = type(exc).__name__, str(exc)
        print(json.dumps({"error": kind, "message": message,
                          "elapsed": time.monotonic() - started}))

    asyncio.run(main())
    """
)


def test_dns_that_never_answers(tmp_path: Path) -> None:
    """Resolution through a real resolver whose DNS server never answers is bounded by
    connect_timeout.  Runs in a mount namespace whose /etc/resolv.conf names a UDP socket
    of this test that reads queries and never replies."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = ""
    for last in range(2, 250):  # port 53 on some free loopback address
        try:
            silent.bind((f"127.0.53.{last}", 53))
        except OSError:
            continue
        address = f"127.0.53.{last}"
        break
    if not address:
        silent.close()
        pytest.skip("cannot bind UDP port 53 on a loopback address (needs root)")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {address}\noptions timeout:30 attempts:1\n")
    host = "pacs.clarinet-faults.example"
    assert host not in Path("/etc/hosts").read_text()
    queries: list[bytes] = []
    stop = threading.Event()

    def listen() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                queries.append(silent.recvfrom(512)[0])
            except OSError:
                continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    root = Path(__file__).resolve().parents[1]
    script = f'mount --bind {resolv} /etc/resolv.conf && exec {sys.executable} -c "$CHILD" {host}'
    try:
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", script],
            env={**os.environ, "CHILD": _DNS_CHILD, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        stop.set()
        listener.join()
        silent.close()
    if done.returncode != 0 and "mount" in done.stderr and not done.stdout:
        pytest.skip(f"unshare/mount not permitted here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["error"] == "DicomTimeoutError", outcome
    assert "resolve" in outcome["message"] and "connect_timeout" in outcome["message"]
    assert queries, "the resolver never asked our silent DNS server"
    assert issubclass(DicomTimeoutError, NetworkError)
    assert not issubclass(PeerUnreachableError, DicomTimeoutError)


# -- disk full, read-only output folder ------------------------------------------------


@pytest.mark.parametrize("method", ["get", "move"])
async def test_disk_full_stops_the_retrieve(
    victim: PeerFreezer,
    victim_server: OrthancServer,
    quick_client: DicomClient,
    bulk: Cohort,
    scp_port: int,
    mount_point: Callable[..., Path],
    method: Literal["get", "move"],
) -> None:
    """A disk with room for a few instances: LocalStorageError carrying the result; the
    instances that arrived are complete, nothing is half written, the retrieve stopped."""
    out = mount_point("full", size="128k")
    study = study_of(bulk)
    stored = AfterK(10**9, lambda: None)
    with pytest.raises(LocalStorageError, match="No space left on device") as caught:
        await quick_client.retrieve(
            method,
            cnb.RetrieveRequest.study(study),
            peer=node_of(victim_server),
            output_dir=out,
            on_stored=stored,
        )
    result = caught.value.result
    assert result is not None
    assert isinstance(caught.value.__cause__, OSError)
    assert result.received_sop_instance_uids == stored.seen
    assert 0 < result.received < PER_STUDY
    assert_files_match(out, result)
    # stopped (C-CANCEL), not every remaining instance failed one by one
    assert result.failed_sop_instance_uids
    assert len(result.failed_sop_instance_uids) < PER_STUDY - result.received
    assert_no_association_left()
    assert port_is_free(scp_port)
    assert await quick_client.echo(node_of(victim_server))  # the PACS is fine


async def test_read_only_output_dir(
    victim: PeerFreezer,
    victim_server: OrthancServer,
    quick_client: DicomClient,
    bulk: Cohort,
    mount_point: Callable[..., Path],
) -> None:
    out = mount_point("ro", read_only=True)
    with pytest.raises(LocalStorageError, match="Read-only file system") as caught:
        await quick_client.get_study(study_of(bulk), peer=node_of(victim_server), output_dir=out)
    result = caught.value.result
    assert result is not None and result.received == 0 and result.failed_sop_instance_uids
    assert list(out.iterdir()) == []
    assert_no_association_left()


def _pacs(server: OrthancServer, scp_port: int) -> cnb.Pacs:
    return cnb.connect(node_of(server), scp_port=scp_port, timeouts=QUICK, max_associations=1)


def test_notebook_pull_on_a_full_disk_keeps_the_manifest(
    victim: PeerFreezer,
    victim_server: OrthancServer,
    bulk: Cohort,
    scp_port: int,
    mount_point: Callable[..., Path],
) -> None:
    """Two studies onto a disk with room for a few instances: LocalStorageError with the
    manifest of every planned instance; the second study is not even asked for."""
    out = mount_point("nb-full", size="160k")
    pacs = _pacs(victim_server, scp_port)
    try:
        studies = pacs.find_studies(PatientID="*")
        assert len(studies) == 2
        with pytest.raises(LocalStorageError) as caught:
            pacs.get(studies, output_dir=out, progress=False)
    finally:
        pacs.close()
    manifest = caught.value.manifest
    assert manifest is not None and len(manifest) == 2 * PER_STUDY
    retrieved = manifest[manifest["status"] == "retrieved"]
    files = sorted(str(p) for p in out.rglob("*.dcm"))
    assert sorted(retrieved["path"]) == files and 0 < len(files) < PER_STUDY
    for path in files:
        assert dcmread(path).SOPInstanceUID == Path(path).stem
    assert not list(out.rglob("*.part"))
    assert set(manifest["status"]) <= {"retrieved", "failed", "missing"}
    assert manifest["error"][manifest["status"] != "retrieved"].notna().all()
    second = manifest[manifest["StudyInstanceUID"] == studies["StudyInstanceUID"].iloc[1]]
    assert set(second["status"]) == {"missing"}  # not asked for once the disk was full
    if (out / "manifest.parquet").is_file():
        written = pd.read_parquet(out / "manifest.parquet")
        assert list(written["status"]) == list(manifest["status"])
        assert "also written to" in str(caught.value)
    else:
        assert "could NOT be written" in str(caught.value)
    assert_no_association_left()


class FillDiskAtTheEnd:
    """A progress sink that fills the disk once the last instance is stored."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.total: float | None = None
        self.count = 0

    def update(self, n: float = 1) -> None:
        self.count += int(n)
        if self.total is not None and self.count == self.total:
            with (self.root / "filler").open("wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 4096)
                        fh.flush()
                except OSError:
                    pass

    def refresh(self) -> None:
        return None

    def close(self) -> None:
        return None


def test_manifest_that_cannot_be_written_is_returned_on_the_error(
    victim: PeerFreezer,
    victim_server: OrthancServer,
    bulk: Cohort,
    scp_port: int,
    mount_point: Callable[..., Path],
) -> None:
    """Regression: a full disk made the manifest writer raise a raw OSError and the
    per-instance outcome was lost.  Every file fits; then the disk fills up."""
    out = mount_point("nb-manifest", size="1m")
    pacs = _pacs(victim_server, scp_port)
    try:
        study = pacs.find_studies(StudyInstanceUID=study_of(bulk))
        with pytest.raises(LocalStorageError, match="could NOT be written") as caught:
            pacs.get(study, output_dir=out, progress=FillDiskAtTheEnd(out))
    finally:
        pacs.close()
    manifest = caught.value.manifest
    assert manifest is not None and set(manifest["status"]) == {"retrieved"}
    assert len(manifest) == PER_STUDY == len(list(out.rglob("*.dcm")))
    assert not (out / "manifest.parquet").exists() and not list(out.rglob("*.part"))


def test_notebook_pull_into_a_read_only_folder(
    victim: PeerFreezer,
    victim_server: OrthancServer,
    bulk: Cohort,
    scp_port: int,
    mount_point: Callable[..., Path],
) -> None:
    out = mount_point("nb-ro", read_only=True)
    pacs = _pacs(victim_server, scp_port)
    try:
        studies = pacs.find_studies(PatientID="*")
        with pytest.raises(LocalStorageError, match="could NOT be written") as caught:
            pacs.get(studies, output_dir=out, progress=False)
        with pytest.raises(LocalStorageError, match="cannot create output_dir"):
            pacs.get(studies, output_dir=out / "sub", progress=False)
    finally:
        pacs.close()
    manifest = caught.value.manifest
    assert manifest is not None and len(manifest) == 2 * PER_STUDY
    assert set(manifest["status"]) <= {"failed", "missing"}
    assert "Read-only file system" in str(caught.value)
    assert list(out.iterdir()) == []
    assert port_is_free(scp_port)


def test_read_only_cache_and_metadata_folders(
    victim: PeerFreezer,
    victim_server: OrthancServer,
    bulk: Cohort,
    scp_port: int,
    tmp_path: Path,
    mount_point: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cache that cannot be written costs the cache, not the answer; metadata= that
    cannot be written is a LocalStorageError carrying the manifest of the pull."""
    ro = mount_point("ro-side", read_only=True)
    pacs = cnb.connect(node_of(victim_server), scp_port=scp_port, timeouts=QUICK, cache=ro)
    try:
        with caplog.at_level("WARNING", logger="clarinet_nb"):
            studies = pacs.find_studies(PatientID="*")
        assert sorted(studies["StudyInstanceUID"]) == sorted(bulk.studies())
        assert "could not write the query cache" in caplog.text
        out = tmp_path / "out"
        one = studies[studies["StudyInstanceUID"] == study_of(bulk)]
        with pytest.raises(LocalStorageError, match="metadata= could not be written") as caught:
            pacs.get(one, output_dir=out, metadata=ro / "headers.parquet", progress=False)
    finally:
        pacs.close()
    manifest = caught.value.manifest
    assert manifest is not None and set(manifest["status"]) == {"retrieved"}
    assert len(list(out.rglob("*.dcm"))) == PER_STUDY == len(manifest)


# -- the fault injector itself ---------------------------------------------------------


def _pdu(kind: int, body: bytes) -> bytes:
    return bytes([kind, 0]) + len(body).to_bytes(4, "big") + body


def test_proxy_cuts_inside_the_chosen_pdu_with_a_reset() -> None:
    """The proxy forwards exactly up to the trigger (here 10 bytes into the 3rd P-DATA
    PDU, which arrives split across reads) and then resets both sides."""
    stream = _pdu(0x02, b"a" * 50) + b"".join(_pdu(P_DATA_TF, bytes([i]) * 300) for i in range(5))
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            for i in range(0, len(stream), 97):  # PDUs straddle the reads
                try:
                    conn.sendall(stream[i : i + 97])
                except OSError:
                    break
            done.wait(JOIN_DEADLINE)

    sender = threading.Thread(target=serve)
    sender.start()
    with FaultProxy("127.0.0.1", server.getsockname()[1]) as proxy:
        trigger = proxy.arm("cut", pdu_number=3, offset=10)
        client = socket.create_connection((proxy.host, proxy.port))
        got = bytearray()
        with pytest.raises(ConnectionResetError):
            while chunk := client.recv(4096):
                got += chunk
        client.close()
        assert trigger.fired.is_set()
    done.set()
    sender.join()
    server.close()
    third = len(_pdu(0x02, b"a" * 50)) + 2 * len(_pdu(P_DATA_TF, b"x" * 300))
    assert bytes(got) == stream[: third + 10]


def test_proxy_stall_holds_the_connection_open() -> None:
    """After a stall nothing more is forwarded, yet the connection is not closed."""
    server = socket.create_server(("127.0.0.1", 0))
    with FaultProxy("127.0.0.1", server.getsockname()[1]) as proxy:
        trigger = proxy.arm("stall", direction="from_client", after_bytes=5)
        client = socket.create_connection((proxy.host, proxy.port))
        conn, _ = server.accept()
        client.sendall(b"0123456789")
        conn.settimeout(JOIN_DEADLINE)
        assert conn.recv(100) == b"01234"
        assert trigger.fired.wait(JOIN_DEADLINE)
        conn.settimeout(0.5)  # bounded read of what must never come
        with pytest.raises(TimeoutError):
            conn.recv(100)
        assert proxy.bytes_forwarded("from_client") == 5
        client.close()
        conn.close()
    server.close()
