"""The notebook layer's finds: frames, dtypes, drill-down, batches, caps, caches."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pytest

import clarinet_nb as cnb
from clarinet_nb.testing import Cohort, OrthancServer, Peer
from tests.notebook_support import pacs, pacs_for

__all__ = ["pacs"]


def test_connect_from_settings(monkeypatch: pytest.MonkeyPatch, orthanc_stock: Peer) -> None:
    monkeypatch.setenv("CLARINET_PACS_AET", orthanc_stock.aet)
    monkeypatch.setenv("CLARINET_PACS_HOST", orthanc_stock.host)
    monkeypatch.setenv("CLARINET_PACS_PORT", str(orthanc_stock.port))
    pacs = cnb.connect(config=cnb.Settings())
    assert str(pacs.node) == f"{orthanc_stock.aet}@{orthanc_stock.host}:{orthanc_stock.port}"
    assert pacs.echo() is True
    with pytest.raises(cnb.InvalidInputError):
        cnb.connect("not a node")


def test_find_studies_frame(pacs: cnb.Pacs, cohort: Cohort) -> None:
    studies = pacs.find_studies(PatientID="*")
    assert sorted(studies["StudyInstanceUID"]) == sorted(cohort.studies())
    assert list(studies.columns[:4]) == [
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
    ]
    assert studies["StudyDate"].dtype == "datetime64[ns]"
    assert str(studies["NumberOfStudyRelatedInstances"].dtype) == "Int64"
    assert isinstance(studies["ModalitiesInStudy"].iloc[0], list)
    by_uid = studies.set_index("StudyInstanceUID")
    for uid in cohort.studies():
        inst = cohort.instances_in(uid)[0]
        row = by_uid.loc[uid]
        assert row["PatientName"] == inst.patient_name  # 山田^太郎, Müller^Jürgen intact
        assert row["StudyDate"] == pd.Timestamp(inst.study_date)
        assert set(row["ModalitiesInStudy"]) == cohort.modalities_in_study(uid)
        assert row["NumberOfStudyRelatedInstances"] == len(cohort.instances_in(uid))
    assert studies.attrs["level"] == "STUDY"
    assert studies.attrs["peer"] == str(pacs.node)
    assert studies.attrs["failures"] == [] and studies.attrs["truncated"] is False


def test_criteria(pacs: cnb.Pacs, cohort: Cohort) -> None:
    patient = cohort.patients()[0]
    mine = pacs.find_studies(PatientID=patient)
    assert sorted(mine["StudyInstanceUID"]) == sorted(cohort.studies(patient))
    assert mine.attrs["query"] == {"PatientID": patient}
    dates = sorted({i.study_date for i in cohort.instances})
    window = pacs.find_studies(StudyDate=(dates[1], dates[-2]))
    assert set(window["StudyInstanceUID"]) == {
        i.study_uid for i in cohort.instances if dates[1] <= i.study_date <= dates[-2]
    }
    ct = pacs.find_studies(ModalitiesInStudy="CT", StudyDate=(None, "2030-01-01"))
    assert set(ct["StudyInstanceUID"]) == {
        s for s in cohort.studies() if "CT" in cohort.modalities_in_study(s)
    }
    empty = pacs.find_studies(PatientID="NOBODY")
    assert len(empty) == 0 and "StudyInstanceUID" in empty.columns
    assert empty["StudyDate"].dtype == "datetime64[ns]"


def test_bad_criteria_never_reach_the_network(pacs: cnb.Pacs) -> None:
    with pytest.raises(cnb.InvalidInputError):
        pacs.find_studies(StudyDate=("2021-01-01", "2020-01-01"))
    with pytest.raises(cnb.InvalidInputError):
        pacs.find_studies(StudyInstanceUID="1.02.3")
    with pytest.raises(cnb.InvalidInputError):
        pacs.find_studies(NotAKeyword="x")


def test_drill_down(pacs: cnb.Pacs, cohort: Cohort) -> None:
    studies = pacs.find_studies(PatientID="*")
    series = pacs.find_series(studies)
    assert sorted(series["SeriesInstanceUID"]) == sorted(cohort.series())
    assert "StudyDate" in series.columns and "PatientName" in series.columns  # carried along
    some = series[series["Modality"] == "CT"]
    instances = pacs.find_instances(some)
    expected = {
        i.sop_uid for i in cohort.instances if i.series_uid in set(some["SeriesInstanceUID"])
    }
    assert set(instances["SOPInstanceUID"]) == expected
    assert str(instances["InstanceNumber"].dtype) == "Int64"


def test_batch_from_a_csv_keeps_other_columns(
    pacs: cnb.Pacs, cohort: Cohort, tmp_path: Path
) -> None:
    csv = tmp_path / "mrns.csv"
    pd.DataFrame(
        {"PatientID": cohort.patients(), "label": ["a", "b", "c"][: len(cohort.patients())]}
    ).to_csv(csv, index=False)
    cohort_frame = pacs.find_studies(pd.read_csv(csv))
    assert sorted(cohort_frame["StudyInstanceUID"]) == sorted(cohort.studies())
    labels = dict(zip(cohort.patients(), ["a", "b", "c"], strict=False))
    for _, row in cohort_frame.iterrows():
        assert row["label"] == labels[row["PatientID"]]
    assert cohort_frame.attrs["rows"] == len(cohort.patients())


REFUSE_FORBIDDEN = """
function IncomingFindRequestFilter(query, origin)
  if query['0010,0020'] == 'FORBIDDEN' then
    error('this PACS refuses that query')
  end
  return query
