"""Result models: one C-FIND match each, typed, plus every attribute returned."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.tag import BaseTag

from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.dicom.values import element_to_python

__all__ = [
    "ImageResult",
    "PatientResult",
    "SeriesResult",
    "StudyResult",
    "names_look_emptied",
    "result_model_for",
]

logger = logging.getLogger("clarinet_nb")


class _Result(BaseModel):
    """Shared behaviour: construction from a response identifier."""

    model_config = ConfigDict(frozen=True)

    level: ClassVar[QueryLevel]
    fields_by_keyword: ClassVar[dict[str, str]]

    attributes: dict[str, Any] = Field(default_factory=dict)
    """Every attribute the peer returned, keyed by DICOM keyword, as Python values."""

    @classmethod
    def from_dataset(cls, ds: Dataset) -> _Result:
        """Build a result from a C-FIND response identifier (values never trusted).

        Never raises on what a peer sent: an unusable value is ``None`` (``[]`` for lists).
        """
        attributes: dict[str, Any] = {}
        for elem in ds.elements():  # raw elements stay raw until converted here
            keyword = keyword_for_tag(elem.tag)
            if not keyword or keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
                continue
            attributes[keyword] = element_to_python(elem, ds)
        fields: dict[str, Any] = {}
        for keyword, name in cls.fields_by_keyword.items():
            fields[name] = _fit(attributes.get(keyword), cls.model_fields[name].annotation)
        return cls.model_validate({**fields, "attributes": attributes})

    def __getitem__(self, keyword: str) -> Any:
        """Look an attribute up by DICOM keyword, e.g. ``result["PatientID"]``."""
        return self.attributes[keyword]


class PatientResult(_Result):
    """One patient matched by a PATIENT level C-FIND."""

    level: ClassVar[QueryLevel] = QueryLevel.PATIENT
    fields_by_keyword: ClassVar[dict[str, str]] = {
        "PatientID": "patient_id",
        "PatientName": "patient_name",
        "PatientBirthDate": "patient_birth_date",
        "PatientSex": "patient_sex",
        "NumberOfPatientRelatedStudies": "number_of_patient_related_studies",
        "NumberOfPatientRelatedSeries": "number_of_patient_related_series",
        "NumberOfPatientRelatedInstances": "number_of_patient_related_instances",
    }

    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: dt.date | None = None
    patient_sex: str | None = None
    number_of_patient_related_studies: int | None = None
    number_of_patient_related_series: int | None = None
    number_of_patient_related_instances: int | None = None


class StudyResult(_Result):
    """One study matched by a STUDY level C-FIND."""

    level: ClassVar[QueryLevel] = QueryLevel.STUDY
    fields_by_keyword: ClassVar[dict[str, str]] = {
        "PatientID": "patient_id",
        "PatientName": "patient_name",
        "PatientBirthDate": "patient_birth_date",
        "PatientSex": "patient_sex",
        "StudyInstanceUID": "study_instance_uid",
        "StudyDate": "study_date",
        "StudyTime": "study_time",
        "AccessionNumber": "accession_number",
        "StudyID": "study_id",
        "StudyDescription": "study_description",
        "ModalitiesInStudy": "modalities_in_study",
        "ReferringPhysicianName": "referring_physician_name",
        "NumberOfStudyRelatedSeries": "number_of_study_related_series",
        "NumberOfStudyRelatedInstances": "number_of_study_related_instances",
    }

    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: dt.date | None = None
    patient_sex: str | None = None
    study_instance_uid: str | None = None
    study_date: dt.date | None = None
    study_time: dt.time | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    modalities_in_study: list[str] = Field(default_factory=list)
    referring_physician_name: str | None = None
    number_of_study_related_series: int | None = None
    number_of_study_related_instances: int | None = None


class SeriesResult(_Result):
    """One series matched by a SERIES level C-FIND."""

    level: ClassVar[QueryLevel] = QueryLevel.SERIES
    fields_by_keyword: ClassVar[dict[str, str]] = {
        "StudyInstanceUID": "study_instance_uid",
        "SeriesInstanceUID": "series_instance_uid",
        "Modality": "modality",
        "SeriesNumber": "series_number",
        "SeriesDescription": "series_description",
        "SeriesDate": "series_date",
        "BodyPartExamined": "body_part_examined",
        "NumberOfSeriesRelatedInstances": "number_of_series_related_instances",
    }

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    series_date: dt.date | None = None
    body_part_examined: str | None = None
    number_of_series_related_instances: int | None = None


class ImageResult(_Result):
    """One instance matched by an IMAGE level C-FIND."""

    level: ClassVar[QueryLevel] = QueryLevel.IMAGE
    fields_by_keyword: ClassVar[dict[str, str]] = {
        "StudyInstanceUID": "study_instance_uid",
        "SeriesInstanceUID": "series_instance_uid",
        "SOPInstanceUID": "sop_instance_uid",
        "SOPClassUID": "sop_class_uid",
        "InstanceNumber": "instance_number",
        "NumberOfFrames": "number_of_frames",
    }

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    instance_number: int | None = None
    number_of_frames: int | None = None


_BY_LEVEL: dict[QueryLevel, type[_Result]] = {
    cls.level: cls for cls in (PatientResult, StudyResult, SeriesResult, ImageResult)
}


def result_model_for(level: QueryLevel) -> type[_Result]:
    """Return the result model class of a query level."""
    return _BY_LEVEL[level]


def _fit(value: Any, annotation: Any) -> Any:
    """``value`` if it has the field's type, else ``None`` (``[]`` for list fields)."""
    if annotation == list[str]:
        if isinstance(value, list):
            return [str(v) for v in value]
        return [value] if isinstance(value, str) else []
    expected = {
        dt.date | None: dt.date,
        dt.time | None: dt.time,
        int | None: int,
        str | None: str,
    }.get(annotation)
    if expected is None or not isinstance(value, expected) or isinstance(value, bool):
        return None
    if expected is dt.date and isinstance(value, dt.datetime):
        return value.date()
    return value


def names_look_emptied(ds: Dataset) -> bool:
    """True when a person name came back as separators only (``^``, ``=``).

    That is what a peer answering in a character set that cannot carry the
    name (e.g. Orthanc with ``DefaultEncoding`` Latin1 and a Japanese name) sends.
    """
    for raw in ds.elements():  # raw elements: only PN values get decoded
        if _is_person_name(raw.tag, raw.VR):
            try:
                value = ds[raw.tag].value
            except Exception:  # noqa: BLE001 - a malformed name is not an emptied one
                continue
            text = str(value) if value else ""
            if text and not text.strip("^= \x00"):
                return True
    return False


def _is_person_name(tag: BaseTag | int, vr: str | None) -> bool:
    """A PN element, also in Implicit VR where the raw element carries no VR."""
    if vr is not None and vr != "UN":
        return vr == "PN"
    try:
        return dictionary_VR(tag) == "PN"
    except KeyError:
        return False
