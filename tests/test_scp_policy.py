"""Our C-MOVE Storage SCP under attack: a real Orthanc moves a study to it while a
hostile pynetdicom sender C-STOREs to the same port.

The attack is hooked deterministically: it runs inside ``on_stored`` of the first
genuine instance, so the PACS is waiting for our C-STORE answer (the move is in
progress, its route open) while the hostile sender connects.  Whatever the sender
does, only the PACS moved from gets an association, only instances of the
retrieve are kept, a duplicate never replaces the first copy, nothing refused
is written, and the result counts what was refused.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

import clarinet_nb.dicom.handlers as handlers_module
from clarinet_nb import (
    DicomOperations,
    RetrieveRequest,
    RetrieveResult,
    RetrieveStatus,
    StorageConfig,
    StorageMode,
)
from clarinet_nb.dicom.handlers import DUPLICATE, NOT_AUTHORISED, StorageHandler
from clarinet_nb.dicom.scp import Admission, Scope, peer_addresses
from clarinet_nb.settings import Settings
from clarinet_nb.testing import Cohort, OrthancServer, free_port
from clarinet_nb.testing.hostile import (
    HostileSender,
    SendOutcome,
    forged_copy,
    oversize_dataset,
    unrelated_dataset,
)
from tests.support import TEST_TIMEOUTS, node, port_is_free

REJECTED_AET = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognised
REJECTED_ADDRESS = (0x01, 0x01, 0x01)  # permanent, service user, no reason given


# -- helpers ------------------------------------------------------------------------------


class Attack:
    """``on_stored`` hook: runs ``action(sop_uid)`` once, when the first genuine
    instance has been kept, while the PACS waits for our answer to it."""

    def __init__(self, action: Callable[[str], Any]) -> None:
        self.action = action
        self.fired = threading.Event()
        self.outcome: Any = None
        self.error: BaseException | None = None
        self.first_uid = ""

    def __call__(self, sop_uid: str, nbytes: int) -> None:
        if self.fired.is_set():
            return
        self.fired.set()
        self.first_uid = sop_uid
        try:
            self.outcome = self.action(sop_uid)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            self.error = exc

    def result(self) -> Any:
        assert self.fired.is_set(), "no genuine instance arrived: the attack never ran"
        if self.error is not None:
            raise self.error
        return self.outcome


class WriteSpy:
    """Records every path the DISK sink starts writing (temp files included)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[Path] = []
        original = handlers_module._write_atomically

        def spy(path: Path, event: evt.Event) -> None:
            self.paths.append(path)
            original(path, event)

        monkeypatch.setattr(handlers_module, "_write_atomically", spy)


def _study(cohort: Cohort) -> str:
    """A study of 6 uncompressed CT instances (2 series)."""
    return next(
        s
        for s in cohort.studies()
        if {i.modality for i in cohort.instances_in(s)} == {"CT"}
        and len(cohort.instances_in(s)) >= 6
    )


def _ops(port: int, **kwargs: Any) -> DicomOperations:
    kwargs.setdefault("move_allowed_aets", ())
    kwargs.setdefault("move_check_host", True)
    return DicomOperations(timeouts=TEST_TIMEOUTS, scp_port=port, **kwargs)


def _original(cohort: Cohort, sop_uid: str) -> Dataset:
    return dcmread(cohort.by_sop_uid()[sop_uid].path)


def _no_acceptor_threads() -> bool:
    for thread in threading.enumerate():
        if isinstance(thread, Association) and thread.is_acceptor:
            thread.join(timeout=TEST_TIMEOUTS.acse)
    return not any(
        isinstance(t, Association) and t.is_acceptor and t.is_alive() for t in threading.enumerate()
    )


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _move(
    ops: DicomOperations,
    orthanc: OrthancServer,
    request: RetrieveRequest,
    storage: StorageConfig,
    attack: Attack,
    **kwargs: Any,
) -> RetrieveResult:
    result = ops.retrieve(
        "move", request, node(orthanc), storage, on_stored=attack, raise_on_error=False, **kwargs
    )
    attack.result()
    return result


