"""Query criteria in DICOM keywords (``PatientID="12*"``, ``StudyDate=(a, b)``).

The notebook layer speaks DICOM keywords.  :func:`build_query` checks each
keyword and encodes its value by the keyword's VR (dates, ranges, UID lists,
numbers; see :mod:`clarinet_nb.dicom.matching`), raising
:class:`~clarinet_nb.errors.InvalidInputError` before any network traffic.
Criteria never widen: a blank value (None, NaN, ``""``, ``[]``...) is refused,
not dropped, and a query without any criterion is refused; ``"*"`` is the one
way to ask for everything.  The result has the same face as the core query
models (``level`` and ``to_dataset()``), so :class:`DicomOperations` runs it as is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_dict

from clarinet_nb.dicom.matching import (
    check_matching,
    element_value,
    encode_matching,
    is_blank,
    needs_utf8,
)
from clarinet_nb.dicom.queries import (
    ImageQuery,
    PatientQuery,
    QueryLevel,
    SeriesQuery,
    StudyQuery,
)
from clarinet_nb.dicom.values import set_key
from clarinet_nb.errors import InvalidInputError

__all__ = [
    "KeywordQuery",
    "build_query",
    "check_return_keys",
    "default_keys",
    "encode_criteria",
    "is_missing",
]

NO_CRITERIA = (
    "no criteria: a find without any criterion would list the whole PACS; pass at least "
    "one, e.g. PatientID='12345', or PatientID='*' to ask for everything"
)

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
    """None, NaN, NaT, pandas NA, blank text and empty containers count as "no value"."""
    return is_blank(value)


@dataclass(frozen=True)
class KeywordQuery:
    """A C-FIND at ``level`` with keyword criteria already encoded as DICOM strings."""

    level: QueryLevel
    criteria: Mapping[str, str] = field(default_factory=dict)
    return_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for keyword, value in self.criteria.items():
            check_matching(keyword, value)  # however it was built, nothing blank or invalid

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
        for keyword, value in self.criteria.items():
            set_key(ds, keyword, element_value(keyword, value))
        if needs_utf8(self.criteria.values()):
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


def parse_level(level: QueryLevel | str) -> QueryLevel:
    """``"study"``, ``"STUDY"`` or ``QueryLevel.STUDY``; InvalidInputError otherwise."""
    if isinstance(level, QueryLevel):
        return level
    try:
        return QueryLevel(str(level).upper())
    except ValueError:
        raise InvalidInputError(f"{level!r} is not a query level") from None


def encode_criteria(criteria: Mapping[str, Any]) -> dict[str, str]:
    """Check and encode keyword criteria; a blank value is an error, never dropped."""
    encoded: dict[str, str] = {}
    for keyword, value in criteria.items():
        _check_keyword(keyword)
        encoded[keyword] = encode_matching(keyword, value)
    return encoded


def check_return_keys(return_keys: Iterable[str] | str | None) -> tuple[str, ...]:
    """``"InstitutionName"`` or a list of keywords; unknown keywords are named in the error."""
    if return_keys is None:
        return ()
    keys = (return_keys,) if isinstance(return_keys, str) else tuple(return_keys)
    bad = [k for k in keys if not isinstance(k, str) or k not in keyword_dict]
    if bad:
        raise InvalidInputError(
            "return_keys: not DICOM keywords: " + ", ".join(repr(k) for k in bad)
        )
    for keyword in keys:
        _check_keyword(keyword)
    return tuple(dict.fromkeys(keys))


def build_query(
    level: QueryLevel | str,
    criteria: Mapping[str, Any],
    return_keys: Iterable[str] | str = (),
) -> KeywordQuery:
    """Validate and encode keyword criteria for a C-FIND at ``level``.

    Raises InvalidInputError for a blank value, a value its VR forbids, or no
    criteria at all (pass e.g. ``PatientID="*"`` to ask for everything).
    """
    lvl = parse_level(level)
    encoded = encode_criteria(criteria)
    extra = check_return_keys(return_keys)
    if not encoded:
        raise InvalidInputError(NO_CRITERIA)
    return KeywordQuery(lvl, encoded, extra)


def _check_keyword(keyword: str) -> None:
    if not isinstance(keyword, str) or keyword not in keyword_dict:
        raise InvalidInputError(f"{keyword!r} is not a DICOM keyword usable in a query")
    if keyword in {"QueryRetrieveLevel", "SpecificCharacterSet"}:
        raise InvalidInputError(f"{keyword!r} is set by clarinet_nb, not a query key")
    if (keyword_dict[keyword] >> 16) in (0x0000, 0x0002, 0x7FE0):
        raise InvalidInputError(f"{keyword!r} cannot be a query key")
