"""Against pynetdicom's own qrscp: a peer without SOP class answers and without UID lists.

qrscp returns neither SOPClassUID nor SOPClassesInStudy, so a C-GET cannot
know the classes it will receive; it refuses a list of UIDs (0xC320 on C-FIND,
0xC413 on C-GET, 0xA801 on C-MOVE).  Instances must still arrive as stored, and
a list must fall back to one request per UID, said once per peer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    SegmentationStorage,
)

from clarinet_nb import (
    DicomClient,
    MoveDestinationUnknownError,
    RetrieveStatus,
    StorageConfig,
    StorageMode,
)
from clarinet_nb.dicom.contexts import default_storage_classes, first_get_chunk
from clarinet_nb.dicom.operations import DicomOperations
from clarinet_nb.dicom.queries import ImageQuery
from clarinet_nb.dicom.requests import RetrieveRequest
from clarinet_nb.testing import Cohort, CohortInstance, free_port
from clarinet_nb.testing.qrscp import QrscpServer
from clarinet_nb.testing.syntaxes import SEG_SYNTAXES, generate_syntax_cohort
from tests.notebook_support import pacs_for
from tests.support import TEST_TIMEOUTS, client, node

__all__ = ["client"]

MEMORY = StorageConfig(mode=StorageMode.MEMORY)


@pytest.fixture(scope="session")
def qrscp_cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return generate_syntax_cohort(tmp_path_factory.mktemp("qrscp-cohort"))


@pytest.fixture(scope="session")
def qrscp(
    tmp_path_factory: pytest.TempPathFactory,
    qrscp_cohort: Cohort,
    move_destinations: dict[str, tuple[str, str, int]],
) -> Iterator[QrscpServer]:
    server = QrscpServer(tmp_path_factory.mktemp("qrscp"), move_destinations=move_destinations)
    with server:
        assert server.load(qrscp_cohort.paths()) == len(qrscp_cohort.instances)
        yield server


def _ct(cohort: Cohort) -> list[CohortInstance]:
    return [i for i in cohort.instances if i.modality == "CT"]


def _segs(cohort: Cohort) -> list[CohortInstance]:
    return [i for i in cohort.instances if i.sop_class_uid == SegmentationStorage]


def _list_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "clarinet_nb" and r.levelno == logging.WARNING and "list of UIDs" in r.message
    ]


def test_qrscp_listens_on_loopback_and_checks_the_called_ae_title(qrscp: QrscpServer) -> None:
    from clarinet_nb.testing import echo

    assert echo(qrscp.aet, qrscp.host, qrscp.port)
    assert not echo("SOMEONE", qrscp.host, qrscp.port)
    # it listens on loopback only (not on every interface)
    listening = [
        row.split()[1]
        for row in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if row.split()[1].endswith(f":{qrscp.port:04X}") and row.split()[3] == "0A"
    ]
    assert listening == [f"0100007F:{qrscp.port:04X}"]


@pytest.mark.parametrize("method", ["get", "move"])
async def test_every_syntax_arrives_as_stored(
    client: DicomClient, qrscp: QrscpServer, qrscp_cohort: Cohort, tmp_path: Path, method: str
) -> None:
    """The Segmentation stored as Explicit VR arrives as Explicit VR (the Implicit one
    as Implicit, the RLE one as RLE), though qrscp never says which classes it holds."""
    segs = _segs(qrscp_cohort)
    assert [s.transfer_syntax_uid for s in segs] == list(SEG_SYNTAXES)
    assert SEG_SYNTAXES[:2] == (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    # the multi-frame class is not offered on the first pass: it comes through repair passes
    first_pass = first_get_chunk(default_storage_classes()).sop_classes
    assert MultiFrameGrayscaleByteSecondaryCaptureImageStorage not in first_pass
    assert {i.sop_class_uid for i in qrscp_cohort.instances} - set(first_pass) == {
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage
    }
    study = qrscp_cohort.instances[0].study_uid
    retrieve = client.get_study if method == "get" else client.move_study
    result = await retrieve(study, peer=node(qrscp), storage=MEMORY)
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    by_uid = {ds.SOPInstanceUID: ds for ds in result.datasets}
    assert sorted(by_uid) == sorted(i.sop_uid for i in qrscp_cohort.instances)
    for inst in qrscp_cohort.instances:
        assert by_uid[inst.sop_uid].file_meta.TransferSyntaxUID == inst.transfer_syntax_uid
    on_disk = await retrieve(study, peer=node(qrscp), output_dir=tmp_path)
    assert on_disk.status is RetrieveStatus.SUCCESS, on_disk.summary()
    by_uid_path = {p.stem: p for p in on_disk.paths}
    assert sorted(by_uid_path) == sorted(i.sop_uid for i in qrscp_cohort.instances)
    for inst in qrscp_cohort.instances:
        meta = dcmread(by_uid_path[inst.sop_uid], stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == inst.transfer_syntax_uid


def test_find_with_a_uid_list_falls_back_once(
    qrscp: QrscpServer, qrscp_cohort: Cohort, caplog: pytest.LogCaptureFixture
) -> None:
    ops = DicomOperations(timeouts=TEST_TIMEOUTS, scp_port=free_port())
    picked = _ct(qrscp_cohort)[:3] + _segs(qrscp_cohort)[:1]
    query = ImageQuery(sop_instance_uid=[i.sop_uid for i in picked])
    with caplog.at_level(logging.WARNING, logger="clarinet_nb"):
        first = ops.find(query, node(qrscp))
        second = ops.find(query, node(qrscp))
    for outcome in (first, second):
        assert sorted(str(ds.SOPInstanceUID) for ds in outcome.datasets) == sorted(
            i.sop_uid for i in picked
        )
        assert outcome.status == 0x0000 and not outcome.truncated
    assert ops.refuses_uid_lists(node(qrscp))
    warnings = _list_warnings(caplog)
    assert len(warnings) == 1 and "C-FIND" in warnings[0] and "0xC320" in warnings[0]
    assert all(i.sop_uid not in warnings[0] for i in picked)


@pytest.mark.parametrize("method", ["get", "move"])
def test_retrieve_of_a_uid_list_without_pre_query(
    qrscp: QrscpServer,
    qrscp_cohort: Cohort,
    move_scp_port: int,
    method: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """C-GET/C-MOVE identifiers carrying a list: refused, then one request per UID."""
    ops = DicomOperations(timeouts=TEST_TIMEOUTS, scp_port=move_scp_port)
    cts = _ct(qrscp_cohort)[:3]
    request = RetrieveRequest.instances(
        [i.sop_uid for i in cts], cts[0].series_uid, cts[0].study_uid
    )
    with caplog.at_level(logging.WARNING, logger="clarinet_nb"):
        result = ops.retrieve(method, request, node(qrscp), MEMORY, query_first=False)
    assert sorted(ds.SOPInstanceUID for ds in result.datasets) == sorted(i.sop_uid for i in cts)
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    warnings = _list_warnings(caplog)
    assert len(warnings) == 1 and f"C-{method.upper()}" in warnings[0]
    assert ops.refuses_uid_lists(node(qrscp))


def test_unknown_move_destination_is_not_taken_for_a_list_refusal(
    qrscp: QrscpServer, qrscp_cohort: Cohort, caplog: pytest.LogCaptureFixture
) -> None:
    """0xA801 also means "move destination unknown": the single-UID probe is refused too,
    so the list is not blamed and the destination error stands."""
    cts = _ct(qrscp_cohort)[:2]
    ops = DicomOperations("STRANGER", timeouts=TEST_TIMEOUTS, scp_port=free_port())
    request = RetrieveRequest.instances(
        [i.sop_uid for i in cts], cts[0].series_uid, cts[0].study_uid
    )
    with (
        caplog.at_level(logging.WARNING, logger="clarinet_nb"),
        pytest.raises(MoveDestinationUnknownError) as caught,
    ):
        ops.retrieve("move", request, node(qrscp), MEMORY, query_first=False)
    assert caught.value.result is not None
    assert caught.value.result.dimse_status == 0xA801
    assert _list_warnings(caplog) == []
    assert not ops.refuses_uid_lists(node(qrscp))


@pytest.mark.parametrize("method", ["get", "move"])
def test_notebook_gets_several_instances_of_one_series(
    qrscp: QrscpServer,
    qrscp_cohort: Cohort,
    move_scp_port: int,
    tmp_path: Path,
    method: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cts = _ct(qrscp_cohort)
    wanted = cts[:3]
    pacs = pacs_for(qrscp, move_scp_port)
    try:
        with caplog.at_level(logging.WARNING, logger="clarinet_nb"):
            found = pacs.find_instances(SOPInstanceUID=[i.sop_uid for i in wanted])
            assert sorted(found["SOPInstanceUID"]) == sorted(i.sop_uid for i in wanted)
            assert len(found) == len(wanted)
            frame = pd.DataFrame(
                {
                    "StudyInstanceUID": [i.study_uid for i in wanted],
                    "SeriesInstanceUID": [i.series_uid for i in wanted],
                    "SOPInstanceUID": [i.sop_uid for i in wanted],
                }
            )
            datasets = pacs.get(frame, method=method, progress=False)
            assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(i.sop_uid for i in wanted)
            assert datasets.failures == []
            manifest = pacs.get(frame, method=method, output_dir=tmp_path, progress=False)
        assert sorted(manifest["SOPInstanceUID"]) == sorted(i.sop_uid for i in wanted)
        assert set(manifest["status"]) == {"retrieved"}
        written = sorted(p.stem for p in tmp_path.rglob("*.dcm"))
        assert written == sorted(i.sop_uid for i in wanted)
        assert len(_list_warnings(caplog)) == 1  # said once for this peer
    finally:
        pacs.close()


def test_split_uid_lists_asks_each_uid_once() -> None:
    """Pure logic: one identifier per combination of distinct UIDs, the rest untouched."""
    from pydicom import Dataset

    from clarinet_nb.dicom.requests import listed_sop_uids, split_uid_lists, uid_list_keywords

    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = ["1.2.1", "1.2.2"]
    ds.SeriesInstanceUID = "1.2.3"
    ds.SOPInstanceUID = ["1.2.4", "1.2.5", "1.2.4"]
    ds.ModalitiesInStudy = ["CT", "MR"]  # not a UID: never split
    assert sorted(uid_list_keywords(ds)) == ["SOPInstanceUID", "StudyInstanceUID"]
    parts = split_uid_lists(ds)
    pairs = [(str(p.StudyInstanceUID), str(p.SOPInstanceUID)) for p in parts]
    assert sorted(pairs) == [
        ("1.2.1", "1.2.4"),
        ("1.2.1", "1.2.5"),
        ("1.2.2", "1.2.4"),
        ("1.2.2", "1.2.5"),
    ]
    assert all(uid_list_keywords(p) == [] for p in parts)
    assert all(list(p.ModalitiesInStudy) == ["CT", "MR"] for p in parts)
    assert all(p.SeriesInstanceUID == "1.2.3" for p in parts)
    assert list(ds.SOPInstanceUID) == ["1.2.4", "1.2.5", "1.2.4"]  # the original is kept
    assert listed_sop_uids(parts[0]) == [str(parts[0].SOPInstanceUID)]
    single = Dataset()
    single.SOPInstanceUID = "1.2.9"
    assert split_uid_lists(single) == [single]
