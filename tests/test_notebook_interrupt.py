"""An interrupt (SIGINT, the kernel's stop button) during a sync ``pacs.get``: C-CANCEL,
associations released, port free, and what arrived kept and listed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pydicom import dcmread

from clarinet_nb.testing import Cohort, OrthancServer, free_port, generate_bulk
from tests.support import port_is_free

SCRIPT = r"""
import logging, sys, warnings
from pathlib import Path
import clarinet_nb as cnb
logging.basicConfig(level=logging.WARNING)
logging.getLogger("clarinet_nb").setLevel(logging.INFO)
method, target, scp_port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

class Announce:
    total = None
    count = 0
    def update(self, n=1):
        self.count += n
        if self.count == 3:
            print("ARRIVING", flush=True)

pacs = cnb.connect(target, scp_port=scp_port)
studies = pacs.find_studies(PatientID="*")
try:
    if out == "memory":
        pacs.get(studies, method=method, progress=Announce())
    else:
        pacs.get(studies, output_dir=out, method=method, progress=Announce())
except KeyboardInterrupt:
    kept = pacs.interrupted
    n = len(kept) if out == "memory" else int((kept["status"] == "retrieved").sum())
    print("INTERRUPTED", n, flush=True)
    sys.exit(130)
print("FINISHED", flush=True)
"""

BULK = 240


@pytest.fixture(scope="module")
def scp_port() -> int:
    return free_port()


@contextlib.contextmanager
def bulk_orthanc(workdir: Path, scp_port: int) -> Iterator[OrthancServer]:
    """Orthanc with 2 studies x BULK/2 instances, knowing CLARINET on ``scp_port``."""
    bulk: Cohort = generate_bulk(workdir / "bulk", n_studies=2, per_study=BULK // 2)
    destinations = {"c": ("CLARINET", "127.0.0.1", scp_port)}
    with OrthancServer(workdir / "orthanc", move_destinations=destinations) as srv:
        srv.load(bulk.paths())
        yield srv


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, scp_port: int) -> Iterator[OrthancServer]:
    with bulk_orthanc(tmp_path_factory.mktemp("nb-int"), scp_port) as srv:
        yield srv


def _interrupt(orthanc: OrthancServer, method: str, out: str, scp_port: int) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    target = f"{orthanc.aet}@{orthanc.host}:{orthanc.port}"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, method, target, str(scp_port), out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ARRIVING"
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "sending C-CANCEL" in err
    assert "arrived before the interrupt" in err  # the ClarinetWarning
    return rest.strip(), err


@pytest.mark.parametrize("method", ["get", "move"])
def test_interrupted_disk_pull_keeps_and_lists_what_arrived(
    orthanc: OrthancServer, tmp_path: Path, method: str, scp_port: int
) -> None:
    out = tmp_path / "out"
    line, _ = _interrupt(orthanc, method, str(out), scp_port)
    word, count = line.split()
    assert word == "INTERRUPTED"
    files = [p for p in out.rglob("*.dcm")]
    assert 3 <= len(files) < BULK and int(count) == len(files)
    assert not [p for p in out.rglob(".*")], "temporary files left behind"
    for path in files:
        assert dcmread(path).SOPInstanceUID == path.stem
    manifest = pd.read_parquet(out / "manifest.parquet")
    retrieved = manifest[manifest["status"] == "retrieved"]
    assert sorted(retrieved["SOPInstanceUID"]) == sorted(p.stem for p in files)
    assert set(manifest["status"]) == {"retrieved", "missing"}
    assert port_is_free(scp_port)


def test_interrupted_memory_pull_keeps_what_arrived(orthanc: OrthancServer, scp_port: int) -> None:
    line, _ = _interrupt(orthanc, "get", "memory", scp_port)
    word, count = line.split()
    assert word == "INTERRUPTED" and 3 <= int(count) < BULK
