"""The lean C-STORE receive path of our C-MOVE Storage SCP (``settings.fast_path``,
clarinet_nb/dicom/fastscp.py), against real peers, always side by side with
pynetdicom's own path (the switch off):

- a real Orthanc C-MOVEs every study of the cohort to disk and to memory: the same
  files byte for byte, the same datasets and counters;
- DCMTK ``storescu`` sends into our listener (what a C-MOVE opens) with tiny and
  large PDUs, several files per association, our max PDU 4096 and unlimited,
  refused and duplicate instances among them: the same statuses, refusals, files;
- a connection cut and an A-ABORT in the middle of an instance: the same partial
  accounting, nothing half written, the listener serves the next sender;
- a C-ECHO in the middle of the stores is handed to pynetdicom, which answers it
  and serves the rest of the association;
- a sender that stalls mid-message is aborted after the network timeout.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from clarinet_nb import (
    DicomOperations,
    RetrieveRequest,
    RetrieveResult,
    StorageConfig,
    StorageMode,
)
from clarinet_nb.dicom import fastpath, fastscp
from clarinet_nb.dicom.association import Timeouts
from clarinet_nb.dicom.handlers import DUPLICATE, NOT_AUTHORISED, StorageHandler
from clarinet_nb.dicom.scp import Admission, receiving
from clarinet_nb.settings import settings
from clarinet_nb.testing import Cohort, OrthancServer, free_port
from clarinet_nb.testing.cohort import CohortInstance
from clarinet_nb.testing.faults import FaultProxy
from clarinet_nb.testing.hostile import unrelated_dataset
from tests.support import TEST_TIMEOUTS, node
from tests.test_fastpath import _counts, _tree

STORESCU = "/usr/bin/storescu"
SENDER = "STORESCU"


class Spy:
    """Counts the associations our SCP served, and the C-MOVEs sent, on the lean path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sessions = 0
        self.moves = 0
        real = fastscp._Session.run
        real_move = fastpath.FastGet.move

        def run(this: Any) -> None:
            self.sessions += 1
            real(this)

        def move(this: Any, *args: Any, **kwargs: Any) -> Any:
            self.moves += 1
            return real_move(this, *args, **kwargs)

        monkeypatch.setattr(fastscp._Session, "run", run)
        monkeypatch.setattr(fastpath.FastGet, "move", move)


def _no_acceptor_threads() -> bool:
    for thread in threading.enumerate():
        if isinstance(thread, Association) and thread.is_acceptor:
            thread.join(timeout=TEST_TIMEOUTS.acse)
    return not any(
        isinstance(t, Association) and t.is_acceptor and t.is_alive() for t in threading.enumerate()
    )


def _both(monkeypatch: pytest.MonkeyPatch, run: Callable[[bool], Any]) -> tuple[Any, Any, Spy]:
    spy = Spy(monkeypatch)
    monkeypatch.setattr(settings, "fast_path", False)
    slow = run(False)
    assert spy.sessions == spy.moves == 0
    monkeypatch.setattr(settings, "fast_path", True)
    fast = run(True)
    return slow, fast, spy


# -- a real C-MOVE from Orthanc -------------------------------------------------------------


def _merged(results: list[RetrieveResult]) -> RetrieveResult:
    return results[-1].model_copy(
        update={
            "received_sop_instance_uids": [
                u for r in results for u in r.received_sop_instance_uids
            ],
            "received": sum(r.received for r in results),
            "completed": sum(r.completed for r in results),
            "bytes_received": sum(r.bytes_received for r in results),
            "datasets": [d for r in results for d in r.datasets],
            "refused": [x for r in results for x in r.refused],
        }
    )


def test_move_to_disk_same_files_and_counters_as_pynetdicom(
    monkeypatch: pytest.MonkeyPatch,
    orthanc_tuned: OrthancServer,
    cohort: Cohort,
    move_scp_port: int,
    tmp_path: Path,
) -> None:
    """Every study of the cohort (multi-frame, JPEG, SR, PDF...) moved to disk."""
    ops = DicomOperations(timeouts=TEST_TIMEOUTS, scp_port=move_scp_port)

    def move(fast: bool) -> RetrieveResult:
        return _merged(
            [
                ops.retrieve(
                    "move",
                    RetrieveRequest.study(study),
                    node(orthanc_tuned),
                    StorageConfig(mode=StorageMode.DISK, output_dir=tmp_path / str(fast)),
                )
                for study in cohort.studies()
            ]
        )

    slow, fast, spy = _both(monkeypatch, move)
    assert spy.sessions >= len(cohort.studies()) and spy.moves >= len(cohort.studies())
    assert _counts(fast) == _counts(slow)
    assert fast.received == len(cohort.instances) and not fast.refused
    assert _tree(tmp_path / "True") == _tree(tmp_path / "False")
    assert _no_acceptor_threads()