def _assert_whole(result: RetrieveResult, cohort: Cohort, study: str) -> None:
    uids = sorted(i.sop_uid for i in cohort.instances_in(study))
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    assert result.expected in (len(uids), None)
    assert result.received == len(uids)
    assert sorted(result.received_sop_instance_uids) == uids


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> WriteSpy:
    return WriteSpy(monkeypatch)


# -- the port -----------------------------------------------------------------------------


def test_port_is_closed_when_no_move_runs(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int, tmp_path: Path
) -> None:
    sender = HostileSender(move_scp_port, calling_aet=orthanc_tuned.aet, timeout=5)
    before = sender.send([unrelated_dataset()])
    assert not before.connected and not before.statuses
    assert port_is_free(move_scp_port)
    study = _study(cohort)
    attack = Attack(lambda uid: sender.send([unrelated_dataset()]))
    _move(
        _ops(move_scp_port),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(output_dir=tmp_path),
        attack,
    )
    during: SendOutcome = attack.result()
    assert during.established  # the port was open during the move (right AE and host)
    assert during.statuses == [NOT_AUTHORISED]
    after = sender.send([unrelated_dataset()])
    assert not after.connected and not after.statuses
    assert port_is_free(move_scp_port)


# -- who may send -------------------------------------------------------------------------


def test_other_calling_aet_is_rejected_at_association(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int, tmp_path: Path, spy: WriteSpy
) -> None:
    study = _study(cohort)

    def attack_with(uid: str) -> SendOutcome:
        sender = HostileSender(move_scp_port, calling_aet="INTRUDER")
        return sender.send([unrelated_dataset(), forged_copy(_original(cohort, uid))])

    attack = Attack(attack_with)
    result = _move(
        _ops(move_scp_port),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(output_dir=tmp_path),
        attack,
    )
    outcome: SendOutcome = attack.result()
    assert outcome.rejected and outcome.reject_reason == REJECTED_AET
    assert not outcome.statuses
    _assert_whole(result, cohort, study)
    assert [(r.reason, r.calling_aet, r.address) for r in result.refused] == [
        ("calling AE title not allowed", "INTRUDER", "127.0.0.1")
    ]
    assert result.refused[0].sop_instance_uid == "" and result.refused[0].status is None
    assert _files(tmp_path) == set(result.paths)
    assert sorted(spy.paths) == sorted(result.paths)
    assert "1 refused" in result.summary()
    assert port_is_free(move_scp_port)
    assert _no_acceptor_threads()  # the rejected association's thread ended too


def test_right_aet_from_another_address_is_rejected(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int, tmp_path: Path, spy: WriteSpy
) -> None:
    """The peer is 127.0.0.1: the PACS's own AE title from 127.0.0.2 is someone else."""
    study = _study(cohort)

    def attack_with(uid: str) -> SendOutcome:
        sender = HostileSender(
            move_scp_port, calling_aet=orthanc_tuned.aet, bind_address="127.0.0.2"
        )
        return sender.send([forged_copy(_original(cohort, uid)), unrelated_dataset()])

    attack = Attack(attack_with)
    result = _move(
        _ops(move_scp_port),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(output_dir=tmp_path),
        attack,
    )
    outcome: SendOutcome = attack.result()
    assert outcome.rejected and outcome.reject_reason == REJECTED_ADDRESS
    _assert_whole(result, cohort, study)
    assert [(r.reason, r.calling_aet, r.address) for r in result.refused] == [
        ("source address not allowed", orthanc_tuned.aet, "127.0.0.2")
    ]
    assert sorted(spy.paths) == sorted(result.paths) and _files(tmp_path) == set(result.paths)


