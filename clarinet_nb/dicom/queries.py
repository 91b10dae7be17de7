"""Query models: what to look for at each Query/Retrieve level.

Fields are snake_case; each maps to one DICOM keyword.  ``None`` means "return
this attribute but do not match on it"; an explicit blank value (``""``, spaces,
an empty list, a list with a blank item) is refused, since it would match
everything.  Every value is checked against its VR (length, repertoire, control
characters, syntax; see :mod:`clarinet_nb.dicom.matching`).  Strings may use the
wildcards ``*`` and ``?`` where the standard allows them (not on UIDs, dates,
times or numbers).  Dates
take a ``date``, ``"YYYYMMDD"``/``"YYYY-MM-DD"`` or a range ``(start, end)``
where either end may be ``None``.  UID fields take one UID or a list (UID list
matching).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import BeforeValidator, ConfigDict, field_validator, model_validator
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_dict

from clarinet_nb.dicom.base import StrictModel
from clarinet_nb.dicom.matching import check_matching, encode_matching, is_blank
from clarinet_nb.dicom.values import check_uid, format_da, parse_dicom_date, set_key
from clarinet_nb.errors import InvalidInputError

__all__ = [
    "DateRange",
    "ImageQuery",
    "PatientQuery",
    "QueryLevel",
    "SeriesQuery",
    "StudyQuery",
]


class QueryLevel(StrEnum):
    """Query/Retrieve level (``QueryRetrieveLevel``)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class DateRange(StrictModel):
    """An inclusive date range; either end may be open (``None``)."""

    model_config = ConfigDict(frozen=True)

    start: dt.date | None = None
    end: dt.date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.start is None and self.end is None:
            raise InvalidInputError("a date range needs at least one end")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise InvalidInputError("impossible date range: start is after end")
        return self

    def to_dicom(self) -> str:
        """Format as DICOM range matching, e.g. ``20200101-20201231``."""
        start = format_da(self.start) if self.start else ""
        end = format_da(self.end) if self.end else ""
        return f"{start}-{end}"


def _coerce_date(value: Any) -> Any:
    """Accept date, 'YYYYMMDD', 'YYYY-MM-DD', 'A-B' strings and (start, end) pairs."""
    if value is None or isinstance(value, DateRange):
        return value
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise InvalidInputError(f"a date range is a (start, end) pair, not {len(value)} values")
        start, end = (None if is_blank(v) else parse_dicom_date(v) for v in value)
        return DateRange(start=start, end=end)
    if isinstance(value, str) and "-" in value.strip() and not _looks_iso(value.strip()):
        start_s, _, end_s = value.strip().partition("-")
        return DateRange(
            start=parse_dicom_date(start_s) if start_s else None,
            end=parse_dicom_date(end_s) if end_s else None,
        )
    if isinstance(value, dict):
        return DateRange(**value)
    return parse_dicom_date(value)


def _looks_iso(text: str) -> bool:
    return len(text) == 10 and text[4] == "-" and text[7] == "-"


