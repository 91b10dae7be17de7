"""FORWARD mode, context splitting over associations, max PDU, and quiet logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import evt
from pynetdicom.pdu import P_DATA_TF

from clarinet_nb import (
    DicomClient,
    DicomOperations,
    ImageQuery,
    RetrieveStatus,
    StorageConfig,
    StorageMode,
)
from clarinet_nb.dicom import contexts
from clarinet_nb.dicom.association import make_ae, open_association, release
from clarinet_nb.testing import Cohort, OrthancServer, Peer
from tests.support import TEST_TIMEOUTS, client, node

__all__ = ["client"]


@pytest.fixture
def empty_orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "sink", aet="SINK") as srv:
        yield srv


@pytest.mark.parametrize("method", ["get", "move"])
async def test_forward_to_another_node(
    client: DicomClient,
    orthanc_stock: Peer,
    empty_orthanc: OrthancServer,
    cohort: Cohort,
    method: str,
) -> None:
    study = max(cohort.studies(), key=lambda s: len(cohort.modalities_in_study(s)))
    forward = StorageConfig(mode=StorageMode.FORWARD, forward_to=node(empty_orthanc))
    retrieve = client.get_study if method == "get" else client.move_study
    result = await retrieve(study, peer=node(orthanc_stock), storage=forward)
    expected = sorted(i.sop_uid for i in cohort.instances_in(study))
    assert result.status is RetrieveStatus.SUCCESS
    assert sorted(result.forwarded_sop_instance_uids) == expected
    assert result.datasets == [] and result.paths == []
    landed = await client.find_images(
        ImageQuery(study_instance_uid=study), peer=node(empty_orthanc)
    )
    assert sorted(str(r.sop_instance_uid) for r in landed) == expected


async def test_forward_to_unreachable_node_is_partial(
    client: DicomClient, orthanc_stock: Peer, cohort: Cohort
) -> None:
    from clarinet_nb import DicomNode, PartialRetrieveError
    from clarinet_nb.testing import free_port

    nowhere = DicomNode(aet="NOWHERE", host="127.0.0.1", port=free_port())
    study = cohort.studies()[0]
    with pytest.raises(PartialRetrieveError) as caught:
        await client.get_study(
            study,
            peer=node(orthanc_stock),
            storage=StorageConfig(mode=StorageMode.FORWARD, forward_to=nowhere),
        )
    result = caught.value.result
    assert result.forwarded_sop_instance_uids == []
    assert sorted(result.failed_sop_instance_uids) == sorted(
        i.sop_uid for i in cohort.instances_in(study)
    )


async def test_contexts_spread_over_several_associations(
    peer: Peer, cohort: Cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for only a few contexts per association, a study with many SOP
    classes still arrives whole, over several associations."""
    monkeypatch.setattr(contexts, "MAX_CONTEXTS", 14)
    study = max(
        cohort.studies(), key=lambda s: len({i.sop_class_uid for i in cohort.instances_in(s)})
    )
    async with DicomClient(timeouts=TEST_TIMEOUTS) as narrow:
        result = await narrow.get_study(study, peer=node(peer), output_dir=tmp_path)
    assert result.status is RetrieveStatus.SUCCESS
    assert sorted(result.received_sop_instance_uids) == sorted(
        i.sop_uid for i in cohort.instances_in(study)
    )
    assert result.associations > 1


@pytest.fixture(scope="module")
def big_pdu_orthanc(
    tmp_path_factory: pytest.TempPathFactory, cohort: Cohort
) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("orthanc-pdu"), max_pdu=131072) as srv:
        srv.load(cohort.paths())
        yield srv


@pytest.mark.parametrize("max_pdu", [0, 16384])
def test_max_pdu_is_announced_and_honoured(
    big_pdu_orthanc: OrthancServer, cohort: Cohort, max_pdu: int
) -> None:
    """max_pdu=0 means unlimited: the peer then sends PDUs larger than 16 KiB."""
    ops = DicomOperations(max_pdu=max_pdu, timeouts=TEST_TIMEOUTS)
    sizes: list[int] = []

    def on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            sizes.append(len(event.pdu.encode()) - 6)

    cr = next(i for i in cohort.instances if i.modality == "CR")  # 128x128x16 bit
    from pynetdicom import build_context, build_role

    ae = make_ae(ops.calling_aet, ops.timeouts)
    model = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root GET
    cx = [build_context(model), build_context(cr.sop_class_uid, [cr.transfer_syntax_uid])]
    store_handler = (evt.EVT_C_STORE, lambda event: 0x0000)
    assoc = open_association(
        ae,
        node(big_pdu_orthanc),
        contexts=cx,
        ext_neg=[build_role(cr.sop_class_uid, scp_role=True)],
        max_pdu=max_pdu,
        evt_handlers=[(evt.EVT_PDU_RECV, on_pdu), store_handler],
    )
    try:
        assert assoc.requestor.maximum_length == max_pdu
        from pydicom import Dataset

        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
            cr.study_uid,
            cr.series_uid,
            cr.sop_uid,
        )
        statuses = [int(s.Status) for s, _ in assoc.send_c_get(ds, model)]
        assert statuses[-1] == 0x0000
    finally:
        release(assoc)
    if max_pdu == 0:
        assert max(sizes) > 16384
    else:
        assert max(sizes) <= max_pdu


async def test_retrieve_logs_no_patient_data_above_debug(
    client: DicomClient,
    orthanc_stock: Peer,
    cohort: Cohort,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for study in cohort.studies():
        await client.move_study(study, peer=node(orthanc_stock), output_dir=tmp_path)
        await client.get_study(study, peer=node(orthanc_stock))
    secrets = {i.patient_id for i in cohort.instances} | {
        part for i in cohort.instances for part in i.patient_name.split("^") if len(part) > 2
    }
    loud = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert loud  # there is INFO logging to check
    assert not [m for m in loud if any(s in m for s in secrets)]
