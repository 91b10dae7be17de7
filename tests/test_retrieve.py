"""C-GET and C-MOVE of studies, series and instances from every real peer."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import JPEGBaseline8Bit

from clarinet_nb import (
    DicomClient,
    PartialRetrieveError,
    RetrieveStatus,
    StorageConfig,
    StorageMode,
)
from clarinet_nb.testing import Cohort, CohortInstance, DcmqrscpServer, Peer
from tests.support import client, expected_files, node, port_is_free

__all__ = ["client"]

METHODS = ["get", "move"]


@pytest.mark.parametrize("method", METHODS)
async def test_study_to_disk(
    client: DicomClient,
    peer: Peer,
    cohort: Cohort,
    tmp_path: Path,
    method: str,
    move_scp_port: int,
) -> None:
    studies = cohort.studies()
    if method == "move" and peer.kind == "dcmqrscp":
        studies = [s for s in studies if s != _jpeg(cohort).study_uid]  # see test_partial_*
    for study in studies:
        retrieve = client.get_study if method == "get" else client.move_study
        result = await retrieve(study, peer=node(peer), output_dir=tmp_path)
        instances = cohort.instances_in(study)
        assert result.status is RetrieveStatus.SUCCESS, result.summary()
        assert result.expected == result.received == len(instances)
        assert sorted(result.received_sop_instance_uids) == sorted(i.sop_uid for i in instances)
        assert set(result.paths) == expected_files(cohort, tmp_path, study)
        assert not result.failed_sop_instance_uids and not result.missing_sop_instance_uids
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert written == set().union(*(expected_files(cohort, tmp_path, s) for s in studies))
    by_uid = cohort.by_sop_uid()
    for path in written:
        got = dcmread(path)
        original = dcmread(by_uid[path.stem].path)
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert got.PatientName == original.PatientName
        assert got.file_meta.MediaStorageSOPClassUID == original.SOPClassUID
        if "PixelData" in original:
            stored = original.file_meta.TransferSyntaxUID
            if stored.is_compressed or peer.kind == "orthanc":  # Orthanc sends as stored
                assert got.file_meta.TransferSyntaxUID == stored
            else:  # dcmqrscp converts to the first context's (uncompressed) syntax
                assert not got.file_meta.TransferSyntaxUID.is_compressed
            assert got.PixelData == original.PixelData
    if method == "move":
        assert port_is_free(move_scp_port)


@pytest.mark.parametrize("method", METHODS)
async def test_series_to_memory(
    client: DicomClient, peer: Peer, cohort: Cohort, method: str
) -> None:
    memory = StorageConfig(mode=StorageMode.MEMORY)
    all_series = cohort.series()
    if method == "move" and peer.kind == "dcmqrscp":
        all_series = [s for s in all_series if s != _jpeg(cohort).series_uid]
    for series in all_series:
        instances = cohort.instances_in(series_uid=series)
        study = instances[0].study_uid
        retrieve = client.get_series if method == "get" else client.move_series
        result = await retrieve(series, study_uid=study, peer=node(peer), storage=memory)
        assert result.status is RetrieveStatus.SUCCESS, result.summary()
        assert sorted(ds.SOPInstanceUID for ds in result.datasets) == sorted(
            i.sop_uid for i in instances
        )
        for ds in result.datasets:
            assert ds.file_meta.TransferSyntaxUID
            assert ds.SeriesInstanceUID == series
        assert result.paths == []


@pytest.mark.parametrize("method", METHODS)
async def test_single_instances(
    client: DicomClient, peer: Peer, cohort: Cohort, method: str
) -> None:
    """Every SOP class of the cohort, one instance at a time, in memory."""
    picks = {i.sop_class_uid: i for i in cohort.instances}
    if method == "move" and peer.kind == "dcmqrscp":
        picks = {k: v for k, v in picks.items() if v != _jpeg(cohort)}
    for inst in picks.values():
        retrieve = client.get_instance if method == "get" else client.move_instance
        result = await retrieve(
            inst.sop_uid,
            series_uid=inst.series_uid,
            study_uid=inst.study_uid,
            peer=node(peer),
            storage=StorageConfig(mode=StorageMode.MEMORY),
        )
        assert [ds.SOPInstanceUID for ds in result.datasets] == [inst.sop_uid]
        ds = result.datasets[0]
        assert ds.SOPClassUID == inst.sop_class_uid
        assert ds.file_meta.TransferSyntaxUID == inst.transfer_syntax_uid or (
            inst.transfer_syntax_uid != JPEGBaseline8Bit
        )


def _jpeg(cohort: Cohort) -> CohortInstance:
    return next(i for i in cohort.instances if i.transfer_syntax_uid == JPEGBaseline8Bit)


async def test_jpeg_arrives_as_stored(client: DicomClient, peer: Peer, cohort: Cohort) -> None:
    jpeg = _jpeg(cohort)
    result = await client.get_instance(
        jpeg.sop_uid,
        series_uid=jpeg.series_uid,
        study_uid=jpeg.study_uid,
        peer=node(peer),
    )
    ds = result.datasets[0]
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.PixelData == dcmread(jpeg.path).PixelData


async def test_series_uid_alone_is_enough_for_orthanc(
    client: DicomClient, orthanc_stock: Peer, cohort: Cohort
) -> None:
    series = cohort.series()[0]
    result = await client.get_series(series, peer=node(orthanc_stock))
    assert result.received == len(cohort.instances_in(series_uid=series))


async def test_partial_move_says_exactly_what_arrived(
    client: DicomClient,
    dcmqrscp_stock: DcmqrscpServer,
    cohort: Cohort,
    tmp_path: Path,
    move_scp_port: int,
) -> None:
    """Stock dcmqrscp proposes only uncompressed syntaxes when it C-STOREs to a move
    destination and has no JPEG codec: the JPEG instance genuinely fails."""
    jpeg = _jpeg(cohort)
    others = [i for i in cohort.instances_in(jpeg.study_uid) if i != jpeg]
    with pytest.raises(PartialRetrieveError) as caught:
        await client.move_study(jpeg.study_uid, peer=node(dcmqrscp_stock), output_dir=tmp_path)
    result = caught.value.result
    assert result.status is RetrieveStatus.PARTIAL
    assert result.failed_sop_instance_uids == [jpeg.sop_uid]
    assert result.missing_sop_instance_uids == []
    assert result.expected == len(others) + 1
    assert sorted(result.received_sop_instance_uids) == sorted(i.sop_uid for i in others)
    assert result.failed >= 1 and result.dimse_status == 0xB000
    on_disk = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == {tmp_path / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm" for i in others}
    assert port_is_free(move_scp_port)
