"""A batch of C-FINDs shares its associations; one query with a long UID list runs in parts.

Both are speed features that must not change an answer: the split query's frame equals
the unsplit one on every peer, a pooled association closed by the peer is replaced, and
nothing stays open after the call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

import clarinet_nb as cnb
from clarinet_nb.dicom.operations import DicomOperations
from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.notebook import listsplit
from clarinet_nb.notebook.criteria import KeywordQuery
from clarinet_nb.testing import Cohort, Peer, free_port
from tests.notebook_support import pacs_for
from tests.support import TEST_TIMEOUTS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

# -- the split itself (pure logic) -------------------------------------------------------

uids = st.lists(st.from_regex(r"1\.2\.[1-9][0-9]{0,5}", fullmatch=True), min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(uids=uids, parts=st.integers(1, 16), least=st.integers(1, 10))
def test_parts_cover_the_list_once_in_order(uids: list[str], parts: int, least: int) -> None:
    query = KeywordQuery(QueryLevel.IMAGE, {"StudyInstanceUID": "\\".join(uids)})
    pieces = listsplit.split_uid_list(query, parts, least)
    distinct = list(dict.fromkeys(uids))
    if pieces is None:
        assert len(distinct) < 2 * least or parts < 2 or len(uids) == 1
        return
    asked = [p.criteria["StudyInstanceUID"].split("\\") for p in pieces]
    assert [u for part in asked for u in part] == distinct  # each once, in list order
    assert 2 <= len(pieces) <= parts
    assert all(len(part) >= least for part in asked)
    assert max(map(len, asked)) - min(map(len, asked)) <= 1
    assert all(p.level is query.level and p.return_keys == query.return_keys for p in pieces)


def test_only_unique_keys_are_split() -> None:
    many = "\\".join(f"1.2.{n}" for n in range(40))
    assert (
        listsplit.split_uid_list(
            KeywordQuery(QueryLevel.SERIES, {"Modality": "CT\\MR\\US\\PT\\NM\\CR\\DX\\MG"}), 4, 1
        )
        is None
    )
    assert (
        listsplit.split_uid_list(KeywordQuery(QueryLevel.IMAGE, {"SOPClassUID": many}), 4, 1)
        is None
    )  # many records share a class: not a unique key
    pieces = listsplit.split_uid_list(
        KeywordQuery(QueryLevel.IMAGE, {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": many}),
        4,
        8,
    )
    assert pieces is not None and len(pieces) == 4
    assert all(p.criteria["StudyInstanceUID"] == "1.2.3" for p in pieces)


# -- against the real peers --------------------------------------------------------------


def _sorted(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame.sort_values(key, kind="stable").reset_index(drop=True)


def _associations_alive() -> list[Association]:
    for thread in threading.enumerate():
        if isinstance(thread, Association):
            thread.join(10)
    return [t for t in threading.enumerate() if isinstance(t, Association) and t.is_alive()]


@pytest.mark.parametrize("level", ["studies", "instances"])
def test_a_split_list_answers_as_the_whole_list(
    peer: Peer, cohort: Cohort, move_scp_port: int, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    monkeypatch.setattr(listsplit, "MIN_PER_PART", 2)
    studies = cohort.studies()
    asked = [*studies, studies[0]]  # a repeated UID is asked (and matched) once
    key, column = (
        ("StudyInstanceUID", "StudyInstanceUID")
        if level == "studies"
        else ("StudyInstanceUID", "SOPInstanceUID")
    )
    frames = []
    for most in (4, 1):
        pacs = pacs_for(peer, move_scp_port, max_associations=most)
        try:
            find = pacs.find_studies if level == "studies" else pacs.find_instances
            frames.append(find(**{key: asked}))
        finally:
            pacs.close()
    split, whole = frames
    assert split.attrs["queries"] == 3 and whole.attrs["queries"] == 1  # 6 UIDs, 2 per part
    expected = len(studies) if level == "studies" else len(cohort.instances)
    assert len(split) == len(whole) == expected
    for frame in frames:
        frame.attrs = {}
    pd.testing.assert_frame_equal(_sorted(split, column), _sorted(whole, column))
    assert _associations_alive() == []


def test_a_batch_reuses_its_associations(
    peer: Peer, cohort: Cohort, move_scp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[None] = []
    original = DicomOperations._open_find_association

    def counting(self: DicomOperations, node: Any) -> Association:
        opened.append(None)
        return original(self, node)

    monkeypatch.setattr(DicomOperations, "_open_find_association", counting)
    pacs = pacs_for(peer, move_scp_port, max_associations=2)
    try:
        series = pacs.find_series(StudyInstanceUID=cohort.studies())
        opened.clear()
        frame = pacs.find_instances(series[["StudyInstanceUID", "SeriesInstanceUID"]])
    finally:
        pacs.close()
    assert len(series) == len(cohort.series()) > 2
    assert len(frame) == len(cohort.instances)
    assert frame.attrs["queries"] == len(series)
    assert 1 <= len(opened) <= 2  # at most max_associations for the whole batch
    assert _associations_alive() == []  # and all released when the call returned


# -- a peer that closes idle associations ------------------------------------------------


@pytest.fixture
def closing_scp() -> Iterator[tuple[str, list[int]]]:
    """A Find SCP that aborts an association when it brings a second query: what a PACS
    with a short idle timeout does to a pooled association (seen by the next query)."""
    ae = AE(ae_title="CLOSER")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
    seen: dict[int, int] = {}
    aborted: list[int] = []
    lock = threading.Lock()

    def handle(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        with lock:
            count = seen[id(event.assoc)] = seen.get(id(event.assoc), 0) + 1
        if count > 1:
            aborted.append(count)
            event.assoc.abort()
            return
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = str(event.identifier.StudyInstanceUID)
        ds.PatientID = "P1"
        yield 0xFF00, ds

    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, handle)]
    )
    try:
        yield f"CLOSER@127.0.0.1:{port}", aborted
    finally:
        server.shutdown()


def test_a_pooled_association_closed_by_the_peer_is_replaced(
    closing_scp: tuple[str, list[int]],
) -> None:
    target, aborted = closing_scp
    rows = pd.DataFrame({"StudyInstanceUID": [f"1.2.3.{n}" for n in range(6)]})
    pacs = cnb.connect(target, timeouts=TEST_TIMEOUTS, max_associations=1, retries=0)
    try:
        frame = pacs.find_studies(rows)
    finally:
        pacs.close()
    assert sorted(frame["StudyInstanceUID"]) == sorted(rows["StudyInstanceUID"])
    assert "failures" not in frame.attrs or not frame.attrs["failures"]
    assert len(aborted) == 5  # every query after the first met a closed association first
    assert _associations_alive() == []