def test_without_host_check_the_instance_is_still_checked(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int, tmp_path: Path, spy: WriteSpy
) -> None:
    """move_check_host=False admits the PACS's AE title from anywhere, but an
    instance that is not part of the retrieve is still refused and never written."""
    study = _study(cohort)
    sender = HostileSender(move_scp_port, calling_aet=orthanc_tuned.aet, bind_address="127.0.0.2")
    attack = Attack(lambda uid: sender.send([unrelated_dataset()]))
    result = _move(
        _ops(move_scp_port, move_check_host=False),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(output_dir=tmp_path),
        attack,
    )
    outcome: SendOutcome = attack.result()
    assert outcome.established and outcome.statuses == [NOT_AUTHORISED]
    _assert_whole(result, cohort, study)
    assert [(r.reason, r.address, r.status) for r in result.refused] == [
        ("not part of this retrieve", "127.0.0.2", NOT_AUTHORISED)
    ]
    assert sorted(spy.paths) == sorted(result.paths)


def test_move_allowed_aets_admit_another_sender_ae(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int, tmp_path: Path
) -> None:
    """A PACS that sends from another AE title is admitted when listed; without the
    setting the same sender is rejected."""
    study = _study(cohort)

    def attack_with(uid: str) -> SendOutcome:
        return HostileSender(move_scp_port, calling_aet="PACS-STORE").send([unrelated_dataset()])

    widened = Attack(attack_with)
    result = _move(
        _ops(move_scp_port, move_allowed_aets=("PACS-STORE",)),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(output_dir=tmp_path / "widened"),
        widened,
    )
    assert widened.result().established
    assert widened.result().statuses == [NOT_AUTHORISED]  # admitted, but not ours
    _assert_whole(result, cohort, study)
    strict = Attack(attack_with)
    _move(
        _ops(move_scp_port),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(output_dir=tmp_path / "strict"),
        strict,
    )
    assert strict.result().rejected and strict.result().reject_reason == REJECTED_AET


# -- what may be kept ---------------------------------------------------------------------


def test_forged_expected_uid_never_replaces_the_real_file(
    orthanc_tuned: OrthancServer,
    cohort: Cohort,
    move_scp_port: int,
    tmp_path: Path,
    spy: WriteSpy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The forger knows an expected SOP Instance UID and the PACS's AE title and
    comes from the PACS's address: its copy arrives second and is refused."""
    study = _study(cohort)

    def attack_with(uid: str) -> list[SendOutcome]:
        forged = forged_copy(_original(cohort, uid))
        as_pacs = HostileSender(move_scp_port, calling_aet=orthanc_tuned.aet).send([forged])
        as_other = HostileSender(move_scp_port, calling_aet="INTRUDER").send([forged])
        return [as_pacs, as_other]

    attack = Attack(attack_with)
    caplog.set_level(logging.WARNING, logger="clarinet_nb")
    result = _move(
        _ops(move_scp_port),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(output_dir=tmp_path / "move", overwrite=True),
        attack,
    )
    as_pacs, as_other = attack.result()
    assert as_pacs.established and as_pacs.statuses == [DUPLICATE]
    assert as_other.rejected
    _assert_whole(result, cohort, study)
    assert "201" not in result.summary() and "2 refused" in result.summary()
    reasons = sorted(r.reason for r in result.refused)
    assert reasons == ["calling AE title not allowed", "duplicate SOP Instance UID"]
    duplicate = next(r for r in result.refused if r.status == DUPLICATE)
    assert duplicate.sop_instance_uid == attack.first_uid
    # the file is Orthanc's, byte for byte: compare with a C-GET of the same instance
    inst = cohort.by_sop_uid()[attack.first_uid]
    reference = _ops(move_scp_port).retrieve(
        "get",
        RetrieveRequest.instances(inst.sop_uid, inst.series_uid, inst.study_uid),
        node(orthanc_tuned),
        StorageConfig(output_dir=tmp_path / "get"),
    )
    moved = next(p for p in result.paths if p.stem == attack.first_uid)
    assert _sha(moved) == _sha(reference.paths[0])
    assert "ImageComments" not in dcmread(moved)
    assert len([p for p in spy.paths if p.stem == attack.first_uid]) == 2  # move + get, once each
    # warned once, without patient data
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "refused" in r.message
    ]
    assert len(warnings) == 1
    for rec in caplog.records:
        assert inst.patient_id not in rec.getMessage()
        assert inst.patient_name not in rec.getMessage()


