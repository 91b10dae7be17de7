"""Against real Orthanc: blank criteria never widen, identical rows are queried once.

Issue 7, defects 2 and 6.  Every C-FIND is real; a counting wrapper around the
sync operations layer records what was sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydicom import dcmread

import clarinet_nb as cnb
from clarinet_nb.testing import Cohort, OrthancServer, Peer
from tests.notebook_support import pacs, pacs_for

__all__ = ["pacs"]

TWIN = "TWIN-B"


class FindCounter:
    """Wraps ``pacs.client.operations.find`` and records each C-FIND identifier sent."""

    def __init__(self, pacs: cnb.Pacs) -> None:
        self.sent: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._find = pacs.client.operations.find
        pacs.client.operations.find = self  # type: ignore[method-assign]

    def __call__(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.sent.append((query.level.value, dict(getattr(query, "criteria", {}))))
        return self._find(query, *args, **kwargs)


def find_counter(p: cnb.Pacs) -> FindCounter:
    return FindCounter(p)


# -- blank criteria -----------------------------------------------------------------------


def test_a_blank_cell_fails_its_row_and_never_widens(pacs: cnb.Pacs, cohort: Cohort) -> None:
    """``find_studies(pd.DataFrame({"PatientID": ["P1", None]}))`` used to return P1's
    studies plus every study in the PACS."""
    first = cohort.patients()[0]
    for blank in [None, float("nan"), pd.NA, "", " ", "\x00"]:
        counter = find_counter(pacs)
        frame = pd.DataFrame({"PatientID": [first, blank], "label": ["a", "b"]})
        with pytest.warns(cnb.ClarinetWarning, match="1 of 2 queries failed") as warned:
            found = pacs.find_studies(frame)
        assert len([w for w in warned if w.category is cnb.ClarinetWarning]) == 1
        assert sorted(found["StudyInstanceUID"]) == sorted(cohort.studies(first))
        assert set(found["PatientID"]) == {first} and set(found["label"]) == {"a"}
        failures = found.attrs["failures"]
        assert len(failures) == 1 and failures[0]["row"] == 1
        assert failures[0]["error"] == "InvalidInputError"
        assert failures[0]["message"].startswith("PatientID: blank cell")
        assert counter.sent == [("STUDY", {"PatientID": first})]  # one C-FIND, for P1 only
        pacs.client.operations.find = counter._find  # type: ignore[method-assign]


def test_blank_rows_only_raise_and_send_nothing(pacs: cnb.Pacs) -> None:
    counter = find_counter(pacs)
    with pytest.raises(cnb.InvalidInputError, match="PatientID: blank cell"):
        pacs.find_studies(pd.DataFrame({"PatientID": [None, " ", float("nan")]}))
    with pytest.raises(cnb.InvalidInputError, match="PatientID: blank cell"):
        pacs.find_studies(pd.DataFrame({"PatientID": [None], "StudyDate": [pd.NaT]}))
    assert counter.sent == []


@pytest.mark.parametrize(
    "criteria",
    [
        {"PatientID": None},
        {"PatientID": float("nan")},
        {"PatientID": pd.NA},
        {"PatientID": ""},
        {"PatientID": " "},
        {"PatientID": "\x00"},
        {"PatientID": []},
        {"PatientID": set()},
        {"StudyInstanceUID": []},
        {"ModalitiesInStudy": [None]},
        {"ModalitiesInStudy": ["CT", None]},
        {"StudyDate": None, "PatientID": "*"},
        {},
    ],
    ids=repr,
)
def test_blank_keyword_criteria_raise_before_any_traffic(
    pacs: cnb.Pacs, criteria: dict[str, Any]
) -> None:
    counter = find_counter(pacs)
    with pytest.raises(cnb.InvalidInputError) as caught:
        pacs.find_studies(**criteria)
    message = str(caught.value)
    if criteria:
        (blank_key,) = [k for k, v in criteria.items() if not (isinstance(v, str) and v == "*")]
        assert message.startswith(f"{blank_key}: ") and "blank" in message
    else:
        assert "PatientID='*'" in message
    assert counter.sent == []


def test_star_asks_for_everything(pacs: cnb.Pacs, cohort: Cohort) -> None:
    assert sorted(pacs.find_studies(PatientID="*")["StudyInstanceUID"]) == sorted(cohort.studies())


def test_values_the_standard_forbids_never_reach_the_peer(pacs: cnb.Pacs) -> None:
    counter = find_counter(pacs)
    for criteria in [
        {"AccessionNumber": "A" * 17},
        {"PatientID": "x" * 100_000},
        {"PatientID": "P\r\n"},
        {"StudyTime": "99:99:99"},
        {"ModalitiesInStudy": ["CT", None]},
        {"PatientName": "\ud800"},
        {"PatientID": ["P1", "P2"]},
    ]:
        with pytest.raises(cnb.InvalidInputError):
            pacs.find_studies(**criteria)
    with pytest.raises(cnb.InvalidInputError, match="return_keys") as caught:
        pacs.find_studies(PatientID="*", return_keys=["Foo"])
    assert "'Foo'" in str(caught.value)
    assert counter.sent == []
    one = pacs.find_studies(PatientID="*", return_keys="InstitutionName")
    assert "InstitutionName" in one.columns


# -- one study under two patients ---------------------------------------------------------


@pytest.fixture(scope="module")
def twin(
    tmp_path_factory: pytest.TempPathFactory, cohort: Cohort
) -> Iterator[tuple[OrthancServer, str]]:
    """Orthanc holding one cohort study twice: under its patient and under TWIN-B."""
    study = max(
        cohort.studies(), key=lambda s: (len(cohort.series(s)), -len(cohort.instances_in(s)))
    )
    copies = tmp_path_factory.mktemp("twin-files")
    paths: list[Path] = []
    for n, inst in enumerate(cohort.instances_in(study)):
        ds = dcmread(inst.path)
        ds.PatientID = TWIN
        out = copies / f"{n}.dcm"
        ds.save_as(out)
        paths.append(out)
    with OrthancServer(tmp_path_factory.mktemp("orthanc-twin")) as srv:
        originals = [i.path for i in cohort.instances_in(study)]
        assert srv.load(originals) == len(originals)
        assert srv.load(paths) == len(paths)
        yield srv, study


def test_drill_down_queries_each_uid_once_and_gives_each_row_its_answer_once(
    twin: tuple[OrthancServer, str], move_scp_port: int, cohort: Cohort
) -> None:
    server, study = twin
    owner = cohort.instances_in(study)[0].patient_id
    series_uids = cohort.series(study)
    instances = cohort.instances_in(study)
    p = pacs_for(server, move_scp_port)
    try:
        studies = p.find_studies(StudyInstanceUID=study)
        assert sorted(studies["PatientID"]) == sorted([owner, TWIN])  # the PACS holds it twice

        counter = find_counter(p)
        series = p.find_series(studies)
        assert counter.sent == [("SERIES", {"StudyInstanceUID": study})]  # once, not twice
        assert series.attrs["queries"] == 1
        # each of the 2 rows gets each series once (was 4 rows per series: 2 x 2)
        assert len(series) == 2 * len(series_uids)
        pairs = sorted(zip(series["PatientID"], series["SeriesInstanceUID"], strict=True))
        assert pairs == sorted((pid, s) for pid in (owner, TWIN) for s in series_uids)

        counter.sent.clear()
        found = p.find_instances(series)
        assert len(counter.sent) == len(series_uids)  # one C-FIND per distinct series
        assert sorted(c["SeriesInstanceUID"] for _, c in counter.sent) == sorted(series_uids)
        # each of the 2 x series rows gets its instances once (was 8 per instance)
        assert len(found) == 2 * len(instances)
        triples = sorted(zip(found["PatientID"], found["SOPInstanceUID"], strict=True))
        assert triples == sorted((pid, i.sop_uid) for pid in (owner, TWIN) for i in instances)
    finally:
        p.close()


def test_a_duplicated_row_is_queried_once_and_answered_per_row(
    pacs: cnb.Pacs, cohort: Cohort
) -> None:
    study = cohort.studies()[0]
    studies = pacs.find_studies(StudyInstanceUID=study)
    assert len(studies) == 1
    tripled = pd.concat([studies] * 3, ignore_index=True)
    tripled["copy"] = ["a", "b", "c"]
    tripled.attrs = dict(studies.attrs)
    counter = find_counter(pacs)
    series = pacs.find_series(tripled)
    assert counter.sent == [("SERIES", {"StudyInstanceUID": study})]
    assert len(series) == 3 * len(cohort.series(study))
    for copy in "abc":
        mine = series[series["copy"] == copy]
        assert sorted(mine["SeriesInstanceUID"]) == sorted(cohort.series(study))


def test_a_batch_of_equal_rows_with_one_peer(
    orthanc_stock: Peer, move_scp_port: int, cohort: Cohort
) -> None:
    """Rows that only differ by carried columns share their C-FIND."""
    p = pacs_for(orthanc_stock, move_scp_port)
    try:
        first = cohort.patients()[0]
        frame = pd.DataFrame({"PatientID": [first] * 5, "label": list("vwxyz")})
        counter = find_counter(p)
        found = p.find_studies(frame)
        assert counter.sent == [("STUDY", {"PatientID": first})]
        assert len(found) == 5 * len(cohort.studies(first))
        assert found.groupby("label").size().tolist() == [len(cohort.studies(first))] * 5
        assert found.attrs["rows"] == 5 and found.attrs["failures"] == []
    finally:
        p.close()
