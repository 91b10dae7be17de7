"""Query criteria in DICOM keywords (``PatientID="12*"``, ``StudyDate=(a, b)``).

The notebook layer speaks DICOM keywords.  :func:`build_query` checks each
keyword and encodes its value by the keyword's VR (dates, ranges, UID lists,
numbers), raising :class:`~clarinet_nb.errors.InvalidInputError` before any
network traffic.  The result has the same face as the core query models
(``level`` and ``to_dataset()``), so :class:`DicomOperations` runs it as is.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_dict

from clarinet_nb.dicom.queries import (
    DateRange,
    ImageQuery,
    PatientQuery,
    QueryLevel,
    SeriesQuery,
    StudyQuery,
)
from clarinet_nb.dicom.values import check_uid, format_da, parse_dicom_date, set_key
from clarinet_nb.errors import InvalidInputError

__all__ = ["KeywordQuery", "build_query", "default_keys", "is_missing"]

_MODELS: dict[QueryLevel, type[PatientQuery | StudyQuery | SeriesQuery | ImageQuery]] = {
    QueryLevel.PATIENT: PatientQuery,
    QueryLevel.STUDY: StudyQuery,
    QueryLevel.SERIES: SeriesQuery,
    QueryLevel.IMAGE: ImageQuery,
}


def default_keys(level: QueryLevel) -> tuple[str, ...]:
    """The attributes asked back at ``level``, in column order."""
    model = _MODELS[level]
    return tuple(dict.fromkeys([*model.keywords.values(), *model.default_return_keys]))


def is_missing(value: Any) -> bool:
    """None, NaN, NaT and pandas NA count as "no criterion"."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False


@dataclass(frozen=True)
class KeywordQuery:
    """A C-FIND at ``level`` with keyword criteria already encoded as DICOM strings."""

    level: QueryLevel
    criteria: Mapping[str, str] = field(default_factory=dict)
    return_keys: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """Every attribute asked back, in column order."""
        return tuple(dict.fromkeys([*default_keys(self.level), *self.criteria, *self.return_keys]))

    def to_dataset(self) -> Dataset:
        """The C-FIND identifier."""
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level.value
        for keyword in self.keys:
            set_key(ds, keyword, [] if dictionary_VR(keyword) == "SQ" else "")
        needs_utf8 = False
        for keyword, value in self.criteria.items():
            set_key(ds, keyword, value)
            needs_utf8 |= not value.isascii()
        if needs_utf8:
            ds.SpecificCharacterSet = "ISO_IR 192"
        return ds

    def cache_key(self) -> str:
        """A canonical text of level, criteria and return keys (for caches)."""
        return json.dumps(
            {
                "level": self.level.value,
                "criteria": dict(sorted(self.criteria.items())),
                "return_keys": sorted(self.return_keys),
            },
            ensure_ascii=False,
            sort_keys=True,
        )

    def with_criteria(self, **changes: str) -> KeywordQuery:
        """A copy with some criteria replaced (already encoded)."""
        return KeywordQuery(self.level, {**self.criteria, **changes}, self.return_keys)


def build_query(
    level: QueryLevel | str,
    criteria: Mapping[str, Any],
    return_keys: Iterable[str] = (),
) -> KeywordQuery:
    """Validate and encode keyword criteria for a C-FIND at ``level``."""
    try:
        lvl = QueryLevel(str(level).upper())
    except ValueError:
        raise InvalidInputError(f"{level!r} is not a query level") from None
    encoded: dict[str, str] = {}
    for keyword, value in criteria.items():
        _check_keyword(keyword)
        if is_missing(value):
            continue
        encoded[keyword] = encode_value(keyword, value)
    extra = tuple(return_keys)
    for keyword in extra:
        _check_keyword(keyword)
    return KeywordQuery(lvl, encoded, extra)


def _check_keyword(keyword: str) -> None:
    if keyword not in keyword_dict or keyword == "QueryRetrieveLevel":
        raise InvalidInputError(f"{keyword!r} is not a DICOM keyword usable in a query")
    if (keyword_dict[keyword] >> 16) in (0x0000, 0x0002, 0x7FE0):
        raise InvalidInputError(f"{keyword!r} cannot be a query key")