def test_move_to_memory_same_datasets(
    monkeypatch: pytest.MonkeyPatch,
    orthanc_tuned: OrthancServer,
    cohort: Cohort,
    move_scp_port: int,
) -> None:
    ops = DicomOperations(timeouts=TEST_TIMEOUTS, scp_port=move_scp_port)
    studies = cohort.studies()[:3]

    def move(fast: bool) -> RetrieveResult:
        return _merged(
            [
                ops.retrieve(
                    "move",
                    RetrieveRequest.study(study),
                    node(orthanc_tuned),
                    StorageConfig(mode=StorageMode.MEMORY),
                    query_first=False,
                )
                for study in studies
            ]
        )

    slow, fast, spy = _both(monkeypatch, move)
    assert spy.sessions >= len(studies) and spy.moves >= len(studies)
    assert _counts(fast) == _counts(slow)
    by_uid = {ds.SOPInstanceUID: ds for ds in slow.datasets}
    assert len(fast.datasets) == len(by_uid) == sum(len(cohort.instances_in(s)) for s in studies)
    for ds in fast.datasets:
        other = by_uid[ds.SOPInstanceUID]
        assert ds == other
        assert ds.file_meta == other.file_meta


# -- DCMTK storescu into our listener -------------------------------------------------------


@contextlib.contextmanager
def listening(
    handler: StorageHandler,
    expected: frozenset[str],
    *,
    max_pdu: int = 16384,
    timeouts: Timeouts = TEST_TIMEOUTS,
) -> Iterator[int]:
    """Our Storage SCP, admitting ``SENDER`` from 127.0.0.1, as a C-MOVE opens it."""
    port = free_port()
    with receiving(
        handler,
        aet="CLARINET",
        port=port,
        max_pdu=max_pdu,
        timeouts=timeouts,
        admission=Admission(frozenset({SENDER}), frozenset({"127.0.0.1"})),
        expected=expected,
    ):
        yield port


def storescu(port: int, files: list[Path], *extra: str) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu, every file on one association, going on after a refusal."""
    return subprocess.run(
        [STORESCU, "-aet", SENDER, "-aec", "CLARINET", "-nh", *extra, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=TEST_TIMEOUTS.dimse,
        check=False,
    )


def _refusals(handler: StorageHandler) -> list[tuple[Any, ...]]:
    return sorted(
        (r.reason, r.calling_aet, r.address, r.sop_instance_uid, r.status)
        for r in handler.tally.refused
    )


def _tally(handler: StorageHandler) -> tuple[Any, ...]:
    tally = handler.tally
    return (
        sorted(tally.received),
        sorted(tally.failed.items()),
        tally.bytes_received,
        _refusals(handler),
    )


def _plain(cohort: Cohort) -> list[CohortInstance]:
    """Instances stored as Explicit VR Little Endian."""
    return [i for i in cohort.instances if i.transfer_syntax_uid == ExplicitVRLittleEndian]


def _one_class(cohort: Cohort) -> list[CohortInstance]:
    """Explicit VR Little Endian instances of the most common SOP class."""
    plain = _plain(cohort)
    classes = [i.sop_class_uid for i in plain]
    common = max(set(classes), key=classes.count)
    return [i for i in plain if i.sop_class_uid == common]


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instance of no retrieve (refused 0x0124)."""
    path = tmp_path_factory.mktemp("stranger") / "stranger.dcm"
    ds = unrelated_dataset()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("ours", [4096, 0])
