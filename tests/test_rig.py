"""Proof that the integration rig works, using plain pynetdicom (not clarinet_nb)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from clarinet_nb.testing import (
    Cohort,
    DcmqrscpServer,
    OrthancServer,
    Peer,
    PeerProcess,
    echo,
    generate_bulk,
    generate_cohort,
)
from clarinet_nb.testing.loading import MAX_CONTEXTS, _batches

pytestmark = pytest.mark.integration

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
STORE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit)


def c_find(peer: Peer, query: Dataset) -> tuple[list[Dataset], int | None]:
    """Study Root C-FIND; returns the identifiers and the final status."""
    ae = AE(ae_title="RIGTEST")
    ae.add_requested_context(FIND)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet)
    assert assoc.is_established, f"no association with {peer.name}"
    found: list[Dataset] = []
    final: int | None = None
    try:
        for status, identifier in assoc.send_c_find(query, FIND):
            final = status.get("Status")
            if identifier is not None and final in (0xFF00, 0xFF01):
                found.append(identifier)
    finally:
        assoc.release()
    return found, final


def image_query(study_uid: str, series_uid: str) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = series_uid
    q.SOPInstanceUID = ""
    return q


def associate(host: str, port: int, called: str, calling: str = "RIGTEST") -> tuple[bool, bool]:
    """(established, rejected) for a Verification association to ``called``."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called)
    established, rejected = assoc.is_established, assoc.is_rejected
    if established:
        assoc.release()
    return established, rejected


# --------------------------------------------------------------------------- peers


def test_echo(peer: Peer) -> None:
    assert echo(peer.aet, peer.host, peer.port)


def test_peer_identity_and_environment(peer: Peer) -> None:
    assert isinstance(peer, Peer)
    assert peer.name == f"{peer.kind}-{'tuned' if peer.tuned else 'stock'}"
    assert peer.host == "127.0.0.1"
    assert isinstance(peer, PeerProcess) and peer.pid is not None
    environ = Path(f"/proc/{peer.pid}/environ").read_bytes().split(b"\0")
    assert (b"TCP_NODELAY=1" in environ) is peer.tuned
    assert not any(v.startswith(b"TCP_NODELAY=") for v in environ if v != b"TCP_NODELAY=1")


def test_image_level_find_returns_every_instance(peer: Peer, cohort: Cohort) -> None:
    found: list[str] = []
    for study_uid in cohort.studies():
        for series_uid in cohort.series(study_uid):
            answers, status = c_find(peer, image_query(study_uid, series_uid))
            assert status == 0x0000, f"{peer.name}: final status {status}"
            expected = {i.sop_uid for i in cohort.instances_in(study_uid, series_uid)}
            assert {str(a.SOPInstanceUID) for a in answers} == expected
            found.extend(str(a.SOPInstanceUID) for a in answers)
    assert sorted(found) == sorted(cohort.by_sop_uid())


def test_study_date_range(peer: Peer, cohort: Cohort) -> None:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyDate = "20190101-20191231"
    q.StudyInstanceUID = ""
    answers, status = c_find(peer, q)
    assert status == 0x0000
    expected = {i.study_uid for i in cohort.instances if i.study_date.year == 2019}
    assert len(expected) == 2
    assert {str(a.StudyInstanceUID) for a in answers} == expected


def c_move(
    peer: Peer, study_uid: str, aet: str, port: int
) -> tuple[list[int | None], list[str], Dataset | None]:
    """C-MOVE a study to a pynetdicom Storage SCP (``aet`` on ``port``).

    Returns the statuses, the SOP Instance UIDs received and the final identifier.
    """
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        request = cast(C_STORE, event.request)
        received.append(str(request.AffectedSOPInstanceUID))
        return 0x0000

    scp = AE(ae_title=aet)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        scp.add_supported_context(context.abstract_syntax, [*STORE_SYNTAXES])
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    statuses: list[int | None] = []
    last: Dataset | None = None
    try:
        ae = AE(ae_title="RIGTEST")
        ae.add_requested_context(MOVE)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet)
        assert assoc.is_established
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study_uid
        for status, identifier in assoc.send_c_move(q, aet, MOVE):
            statuses.append(status.get("Status"))
            last = identifier
        assoc.release()
    finally:
        server.shutdown()
    return statuses, received, last