end
"""


@pytest.fixture(scope="module")
def picky_orthanc(
    tmp_path_factory: pytest.TempPathFactory, cohort: Cohort
) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("orthanc-picky"), lua=REFUSE_FORBIDDEN) as srv:
        srv.load(cohort.paths())
        yield srv


def test_batch_collects_failures(
    picky_orthanc: OrthancServer, move_scp_port: int, cohort: Cohort
) -> None:
    """The PACS refuses one row's query (a Lua filter raises): that row fails with a
    QueryError in attrs["failures"], one warning, and the other rows still come back."""
    pacs = pacs_for(picky_orthanc, move_scp_port)
    first, second = cohort.patients()[:2]
    rows = pd.DataFrame({"PatientID": [first, "FORBIDDEN", second], "label": ["x", "y", "z"]})
    with pytest.warns(cnb.ClarinetWarning, match="1 of 3 queries failed") as warned:
        found = pacs.find_studies(rows)
    # issued again in this thread, pointing at the line above (not at asyncio's internals)
    assert [w.filename for w in warned if w.category is cnb.ClarinetWarning] == [__file__]
    assert set(found["PatientID"]) == {first, second}
    assert sorted(found["StudyInstanceUID"]) == sorted(
        cohort.studies(first) + cohort.studies(second)
    )
    failures = found.attrs["failures"]
    assert len(failures) == 1
    assert failures[0]["row"] == 1 and failures[0]["error"] == "QueryError"
    assert failures[0]["criteria"] == {"PatientID": "FORBIDDEN"}


def test_many_queries_with_bounded_concurrency(
    orthanc_tuned: Peer, move_scp_port: int, cohort: Cohort
) -> None:
    pacs = pacs_for(orthanc_tuned, move_scp_port, max_associations=3)
    active = 0
    peak = 0
    lock = threading.Lock()
    find = pacs.client.operations.find

    def counting_find(*args: object, **kwargs: object) -> object:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            return find(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                active -= 1

    pacs.client.operations.find = counting_find  # type: ignore[method-assign]
    uids = cohort.studies() * 5
    frame = pacs.find_series(pd.DataFrame({"StudyInstanceUID": uids}))
    assert len(frame) == 5 * len(cohort.series())
    assert 1 < peak <= 3


def test_sync_api_inside_a_running_loop(pacs: cnb.Pacs, cohort: Cohort) -> None:
    async def cell() -> pd.DataFrame:  # what a notebook cell is: code inside a running loop
        return pacs.find_studies(PatientID="*")

    frame = asyncio.run(cell())
    assert len(frame) == len(cohort.studies())


async def test_async_twins(pacs: cnb.Pacs, cohort: Cohort) -> None:
    studies = await pacs.afind_studies(PatientID="*")
    series = await pacs.afind_series(studies)
    assert len(series) == len(cohort.series())
    assert await pacs.aecho() is True


NEST_SCRIPT = r"""
import asyncio, sys
import nest_asyncio
nest_asyncio.apply()
import clarinet_nb as cnb
pacs = cnb.connect(sys.argv[1])
async def cell():
    studies = pacs.find_studies(PatientID="*")
    datasets = pacs.get(pacs.find_series(studies).head(1), progress=False)
    return len(studies), len(datasets)
