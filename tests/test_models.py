"""Pure logic: validation, identifiers, conversions, paths, context planning."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydicom import Dataset

from clarinet_nb import (
    DateRange,
    DicomNode,
    ImageQuery,
    InvalidInputError,
    PatientQuery,
    SeriesQuery,
    Settings,
    StorageConfig,
    StorageMode,
    StudyQuery,
    StudyResult,
)
from clarinet_nb.dicom.contexts import MAX_CONTEXTS, is_image_class, plan_get_chunks
from clarinet_nb.dicom.paths import instance_path, safe_component
from clarinet_nb.dicom.requests import RetrieveRequest
from clarinet_nb.dicom.status import describe


@pytest.mark.parametrize(
    "bad",
    ["", "1.02.3", "1..2", "1.2.", "abc", "1.2.3 4", "1." + "2" * 70, "../../etc", "1.2/3"],
)
def test_bad_uids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInputError):
        StudyQuery(study_instance_uid=bad)
    with pytest.raises(InvalidInputError):
        RetrieveRequest.study(bad)


def test_uid_lists_are_validated_and_joined() -> None:
    query = ImageQuery(sop_instance_uid=["1.2.3", "1.2.4"])
    assert query.to_dataset().SOPInstanceUID == ["1.2.3", "1.2.4"]
    with pytest.raises(InvalidInputError):
        ImageQuery(sop_instance_uid=["1.2.3", "1.2.x"])


@pytest.mark.parametrize("aet", ["", "   ", "A" * 17, "BAD\\AET", "ÄRZTE"])
def test_bad_ae_titles_are_refused(aet: str) -> None:
    with pytest.raises(InvalidInputError):
        DicomNode(aet=aet, host="127.0.0.1", port=104)


def test_node_parse_and_str() -> None:
    node = DicomNode.parse("ORTHANC@127.0.0.1:4242")
    assert (node.aet, node.host, node.port) == ("ORTHANC", "127.0.0.1", 4242)
    assert str(node) == "ORTHANC@127.0.0.1:4242"
    with pytest.raises(InvalidInputError):
        DicomNode.parse("no-port@host")
    with pytest.raises(InvalidInputError):
        DicomNode(aet="A", host="h", port=70000)


def test_date_forms_and_ranges() -> None:
    assert StudyQuery(study_date="2020-03-04").study_date == dt.date(2020, 3, 4)
    assert StudyQuery(study_date="20200304").study_date == dt.date(2020, 3, 4)
    ranged = StudyQuery(study_date=("2020-01-01", None)).study_date
    assert isinstance(ranged, DateRange)
    assert ranged.to_dicom() == "20200101-"
    assert StudyQuery(study_date="20200101-20201231").to_dataset().StudyDate == "20200101-20201231"
    both = StudyQuery(study_date=(dt.date(2020, 1, 1), dt.datetime(2020, 2, 1, 10, 0)))
    assert both.to_dataset().StudyDate == "20200101-20200201"


@pytest.mark.parametrize(
    "value",
    [("2021-01-01", "2020-01-01"), ("2020-13-01", None), "2020-02-30", (None, None), "yesterday"],
)
def test_impossible_dates_are_refused(value: object) -> None:
    with pytest.raises(InvalidInputError):
        StudyQuery(study_date=value)


def test_identifier_has_level_matching_and_return_keys() -> None:
    ds = StudyQuery(patient_id="12*", modalities_in_study=["CT", "MR"]).to_dataset()
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds.PatientID == "12*"
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"]
    assert ds.StudyInstanceUID == "" and ds.StudyDate == "" and "PatientName" in ds
    assert "SpecificCharacterSet" not in ds
    assert PatientQuery().to_dataset().QueryRetrieveLevel == "PATIENT"
    series = SeriesQuery(study_instance_uid="1.2.3", return_keys=("ProtocolName",)).to_dataset()
    assert series.QueryRetrieveLevel == "SERIES" and "ProtocolName" in series


def test_non_ascii_matching_declares_utf8() -> None:
    ds = StudyQuery(patient_name="山田*").to_dataset()
    assert ds.SpecificCharacterSet == "ISO_IR 192"


def test_unknown_return_keys_and_fields_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        StudyQuery(return_keys=("NotAKeyword",))
    with pytest.raises(InvalidInputError):
        StudyQuery(patientid="x")  # type: ignore[call-arg]
    with pytest.raises(InvalidInputError):
        StudyQuery(patient_id="a\\b")


def test_result_conversion_is_typed_and_tolerant() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "山田^太郎"
    ds.StudyDate = "20210702"
    ds.StudyTime = "101530.25"
    ds.ModalitiesInStudy = ["MR", "OT"]
    ds.NumberOfStudyRelatedInstances = "8"
    ds.StudyInstanceUID = "1.2.3"
    ds.AccessionNumber = "A1"
    ds.add_new(0x00080021, "DA", "not-a-date")  # SeriesDate, malformed
    result = StudyResult.from_dataset(ds)
    assert result.patient_name == "山田^太郎"
    assert result.study_date == dt.date(2021, 7, 2)
    assert result.study_time == dt.time(10, 15, 30, 250000)
    assert result.modalities_in_study == ["MR", "OT"]
    assert result.number_of_study_related_instances == 8
    assert result["SeriesDate"] is None
    assert result["AccessionNumber"] == "A1"


def test_storage_config_needs_its_target() -> None:
    with pytest.raises(InvalidInputError):
        StorageConfig(mode=StorageMode.DISK)
    with pytest.raises(InvalidInputError):
        StorageConfig(mode=StorageMode.FORWARD)
    assert StorageConfig(mode=StorageMode.MEMORY).mode is StorageMode.MEMORY


@pytest.mark.parametrize(
    "hostile", ["../../../etc/passwd", "/etc/passwd", "..", ".", "1.2/../3", "a\\b", "1.2.3\x00"]
)
def test_hostile_uids_never_escape_output_dir(tmp_path: Path, hostile: str) -> None:
    path = instance_path(tmp_path, hostile, hostile, hostile)
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert all(part not in ("..", ".", "") for part in path.relative_to(tmp_path).parts)
    assert safe_component(hostile) == safe_component(hostile)  # stable


def test_valid_uids_are_kept_as_names(tmp_path: Path) -> None:
    assert instance_path(tmp_path, "1.2", "1.2.3", "1.2.3.4") == tmp_path / "1.2/1.2.3/1.2.3.4.dcm"


def test_context_plan_splits_over_associations() -> None:
    classes = [f"1.2.826.0.1.3680043.9.{n}" for n in range(40)]  # unknown -> image: 10 each
    chunks = plan_get_chunks(classes)
    assert len(chunks) > 1
    assert all(len(c.contexts) <= MAX_CONTEXTS for c in chunks)
    assert [u for c in chunks for u in c.sop_classes] == classes
    sr = "1.2.840.10008.5.1.4.1.1.88.11"
    assert not is_image_class(sr) and is_image_class("1.2.840.10008.5.1.4.1.1.2")
    # Q/R model + Explicit VR LE, Implicit VR LE, Deflated, Big Endian: one context each
    assert len(plan_get_chunks([sr])[0].contexts) == 5


def test_status_descriptions() -> None:
    assert describe(0xA801) == "0xA801 (Refused: move destination unknown)"
    assert describe(0xC123).startswith("0xC123 (Failure")
    assert describe(None) == "no status"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.dicom_aet, defaults.dicom_port, defaults.dicom_max_pdu) == (
        "CLARINET",
        11112,
        16384,
    )
    assert (defaults.pacs_aet, defaults.pacs_host, defaults.pacs_port) == (
        "ORTHANC",
        "localhost",
        4242,
    )
    assert defaults.dicom_ip is None
    monkeypatch.setenv("CLARINET_PACS_HOST", "127.0.0.2")
    monkeypatch.setenv("CLARINET_DICOM_MAX_PDU", "0")
    monkeypatch.setenv("CLARINET_DIMSE_TIMEOUT", "5")
    custom = Settings()
    assert custom.pacs_host == "127.0.0.2"
    assert custom.dicom_max_pdu == 0
    assert custom.dimse_timeout == 5.0


@pytest.mark.parametrize("sop", ["1.2.3.4", "1.2.3.45"])
def test_file_header_is_valid_part10(sop: str) -> None:
    from io import BytesIO

    from pydicom import dcmread

    from clarinet_nb.dicom.filemeta import file_header

    ds = Dataset()
    ds.SOPInstanceUID = sop
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = True, True
    write_dataset(body, ds)
    header = file_header("1.2.840.10008.5.1.4.1.1.7", sop, "1.2.840.10008.1.2", "PACS")
    read = dcmread(BytesIO(header + body.getvalue()))
    assert read.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert read.file_meta.MediaStorageSOPInstanceUID == sop
    assert read.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert read.file_meta.SourceApplicationEntityTitle == "PACS"
    assert read.SOPInstanceUID == sop