def encode_value(keyword: str, value: Any) -> str:
    """Encode one criterion by the keyword's VR; raises InvalidInputError."""
    vr = dictionary_VR(keyword)
    if vr == "DA":
        return _encode_date(keyword, value)
    if vr == "TM":
        return _encode_range(keyword, value, _encode_time)
    if vr == "DT":
        return _encode_range(keyword, value, _encode_datetime)
    if vr == "UI":
        values = [value] if isinstance(value, str) else list(_iterable(keyword, value))
        if not values:
            raise InvalidInputError(f"{keyword}: an empty list of UIDs matches nothing")
        return "\\".join(_uid(keyword, v) for v in values)
    if vr in ("IS", "US", "SS", "UL", "SL", "UV", "SV"):
        return _encode_int(keyword, value)
    if vr in ("DS", "FL", "FD"):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidInputError(f"{keyword}: expected a number, got {value!r}")
        return str(value)
    if vr == "SQ":
        raise InvalidInputError(f"{keyword} is a sequence: it can be returned, not matched")
    if isinstance(value, str):
        return _text(keyword, value)
    values = list(_iterable(keyword, value))
    return "\\".join(_text(keyword, str(v)) for v in values)


def _iterable(keyword: str, value: Any) -> Iterable[Any]:
    if isinstance(value, list | tuple | set | frozenset):
        return value
    if hasattr(value, "tolist"):
        listed = value.tolist()
        if isinstance(listed, list):
            return listed
    raise InvalidInputError(f"{keyword}: cannot match on a {type(value).__name__}")


def _text(keyword: str, value: str) -> str:
    if "\\" in value:
        raise InvalidInputError(f"{keyword}: backslash is not allowed in a matching value")
    return value


def _uid(keyword: str, value: Any) -> str:
    try:
        return check_uid(str(value))
    except InvalidInputError as exc:
        raise InvalidInputError(f"{keyword}: {exc}") from None


def _encode_int(keyword: str, value: Any) -> str:
    if isinstance(value, bool):
        raise InvalidInputError(f"{keyword}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return value.strip()
    raise InvalidInputError(f"{keyword}: expected an integer, got {value!r}")


def _encode_date(keyword: str, value: Any) -> str:
    try:
        if isinstance(value, tuple | list):
            if len(value) != 2:
                raise InvalidInputError("a range is a (start, end) pair")
            start, end = (
                None if is_missing(v) or v == "" else parse_dicom_date(_d(v)) for v in value
            )
            return DateRange(start=start, end=end).to_dicom()
        if isinstance(value, str) and "-" in value.strip() and not _iso(value.strip()):
            lo, _, hi = value.strip().partition("-")
            return DateRange(
                start=parse_dicom_date(lo) if lo else None,
                end=parse_dicom_date(hi) if hi else None,
            ).to_dicom()
        return format_da(parse_dicom_date(_d(value)))
    except InvalidInputError as exc:
        raise InvalidInputError(f"{keyword}: {exc}") from None


def _d(value: Any) -> Any:
    """pandas Timestamps and numpy datetimes to datetime."""
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    return value


def _iso(text: str) -> bool:
    return len(text) == 10 and text[4] == "-" and text[7] == "-"


def _encode_range(keyword: str, value: Any, one: Any) -> str:
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise InvalidInputError(f"{keyword}: a range is a (start, end) pair")
        lo, hi = ("" if is_missing(v) or v == "" else one(keyword, v) for v in value)
        if not lo and not hi:
            raise InvalidInputError(f"{keyword}: a range needs at least one end")
        if lo and hi and lo > hi:
            raise InvalidInputError(f"{keyword}: impossible range {lo}-{hi}")
        return f"{lo}-{hi}"
    return str(one(keyword, value))


def _encode_time(keyword: str, value: Any) -> str:
    if isinstance(value, dt.time):
        return value.strftime("%H%M%S")
    if isinstance(value, str) and value.replace(":", "").replace(".", "").isdigit():
        return value.replace(":", "")
    raise InvalidInputError(f"{keyword}: expected a time or HHMMSS, got {value!r}")


def _encode_datetime(keyword: str, value: Any) -> str:
    value = _d(value)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d%H%M%S")
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, str) and value.replace(".", "").isdigit():
        return value
    raise InvalidInputError(f"{keyword}: expected a datetime, got {value!r}")
