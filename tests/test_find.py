"""C-ECHO and C-FIND at every level, against every real peer, checked against the cohort."""

from __future__ import annotations

import logging

import pytest

from clarinet_nb import (
    DicomClient,
    ImageQuery,
    PatientQuery,
    SeriesQuery,
    StudyQuery,
)
from clarinet_nb.testing import Cohort, OrthancServer, Peer
from tests.support import client, node

__all__ = ["client"]


async def test_echo(client: DicomClient, peer: Peer) -> None:
    assert await client.echo(node(peer)) is True


async def test_find_patients(client: DicomClient, peer: Peer, cohort: Cohort) -> None:
    results = await client.find_patients(PatientQuery(), peer=node(peer))
    assert sorted(r.patient_id for r in results) == sorted(cohort.patients())
    names = {i.patient_id: i.patient_name for i in cohort.instances}
    assert {r.patient_id: r.patient_name for r in results} == names
    assert not results.truncated


async def test_find_studies_all_fields(client: DicomClient, peer: Peer, cohort: Cohort) -> None:
    results = await client.find_studies(StudyQuery(), peer=node(peer))
    assert sorted(r.study_instance_uid for r in results) == sorted(cohort.studies())
    for result in results:
        inst = cohort.instances_in(result.study_instance_uid)[0]
        assert result.patient_id == inst.patient_id
        assert result.patient_name == inst.patient_name  # non-ASCII names intact
        assert result.study_date == inst.study_date
        assert result.accession_number == inst.accession_number
        assert result.study_description == inst.study_description
        assert result.attributes["StudyInstanceUID"] == inst.study_uid
        if peer.kind == "orthanc":  # dcmqrscp computes neither
            assert set(result.modalities_in_study) == cohort.modalities_in_study(inst.study_uid)
            assert result.number_of_study_related_instances == len(
                cohort.instances_in(inst.study_uid)
            )


async def test_find_studies_by_patient_and_date_range(
    client: DicomClient, peer: Peer, cohort: Cohort
) -> None:
    patient = cohort.patients()[0]
    mine = await client.find_studies(StudyQuery(patient_id=patient), peer=node(peer))
    assert sorted(r.study_instance_uid for r in mine) == sorted(cohort.studies(patient))

    dates = sorted({i.study_date for i in cohort.instances})
    low, high = dates[1], dates[-2]
    ranged = await client.find_studies(StudyQuery(study_date=(low, high)), peer=node(peer))
    expected = {i.study_uid for i in cohort.instances if low <= i.study_date <= high}
    assert {r.study_instance_uid for r in ranged} == expected
    assert 0 < len(expected) < len(cohort.studies())

    open_ended = await client.find_studies(StudyQuery(study_date=(high, None)), peer=node(peer))
    assert {r.study_instance_uid for r in open_ended} == {
        i.study_uid for i in cohort.instances if i.study_date >= high
    }


async def test_find_with_wildcards(client: DicomClient, peer: Peer, cohort: Cohort) -> None:
    inst = cohort.instances[0]
    prefix = inst.patient_id[:-1] + "*"
    results = await client.find_studies(StudyQuery(patient_id=prefix), peer=node(peer))
    expected = {i.study_uid for i in cohort.instances if i.patient_id.startswith(prefix[:-1])}
    assert {r.study_instance_uid for r in results} == expected
    nothing = await client.find_studies(StudyQuery(patient_id="NO-SUCH-*"), peer=node(peer))
    assert list(nothing) == []


async def test_find_by_non_ascii_name(client: DicomClient, peer: Peer, cohort: Cohort) -> None:
    yamada = next(i for i in cohort.instances if i.patient_name.startswith("山田"))
    results = await client.find_studies(StudyQuery(patient_name="山田*"), peer=node(peer))
    assert {r.study_instance_uid for r in results} == set(cohort.studies(yamada.patient_id))
    assert all(r.patient_name == "山田^太郎" for r in results)


async def test_find_series(client: DicomClient, peer: Peer, cohort: Cohort) -> None:
    for study in cohort.studies():
        results = await client.find_series(SeriesQuery(study_instance_uid=study), peer=node(peer))
        assert sorted(r.series_instance_uid for r in results) == sorted(cohort.series(study))
        for result in results:
            inst = cohort.instances_in(study, result.series_instance_uid)[0]
            assert result.modality == inst.modality
            assert result.series_number == inst.series_number
            assert result.study_instance_uid == study


async def test_find_series_by_modality(client: DicomClient, peer: Peer, cohort: Cohort) -> None:
    study = next(s for s in cohort.studies() if "CT" in cohort.modalities_in_study(s))
    results = await client.find_series(
        SeriesQuery(study_instance_uid=study, modality="CT"), peer=node(peer)
    )
    expected = {i.series_uid for i in cohort.instances_in(study) if i.modality == "CT"}
    assert {r.series_instance_uid for r in results} == expected


async def test_find_images(client: DicomClient, peer: Peer, cohort: Cohort) -> None:
    for study in cohort.studies():
        for series in cohort.series(study):
            query = ImageQuery(study_instance_uid=study, series_instance_uid=series)
            results = await client.find_images(query, peer=node(peer))
            expected = {i.sop_uid: i for i in cohort.instances_in(study, series)}
            assert {r.sop_instance_uid for r in results} == set(expected)
            for result in results:
                inst = expected[str(result.sop_instance_uid)]
                if peer.kind == "orthanc":  # dcmqrscp does not return SOPClassUID
                    assert result.sop_class_uid == inst.sop_class_uid
                assert result.instance_number == inst.instance_number


async def test_find_logs_no_patient_data_above_debug(
    client: DicomClient, peer: Peer, cohort: Cohort, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    results = await client.find_studies(StudyQuery(patient_name="*"), peer=node(peer))
    assert results
    secrets = {i.patient_id for i in cohort.instances} | {
        part for i in cohort.instances for part in i.patient_name.split("^") if len(part) > 2
    }
    loud = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert not [m for m in loud if any(s in m for s in secrets)]


@pytest.fixture(scope="module")
def latin1_orthanc(tmp_path_factory: pytest.TempPathFactory, cohort: Cohort):  # type: ignore[no-untyped-def]
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-latin1"), default_encoding="Latin1")
    with server:
        server.load(cohort.paths())
        yield server


async def test_warns_when_peer_empties_names(
    client: DicomClient, latin1_orthanc: OrthancServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clarinet_nb")
    results = await client.find_studies(StudyQuery(), peer=node(latin1_orthanc))
    emptied = [r for r in results if r.patient_name and not r.patient_name.strip("^= ")]
    assert emptied, "Orthanc with Latin1 should lose the Japanese name"
    assert any("character set" in r.getMessage() for r in caplog.records)
    assert any(r.patient_name == "Müller^Jürgen" for r in results)