@pytest.mark.parametrize("theirs", [4096, 131072])
def test_storescu_tiny_and_large_pdus_same_as_pynetdicom(
    monkeypatch: pytest.MonkeyPatch,
    cohort: Cohort,
    stranger: Path,
    tmp_path: Path,
    ours: int,
    theirs: int,
) -> None:
    """Every uncompressed instance of the cohort on one association, a stranger and a
    second copy among them: the same statuses, files, counters and refusals."""
    instances = _plain(cohort)[:12]
    files = [i.path for i in instances]
    files = [*files[:3], stranger, *files[3:], files[0]]  # a stranger, a duplicate
    expected = frozenset(i.sop_uid for i in instances)

    def send(fast: bool) -> StorageHandler:
        handler = StorageHandler(StorageConfig(output_dir=tmp_path / str(fast)))
        with listening(handler, expected, max_pdu=ours) as port:
            done = storescu(port, files, "--max-send-pdu", str(theirs), "-pdu", "131072")
        assert "Association Request Failed" not in done.stderr + done.stdout
        return handler

    slow, fast, spy = _both(monkeypatch, send)
    assert spy.sessions == 1
    assert _tally(fast) == _tally(slow)
    assert sorted(fast.tally.received) == sorted(expected)
    assert [(r.reason, r.status) for r in fast.tally.refused] == [
        ("not part of this retrieve", NOT_AUTHORISED),
        ("duplicate SOP Instance UID", DUPLICATE),
    ]
    assert _tree(tmp_path / "True") == _tree(tmp_path / "False")
    for inst in instances:
        written = tmp_path / "True" / inst.study_uid / inst.series_uid / f"{inst.sop_uid}.dcm"
        assert dcmread(written) == dcmread(inst.path)
    assert _no_acceptor_threads()


def test_storescu_abort_after_the_stores_keeps_every_instance(
    monkeypatch: pytest.MonkeyPatch, cohort: Cohort, tmp_path: Path
) -> None:
    files = [i.path for i in cohort.instances[:5]]
    expected = frozenset(i.sop_uid for i in cohort.instances[:5])

    def send(fast: bool) -> StorageHandler:
        handler = StorageHandler(StorageConfig(output_dir=tmp_path / str(fast)))
        with listening(handler, expected) as port:
            storescu(port, files, "--abort")
            assert _no_acceptor_threads()
        return handler

    slow, fast, spy = _both(monkeypatch, send)
    assert spy.sessions == 1
    assert _tally(fast) == _tally(slow)
    assert sorted(fast.tally.received) == sorted(expected)


# -- a cut and an A-ABORT mid-instance ---------------------------------------------------------


def test_connection_cut_mid_instance_same_partial_accounting(
    monkeypatch: pytest.MonkeyPatch, cohort: Cohort, tmp_path: Path
) -> None:
    """storescu sends in 4096-byte PDUs through a proxy that resets both sides inside
    its 12th P-DATA-TF PDU; then a second storescu (no proxy) sends the rest."""
    instances = cohort.instances[:8]
    files = [i.path for i in instances]
    expected = frozenset(i.sop_uid for i in instances)

    def send(fast: bool) -> tuple[StorageHandler, list[str]]:
        out = tmp_path / str(fast)
        handler = StorageHandler(StorageConfig(output_dir=out))
        with listening(handler, expected) as port:
            with FaultProxy("127.0.0.1", port) as proxy:
                trigger = proxy.arm(
                    "cut", direction="from_client", pdu_number=12, offset=10, connection=0
                )
                storescu(proxy.port, files, "--max-send-pdu", "4096")
                assert trigger.fired.is_set()
            assert _no_acceptor_threads()
            cut = sorted(handler.tally.received)
            assert 0 < len(cut) < len(files)
            assert sorted(p.stem for p in map(Path, _tree(out))) == cut  # nothing half written
            storescu(port, files)  # the listener still serves: the rest arrives
        return handler, cut

    (slow, slow_cut), (fast, fast_cut), spy = _both(monkeypatch, send)
    assert spy.sessions == 2
    assert fast_cut == slow_cut
    assert _tally(fast) == _tally(slow)
    assert sorted(fast.tally.received) == sorted(expected)
    assert len(fast.tally.refused) == len(fast_cut)  # the second copies: duplicates
    assert _tree(tmp_path / "True") == _tree(tmp_path / "False")


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxI", kind, len(body)) + body


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def _store_rq(msg_id: int, sop_class: str, sop_uid: str) -> bytes:
    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, tag, len(value)) + value

    def uid(value: str) -> bytes:
        raw = value.encode()
        return raw + b"\x00" * (len(raw) % 2)

    body = b"".join(
        (
            element(0x0002, uid(sop_class)),
            element(0x0100, struct.pack("<H", 0x0001)),
            element(0x0110, struct.pack("<H", msg_id)),
            element(0x0700, struct.pack("<H", 0)),
            element(0x0800, struct.pack("<H", 0)),
            element(0x1000, uid(sop_uid)),
        )
    )
    return element(0x0000, struct.pack("<I", len(body))) + body