def test_duplicate_in_memory_keeps_the_first_dataset(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int
) -> None:
    study = _study(cohort)

    def attack_with(uid: str) -> SendOutcome:
        forged = forged_copy(_original(cohort, uid))
        return HostileSender(move_scp_port, calling_aet=orthanc_tuned.aet).send([forged, forged])

    attack = Attack(attack_with)
    result = _move(
        _ops(move_scp_port),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(mode=StorageMode.MEMORY),
        attack,
    )
    outcome: SendOutcome = attack.result()
    assert outcome.statuses == [DUPLICATE, DUPLICATE]
    _assert_whole(result, cohort, study)
    kept = [ds for ds in result.datasets if ds.SOPInstanceUID == attack.first_uid]
    assert len(kept) == 1 and "ImageComments" not in kept[0]
    assert kept[0].PixelData == _original(cohort, attack.first_uid).PixelData
    assert len(result.datasets) == result.received
    assert [r.reason for r in result.refused] == ["duplicate SOP Instance UID"] * 2


def test_unrelated_study_is_refused_and_never_written(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int, tmp_path: Path, spy: WriteSpy
) -> None:
    """From the PACS's AE title and address: an unrelated study, and an instance
    of another study of the cohort (both refused 0x0124)."""
    study = _study(cohort)
    other = next(i for i in cohort.instances if i.study_uid != study)
    sender = HostileSender(move_scp_port, calling_aet=orthanc_tuned.aet)
    attack = Attack(lambda uid: sender.send([unrelated_dataset(), dcmread(other.path)]))
    result = _move(
        _ops(move_scp_port),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(output_dir=tmp_path),
        attack,
    )
    assert attack.result().statuses == [NOT_AUTHORISED, NOT_AUTHORISED]
    _assert_whole(result, cohort, study)
    assert sorted(spy.paths) == sorted(result.paths)
    assert _files(tmp_path) == set(result.paths)
    assert other.sop_uid not in result.received_sop_instance_uids
    assert {(r.reason, r.calling_aet, r.address) for r in result.refused} == {
        ("not part of this retrieve", orthanc_tuned.aet, "127.0.0.1")
    }
    assert len(result.refused) == 2


def test_oversize_dataset_is_refused_and_never_written(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int, tmp_path: Path, spy: WriteSpy
) -> None:
    """32 MB from a stranger: rejected before a byte of it is read; from the PACS's
    AE title and address: read (pynetdicom buffers it), refused, never written."""
    study = _study(cohort)
    big = oversize_dataset(32)

    def attack_with(uid: str) -> list[SendOutcome]:
        stranger = HostileSender(move_scp_port, calling_aet="INTRUDER").send([big])
        as_pacs = HostileSender(move_scp_port, calling_aet=orthanc_tuned.aet).send([big])
        return [stranger, as_pacs]

    attack = Attack(attack_with)
    result = _move(
        _ops(move_scp_port),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(output_dir=tmp_path),
        attack,
    )
    stranger, as_pacs = attack.result()
    assert stranger.rejected and not stranger.statuses
    assert as_pacs.statuses == [NOT_AUTHORISED]
    _assert_whole(result, cohort, study)
    assert result.bytes_received < 8 * 1024 * 1024  # the 32 MB never counted as received
    assert sorted(spy.paths) == sorted(result.paths) and _files(tmp_path) == set(result.paths)
    assert sorted(r.reason for r in result.refused) == [
        "calling AE title not allowed",
        "not part of this retrieve",
    ]


# -- admission without a pre-query --------------------------------------------------------


