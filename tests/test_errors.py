"""Error paths, for real: closed ports, wrong AE titles, unknown move destinations,
failure statuses, stalled peers, and invalid input that never reaches the network."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset

from clarinet_nb import (
    AssociationRejectedError,
    DicomClient,
    DicomNode,
    DicomTimeoutError,
    ImageQuery,
    InvalidInputError,
    MoveDestinationUnknownError,
    NotFoundError,
    PartialRetrieveError,
    PeerUnreachableError,
    QueryError,
    RetrieveStatus,
    StorageConfig,
    StorageMode,
    StudyQuery,
    Timeouts,
)
from clarinet_nb.settings import settings
from clarinet_nb.testing import Cohort, OrthancServer, Peer, free_port
from tests.support import (
    ConnectionCounter,
    client,
    node,
    port_is_free,
    silent_listener,
)

__all__ = ["client", "silent_listener"]


async def test_closed_port_is_unreachable(client: DicomClient) -> None:
    closed = DicomNode(aet="NOBODY", host="127.0.0.1", port=free_port())
    with pytest.raises(PeerUnreachableError, match="could not connect"):
        await client.echo(closed)
    with pytest.raises(PeerUnreachableError):
        await client.find_studies(StudyQuery(), peer=closed)


async def test_wrong_called_aet_rejected_by_dcmqrscp(
    client: DicomClient, dcmqrscp_stock: Peer
) -> None:
    wrong = DicomNode(aet="WRONG", host=dcmqrscp_stock.host, port=dcmqrscp_stock.port)
    with pytest.raises(AssociationRejectedError) as caught:
        await client.find_studies(StudyQuery(), peer=wrong)
    assert caught.value.reason == 7 and "called AE title" in str(caught.value)


@pytest.fixture(scope="module")
def strict_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("orthanc-strict"), check_called_aet=True) as srv:
        yield srv


async def test_wrong_called_aet_rejected_by_orthanc(
    client: DicomClient, strict_orthanc: OrthancServer
) -> None:
    assert await client.echo(node(strict_orthanc))
    wrong = DicomNode(aet="WRONG", host=strict_orthanc.host, port=strict_orthanc.port)
    with pytest.raises(AssociationRejectedError, match="called AE title"):
        await client.echo(wrong)


async def test_unknown_move_destination(peer: Peer, cohort: Cohort, tmp_path: Path) -> None:
    port = free_port()
    async with DicomClient("STRANGER", scp_port=port) as stranger:
        with pytest.raises(MoveDestinationUnknownError) as caught:
            await stranger.move_study(cohort.studies()[0], peer=node(peer), output_dir=tmp_path)
    message = str(caught.value)
    assert "STRANGER" in message and str(port) in message and "Register" in message
    assert caught.value.result.received == 0
    # dcmqrscp answers 0xA801; Orthanc 1.10 a bare 0xC000 before any sub-operation
    assert caught.value.status == (0xA801 if peer.kind == "dcmqrscp" else 0xC000)
    assert port_is_free(port)


async def test_retrieve_of_nothing_is_not_found(client: DicomClient, peer: Peer) -> None:
    missing = "1.2.826.0.1.3680043.8.498.1"
    with pytest.raises(NotFoundError) as caught:
        await client.get_study(missing, peer=node(peer))
    assert caught.value.result.status is RetrieveStatus.NOT_FOUND
    with pytest.raises(NotFoundError):
        await client.move_study(missing, peer=node(peer))


async def test_retrieve_without_pre_query_nothing_found(client: DicomClient, peer: Peer) -> None:
    with pytest.raises(NotFoundError):
        await client.get_study("1.2.826.0.1.3680043.8.498.2", peer=node(peer), query_first=False)


class BogusLevelQuery(StudyQuery):
    """A query our models would never build: the peer must answer with a failure."""

    def to_dataset(self) -> Dataset:
        ds = super().to_dataset()
        ds.QueryRetrieveLevel = "BOGUS"
        return ds


async def test_failure_status_from_peer_is_a_query_error(client: DicomClient, peer: Peer) -> None:
    with pytest.raises(QueryError) as caught:
        await client.find(BogusLevelQuery(), peer=node(peer))
    assert caught.value.status is not None and caught.value.status >= 0xA000
    assert "0x" in str(caught.value)


async def test_failure_status_ends_a_get(
    client: DicomClient, orthanc_stock: Peer, cohort: Cohort
) -> None:
    """Without the pre-query we cannot know the SOP classes; Orthanc then fails the whole
    C-GET (0xC000) on a class we did not offer, and we report it, listing nothing lost."""
    odd = next(i for i in cohort.instances if i.sop_class_uid.endswith(".7.2"))  # MF SC
    with pytest.raises(PartialRetrieveError) as caught:
        await client.get_study(odd.study_uid, peer=node(orthanc_stock), query_first=False)
    result = caught.value.result
    assert result.dimse_status is not None and result.dimse_status >= 0xA000
    assert result.status in (RetrieveStatus.FAILED, RetrieveStatus.PARTIAL)
    assert odd.sop_uid not in result.received_sop_instance_uids
    # with the pre-query (the default) the same study arrives whole
    whole = await client.get_study(odd.study_uid, peer=node(orthanc_stock))
    assert odd.sop_uid in whole.received_sop_instance_uids
    assert whole.received == len(cohort.instances_in(odd.study_uid))


async def test_silent_peer_times_out(silent_listener: ConnectionCounter) -> None:
    quick = Timeouts(connect=2, acse=1, dimse=1, network=2, cancel=1)
    mute = DicomNode(aet="MUTE", host="127.0.0.1", port=silent_listener.port)
    async with DicomClient(timeouts=quick) as impatient:
        with pytest.raises(DicomTimeoutError, match="within 1 s"):
            await impatient.echo(mute)


@pytest.fixture
def stallable_orthanc(tmp_path: Path, cohort: Cohort) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "orthanc") as srv:
        srv.load(cohort.paths())
        yield srv


@pytest.mark.parametrize("plan", ["listed", "lean"])
async def test_peer_stalling_mid_get_gives_partial_result_within_timeout(
    stallable_orthanc: OrthancServer,
    cohort: Cohort,
    tmp_path: Path,
    plan: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Orthanc freezes (SIGSTOP) after the first instance; the DIMSE timeout ends the
    pull with a PartialRetrieveError that lists what arrived and what did not (listed
    up front; on a lean plan the frozen PACS cannot list them: they are counted)."""
    monkeypatch.setattr(settings, "lean_plan", plan == "lean")
    pid = stallable_orthanc.pid
    assert pid is not None
    frozen = threading.Event()

    class FreezeAfterFirst:
        total: float | None = None

        def update(self, n: float = 1) -> None:
            if not frozen.is_set():
                os.kill(pid, signal.SIGSTOP)
                frozen.set()

        def refresh(self) -> None:
            return None

    study = max(cohort.studies(), key=lambda s: len(cohort.instances_in(s)))
    quick = Timeouts(connect=2, acse=2, dimse=2, network=5, cancel=1)
    try:
        async with DicomClient(timeouts=quick) as impatient:
            with pytest.raises(PartialRetrieveError) as caught:
                await impatient.get_study(
                    study,
                    peer=node(stallable_orthanc),
                    output_dir=tmp_path / "out",
                    progress=FreezeAfterFirst(),
                )
    finally:
        os.kill(pid, signal.SIGCONT)
    result = caught.value.result
    assert frozen.is_set()
    assert isinstance(caught.value.__cause__, DicomTimeoutError)
    assert result.received == 1
    assert result.expected == len(cohort.instances_in(study))
    named = len(cohort.instances_in(study)) - 1 if plan == "listed" else 0
    assert len(result.missing_sop_instance_uids) == named
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert files == result.paths


