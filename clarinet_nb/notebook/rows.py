"""Frames as input: which columns are criteria, which are carried along, what to retrieve."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pydicom.datadict import keyword_dict

from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.dicom.requests import RetrieveRequest
from clarinet_nb.errors import InvalidInputError
from clarinet_nb.notebook.criteria import is_missing

__all__ = ["QueryRow", "query_rows", "retrieve_targets"]

#: The unique keys that identify a row of each level, coarse to fine.
_UNIQUE = {
    QueryLevel.PATIENT: ("PatientID",),
    QueryLevel.STUDY: ("StudyInstanceUID",),
    QueryLevel.SERIES: ("StudyInstanceUID", "SeriesInstanceUID"),
    QueryLevel.IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
_ORDER = [QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE]


@dataclass(frozen=True)
class QueryRow:
    """One query of a batch: its criteria and the input columns carried to its results."""

    criteria: Mapping[str, Any]
    context: Mapping[str, Any] = field(default_factory=dict)
    index: Any = None


def _frame_level(frame: pd.DataFrame) -> QueryLevel | None:
    level = frame.attrs.get("level")
    try:
        return QueryLevel(level) if level else None
    except ValueError:
        return None


def key_columns(frame: pd.DataFrame, level: QueryLevel) -> list[str]:
    """The columns of ``frame`` used as criteria for a query at ``level``.

    A frame that came from one of our finds drills down by its unique keys
    (a study frame gives StudyInstanceUID, a series frame Study+Series UIDs);
    any other frame uses every column named by a DICOM keyword.
    """
    source = _frame_level(frame)
    if source is not None:
        if _ORDER.index(level) <= _ORDER.index(source) and level is not QueryLevel.PATIENT:
            # same or coarser level: re-query by the unique keys of the target level
            keys = list(_UNIQUE[level])
        else:
            keys = list(_UNIQUE[source])
        if source is QueryLevel.PATIENT or level is QueryLevel.PATIENT:
            keys = ["PatientID"] if "PatientID" in frame.columns else keys
        return [k for k in keys if k in frame.columns]
    return [c for c in frame.columns if isinstance(c, str) and c in keyword_dict]


def query_rows(
    frame: pd.DataFrame | None, level: QueryLevel, criteria: Mapping[str, Any]
) -> list[QueryRow]:
    """One QueryRow per frame row (or one for the keyword criteria alone)."""
    if frame is None:
        return [QueryRow(criteria=dict(criteria))]
    if not isinstance(frame, pd.DataFrame):
        raise InvalidInputError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    keys = key_columns(frame, level)
    if not keys and not criteria:
        raise InvalidInputError(
            "the frame has no column named by a DICOM keyword (e.g. PatientID, "
            "StudyInstanceUID) to query with"
        )
    carried = [c for c in frame.columns if c not in keys]
    rows = []
    for index, record in zip(frame.index, frame.to_dict("records"), strict=True):
        row_criteria = {k: record[k] for k in keys if not is_missing(record[k])}
        rows.append(
            QueryRow(
                criteria={**row_criteria, **criteria},
                context={c: record[c] for c in carried},
                index=index,
            )
        )
    return rows


def retrieve_targets(frame: pd.DataFrame) -> list[RetrieveRequest]:
    """What the rows of ``frame`` identify: instances, series or studies (deduplicated).

    Instances are grouped per series so each series needs one request.
    """
    if not isinstance(frame, pd.DataFrame):
        raise InvalidInputError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    columns = set(frame.columns)
    records = frame.to_dict("records")

    def val(record: dict[Any, Any], key: str) -> str | None:
        value = record.get(key)
        return None if value is None or is_missing(value) else str(value)

    if "SOPInstanceUID" in columns and _frame_level(frame) in (None, QueryLevel.IMAGE):
        groups: dict[tuple[str | None, str | None], list[str]] = {}
        for record in records:
            sop = val(record, "SOPInstanceUID")
            if sop:
                key = (val(record, "StudyInstanceUID"), val(record, "SeriesInstanceUID"))
                groups.setdefault(key, [])
                if sop not in groups[key]:
                    groups[key].append(sop)
        return [
            RetrieveRequest.instances(sops, series_uid=series, study_uid=study)
            for (study, series), sops in groups.items()
        ]
    if "SeriesInstanceUID" in columns and _frame_level(frame) in (None, QueryLevel.SERIES):
        seen: dict[str, str | None] = {}
        for record in records:
            series = val(record, "SeriesInstanceUID")
            if series and series not in seen:
                seen[series] = val(record, "StudyInstanceUID")
        return [RetrieveRequest.series(s, study) for s, study in seen.items()]
    if "StudyInstanceUID" in columns:
        studies = dict.fromkeys(s for s in (val(r, "StudyInstanceUID") for r in records) if s)
        return [RetrieveRequest.study(s) for s in studies]
    raise InvalidInputError(
        "the frame has no StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID column: "
        "nothing to retrieve"
    )