def test_move_without_pre_query_checks_each_dataset(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int, tmp_path: Path, spy: WriteSpy
) -> None:
    """query_first=False: no UID list, so each instance's own study UID is read
    from its header and compared with the request."""
    study = _study(cohort)
    other = next(i for i in cohort.instances if i.study_uid != study)

    def attack_with(uid: str) -> SendOutcome:
        sender = HostileSender(move_scp_port, calling_aet=orthanc_tuned.aet)
        forged = forged_copy(_original(cohort, uid))
        return sender.send([unrelated_dataset(), dcmread(other.path), forged])

    attack = Attack(attack_with)
    result = _move(
        _ops(move_scp_port),
        orthanc_tuned,
        RetrieveRequest.study(study),
        StorageConfig(output_dir=tmp_path),
        attack,
        query_first=False,
    )
    assert attack.result().statuses == [NOT_AUTHORISED, NOT_AUTHORISED, DUPLICATE]
    _assert_whole(result, cohort, study)
    assert result.expected == len(cohort.instances_in(study))  # the PACS's counters
    assert set(result.paths) == {
        tmp_path / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm"
        for i in cohort.instances_in(study)
    }
    assert sorted(spy.paths) == sorted(result.paths)
    assert len(result.refused) == 3


def test_series_move_without_pre_query_refuses_another_series(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int
) -> None:
    study = _study(cohort)
    series, other_series = cohort.series(study)[:2]
    stranger = cohort.instances_in(series_uid=other_series)[0]
    sender = HostileSender(move_scp_port, calling_aet=orthanc_tuned.aet)
    attack = Attack(lambda uid: sender.send([dcmread(stranger.path)]))
    result = _move(
        _ops(move_scp_port),
        orthanc_tuned,
        RetrieveRequest.series(series, study_uid=study),
        StorageConfig(mode=StorageMode.MEMORY),
        attack,
        query_first=False,
    )
    assert attack.result().statuses == [NOT_AUTHORISED]
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    assert sorted(ds.SOPInstanceUID for ds in result.datasets) == sorted(
        i.sop_uid for i in cohort.instances_in(series_uid=series)
    )
    assert [r.reason for r in result.refused] == ["not part of this retrieve"]


# -- concurrent moves share the listener -------------------------------------------------


def test_concurrent_moves_each_keep_only_their_own(
    orthanc_tuned: OrthancServer, cohort: Cohort, move_scp_port: int, tmp_path: Path
) -> None:
    """Two moves from the same PACS overlap on one listener (each waits in its
    first on_stored for the other): one routed by its pre-query list, the other
    (query_first=False) by each dataset's study UID; a stranger's instance sent
    while both run is refused and counted by both."""
    first, second = cohort.studies()[:2]
    meet = threading.Barrier(2, timeout=TEST_TIMEOUTS.dimse)
    sender = HostileSender(move_scp_port, calling_aet=orthanc_tuned.aet)

    def meet_then(action: Callable[[str], Any] | None) -> Attack:
        def run(uid: str) -> Any:
            meet.wait()
            return action(uid) if action is not None else None

        return Attack(run)

    attacked = threading.Event()

    def attack_then_tell(uid: str) -> Any:
        try:
            return sender.send([unrelated_dataset()])
        finally:
            attacked.set()

    attack_a = meet_then(attack_then_tell)
    # the second move stays open (waiting in on_stored) until the stranger was answered
    attack_b = meet_then(lambda uid: attacked.wait(TEST_TIMEOUTS.dimse))
    ops = _ops(move_scp_port)
    with ThreadPoolExecutor(max_workers=2) as pool:
        moving_a = pool.submit(
            _move,
            ops,
            orthanc_tuned,
            RetrieveRequest.study(first),
            StorageConfig(output_dir=tmp_path / "a"),
            attack_a,
        )
        moving_b = pool.submit(
            _move,
            ops,
            orthanc_tuned,
            RetrieveRequest.study(second),
            StorageConfig(output_dir=tmp_path / "b"),
            attack_b,
            query_first=False,
        )
        result_a, result_b = moving_a.result(), moving_b.result()
    assert attack_a.result().statuses == [NOT_AUTHORISED]
    for result, study, root in ((result_a, first, "a"), (result_b, second, "b")):
        _assert_whole(result, cohort, study)
        assert _files(tmp_path / root) == {
            tmp_path / root / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm"
            for i in cohort.instances_in(study)
        }
        assert [r.reason for r in result.refused] == ["not part of this retrieve"]
    assert port_is_free(move_scp_port)