@contextlib.contextmanager
def associated(port: int, sop_class: str) -> Iterator[tuple[Association, int]]:
    """A pynetdicom association to our listener as ``SENDER``: (association, context ID)."""
    ae = AE(ae_title=SENDER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TEST_TIMEOUTS.dimse
    assoc = ae.associate(
        "127.0.0.1",
        port,
        contexts=[build_context(sop_class, [ExplicitVRLittleEndian]), build_context(Verification)],
        ae_title="CLARINET",
    )
    try:
        assert assoc.is_established
        (context,) = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
        yield assoc, int(context.context_id or 0)
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()


def _raw_send(assoc: Association, data: bytes) -> None:
    sock = assoc.dul.socket
    assert sock is not None and sock.socket is not None
    sock.socket.sendall(data)


def _wait_closed(assoc: Association, limit: float) -> bool:
    """True once the peer (our SCP) ended the association."""
    done = threading.Event()

    def watch() -> None:
        assoc.join(limit)
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    return done.wait(limit + 1) and not assoc.is_alive()


def _explicit(path: Path) -> tuple[str, str, bytes]:
    ds = dcmread(path)
    raw = encode(ds, False, True)
    assert raw is not None
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), raw


def test_a_abort_in_the_middle_of_an_instance(
    monkeypatch: pytest.MonkeyPatch, cohort: Cohort, tmp_path: Path
) -> None:
    """Two instances stored whole, the third cut by an A-ABORT after half its dataset."""
    insts = _one_class(cohort)
    sop_class = insts[0].sop_class_uid
    expected = frozenset(i.sop_uid for i in insts[:3])

    def send(fast: bool) -> StorageHandler:
        handler = StorageHandler(StorageConfig(output_dir=tmp_path / str(fast)))
        with listening(handler, expected) as port, associated(port, sop_class) as (assoc, cx):
            for inst in insts[:2]:
                ds = dcmread(inst.path)
                assert assoc.send_c_store(ds).Status == 0
            _, sop_uid, raw = _explicit(insts[2].path)
            half = raw[: len(raw) // 2]
            _raw_send(
                assoc,
                _pdu(4, _pdv(cx, 0x03, _store_rq(9, sop_class, sop_uid)))
                + _pdu(4, _pdv(cx, 0x00, half))
                + _pdu(7, b"\x00\x00\x00\x00"),  # A-ABORT, service user
            )
            assert _wait_closed(assoc, TEST_TIMEOUTS.acse)
            assert _no_acceptor_threads()
        return handler

    slow, fast, spy = _both(monkeypatch, send)
    assert spy.sessions == 1
    assert _tally(fast) == _tally(slow)
    assert sorted(fast.tally.received) == sorted(i.sop_uid for i in insts[:2])
    assert _tree(tmp_path / "True") == _tree(tmp_path / "False")


def test_c_echo_in_the_middle_of_the_stores(
    monkeypatch: pytest.MonkeyPatch, cohort: Cohort, tmp_path: Path
) -> None:
    """Our SCP has no Verification context: a C-ECHO-RQ sent on the storage context is
    pynetdicom's to answer (it does); the stores after it are served too."""
    insts = _one_class(cohort)[:4]
    sop_class = insts[0].sop_class_uid
    expected = frozenset(i.sop_uid for i in insts)

    def send(fast: bool) -> tuple[StorageHandler, list[int]]:
        handler = StorageHandler(StorageConfig(output_dir=tmp_path / str(fast)))
        statuses: list[int] = []
        with listening(handler, expected) as port, associated(port, sop_class) as (assoc, cx):
            for inst in insts[:2]:
                statuses.append(int(assoc.send_c_store(dcmread(inst.path)).Status))
            statuses.append(_echo(assoc, cx))
            for inst in insts[2:]:
                statuses.append(int(assoc.send_c_store(dcmread(inst.path)).Status))
            assoc.release()
            assert assoc.is_released
        assert _no_acceptor_threads()
        return handler, statuses

    (slow, slow_statuses), (fast, fast_statuses), spy = _both(monkeypatch, send)
    assert spy.sessions == 1
    assert fast_statuses == slow_statuses == [0, 0, 0, 0, 0]
    assert _tally(fast) == _tally(slow)
    assert sorted(fast.tally.received) == sorted(expected)


def _echo(assoc: Association, context_id: int) -> int:
    """A C-ECHO-RQ on ``context_id``, as send_c_echo would send it on its own context."""
    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused:
            threading.Event().wait(0.001)  # pynetdicom's own send_* wait for this
        echo = C_ECHO()
        echo.MessageID = 77
        echo.AffectedSOPClassUID = Verification
        assoc.dimse.send_msg(echo, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
        assert isinstance(rsp, C_ECHO)
        return int(rsp.Status or 0)
    finally:
        assoc._reactor_checkpoint.set()


def test_sender_stalling_mid_message_is_aborted(
    monkeypatch: pytest.MonkeyPatch, cohort: Cohort, tmp_path: Path
) -> None:
    """Half a dataset, then silence: both paths abort after the timeouts (3 s here)."""
    inst = _plain(cohort)[0]
    short = Timeouts(connect=10, acse=10, dimse=3, network=3)

    def send(fast: bool) -> StorageHandler:
        handler = StorageHandler(StorageConfig(output_dir=tmp_path / str(fast)))
        with listening(handler, frozenset({inst.sop_uid}), timeouts=short) as port:
            with associated(port, inst.sop_class_uid) as (assoc, cx):
                sop_class, sop_uid, raw = _explicit(inst.path)
                _raw_send(
                    assoc,
                    _pdu(4, _pdv(cx, 0x03, _store_rq(1, sop_class, sop_uid)))
                    + _pdu(4, _pdv(cx, 0x00, raw[:100])),
                )
                assert _wait_closed(assoc, TEST_TIMEOUTS.acse)
            assert _no_acceptor_threads()
        return handler

    slow, fast, spy = _both(monkeypatch, send)
    assert spy.sessions == 1
    assert _tally(fast) == _tally(slow)
    assert not fast.tally.received and not _tree(tmp_path / "True")


def test_listener_stop_ends_an_open_association(
    monkeypatch: pytest.MonkeyPatch, cohort: Cohort, tmp_path: Path
) -> None:
    """The last move ends while a sender's association is open (idle, then mid-instance):
    the listener aborts it and stops, on either path."""
    insts = _one_class(cohort)[:2]
    sop_class = insts[0].sop_class_uid

    def send(fast: bool) -> StorageHandler:
        handler = StorageHandler(StorageConfig(output_dir=tmp_path / str(fast)))
        expected = frozenset(i.sop_uid for i in insts)
        with associated_later() as later:
            with listening(handler, expected) as port:
                assoc, cx = later(port, sop_class)
                assert int(assoc.send_c_store(dcmread(insts[0].path)).Status) == 0
                _, sop_uid, raw = _explicit(insts[1].path)
                _raw_send(
                    assoc,
                    _pdu(4, _pdv(cx, 0x03, _store_rq(9, sop_class, sop_uid)))
                    + _pdu(4, _pdv(cx, 0x00, raw[:100])),
                )
            assert _wait_closed(assoc, TEST_TIMEOUTS.acse)  # aborted by the stopping listener
        assert _no_acceptor_threads()
        return handler

    slow, fast, spy = _both(monkeypatch, send)
    assert spy.sessions == 1
    assert _tally(fast) == _tally(slow)
    assert sorted(fast.tally.received) == [insts[0].sop_uid]


@contextlib.contextmanager
def associated_later() -> Iterator[Callable[[int, str], tuple[Association, int]]]:
    """:func:`associated`, entered inside another block and left after it."""
    with contextlib.ExitStack() as stack:
        yield lambda port, sop_class: stack.enter_context(associated(port, sop_class))
