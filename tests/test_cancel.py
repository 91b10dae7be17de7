"""Cancellation: C-CANCEL reaches the PACS, associations are released, nothing is
half written, and our Storage SCP port is free again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom.association import Association

from clarinet_nb import (
    CancelToken,
    DicomClient,
    DicomOperations,
    ImageQuery,
    RetrieveRequest,
    RetrieveStatus,
    StorageConfig,
    StorageMode,
)
from clarinet_nb.testing import Cohort, OrthancServer, free_port, generate_bulk
from tests.support import TEST_TIMEOUTS, node, port_is_free

BULK = 150


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return generate_bulk(tmp_path_factory.mktemp("bulk"), n_studies=1, per_study=BULK)


@pytest.fixture(scope="module")
def scp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def bulk_orthanc(
    tmp_path_factory: pytest.TempPathFactory, bulk: Cohort, scp_port: int
) -> Iterator[OrthancServer]:
    workdir = tmp_path_factory.mktemp("orthanc-bulk")
    with OrthancServer(
        workdir, move_destinations={"c": ("CLARINET", "127.0.0.1", scp_port)}
    ) as srv:
        srv.load(bulk.paths())
        yield srv


class CancelAfter:
    """A progress sink that cancels after ``n`` instances arrived."""

    def __init__(self, token: CancelToken | None, n: int = 5) -> None:
        self.token = token
        self.n = n
        self.count = 0
        self.total: float | None = None
        self.reached = threading.Event()

    def update(self, n: float = 1) -> None:
        self.count += int(n)
        if self.count >= self.n and not self.reached.is_set():
            self.reached.set()
            if self.token is not None:
                self.token.cancel()

    def refresh(self) -> None:
        return None


def _no_association_threads() -> bool:
    for thread in threading.enumerate():
        if isinstance(thread, Association):
            thread.join(timeout=10)
    return not any(isinstance(t, Association) and t.is_alive() for t in threading.enumerate())


def _all_complete(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in files if not p.name.endswith(".dcm")], "temporary files left"
    for path in files:
        assert dcmread(path).SOPInstanceUID == path.stem  # every file whole and readable
    return files


@pytest.mark.parametrize("method", ["get", "move"])
def test_cancel_token_sends_c_cancel(
    bulk_orthanc: OrthancServer, bulk: Cohort, tmp_path: Path, method: str, scp_port: int
) -> None:
    ops = DicomOperations(timeouts=TEST_TIMEOUTS, scp_port=scp_port)
    token = CancelToken()
    progress = CancelAfter(token)
    result = ops.retrieve(
        method,  # type: ignore[arg-type]
        RetrieveRequest.study(bulk.studies()[0]),
        node(bulk_orthanc),
        StorageConfig(mode=StorageMode.DISK, output_dir=tmp_path),
        cancel=token,
        progress=progress,
    )
    assert result.status is RetrieveStatus.CANCELLED
    assert result.dimse_status == 0xFE00  # the PACS honoured our C-CANCEL
    assert progress.n <= result.received < BULK
    assert result.expected == BULK
    files = _all_complete(tmp_path)
    assert sorted(p.stem for p in files) == sorted(result.received_sop_instance_uids)
    assert _no_association_threads()
    assert port_is_free(scp_port)


@pytest.mark.parametrize("method", ["get", "move"])
async def test_cancelling_the_task(
    bulk_orthanc: OrthancServer, bulk: Cohort, tmp_path: Path, method: str, scp_port: int
) -> None:
    progress = CancelAfter(None)
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()
    threading.Thread(
        target=lambda: (progress.reached.wait(60), loop.call_soon_threadsafe(arrived.set)),
        daemon=True,
    ).start()
    async with DicomClient(timeouts=TEST_TIMEOUTS, scp_port=scp_port) as client:
        retrieve = client.get_study if method == "get" else client.move_study
        task = asyncio.create_task(
            retrieve(
                bulk.studies()[0], peer=node(bulk_orthanc), output_dir=tmp_path, progress=progress
            )
        )
        await arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        files = _all_complete(tmp_path)
        assert progress.n <= len(files) < BULK
        assert _no_association_threads()
        assert port_is_free(scp_port)
        # the client is still usable afterwards
        again = await client.get_study(
            bulk.studies()[0], peer=node(bulk_orthanc), output_dir=tmp_path
        )
        assert again.received == BULK


def test_cancel_a_find(bulk_orthanc: OrthancServer, bulk: Cohort) -> None:
    ops = DicomOperations(timeouts=TEST_TIMEOUTS)
    token = CancelToken()
    seen: list[object] = []

    def on_match(ds: object) -> None:
        seen.append(ds)
        if len(seen) == 10:
            token.cancel()

    outcome = ops.find(
        ImageQuery(study_instance_uid=bulk.studies()[0]),
        node(bulk_orthanc),
        cancel=token,
        on_match=on_match,
    )
    assert outcome.cancelled and not outcome.truncated
    assert 10 <= len(outcome.datasets) < BULK
    assert _no_association_threads()
