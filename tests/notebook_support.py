"""Fixtures for the notebook layer's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import clarinet_nb as cnb
from clarinet_nb.testing import Peer
from tests.support import TEST_TIMEOUTS


def pacs_for(peer: Peer, scp_port: int, **kw: object) -> cnb.Pacs:
    """A notebook Pacs for a test peer."""
    return cnb.connect(
        f"{peer.aet}@{peer.host}:{peer.port}", scp_port=scp_port, timeouts=TEST_TIMEOUTS, **kw
    )


@pytest.fixture
def pacs(orthanc_stock: Peer, move_scp_port: int) -> Iterator[cnb.Pacs]:
    """The notebook face of the stock Orthanc loaded with the cohort."""
    p = pacs_for(orthanc_stock, move_scp_port)
    yield p
    p.close()
