"""Re-issuing a truncated C-FIND over smaller date windows until nothing is cut.

PACS cap C-FIND answers (Orthanc's ``LimitFindResults`` ends with a Cancel
status after that many matches; others just stop).  ``split="auto"`` bisects
the query's date range (StudyDate at STUDY level, SeriesDate at SERIES level)
until every window comes back whole; a single day that is still truncated
cannot be split further and stays marked truncated.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from pydicom import Dataset

from clarinet_nb.dicom.operations import FindOutcome
from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.dicom.values import format_da, parse_da
from clarinet_nb.notebook.criteria import KeywordQuery

__all__ = ["DATE_KEYS", "date_window", "find_with_split"]

logger = logging.getLogger("clarinet_nb")

DATE_KEYS = {QueryLevel.STUDY: "StudyDate", QueryLevel.SERIES: "SeriesDate"}
EARLIEST = dt.date(1900, 1, 1)
UNIQUE = {
    QueryLevel.PATIENT: "PatientID",
    QueryLevel.STUDY: "StudyInstanceUID",
    QueryLevel.SERIES: "SeriesInstanceUID",
    QueryLevel.IMAGE: "SOPInstanceUID",
}

Finder = Callable[[KeywordQuery], Awaitable[FindOutcome]]


def date_window(query: KeywordQuery, today: dt.date) -> tuple[dt.date, dt.date] | None:
    """The (first, last) day the query covers, or None when it cannot be split by date."""
    key = DATE_KEYS.get(query.level)
    if key is None:
        return None
    text = query.criteria.get(key, "")
    if not text:
        return EARLIEST, today
    if "-" not in text:
        day = parse_da(text)
        return (day, day) if day else None
    lo_text, _, hi_text = text.partition("-")
    lo = parse_da(lo_text) if lo_text else EARLIEST
    hi = parse_da(hi_text) if hi_text else today
    if lo is None or hi is None:
        return None
    return lo, max(lo, hi)


async def find_with_split(
    find: Finder, query: KeywordQuery, today: dt.date | None = None
) -> tuple[list[Dataset], bool, int]:
    """Run ``query``; while truncated, bisect its date window.

    Returns (matches without duplicates, still truncated somewhere, queries issued).
    """
    today = today or dt.date.today()
    outcome = await find(query)
    if not outcome.truncated:
        return outcome.datasets, False, 1
    window = date_window(query, today)
    key = DATE_KEYS.get(query.level)
    if window is None or key is None or window[0] >= window[1]:
        logger.warning(
            "a %s C-FIND is still truncated and cannot be split by date further",
            query.level.value,
        )
        return outcome.datasets, True, 1
    lo, hi = window
    mid = lo + (hi - lo) // 2
    halves = [
        query.with_criteria(**{key: f"{format_da(lo)}-{format_da(mid)}"}),
        query.with_criteria(**{key: f"{format_da(mid + dt.timedelta(days=1))}-{format_da(hi)}"}),
    ]
    merged: dict[str, Dataset] = {}
    still = False
    issued = 1
    unique = UNIQUE[query.level]
    for half in halves:
        rows, truncated, count = await find_with_split(find, half, today)
        still |= truncated
        issued += count
        for ds in rows:
            merged.setdefault(str(ds.get(unique, "")) or str(id(ds)), ds)
    return list(merged.values()), still, issued