def test_move_to_configured_destination(
    peer: Peer, cohort: Cohort, move_scp_port: int, move_scp_aet: str
) -> None:
    study_uid = cohort.studies()[0]  # CT, SR, KO, PR: all uncompressed
    statuses, received, _ = c_move(peer, study_uid, move_scp_aet, move_scp_port)
    assert statuses[-1] == 0x0000, statuses
    assert sorted(received) == sorted(i.sop_uid for i in cohort.instances_in(study_uid))


def test_move_of_jpeg_instance(
    peer: Peer, cohort: Cohort, move_scp_port: int, move_scp_aet: str
) -> None:
    """Orthanc sends the JPEG instance as stored; dcmqrscp cannot send it by C-MOVE."""
    jpeg = next(i for i in cohort.instances if i.transfer_syntax_uid == JPEGBaseline8Bit)
    expected = {i.sop_uid for i in cohort.instances_in(jpeg.study_uid)}
    statuses, received, last = c_move(peer, jpeg.study_uid, move_scp_aet, move_scp_port)
    if peer.kind == "orthanc":
        assert statuses[-1] == 0x0000
        assert set(received) == expected
    else:
        assert statuses[-1] == 0xB000
        assert set(received) == expected - {jpeg.sop_uid}
        assert last is not None and last.FailedSOPInstanceUIDList == jpeg.sop_uid


def test_orthanc_returns_japanese_name_intact(orthanc_stock: OrthancServer, cohort: Cohort) -> None:
    yamada = next(i for i in cohort.instances if i.patient_name == "山田^太郎")
    q = Dataset()
    q.SpecificCharacterSet = "ISO_IR 192"
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = yamada.patient_id
    q.PatientName = ""
    q.StudyInstanceUID = ""
    answers, status = c_find(orthanc_stock, q)
    assert status == 0x0000
    assert {str(a.StudyInstanceUID) for a in answers} == set(cohort.studies(yamada.patient_id))
    assert {str(a.PatientName) for a in answers} == {"山田^太郎"}


def test_dcmqrscp_rejects_wrong_called_aet(dcmqrscp_stock: DcmqrscpServer) -> None:
    assert associate(dcmqrscp_stock.host, dcmqrscp_stock.port, "DCMQRSCP") == (True, False)
    assert associate(dcmqrscp_stock.host, dcmqrscp_stock.port, "NOT_THIS_AE") == (False, True)


def test_orthanc_check_called_aet(tmp_path: Path) -> None:
    with OrthancServer(tmp_path, aet="STRICT", check_called_aet=True) as server:
        assert associate(server.host, server.port, "STRICT") == (True, False)
        assert associate(server.host, server.port, "NOT_THIS_AE") == (False, True)
    assert not server.running


def test_orthanc_loopback_clients_only(tmp_path: Path, cohort: Cohort) -> None:
    """Orthanc listens on all interfaces; ``loopback_clients`` admits known AEs from 127.0.0.1."""
    destinations = {"clarinet": ("CLARINET", "127.0.0.1", 11112)}
    server = OrthancServer(tmp_path, move_destinations=destinations, loopback_clients=["FINDSCU"])
    config = server.config()
    assert config["DicomCheckModalityHost"] is True
    assert not any(v for k, v in config.items() if k.startswith("DicomAlwaysAllow"))
    hosts = {entry[1] for entry in config["DicomModalities"].values()}
    aets = {entry[0] for entry in config["DicomModalities"].values()}
    assert hosts == {"127.0.0.1"}
    assert aets == {"CLARINET", "FINDSCU", "ECHOSCU", "LOADER"}
    with server:
        assert server.load([cohort.instances[0].path]) == 1  # the loader is let in
        assert associate(server.host, server.port, "ORTHANC", "FINDSCU") == (True, False)
        assert associate(server.host, server.port, "ORTHANC", "CLARINET") == (True, False)
        assert associate(server.host, server.port, "ORTHANC", "STRANGER") == (False, True)