print(*asyncio.get_event_loop().run_until_complete(cell()))
"""


def test_sync_api_where_nest_asyncio_was_applied(orthanc_stock: Peer, cohort: Cohort) -> None:
    pytest.importorskip("nest_asyncio")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    target = f"{orthanc_stock.aet}@{orthanc_stock.host}:{orthanc_stock.port}"
    done = subprocess.run(  # noqa: PLW1510 - the return code is asserted below
        [sys.executable, "-c", NEST_SCRIPT, target],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    studies, datasets = map(int, done.stdout.split())
    assert studies == len(cohort.studies()) and datasets >= 1


@pytest.fixture(scope="module")
def capped_orthanc(
    tmp_path_factory: pytest.TempPathFactory, cohort: Cohort
) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("orthanc-capped"), limit_find_results=2) as srv:
        srv.load(cohort.paths())
        yield srv


def test_truncation_is_flagged_and_auto_split(
    capped_orthanc: OrthancServer, move_scp_port: int, cohort: Cohort
) -> None:
    pacs = pacs_for(capped_orthanc, move_scp_port)
    with pytest.warns(cnb.ClarinetWarning, match="cut some answers short"):
        capped = pacs.find_studies(PatientID="*")
    with pytest.warns(cnb.ClarinetWarning, match="cut some answers short") as warned:

        async def cell() -> pd.DataFrame:
            # the async face points at the awaiting line
            return await pacs.afind_studies(PatientID="*")

        asyncio.run(cell())
    assert {w.filename for w in warned if w.category is cnb.ClarinetWarning} == {__file__}
    assert capped.attrs["truncated"] is True
    assert len(capped) == 2
    whole = pacs.find_studies(PatientID="*", split="auto")
    assert whole.attrs["truncated"] is False
    assert sorted(whole["StudyInstanceUID"]) == sorted(cohort.studies())


def test_silent_result_caps(orthanc_stock: Peer, move_scp_port: int, cohort: Cohort) -> None:
    """Some PACS stop at a fixed count with Success: result_cap= tells us the count."""
    pacs = pacs_for(orthanc_stock, move_scp_port, result_cap=3)
    with pytest.warns(cnb.ClarinetWarning, match="cut some answers short"):
        assert pacs.find_studies(PatientID="*").attrs["truncated"] is True
    whole = pacs.find_studies(split="auto", StudyDate=("2019-01-01", "2023-12-31"))
    assert sorted(whole["StudyInstanceUID"]) == sorted(cohort.studies())


@pytest.fixture
def own_orthanc(tmp_path: Path, cohort: Cohort) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "orthanc") as srv:
        srv.load(cohort.paths())
        yield srv


def test_cache_answers_without_network(
    own_orthanc: OrthancServer, move_scp_port: int, cohort: Cohort, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    pacs = pacs_for(own_orthanc, move_scp_port, cache=cache)
    live = pacs.find_studies(StudyDate=("2019-01-01", None))
    assert live.attrs["cached"] is False
    own_orthanc.stop()  # from here on, only the cache can answer
    again = pacs.find_studies(
        StudyDate=(dt.date(2019, 1, 1), None)
    )  # same criteria, other spelling
    assert again.attrs["cached"] is True
    pd.testing.assert_frame_equal(again, live, check_like=False)
    with pytest.raises(cnb.PeerUnreachableError):
        pacs.find_studies(StudyDate=("2019-01-01", None), refresh=True)
    # the cache is a plain hive-partitioned Parquet dataset
    table = pads.dataset(cache, format="parquet", partitioning="hive").to_table()
    assert set(table.column("level").to_pylist()) == {"STUDY"}
    assert sorted(table.column("StudyInstanceUID").to_pylist()) == sorted(live["StudyInstanceUID"])


def test_frames_round_trip_parquet(pacs: cnb.Pacs, tmp_path: Path) -> None:
    studies = pacs.find_studies(PatientID="*")
    path = tmp_path / "studies.parquet"
    studies.to_parquet(path)
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, studies)
    assert back.attrs["level"] == "STUDY"


def test_find_patients_and_instances_frames(pacs: cnb.Pacs, cohort: Cohort) -> None:
    patients = pacs.find_patients(PatientID="*")
    assert sorted(patients["PatientID"]) == sorted(cohort.patients())
    names = {i.patient_id: i.patient_name for i in cohort.instances}
    assert dict(zip(patients["PatientID"], patients["PatientName"], strict=True)) == names
    assert patients["PatientBirthDate"].dtype == "datetime64[ns]"
    assert str(patients["NumberOfPatientRelatedStudies"].dtype) == "Int64"
    assert patients.attrs["level"] == "PATIENT"
    study = cohort.studies()[0]
    images = pacs.find_instances(StudyInstanceUID=study)
    expected = {i.sop_uid: i for i in cohort.instances_in(study)}
    assert set(images["SOPInstanceUID"]) == set(expected)
    for row in images.itertuples():
        assert row.SOPClassUID == expected[row.SOPInstanceUID].sop_class_uid
        assert row.InstanceNumber == expected[row.SOPInstanceUID].instance_number
