"""One C-FIND with a long UID list asked as a few C-FINDs in parallel.

A PACS such as Orthanc computes a whole C-FIND answer before it sends the first
match, on one thread: a list of 100 study UIDs keeps one PACS core busy for seconds
while the client waits, then the client decodes every match while the PACS idles.
Cut into up to twice ``max_associations`` contiguous parts, asked on at most
``max_associations`` associations at a time, the parts are computed side by side
and the client decodes one round of parts while the PACS computes the next.

The answer is the same: the list is split only on a unique key of the records
(Study, Series or SOP Instance UID: every record has exactly one), so the parts
match disjoint sets whose union is what the whole list matches; repeated UIDs are
asked once, as the PACS would match them once; the rows come back part by part,
in the order of the list.
"""

from __future__ import annotations

from clarinet_nb.notebook.criteria import KeywordQuery

__all__ = ["MIN_PER_PART", "split_uid_list"]

#: Keys every record has exactly one value of, most specific first.
UNIQUE_KEYS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
#: Fewer UIDs than this per part are not worth an association of their own.
MIN_PER_PART = 8


def split_uid_list(
    query: KeywordQuery, parts: int, min_per_part: int | None = None
) -> list[KeywordQuery] | None:
    """``query`` as up to ``parts`` queries over contiguous parts of its longest UID
    list (at least ``min_per_part`` UIDs each, :data:`MIN_PER_PART` by default), or
    None when it has no list long enough to be worth splitting."""
    least = MIN_PER_PART if min_per_part is None else min_per_part
    best: tuple[str, list[str]] | None = None
    for key in UNIQUE_KEYS:
        value = query.criteria.get(key)
        if not value or "\\" not in value:
            continue
        uids = list(dict.fromkeys(value.split("\\")))
        if best is None or len(uids) > len(best[1]):
            best = (key, uids)
    if best is None:
        return None
    key, uids = best
    count = min(parts, len(uids) // max(1, least))
    if count < 2:
        return None
    size, extra = divmod(len(uids), count)
    pieces: list[KeywordQuery] = []
    start = 0
    for n in range(count):
        end = start + size + (1 if n < extra else 0)
        pieces.append(query.with_criteria(**{key: "\\".join(uids[start:end])}))
        start = end
    return pieces
