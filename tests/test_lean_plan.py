"""Lean retrieve plans: study/series counts before the transfer, a listing only after a shortfall.

Against Orthanc (which answers SOPClassesInStudy and the NumberOf*RelatedInstances
counts) a complete study or series retrieve sends no IMAGE level C-FIND at all; a
retrieve that comes up short lists only the series that did, and its result (and
manifest) names exactly the instances that did not arrive, as the full listing up
front does.  Peers that answer no counts (dcmqrscp) are listed up front as before.
The C-FINDs are counted by wrapping the function that sends them (the real one runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread

from clarinet_nb import (
    DicomClient,
    DicomNode,
    PartialRetrieveError,
    RetrieveResult,
    RetrieveStatus,
    StorageConfig,
    StorageMode,
)
from clarinet_nb.dicom import operations
from clarinet_nb.dicom.cancel import CancelToken
from clarinet_nb.dicom.fastfind import FastFind
from clarinet_nb.dicom.requests import RetrieveRequest
from clarinet_nb.settings import settings
from clarinet_nb.testing import Cohort, DcmqrscpServer, OrthancServer, Peer, generate_bulk
from tests.notebook_support import pacs_for
from tests.support import client, node, port_is_free

__all__ = ["client"]

MEMORY = StorageConfig(mode=StorageMode.MEMORY)


class FindSpy:
    """Records (level, SeriesInstanceUID) of every C-FIND identifier sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def levels(self) -> list[str]:
        return [level for level, _ in self.sent]


@pytest.fixture
def finds(monkeypatch: pytest.MonkeyPatch) -> Iterator[FindSpy]:
    spy = FindSpy()
    real = operations.find_responses

    def spying(assoc: Any, identifier: Dataset, *args: Any, **kwargs: Any) -> Any:
        spy.sent.append(
            (str(identifier.QueryRetrieveLevel), str(identifier.get("SeriesInstanceUID", "")))
        )
        return real(assoc, identifier, *args, **kwargs)

    monkeypatch.setattr(operations, "find_responses", spying)
    lean = FastFind.responses  # the lean C-FIND exchange (settings.fast_path)

    def spying_lean(self: FastFind, identifier: Dataset, *args: Any, **kwargs: Any) -> Any:
        spy.sent.append(
            (str(identifier.QueryRetrieveLevel), str(identifier.get("SeriesInstanceUID", "")))
        )
        return lean(self, identifier, *args, **kwargs)

    monkeypatch.setattr(FastFind, "responses", spying_lean)
    yield spy


