"""Property-based tests over criteria at every level (pure logic, no network).

For arbitrary values (control characters, lone surrogates, long strings, None,
NaN, lists with blanks, odd dates and times), :func:`build_query` either raises
:class:`InvalidInputError` or builds an identifier in which (a) no key given a
value is universal, (b) every value fits its VR's length and repertoire
(checked here independently of clarinet_nb's own checks), and (c) the
identifier survives encoding with pydicom in the declared character set.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import re
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue

from clarinet_nb import InvalidInputError
from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.notebook.criteria import KeywordQuery, build_query, default_keys
from clarinet_nb.notebook.rows import plan_queries

EXTRA_KEYS = [
    "PatientAge",  # AS
    "PatientWeight",  # DS
    "AcquisitionDateTime",  # DT
    "StudyTime",  # TM
    "SeriesNumber",  # IS
    "Rows",  # US
    "InstitutionName",  # LO
    "OtherPatientIDs",  # LO
    "StudyComments",  # LT
    "RetrieveAETitle",  # AE
    "Modality",  # CS
    "SOPInstanceUID",  # UI
]

# PS3.5 Table 6.2-1, written out again here (not imported) so the test checks the code
LIMITS = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
          "SH": 16, "TM": 14, "UI": 64, "ST": 1024, "LT": 10240}  # fmt: skip
RANGE_LIMITS = {"DA": 18, "TM": 28, "DT": 54}
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
NO_WILDCARDS = {"DA", "TM", "DT", "UI", "IS", "DS", "AS", "US", "SS", "UL", "SL", "FL", "FD"}

odd_text = st.text(
    alphabet=st.characters(codec=None, categories=None),  # every code point, surrogates too
    max_size=80,
)
ascii_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=20)
long_text = st.integers(min_value=15, max_value=2000).map(lambda n: "A" * n)
digits = st.text(alphabet="0123456789:.-+ *?", min_size=0, max_size=20)
blank = st.sampled_from([None, float("nan"), pd.NA, pd.NaT, "", " ", "\x00", [], set(), ()])
two = st.integers(min_value=0, max_value=70).map(lambda n: f"{n:02d}")
times = st.one_of(
    st.builds(lambda h, m, s: f"{h}{m}{s}", two, two, two),
    st.builds(lambda h, m, s: f"{h}:{m}:{s}", two, two, two),
    st.builds(lambda h, m: f"{h}{m}", two, two),
)
uids = st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=12).map(
    lambda parts: ".".join(map(str, parts))
)
ages = st.builds(lambda n, u: f"{n:03d}{u}", st.integers(0, 999), st.sampled_from("DWMYX"))
codes = st.text(alphabet="ABCTMRXYZ019 _*?-a", min_size=1, max_size=18)
date_texts = st.dates().map(lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}")
structured = st.one_of(times, uids, ages, codes, date_texts)
range_end = st.one_of(st.none(), st.dates(), times, date_texts)
scalar = st.one_of(
    structured,
    odd_text,
    ascii_text,
    long_text,
    digits,
    blank,
    st.sampled_from(["*", "?", "CT", "MR", "1.2.3", "1.02", "P1", "M*", "99:99:99", "2020-02-30"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.dates(min_value=dt.date(1, 1, 1)),
    st.times(),
    st.datetimes(),
    st.booleans(),
)
value = st.one_of(
    scalar,
    st.lists(st.one_of(scalar, st.none()), max_size=4),
    st.lists(st.one_of(uids, codes), min_size=1, max_size=4),
    st.tuples(scalar, scalar),
    st.tuples(range_end, range_end),
)


pairs = st.tuples(st.one_of(st.none(), st.dates(), date_texts), st.one_of(st.none(), st.dates()))
BY_VR: dict[str, st.SearchStrategy[Any]] = {
    "DA": st.one_of(st.dates(), date_texts, pairs),
    "TM": st.one_of(times, st.times(), st.tuples(times, times)),
    "DT": st.one_of(st.datetimes(), date_texts, st.tuples(st.datetimes(), st.none())),
    "AS": ages,
    "UI": st.one_of(uids, st.lists(uids, min_size=1, max_size=3)),
    "CS": st.one_of(codes, st.lists(codes, min_size=1, max_size=3)),
    "IS": st.one_of(st.integers(-(2**33), 2**33), digits),
    "DS": st.one_of(st.floats(), digits),
    "US": st.integers(-10, 70000),
}


def keywords_for(level: QueryLevel) -> list[str]:
    return list(dict.fromkeys([*default_keys(level), *EXTRA_KEYS]))


def criteria_for(level: QueryLevel) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keywords_for(level)), value, min_size=1, max_size=4)


def check_item(keyword: str, vr: str, item: str) -> None:
    """(a) not universal and (b) within its VR, by the standard's rules."""
    assert item.strip(" "), f"{keyword}: an empty value is universal matching"
    assert not CONTROL.search(item), keyword
    item.encode("utf-8")  # no lone surrogates
    ranged = vr in RANGE_LIMITS and "-" in item and not (vr == "DT" and _single_dt(item))
    limit = RANGE_LIMITS[vr] if ranged else LIMITS.get(vr)
    if limit is not None:
        assert len(item) <= limit, f"{keyword}: {len(item)} > {limit}"
    if vr in NO_WILDCARDS:
        assert "*" not in item and "?" not in item, keyword
    if vr == "CS":
        assert re.fullmatch(r"[A-Z0-9 _*?]+", item), keyword
    if vr == "UI":
        assert re.fullmatch(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*", item), keyword
    if vr == "PN":
        groups = item.split("=")
        assert len(groups) <= 3 and all(len(g) <= 64 for g in groups), keyword
    if vr == "DA":
        for end in item.split("-") if ranged else [item]:
            if end:
                dt.datetime.strptime(end, "%Y%m%d")  # raises if not a real date
    if vr == "TM":
        for end in item.split("-") if ranged else [item]:
            if end:
                match = re.fullmatch(r"(\d\d)(\d\d)?(\d\d)?(\.\d{1,6})?", end)
                assert match, keyword
                hh, mm, ss = (int(g) if g else 0 for g in match.groups()[:3])
                assert hh <= 23 and mm <= 59 and ss <= 60, keyword
    if vr in ("IS",):
        assert re.fullmatch(r"[+-]?\d+", item.strip()) and -(2**31) <= int(item) < 2**31
    if vr in ("DS",):
        assert math.isfinite(float(item))
    if vr == "AS":
        assert re.fullmatch(r"\d{3}[DWMY]", item), keyword
    if vr not in ("LO", "LT", "PN", "SH", "ST", "UC", "UT"):
        assert item.isascii(), keyword


def _single_dt(item: str) -> bool:
    return bool(re.fullmatch(r"\d{4}(\d{2}){0,5}(\.\d{1,6})?([+-]\d{4})?", item)) and (
        "-" not in item[4:] or bool(re.search(r"-\d{4}$", item))
    )


def round_trip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    fp = DicomFileLike(buffer)
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    back = read_dataset(io.BytesIO(buffer.getvalue()), is_implicit_VR=True, is_little_endian=True)
    back.decode()
    return back


def as_text(value: Any) -> str:
    if isinstance(value, MultiValue | list):
        return "\\".join(as_text(v) for v in value)
    return str(value)


def check_query(q: KeywordQuery, given_keys: set[str]) -> None:
    assert set(q.criteria) == given_keys  # nothing given was dropped
    ds = q.to_dataset()
    charset = ds.get("SpecificCharacterSet")
    non_ascii = any(not v.isascii() for v in q.criteria.values())
    assert (charset == "ISO_IR 192") if non_ascii else charset is None
    back = round_trip(ds)
    for keyword, text in q.criteria.items():
        vr = dictionary_VR(keyword)
        items = text.split("\\") if vr in ("UI", "CS") else [text]
        for item in items:
            check_item(keyword, vr, item)
        got = back[keyword].value
        if vr in ("US", "SS", "UL", "SL"):
            assert got == int(text), keyword
        else:
            assert as_text(got).strip(" ") == text.strip(" "), keyword


@pytest.mark.parametrize("level", list(QueryLevel))
def test_build_query_never_widens_and_fits_every_vr(level: QueryLevel) -> None:
    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(criteria_for(level))
    def check(criteria: dict[str, Any]) -> None:
        try:
            q = build_query(level, criteria)
        except InvalidInputError:
            return
        check_query(q, set(criteria))

    check()


@pytest.mark.parametrize("level", list(QueryLevel))
def test_every_keyword_alone_never_widens(level: QueryLevel) -> None:
    """One keyword at a time, so that every key of the level meets every kind of value."""

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        keyword = data.draw(st.sampled_from(keywords_for(level)))
        v = data.draw(st.one_of(BY_VR.get(dictionary_VR(keyword), value), value))
        try:
            q = build_query(level, {keyword: v})
        except InvalidInputError as exc:
            assert str(exc).startswith(f"{keyword}: ") or "DICOM keyword" in str(exc)
            return
        check_query(q, {keyword})

    check()


cell = st.one_of(blank, st.sampled_from(["P1", "P2", "A*", "2020-01-01", "x" * 70]), odd_text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(cell, cell, cell),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([{}, {"ModalitiesInStudy": "CT"}]),
)
def test_a_frame_batch_never_loses_a_constraint(
    cells: list[tuple[Any, Any, Any]], extra: dict[str, Any]
) -> None:
    # object columns: pandas 3's default string columns cannot hold a lone surrogate
    frame = pd.DataFrame(cells, columns=["PatientID", "StudyDate", "AccessionNumber"], dtype=object)
    plan = plan_queries(frame, QueryLevel.STUDY, extra)
    assert len(plan.rows) == len(frame) == len(plan.slots)
    for row, slot in zip(plan.rows, plan.slots, strict=True):
        record = {k: row.criteria[k] for k in ("PatientID", "StudyDate", "AccessionNumber")}
        non_blank = [k for k, v in record.items() if not _blank(v)]
        if slot is None:
            assert row.error is not None
            continue
        query = plan.distinct[slot]
        # a row is queried only when every criteria cell is usable, with all of them
        assert len(non_blank) == 3
        assert set(query.criteria) >= set(non_blank) | set(extra)
        assert all(v.strip(" ") for v in query.criteria.values())
    assert len(plan.distinct) == len({q.cache_key() for q in plan.distinct})


def _blank(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    if isinstance(v, str):
        return not v.replace("\x00", "").strip()
    return isinstance(v, list | set | tuple) and not v
