"""Frames as input: which columns are criteria, which are carried along, what to retrieve."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydicom.datadict import keyword_dict

from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.dicom.requests import RetrieveRequest
from clarinet_nb.errors import InvalidInputError
from clarinet_nb.notebook.criteria import (
    NO_CRITERIA,
    KeywordQuery,
    check_return_keys,
    encode_criteria,
    is_missing,
)

__all__ = [
    "QueryPlan",
    "QueryRow",
    "drop_duplicate_rows",
    "plan_queries",
    "query_rows",
    "retrieve_targets",
]

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
    """One row of a batch: its criteria, the input columns carried to its results, and
    either its checked query or why it cannot be queried."""

    criteria: Mapping[str, Any]
    context: Mapping[str, Any] = field(default_factory=dict)
    index: Any = None
    query: KeywordQuery | None = None
    error: InvalidInputError | None = None


@dataclass(frozen=True)
class QueryPlan:
    """The rows of a find and the distinct queries they need (each sent once)."""

    rows: list[QueryRow]
    distinct: list[KeywordQuery]
    #: for each row, the position of its query in ``distinct`` (None: a failed row)
    slots: list[int | None]


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
    frame: pd.DataFrame | None,
    level: QueryLevel,
    criteria: Mapping[str, Any],
    return_keys: Iterable[str] | str = (),
) -> list[QueryRow]:
    """One QueryRow per frame row (or one for the keyword criteria alone).

    Keyword criteria and return keys are checked first and raise at once.  A frame
    row with a blank or invalid criteria cell gets ``error`` (a failed row, never a
    query that would match more than asked).
    """
    encoded = encode_criteria(criteria)
    extra = check_return_keys(return_keys)
    if frame is None:
        if not encoded:
            raise InvalidInputError(NO_CRITERIA)
        query = KeywordQuery(level, encoded, extra)
        return [QueryRow(criteria=dict(criteria), query=query)]
    if not isinstance(frame, pd.DataFrame):
        raise InvalidInputError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    keys = [k for k in key_columns(frame, level) if k not in criteria]
    if not keys and not criteria:
        raise InvalidInputError(
            "the frame has no column named by a DICOM keyword (e.g. PatientID, "
            "StudyInstanceUID) to query with"
        )
    carried = [c for c in frame.columns if c not in keys and c not in criteria]
    rows = []
    for index, record in zip(frame.index, frame.to_dict("records"), strict=True):
        cells = {k: record[k] for k in keys}
        context = {c: record[c] for c in carried}
        try:
            query = KeywordQuery(level, {**_encode_cells(cells), **encoded}, extra)
        except InvalidInputError as exc:
            rows.append(QueryRow({**cells, **criteria}, context, index, error=exc))
            continue
        rows.append(QueryRow({**cells, **criteria}, context, index, query=query))
    return rows


def _encode_cells(cells: Mapping[str, Any]) -> dict[str, str]:
    for keyword, value in cells.items():
        if is_missing(value):
            raise InvalidInputError(
                f"{keyword}: blank cell; a blank criterion would match everything, so this "
                "row was not queried (fill it in, or put '*' to ask for everything)"
            )
    return encode_criteria(cells)


def plan_queries(
    frame: pd.DataFrame | None,
    level: QueryLevel,
    criteria: Mapping[str, Any],
    return_keys: Iterable[str] | str = (),
) -> QueryPlan:
    """The rows of a find and each distinct query once (rows with equal criteria share it)."""
    rows = query_rows(frame, level, criteria, return_keys)
    distinct: dict[str, int] = {}
    queries: list[KeywordQuery] = []
    slots: list[int | None] = []
    for row in rows:
        if row.query is None:
            slots.append(None)
            continue
        key = row.query.cache_key()
        if key not in distinct:
            distinct[key] = len(queries)
            queries.append(row.query)
        slots.append(distinct[key])
    return QueryPlan(rows, queries, slots)


_UNHASHABLE = (pd.ArrowDtype, np.dtypes.ObjectDType)


def drop_duplicate_rows(found: pd.DataFrame) -> pd.DataFrame:
    """An answer without rows identical in every column (a PACS that holds one study
    under two patients answers a series query twice, identically)."""
    if len(found) < 2:
        return found
    comparable = found
    # list columns (ArrowDtype list<...>) and object columns cannot be hashed as they are
    odd = [c for c in found.columns if isinstance(found[c].dtype, _UNHASHABLE)]
    if odd:
        comparable = found.copy(deep=False)
        for column in odd:
            values = [_hashable(v) for v in found[column].tolist()]
            comparable[column] = pd.Series(values, index=found.index, dtype=object)
    keep = ~comparable.duplicated().to_numpy()
    if keep.all():
        return found
    out = found[keep]
    out.attrs = dict(found.attrs)
    return out


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if hasattr(value, "tolist") and getattr(value, "ndim", None):
        return tuple(_hashable(v) for v in value.tolist())
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


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