def _coerce_uids(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return check_uid(value)
    if isinstance(value, Sequence | set | frozenset):
        if not value:
            raise InvalidInputError("an empty list of UIDs would match everything")
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        uids = tuple(check_uid(v) for v in items)
        return uids if len(uids) > 1 else uids[0]
    raise InvalidInputError(f"expected a UID or a list of UIDs, got {type(value).__name__}")


_BLANK = "a blank value would match everything; leave the field out (None) or use '*'"


def _coerce_text(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"expected a string, got {type(value).__name__}")
    if is_blank(value):
        raise InvalidInputError(_BLANK)
    if "\\" in value:
        raise InvalidInputError("backslash is not allowed in a matching key")
    return value.strip(" ")


def _coerce_text_list(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return _coerce_text(value)
    if isinstance(value, Sequence):
        if not value:
            raise InvalidInputError("an empty list " + _BLANK.removeprefix("a blank value "))
        if any(v is None for v in value):
            raise InvalidInputError("a list item is None: it would match everything")
        items = tuple(_coerce_text(v) for v in value)
        return items if len(items) > 1 else items[0]
    raise InvalidInputError(f"expected a string or list of strings, got {type(value).__name__}")


def _coerce_time(value: Any) -> Any:
    """``dt.time``, ``"HHMMSS"``, ``"HH:MM:SS"`` or a ``(start, end)`` range -> TM text."""
    if value is None:
        return None
    return encode_matching("StudyTime", value)


DateMatch = Annotated[dt.date | DateRange | None, BeforeValidator(_coerce_date)]
UIDMatch = Annotated[str | tuple[str, ...] | None, BeforeValidator(_coerce_uids)]
TextMatch = Annotated[str | None, BeforeValidator(_coerce_text)]
TextListMatch = Annotated[str | tuple[str, ...] | None, BeforeValidator(_coerce_text_list)]
TimeMatch = Annotated[str | None, BeforeValidator(_coerce_time)]


class _Query(StrictModel):
    """Shared behaviour: building the C-FIND identifier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    level: ClassVar[QueryLevel]
    #: snake_case field -> DICOM keyword
    keywords: ClassVar[dict[str, str]]
    #: attributes always asked back at this level, besides the fields
    default_return_keys: ClassVar[tuple[str, ...]] = ()

    return_keys: tuple[str, ...] = ()
    """Extra DICOM keywords to ask the peer to return."""

    @field_validator("return_keys", mode="before")
    @classmethod
    def _known_keywords(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = (value,)
        bad = [k for k in value or () if not isinstance(k, str) or k not in keyword_dict]
        if bad:
            raise InvalidInputError(
                "return_keys: not DICOM keywords: " + ", ".join(repr(k) for k in bad)
            )
        return tuple(value or ())

    @model_validator(mode="after")
    def _values_fit_their_vr(self) -> _Query:
        for keyword, value in self.matching().items():
            check_matching(keyword, _encode(keyword, value))
        return self

    def matching(self) -> dict[str, Any]:
        """Return the fields that constrain the query, keyed by DICOM keyword."""
        out: dict[str, Any] = {}
        for name, keyword in self.keywords.items():
            value = getattr(self, name)
            if value is not None:
                out[keyword] = value
        return out

    def to_dataset(self) -> Dataset:
        """Build the C-FIND identifier for this query."""
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level.value
        keywords = list(self.keywords.values()) + list(self.default_return_keys)
        keywords += list(self.return_keys)
        needs_utf8 = False
        for keyword in dict.fromkeys(keywords):
            set_key(ds, keyword, "" if dictionary_VR(keyword) != "SQ" else [])
        for keyword, value in self.matching().items():
            encoded = _encode(keyword, value)
            needs_utf8 |= not encoded.isascii()
            set_key(ds, keyword, encoded)
        if needs_utf8:
            ds.SpecificCharacterSet = "ISO_IR 192"
        return ds


def _encode(keyword: str, value: Any) -> str:
    if isinstance(value, DateRange):
        return value.to_dicom()
    if isinstance(value, dt.date):
        return format_da(value)
    if isinstance(value, tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


class PatientQuery(_Query):
    """PATIENT level query."""

    level: ClassVar[QueryLevel] = QueryLevel.PATIENT
    keywords: ClassVar[dict[str, str]] = {
        "patient_id": "PatientID",
        "patient_name": "PatientName",
        "patient_birth_date": "PatientBirthDate",
        "patient_sex": "PatientSex",
    }
    default_return_keys: ClassVar[tuple[str, ...]] = (
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    )

    patient_id: TextMatch = None
    patient_name: TextMatch = None
    patient_birth_date: DateMatch = None
    patient_sex: TextMatch = None


class StudyQuery(_Query):
    """STUDY level query (Study Root)."""

    level: ClassVar[QueryLevel] = QueryLevel.STUDY
    keywords: ClassVar[dict[str, str]] = {
        "patient_id": "PatientID",
        "patient_name": "PatientName",
        "patient_birth_date": "PatientBirthDate",
        "patient_sex": "PatientSex",
        "study_instance_uid": "StudyInstanceUID",
        "study_date": "StudyDate",
        "study_time": "StudyTime",
        "accession_number": "AccessionNumber",
        "study_id": "StudyID",
        "study_description": "StudyDescription",
        "modalities_in_study": "ModalitiesInStudy",
        "referring_physician_name": "ReferringPhysicianName",
    }
    default_return_keys: ClassVar[tuple[str, ...]] = (
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    )

    patient_id: TextMatch = None
    patient_name: TextMatch = None
    patient_birth_date: DateMatch = None
    patient_sex: TextMatch = None
    study_instance_uid: UIDMatch = None
    study_date: DateMatch = None
    study_time: TimeMatch = None
    accession_number: TextMatch = None
    study_id: TextMatch = None
    study_description: TextMatch = None
    modalities_in_study: TextListMatch = None
    referring_physician_name: TextMatch = None


class SeriesQuery(_Query):
    """SERIES level query; give ``study_instance_uid`` for strictly hierarchical peers."""

    level: ClassVar[QueryLevel] = QueryLevel.SERIES
    keywords: ClassVar[dict[str, str]] = {
        "study_instance_uid": "StudyInstanceUID",
        "series_instance_uid": "SeriesInstanceUID",
        "modality": "Modality",
        "series_number": "SeriesNumber",
        "series_description": "SeriesDescription",
        "series_date": "SeriesDate",
        "body_part_examined": "BodyPartExamined",
    }
    default_return_keys: ClassVar[tuple[str, ...]] = ("NumberOfSeriesRelatedInstances",)

    study_instance_uid: UIDMatch = None
    series_instance_uid: UIDMatch = None
    modality: TextListMatch = None
    series_number: int | None = None
    series_description: TextMatch = None
    series_date: DateMatch = None
    body_part_examined: TextMatch = None


class ImageQuery(_Query):
    """IMAGE (instance) level query; give the study and series UIDs for hierarchical peers."""

    level: ClassVar[QueryLevel] = QueryLevel.IMAGE
    keywords: ClassVar[dict[str, str]] = {
        "study_instance_uid": "StudyInstanceUID",
        "series_instance_uid": "SeriesInstanceUID",
        "sop_instance_uid": "SOPInstanceUID",
        "sop_class_uid": "SOPClassUID",
        "instance_number": "InstanceNumber",
    }

    study_instance_uid: UIDMatch = None
    series_instance_uid: UIDMatch = None
    sop_instance_uid: UIDMatch = None
    sop_class_uid: UIDMatch = None
    instance_number: int | None = None


class Query(Protocol):
    """What the operations layer needs of a query: its level and its identifier."""

    @property
    def level(self) -> QueryLevel:
        """The Query/Retrieve level."""

    def to_dataset(self) -> Dataset:
        """The C-FIND identifier."""


AnyQuery = Query