async def test_invalid_input_never_reaches_the_network(
    silent_listener: ConnectionCounter, client: DicomClient
) -> None:
    target = DicomNode(aet="COUNTER", host="127.0.0.1", port=silent_listener.port)
    with pytest.raises(InvalidInputError):
        await client.get_study("1.2.03.4", peer=target)
    with pytest.raises(InvalidInputError):
        await client.move_series("not-a-uid", peer=target)
    with pytest.raises(InvalidInputError):
        await client.get_instance([], peer=target)
    with pytest.raises(InvalidInputError):
        await client.find_studies(StudyQuery(study_date=("2021-01-01", "2020-01-01")), peer=target)
    with pytest.raises(InvalidInputError):
        await client.find_images(ImageQuery(sop_instance_uid="1.2.x"), peer=target)
    with pytest.raises(InvalidInputError):
        await client.find_studies(ImageQuery(), peer=target)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await client.get_study(
            "1.2.3", peer=target, output_dir="x", storage=StorageConfig(mode=StorageMode.MEMORY)
        )
    with pytest.raises(InvalidInputError):
        DicomClient(calling_aet="A_CALLING_AE_TITLE_TOO_LONG")
    with pytest.raises(InvalidInputError):
        DicomNode(aet="OK", host="127.0.0.1", port=0)
    silent_listener.close()
    assert silent_listener.accepted == []
