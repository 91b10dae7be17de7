"""Ctrl-C (SIGINT) in a script running ``asyncio.run``: the pull stops, C-CANCEL goes
out, what arrived is complete on disk, and the Storage SCP port is free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from clarinet_nb.testing import Cohort, OrthancServer, free_port, generate_bulk
from tests.support import port_is_free

SCRIPT = r"""
import asyncio, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.WARNING)
logging.getLogger("clarinet_nb").setLevel(logging.INFO)
from clarinet_nb import DicomClient, DicomNode

class Announce:
    total = None
    count = 0
    def update(self, n=1):
        self.count += n
        if self.count == 3:
            print("ARRIVING", flush=True)
    def refresh(self):
        pass

async def main(method, port, scp_port, study, out):
    async with DicomClient(scp_port=scp_port) as client:
        pull = client.get_study if method == "get" else client.move_study
        await pull(study, peer=DicomNode(aet="ORTHANC", host="127.0.0.1", port=port),
                   output_dir=Path(out), progress=Announce())

try:
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(130)
print("FINISHED", flush=True)
"""

BULK = 200


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return generate_bulk(tmp_path_factory.mktemp("bulk-int"), n_studies=1, per_study=BULK)


@pytest.fixture(scope="module")
def scp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(
    tmp_path_factory: pytest.TempPathFactory, bulk: Cohort, scp_port: int
) -> Iterator[OrthancServer]:
    workdir = tmp_path_factory.mktemp("orthanc-int")
    destinations = {"c": ("CLARINET", "127.0.0.1", scp_port)}
    with OrthancServer(workdir, move_destinations=destinations) as srv:  # stock: slow enough
        srv.load(bulk.paths())
        yield srv


@pytest.mark.parametrize("method", ["get", "move"])
def test_sigint_stops_the_pull_cleanly(
    orthanc: OrthancServer, bulk: Cohort, tmp_path: Path, method: str, scp_port: int
) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SCRIPT,
            method,
            str(orthanc.port),
            str(scp_port),
            bulk.studies()[0],
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    assert first == "ARRIVING"
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert rest.strip() == "INTERRUPTED"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(p.suffix == ".dcm" for p in files), "temporary files left behind"
    assert 3 <= len(files) < BULK
    for path in files:
        assert dcmread(path).SOPInstanceUID == path.stem
    assert port_is_free(scp_port)
    assert "sending C-CANCEL" in err