@pytest.fixture
def listed_plans(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Retrieves list every instance up front (``settings.lean_plan`` off)."""
    monkeypatch.setattr(settings, "lean_plan", False)
    yield


def _multi_series_study(cohort: Cohort) -> str:
    return max(cohort.studies(), key=lambda s: (len(cohort.series(s)), s))


@pytest.mark.parametrize("method", ["get", "move"])
@pytest.mark.parametrize("mode", ["memory", "disk"])
async def test_complete_retrieve_sends_no_image_level_find(
    client: DicomClient,
    orthanc_tuned: Peer,
    cohort: Cohort,
    finds: FindSpy,
    tmp_path: Path,
    method: str,
    mode: str,
    move_scp_port: int,
) -> None:
    study = _multi_series_study(cohort)
    storage = (
        MEMORY if mode == "memory" else StorageConfig(mode=StorageMode.DISK, output_dir=tmp_path)
    )
    request = RetrieveRequest.study(study)
    result = await client.retrieve(method, request, peer=node(orthanc_tuned), storage=storage)  # type: ignore[arg-type]
    instances = cohort.instances_in(study)
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    assert result.expected == result.received == len(instances)
    assert sorted(result.received_sop_instance_uids) == sorted(i.sop_uid for i in instances)
    assert not result.missing_sop_instance_uids and not result.failed_sop_instance_uids
    assert finds.levels() == ["STUDY", "SERIES"]  # one row per study / per series
    if mode == "disk":
        assert set(result.paths) == {
            tmp_path / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm" for i in instances
        }
        for path in result.paths:
            assert dcmread(path).SOPInstanceUID == path.stem
    if method == "move":
        assert not result.refused
        assert port_is_free(move_scp_port)


async def test_series_without_study_uid_plans_from_counts(
    client: DicomClient, orthanc_tuned: Peer, cohort: Cohort, finds: FindSpy
) -> None:
    study = _multi_series_study(cohort)
    series = max(cohort.series(study), key=lambda s: len(cohort.instances_in(series_uid=s)))
    result = await client.get_series(series, peer=node(orthanc_tuned))
    assert result.status is RetrieveStatus.SUCCESS
    assert result.expected == result.received == len(cohort.instances_in(series_uid=series))
    assert "IMAGE" not in finds.levels()


async def test_lean_plan_exposes_series_and_counts(
    client: DicomClient, orthanc_tuned: Peer, cohort: Cohort
) -> None:
    study = _multi_series_study(cohort)
    plan = await client.run(
        client.operations.lean_plan, RetrieveRequest.study(study), node(orthanc_tuned)
    )
    assert not plan.listed and not plan.instances
    assert {s.series_uid: s.count for s in plan.series} == {
        s: len(cohort.instances_in(series_uid=s)) for s in cohort.series(study)
    }
    assert len(plan) == len(cohort.instances_in(study))
    assert plan.series_uids == [s.series_uid for s in plan.series]
    assert set(plan.declared_classes) == {i.sop_class_uid for i in cohort.instances_in(study)}
    # the old full listing stays one call away
    listed = await client.plan(RetrieveRequest.study(study), peer=node(orthanc_tuned))
    assert listed.listed and sorted(listed.sop_uids) == sorted(
        i.sop_uid for i in cohort.instances_in(study)
    )


@pytest.mark.parametrize("method", ["get", "move"])
async def test_peers_without_counts_are_listed_up_front(
    client: DicomClient,
    dcmqrscp_tuned: DcmqrscpServer,
    cohort: Cohort,
    finds: FindSpy,
    method: str,
) -> None:
    study = next(s for s in cohort.studies() if len(cohort.series(s)) > 1)
    retrieve = client.get_study if method == "get" else client.move_study
    try:
        result = await retrieve(study, peer=node(dcmqrscp_tuned), storage=MEMORY)
    except PartialRetrieveError as exc:  # dcmqrscp cannot move a JPEG instance (test_retrieve)
        assert exc.result is not None
        result = exc.result
        assert method == "move" and result.failed_sop_instance_uids
    instances = cohort.instances_in(study)
    assert result.expected == len(instances)
    assert finds.levels() == ["STUDY", "IMAGE"]  # as many C-FINDs as the listing always took
    got = set(result.received_sop_instance_uids) | set(result.failed_sop_instance_uids)
    assert got == {i.sop_uid for i in instances}


# -- partial retrieves: the lean plan names what is missing exactly as the listing does ------


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return generate_bulk(
        tmp_path_factory.mktemp("lean-bulk"), n_studies=1, per_study=150, seed="lean"
    )


@pytest.fixture(scope="module")
def damaged(
    tmp_path_factory: pytest.TempPathFactory, cohort: Cohort, bulk: Cohort, move_scp_port: int
) -> Iterator[tuple[OrthancServer, str, str]]:
    """A tuned Orthanc with the cohort (and a bulk study), whose files of one series were
    deleted from its storage: C-GET/C-MOVE sub-operations of that series fail.
    (server, study, broken series)."""
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc-damaged"),
        tuned=True,
        move_destinations={"clarinet": ("CLARINET", "127.0.0.1", move_scp_port)},
    )
    study = _multi_series_study(cohort)
    broken = max(cohort.series(study), key=lambda s: (len(cohort.instances_in(series_uid=s)), s))
    wanted = {i.sop_uid for i in cohort.instances_in(series_uid=broken)}
    with server:
        assert server.load(cohort.paths() + bulk.paths()) == len(cohort.instances) + len(
            bulk.instances
        )
        deleted = 0
        for path in (server.workdir / "storage").rglob("*"):
            if path.is_file() and path.suffix == "":
                try:
                    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                except Exception:  # noqa: BLE001 - not a DICOM file (index, json)
                    continue
                if uid in wanted:
                    path.unlink()
                    deleted += 1
        assert deleted == len(wanted)
        server.stop()  # restart: nothing of the deleted files is cached
        server.start()
        yield server, study, broken


def _same_outcome(lean: RetrieveResult, listed: RetrieveResult, roots: tuple[Path, Path]) -> None:
    for field in ("method", "level", "status", "dimse_status", "expected", "received"):
        assert getattr(lean, field) == getattr(listed, field), field
    for field in (
        "failed_sop_instance_uids",
        "missing_sop_instance_uids",
        "received_sop_instance_uids",
    ):
        assert sorted(getattr(lean, field)) == sorted(getattr(listed, field)), field
    assert sorted(p.relative_to(roots[0]) for p in lean.paths) == sorted(
        p.relative_to(roots[1]) for p in listed.paths
    )


async def _partial(
    client: DicomClient, method: str, peer: DicomNode, study: str, **kw: Any
) -> RetrieveResult:
    with pytest.raises(PartialRetrieveError) as caught:
        await client.retrieve(method, RetrieveRequest.study(study), peer=peer, **kw)  # type: ignore[arg-type]
    assert caught.value.result is not None
    return caught.value.result


@pytest.mark.parametrize("method", ["get", "move"])
async def test_partial_retrieve_names_the_same_instances_on_both_plans(
    client: DicomClient,
    damaged: tuple[OrthancServer, str, str],
    cohort: Cohort,
    finds: FindSpy,
    tmp_path: Path,
    method: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, study, broken = damaged
    peer = node(server)
    lean = await _partial(client, method, peer, study, output_dir=tmp_path / "lean")
    lean_finds = list(finds.sent)
    monkeypatch.setattr(settings, "lean_plan", False)
    finds.sent.clear()
    listed = await _partial(client, method, peer, study, output_dir=tmp_path / "listed")
    assert "IMAGE" in finds.levels()
    _same_outcome(lean, listed, (tmp_path / "lean", tmp_path / "listed"))
    lost = {i.sop_uid for i in cohort.instances_in(series_uid=broken)}
    bad = set(lean.failed_sop_instance_uids) | set(lean.missing_sop_instance_uids)
    assert bad == lost
    assert lean.expected == len(cohort.instances_in(study))
    assert lean.status is RetrieveStatus.PARTIAL
    # before the transfer one row per study and per series; after it, the short series only
    assert lean_finds[:2] == [("STUDY", ""), ("SERIES", "")]
    assert [f for f in lean_finds[2:]] == [("IMAGE", broken)]
    on_disk = {p.relative_to(tmp_path / "lean") for p in (tmp_path / "lean").rglob("*.dcm")}
    assert on_disk == {
        p.relative_to(tmp_path / "listed") for p in (tmp_path / "listed").rglob("*.dcm")
    }


async def test_cancelled_retrieve_names_what_did_not_arrive_on_both_plans(
    client: DicomClient,
    damaged: tuple[OrthancServer, str, str],
    bulk: Cohort,
    finds: FindSpy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = damaged[0]
    study = bulk.studies()[0]
    everything = {i.sop_uid for i in bulk.instances_in(study)}
    for lean in (True, False):
        monkeypatch.setattr(settings, "lean_plan", lean)
        finds.sent.clear()
        cancel = CancelToken()
        stored: list[str] = []

        def on_stored(
            uid: str, size: int, cancel: CancelToken = cancel, stored: list[str] = stored
        ) -> None:
            stored.append(uid)
            if len(stored) == 2:
                cancel.cancel()

        result = await client.retrieve(
            "get",
            RetrieveRequest.study(study),
            peer=node(server),
            storage=MEMORY,
            cancel=cancel,
            on_stored=on_stored,
        )
        assert result.status is RetrieveStatus.CANCELLED
        got = set(result.received_sop_instance_uids)
        assert 2 <= len(got) < len(everything)
        assert not result.failed_sop_instance_uids
        assert set(result.missing_sop_instance_uids) == everything - got
        assert result.expected == len(everything)
        assert finds.levels() == (["STUDY", "SERIES", "IMAGE"] if lean else ["STUDY", "IMAGE"])


# -- the notebook layer: pulls to memory plan lean, pulls to disk stay listed ----------------


def test_notebook_memory_pull_sends_no_image_level_find(
    orthanc_tuned: Peer, cohort: Cohort, finds: FindSpy, move_scp_port: int
) -> None:
    pacs = pacs_for(orthanc_tuned, move_scp_port)
    try:
        studies = pacs.find_studies(StudyInstanceUID=list(cohort.studies()[:3]))
        finds.sent.clear()
        datasets = pacs.get(studies, progress=False)
    finally:
        pacs.close()
    wanted = {i.sop_uid for s in cohort.studies()[:3] for i in cohort.instances_in(s)}
    assert {str(ds.SOPInstanceUID) for ds in datasets} == wanted
    assert datasets.failures == []
    assert "IMAGE" not in finds.levels() and finds.levels().count("STUDY") == 3


@pytest.mark.parametrize("method", ["get", "move"])
def test_notebook_partial_memory_pull_is_the_same_on_both_plans(
    damaged: tuple[OrthancServer, str, str],
    cohort: Cohort,
    move_scp_port: int,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    server, study, broken = damaged
    outcomes = []
    for lean in (True, False):
        monkeypatch.setattr(settings, "lean_plan", lean)
        pacs = pacs_for(server, move_scp_port, retries=0)
        try:
            frame = pacs.find_studies(StudyInstanceUID=study)
            datasets = pacs.get(frame, method=method, progress=False)
        finally:
            pacs.close()
        (result,) = datasets.results
        outcomes.append(
            (
                sorted(str(ds.SOPInstanceUID) for ds in datasets),
                [(f["level"], f["error"]) for f in datasets.failures],
                result.status,
                result.expected,
                sorted(result.failed_sop_instance_uids),
                sorted(result.missing_sop_instance_uids),
            )
        )
    assert outcomes[0] == outcomes[1]
    lost = {i.sop_uid for i in cohort.instances_in(series_uid=broken)}
    assert set(outcomes[0][4]) | set(outcomes[0][5]) == lost
    assert outcomes[0][2] is RetrieveStatus.PARTIAL
