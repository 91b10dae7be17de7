"""Session fixtures: the synthetic cohort and four real DICOM peers loaded with it.

Peers are started lazily (only when a test asks for one), loaded once with the
cohort and stopped at session end. ``peer`` runs a test against each of
orthanc-stock, orthanc-tuned, dcmqrscp-stock and dcmqrscp-tuned.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from clarinet_nb.testing import (
    Cohort,
    DcmqrscpServer,
    OrthancServer,
    Peer,
    PeerProcess,
    free_port,
    generate_cohort,
)

PEER_NAMES = ("orthanc-stock", "orthanc-tuned", "dcmqrscp-stock", "dcmqrscp-tuned")
PEER_FIXTURES = frozenset({"peer", *(name.replace("-", "_") for name in PEER_NAMES)})
MOVE_SCP_AET = "CLARINET"
DEFAULT_TIMEOUT = 120  # seconds per test, when pytest-timeout is installed and not configured

Server = TypeVar("Server", bound=PeerProcess)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: runs against real DICOM peers (Orthanc, dcmqrscp)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark peer-using tests ``integration``; give every test a default timeout."""
    add_timeout = config.pluginmanager.hasplugin("timeout") and not (
        config.getini("timeout") or config.getoption("timeout", None)
    )
    for item in items:
        if PEER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if add_timeout and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cohort")


@pytest.fixture(scope="session")
def cohort(cohort_dir: Path) -> Cohort:
    return generate_cohort(cohort_dir)


@pytest.fixture(scope="session")
def move_scp_port() -> int:
    """Port where the library's Storage SCP (AE ``CLARINET``) listens for C-MOVE."""
    return free_port()


@pytest.fixture(scope="session")
def move_scp_aet() -> str:
    return MOVE_SCP_AET


@pytest.fixture(scope="session")
def move_destinations(move_scp_port: int) -> dict[str, tuple[str, str, int]]:
    return {"clarinet": (MOVE_SCP_AET, "127.0.0.1", move_scp_port)}


def _serve(server: Server, cohort: Cohort) -> Iterator[Server]:
    with server:
        loaded = server.load(cohort.paths())
        assert loaded == len(cohort.instances), f"{server.name}: loaded {loaded}"
        yield server


@pytest.fixture(scope="session")
def orthanc_stock(
    tmp_path_factory: pytest.TempPathFactory,
    cohort: Cohort,
    move_destinations: dict[str, tuple[str, str, int]],
) -> Iterator[OrthancServer]:
    workdir = tmp_path_factory.mktemp("orthanc-stock")
    yield from _serve(OrthancServer(workdir, move_destinations=move_destinations), cohort)


@pytest.fixture(scope="session")
def orthanc_tuned(
    tmp_path_factory: pytest.TempPathFactory,
    cohort: Cohort,
    move_destinations: dict[str, tuple[str, str, int]],
) -> Iterator[OrthancServer]:
    workdir = tmp_path_factory.mktemp("orthanc-tuned")
    server = OrthancServer(workdir, tuned=True, move_destinations=move_destinations)
    yield from _serve(server, cohort)


@pytest.fixture(scope="session")
def dcmqrscp_stock(
    tmp_path_factory: pytest.TempPathFactory,
    cohort: Cohort,
    move_destinations: dict[str, tuple[str, str, int]],
) -> Iterator[DcmqrscpServer]:
    workdir = tmp_path_factory.mktemp("dcmqrscp-stock")
    yield from _serve(DcmqrscpServer(workdir, move_destinations=move_destinations), cohort)


@pytest.fixture(scope="session")
def dcmqrscp_tuned(
    tmp_path_factory: pytest.TempPathFactory,
    cohort: Cohort,
    move_destinations: dict[str, tuple[str, str, int]],
) -> Iterator[DcmqrscpServer]:
    workdir = tmp_path_factory.mktemp("dcmqrscp-tuned")
    server = DcmqrscpServer(workdir, tuned=True, move_destinations=move_destinations)
    yield from _serve(server, cohort)


@pytest.fixture(scope="session", params=PEER_NAMES)
def peer(request: pytest.FixtureRequest) -> Peer:
    """Each of the four loaded peers in turn (started on first use)."""
    server: Peer = request.getfixturevalue(request.param.replace("-", "_"))
    return server
