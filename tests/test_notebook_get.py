"""The notebook layer's pulls: memory, disk with manifest and resume, headers, limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pydicom import dcmread

import clarinet_nb as cnb
from clarinet_nb.testing import Cohort, OrthancServer, free_port, generate_bulk
from tests.notebook_support import pacs, pacs_for

__all__ = ["pacs"]


@pytest.mark.parametrize("method", ["get", "move"])
def test_get_series_into_memory(pacs: cnb.Pacs, cohort: Cohort, method: str) -> None:
    series = pacs.find_series(pacs.find_studies(PatientID="*"))
    ct = series[series["Modality"] == "CT"].head(1)
    datasets = pacs.get(ct, method=method)
    uid = ct["SeriesInstanceUID"].iloc[0]
    expected = cohort.instances_in(series_uid=uid)
    assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(i.sop_uid for i in expected)
    assert [int(ds.InstanceNumber) for ds in datasets] == sorted(
        i.instance_number for i in expected
    )
    assert list(datasets.by_series()) == [uid]
    assert datasets.failures == []


def test_get_instances_frame(pacs: cnb.Pacs, cohort: Cohort) -> None:
    series = pacs.find_series(pacs.find_studies(PatientID="*"))
    instances = pacs.find_instances(series).head(7)
    datasets = pacs.get(instances)
    assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(instances["SOPInstanceUID"])


@pytest.mark.parametrize("method", ["get", "move"])
def test_get_to_disk_writes_manifest_and_resumes(
    pacs: cnb.Pacs, cohort: Cohort, tmp_path: Path, method: str
) -> None:
    studies = pacs.find_studies(PatientID="*")
    out = tmp_path / "data"
    manifest = pacs.get(studies, output_dir=out, method=method, metadata=tmp_path / "meta.parquet")
    assert len(manifest) == len(cohort.instances)
    assert set(manifest["status"]) == {"retrieved"}
    for row in manifest.itertuples():
        assert Path(row.path).is_file()
        assert (
            Path(row.path)
            == out / row.StudyInstanceUID / row.SeriesInstanceUID / f"{row.SOPInstanceUID}.dcm"
        )
    on_disk = pd.read_parquet(out / "manifest.parquet")
    assert sorted(on_disk["SOPInstanceUID"]) == sorted(i.sop_uid for i in cohort.instances)
    meta = pd.read_parquet(tmp_path / "meta.parquet")
    assert sorted(meta["SOPInstanceUID"]) == sorted(i.sop_uid for i in cohort.instances)
    assert "PixelData" not in meta.columns
    again = pacs.get(studies, output_dir=out, method=method)
    assert set(again["status"]) == {"present"}
    assert again.attrs["failures"] == []


def test_read_headers_same_from_memory_and_disk(pacs: cnb.Pacs, tmp_path: Path) -> None:
    series = pacs.find_series(pacs.find_studies(PatientID="*"))
    some = series.head(3)
    in_memory = cnb.read_headers(pacs.get(some))
    pacs.get(some, output_dir=tmp_path)
    from_disk = cnb.read_headers(tmp_path)
    assert "path" in from_disk.columns
    pd.testing.assert_frame_equal(
        from_disk.drop(columns=["path"]).reset_index(drop=True),
        in_memory.reset_index(drop=True),
        check_like=True,
    )


def test_memory_limit_fails_early(pacs: cnb.Pacs, cohort: Cohort) -> None:
    studies = pacs.find_studies(PatientID="*")
    with pytest.raises(cnb.MemoryLimitError) as caught:
        pacs.get(studies, memory_limit="40KB")
    error = caught.value
    assert error.limit == 40 * 1024
    assert error.projected_bytes > error.limit
    assert error.received < len(cohort.instances)
    assert "output_dir" in str(error)


BULK = 250


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[tuple[OrthancServer, Cohort]]:
    bulk = generate_bulk(tmp_path / "bulk", n_studies=2, per_study=BULK // 2)
    with OrthancServer(tmp_path / "orthanc") as srv:  # stock: slow enough to interrupt
        srv.load(bulk.paths())
        yield srv, bulk


class KillAfter:
    """A progress sink that SIGKILLs the PACS after ``n`` instances."""

    def __init__(self, server: OrthancServer, n: int) -> None:
        self.server, self.n, self.count = server, n, 0
        self.total: float | None = None

    def update(self, n: float = 1) -> None:
        self.count += int(n)
        if self.count == self.n:
            self.server.kill()


def test_resume_after_the_pacs_died_mid_pull(
    killable: tuple[OrthancServer, Cohort], tmp_path: Path
) -> None:
    server, bulk = killable
    pacs = pacs_for(server, free_port(), max_associations=1)
    studies = pacs.find_studies(PatientID="*")
    out = tmp_path / "out"
    with pytest.warns(cnb.ClarinetWarning) as warned:
        first = pacs.get(studies, output_dir=out, progress=KillAfter(server, 40))
    assert {w.filename for w in warned if w.category is cnb.ClarinetWarning} == {__file__}
    arrived = set(first[first["status"] == "retrieved"]["SOPInstanceUID"])
    assert 40 <= len(arrived) < BULK
    assert first.attrs["failures"]
    assert not [
        p
        for p in out.rglob("*")
        if p.is_file() and p.suffix != ".dcm" and p.name != "manifest.parquet"
    ]
    server.restart()
    second = pacs.get(studies, output_dir=out)
    assert set(second["status"]) <= {"present", "retrieved"}
    assert set(second[second["status"] == "present"]["SOPInstanceUID"]) >= arrived
    files = sorted(p.stem for p in out.rglob("*.dcm"))
    assert files == sorted(i.sop_uid for i in bulk.instances)
    for path in out.rglob("*.dcm"):
        assert dcmread(path).SOPInstanceUID == path.stem  # nothing half written
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == BULK and set(manifest["status"]) <= {"present", "retrieved"}