@pytest.mark.parametrize("kind", [OrthancServer, DcmqrscpServer])
def test_restart_and_kill_keep_port_and_storage(
    kind: Callable[[Path], PeerProcess], tmp_path: Path, cohort: Cohort
) -> None:
    first = cohort.instances[0]
    series = [i.path for i in cohort.instances_in(series_uid=first.series_uid)]
    assert len(series) == 5
    server = kind(tmp_path)
    with server:
        assert server.load(series) == 5
        port = server.port
        server.restart()
        assert server.port == port and server.running
        answers, _ = c_find(server, image_query(first.study_uid, first.series_uid))
        assert len(answers) == 5
        server.kill()
        assert not server.running
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((server.host, port), timeout=2).close()
        server.start()
        answers, _ = c_find(server, image_query(first.study_uid, first.series_uid))
        assert len(answers) == 5
    assert not server.running


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    server = OrthancServer(tmp_path, max_pdu=1)  # outside Orthanc's 4096..131072
    with pytest.raises(RuntimeError, match=r"(?s)exited with code .*tail of .*Maximum PDU length"):
        server.start()
    assert not server.running


# --------------------------------------------------------------------------- cohort


def test_cohort_content(cohort: Cohort) -> None:
    required = {
        CTImageStorage,
        MRImageStorage,
        ComputedRadiographyImageStorage,
        BasicTextSRStorage,
        KeyObjectSelectionDocumentStorage,
        GrayscaleSoftcopyPresentationStateStorage,
        SecondaryCaptureImageStorage,
        EncapsulatedPDFStorage,
    }
    assert required <= cohort.sop_classes()
    assert 30 <= len(cohort.instances) <= 50
    assert len(cohort.by_sop_uid()) == len(cohort.instances)
    assert len(cohort.patients()) >= 3 and len(cohort.studies()) >= 6
    names = {i.patient_name for i in cohort.instances}
    assert {"山田^太郎", "Müller^Jürgen"} <= names
    per_study = {i.study_uid: i.study_date for i in cohort.instances}
    assert len(set(per_study.values())) == len(per_study)
    assert {d.year for d in per_study.values()} == {2019, 2020, 2021, 2022, 2023}
    assert any(i.number_of_frames > 1 for i in cohort.instances)
    assert {"CT", "MR", "CR", "SR", "KO", "PR", "DOC"} <= {i.modality for i in cohort.instances}


def test_cohort_files_match_metadata(cohort: Cohort) -> None:
    jpeg = [i for i in cohort.instances if i.transfer_syntax_uid == JPEGBaseline8Bit]
    assert len(jpeg) == 1
    for inst in cohort.instances:
        meta = read_file_meta_info(inst.path)
        assert meta.TransferSyntaxUID == inst.transfer_syntax_uid
        assert meta.MediaStorageSOPInstanceUID == inst.sop_uid
        assert inst.path.stat().st_size == inst.size_bytes < 64 * 1024


def test_cohort_is_deterministic(tmp_path: Path, cohort: Cohort) -> None:
    again = generate_cohort(tmp_path)
    assert [i.sop_uid for i in again.instances] == [i.sop_uid for i in cohort.instances]
    for a, b in zip(again.instances, cohort.instances, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes(), a.path.name


def test_generate_bulk(tmp_path: Path, cohort: Cohort) -> None:
    bulk = generate_bulk(tmp_path / "a", n_studies=3, per_study=4, patients=2)
    other = generate_bulk(tmp_path / "b", n_studies=1, per_study=4, seed="other")
    assert len(bulk.instances) == 12 and len(bulk.studies()) == 3 and len(bulk.patients()) == 2
    assert [len(bulk.series(s)) for s in bulk.studies()] == [1, 1, 1]
    uids = set(bulk.by_sop_uid()) | set(other.by_sop_uid()) | set(cohort.by_sop_uid())
    assert len(uids) == 12 + 4 + len(cohort.instances)
    assert sorted(i.instance_number for i in bulk.instances_in(bulk.studies()[0])) == [1, 2, 3, 4]


def test_loader_splits_contexts() -> None:
    keyed = [((f"1.2.3.{n}", "1.2.840.10008.1.2.1"), Path(f"{n}.dcm")) for n in range(130)]
    batches = _batches(keyed * 2)
    assert [len(contexts) for contexts, _ in batches] == [MAX_CONTEXTS, 130 - MAX_CONTEXTS]
    assert sum(len(files) for _, files in batches) == 260
