"""Pure logic of the notebook layer: keyword criteria, frame rows, date splitting."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from pydicom import Dataset

from clarinet_nb import InvalidInputError
from clarinet_nb.dicom.operations import FindOutcome
from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.notebook.criteria import KeywordQuery, build_query
from clarinet_nb.notebook.rows import key_columns, query_rows, retrieve_targets
from clarinet_nb.notebook.split import date_window, find_with_split


def test_keyword_criteria_are_encoded_by_vr() -> None:
    q = build_query(
        "study",
        {
            "PatientID": "12*",
            "StudyDate": ("2020-01-01", dt.date(2020, 12, 31)),
            "ModalitiesInStudy": ["CT", "MR"],
            "StudyInstanceUID": ["1.2.3", "1.2.4"],
        },
        return_keys=["InstitutionName"],
    )
    assert q.level is QueryLevel.STUDY
    assert dict(q.criteria) == {
        "PatientID": "12*",
        "StudyDate": "20200101-20201231",
        "ModalitiesInStudy": "CT\\MR",
        "StudyInstanceUID": "1.2.3\\1.2.4",
    }
    ds = q.to_dataset()
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds.StudyDate == "20200101-20201231" and ds.AccessionNumber == ""
    assert "InstitutionName" in ds and "NumberOfStudyRelatedInstances" in ds
    assert q.keys[:4] == ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")


def test_cache_keys_normalise_spelling() -> None:
    a = build_query("STUDY", {"StudyDate": ("2020-01-01", None), "PatientID": "1"})
    b = build_query(QueryLevel.STUDY, {"PatientID": "1", "StudyDate": (dt.date(2020, 1, 1), None)})
    c = build_query(QueryLevel.STUDY, {"PatientID": "1", "StudyDate": "20200101-"})
    assert a.cache_key() == b.cache_key() == c.cache_key()
    assert a.cache_key() != build_query("STUDY", {"PatientID": "2"}).cache_key()


@pytest.mark.parametrize(
    "criteria",
    [
        {"StudyDate": ("2021-01-01", "2020-01-01")},
        {"StudyDate": "2020-02-30"},
        {"StudyInstanceUID": "1.02"},
        {"SeriesNumber": "x"},
        {"NotAKeyword": 1},
        {"PixelData": b"x"},
        {"PatientID": "a\\b"},
        {"ReferencedSeriesSequence": "x"},
    ],
)
def test_bad_criteria_are_refused(criteria: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        build_query("STUDY", criteria)


def test_frames_from_our_finds_drill_down_by_unique_keys() -> None:
    studies = pd.DataFrame(
        {"StudyInstanceUID": ["1.1", "1.2"], "PatientID": ["p", "q"], "StudyDate": [None, None]}
    )
    studies.attrs["level"] = "STUDY"
    assert key_columns(studies, QueryLevel.SERIES) == ["StudyInstanceUID"]
    rows = query_rows(studies, QueryLevel.SERIES, {"Modality": "CT"})
    assert [dict(r.criteria) for r in rows] == [
        {"StudyInstanceUID": "1.1", "Modality": "CT"},
        {"StudyInstanceUID": "1.2", "Modality": "CT"},
    ]
    assert dict(rows[0].context) == {"PatientID": "p", "StudyDate": None}


def test_user_frames_use_every_keyword_column() -> None:
    frame = pd.DataFrame({"PatientID": ["1", None], "AccessionNumber": ["A", "B"], "note": [1, 2]})
    rows = query_rows(frame, QueryLevel.STUDY, {})
    assert rows[0].query is not None and rows[0].error is None
    assert dict(rows[0].query.criteria) == {"PatientID": "1", "AccessionNumber": "A"}
    # a blank cell never widens the row's query: the row fails instead
    assert rows[1].query is None and isinstance(rows[1].error, InvalidInputError)
    assert "PatientID" in str(rows[1].error)
    assert dict(rows[1].context) == {"note": 2}
    with pytest.raises(InvalidInputError):
        query_rows(pd.DataFrame({"note": [1]}), QueryLevel.STUDY, {})


def test_retrieve_targets_pick_the_finest_level() -> None:
    instances = pd.DataFrame(
        {
            "StudyInstanceUID": ["1.1", "1.1", "1.1"],
            "SeriesInstanceUID": ["1.1.1", "1.1.1", "1.1.2"],
            "SOPInstanceUID": ["1.1.1.1", "1.1.1.2", "1.1.2.1"],
        }
    )
    targets = retrieve_targets(instances)
    assert [(t.level, t.series_uid, t.sop_uids) for t in targets] == [
        (QueryLevel.IMAGE, "1.1.1", ("1.1.1.1", "1.1.1.2")),
        (QueryLevel.IMAGE, "1.1.2", ("1.1.2.1",)),
    ]
    series = instances.drop(columns="SOPInstanceUID")
    assert [t.series_uid for t in retrieve_targets(series)] == ["1.1.1", "1.1.2"]
    studies = instances[["StudyInstanceUID"]]
    assert [t.study_uid for t in retrieve_targets(studies)] == ["1.1"]
    with pytest.raises(InvalidInputError):
        retrieve_targets(pd.DataFrame({"PatientID": ["x"]}))


def test_date_windows() -> None:
    today = dt.date(2024, 6, 30)
    assert date_window(KeywordQuery(QueryLevel.STUDY), today) == (dt.date(1900, 1, 1), today)
    q = build_query("STUDY", {"StudyDate": ("2020-01-01", None)})
    assert date_window(q, today) == (dt.date(2020, 1, 1), today)
    day = build_query("STUDY", {"StudyDate": "2020-05-05"})
    assert date_window(day, today) == (dt.date(2020, 5, 5), dt.date(2020, 5, 5))
    assert date_window(KeywordQuery(QueryLevel.IMAGE), today) is None


async def test_split_bisects_until_nothing_is_truncated() -> None:
    """A fake PACS (pure logic) that answers at most 3 matches per query."""
    days = [dt.date(2020, 1, 1) + dt.timedelta(days=7 * n) for n in range(20)]

    async def find(query: object) -> FindOutcome:
        text = query.criteria.get("StudyDate", "")  # type: ignore[attr-defined]
        lo_text, _, hi_text = text.partition("-")
        lo = dt.datetime.strptime(lo_text, "%Y%m%d").date() if lo_text else dt.date.min
        hi = dt.datetime.strptime(hi_text, "%Y%m%d").date() if hi_text else dt.date.max
        matches = []
        for n, day in enumerate(days):
            if lo <= day <= hi:
                ds = Dataset()
                ds.StudyInstanceUID = f"1.2.{n}"
                matches.append(ds)
        return FindOutcome(
            datasets=matches[:3],
            status=0xFE00 if len(matches) > 3 else 0,
            truncated=len(matches) > 3,
        )

    query = build_query("STUDY", {"StudyDate": ("2020-01-01", "2020-12-31")})
    rows, truncated, issued = await find_with_split(find, query, today=dt.date(2024, 1, 1))
    assert not truncated
    assert sorted(ds.StudyInstanceUID for ds in rows) == sorted(f"1.2.{n}" for n in range(20))
    assert issued > 1