# -- the same handler serves C-GET: duplicates over a real association -----------------


@pytest.fixture
def handler_server(tmp_path: Path) -> Iterator[tuple[StorageHandler, int]]:
    """A pynetdicom Storage SCP bound to a DISK StorageHandler (as during C-GET)."""
    handler = StorageHandler(StorageConfig(output_dir=tmp_path, overwrite=True))
    ae = AE(ae_title="CLARINET")
    ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)]
    )
    assert isinstance(server, ThreadedAssociationServer)
    try:
        yield handler, port
    finally:
        server.shutdown()


def test_handler_keeps_the_first_copy_of_a_uid(
    handler_server: tuple[StorageHandler, int], cohort: Cohort, tmp_path: Path
) -> None:
    handler, port = handler_server
    inst = next(i for i in cohort.instances if i.modality == "CT")
    genuine = dcmread(inst.path)
    outcome = HostileSender(port, calling_aet="PEER").send([genuine, forged_copy(genuine)])
    assert outcome.statuses == [0x0000, DUPLICATE]
    (path,) = handler.tally.paths
    assert dcmread(path).PixelData == genuine.PixelData and "ImageComments" not in dcmread(path)
    assert list(handler.tally.received) == [inst.sop_uid]
    assert [(r.reason, r.calling_aet) for r in handler.tally.refused] == [
        ("duplicate SOP Instance UID", "PEER")
    ]


# -- pure logic ---------------------------------------------------------------------------


def test_admission_rules() -> None:
    admission = Admission(frozenset({"ORTHANC"}), peer_addresses("localhost"))
    assert admission.refusal("ORTHANC", "127.0.0.1") is None
    assert admission.refusal("ORTHANC", "::ffff:127.0.0.1") is None
    assert admission.refusal("ORTHANC", "127.0.0.2") == "source address not allowed"
    assert admission.refusal("INTRUDER", "127.0.0.1") == "calling AE title not allowed"
    assert Admission(frozenset({"ORTHANC"})).refusal("ORTHANC", "10.0.0.9") is None
    assert peer_addresses("127.0.0.1") == frozenset({"127.0.0.1"})
    assert peer_addresses("no-such-host.invalid", "127.0.0.1", timeout=5) == {"127.0.0.1"}


def test_scope_rules() -> None:
    scope = Scope("1.2.3", "1.2.3.4")
    assert scope.admits("9.9", ("1.2.3", "1.2.3.4", "9.9"))
    assert not scope.admits("9.9", ("1.2.3", "1.2.3.5", "9.9"))
    assert not scope.admits("9.9", ("1.2.4", "1.2.3.4", "9.9"))
    assert not scope.admits("9.9", ("1.2.3", "1.2.3.4", "9.8"))  # command vs dataset
    listed = Scope(sop_uids=frozenset({"9.9"}))
    assert listed.admits("9.9", ("", "", "9.9")) and not listed.admits("9.8", ("", "", "9.8"))


def test_allowed_aets_setting_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARINET_MOVE_ALLOWED_AETS", "PACS2, ARCHIVE")
    assert Settings().move_allowed_aets == ("PACS2", "ARCHIVE")
    monkeypatch.setenv("CLARINET_MOVE_ALLOWED_AETS", '["PACS2", "ARCHIVE"]')
    assert Settings().move_allowed_aets == ("PACS2", "ARCHIVE")
    monkeypatch.setenv("CLARINET_MOVE_CHECK_HOST", "false")
    assert Settings().move_check_host is False
    monkeypatch.setenv("CLARINET_MOVE_ALLOWED_AETS", "A-TITLE-LONGER-THAN-16")
    with pytest.raises(ValueError, match="longer than 16"):
        Settings()
