"""The notebooks in ``notebooks/`` run top to bottom against a real Orthanc, and the demo runs.

Each notebook is executed by nbclient in a kernel whose environment points
``cnb.connect()`` at the session's Orthanc (``CLARINET_PACS_*``) and our C-MOVE
Storage SCP at the port Orthanc knows as destination ``CLARINET``
(``CLARINET_DICOM_PORT``), with a temporary folder as working directory.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from clarinet_nb.demo import run_notebook
from clarinet_nb.testing import Cohort, OrthancServer, free_port

if TYPE_CHECKING:
    import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = (
    "01_quickstart.ipynb",
    "02_cohort_building.ipynb",
    "03_ml_dataset_pull.ipynb",
    "04_widgets.ipynb",
)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.timeout(180)


def kernel_env(orthanc: OrthancServer, move_scp_port: int) -> dict[str, str]:
    """Our environment with the PACS of the test, and this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARINET_")}
    env.update(
        {
            "CLARINET_PACS_AET": orthanc.aet,
            "CLARINET_PACS_HOST": orthanc.host,
            "CLARINET_PACS_PORT": str(orthanc.port),
            "CLARINET_DICOM_AET": "CLARINET",
            "CLARINET_DICOM_PORT": str(move_scp_port),
        }
    )
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    return env


def execute(name: str, cwd: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    nb: nbformat.NotebookNode = run_notebook(NOTEBOOKS / name, cwd, env)
    return nb


def outputs(cell: nbformat.NotebookNode) -> str:
    """What a cell printed and showed, as text."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(str(output.get("data", {}).get("text/plain", "")))
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
    return "".join(parts)


def cell(nb: nbformat.NotebookNode, marker: str) -> nbformat.NotebookNode:
    """The one code cell whose source contains ``marker``."""
    found = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(found) == 1, f"{len(found)} cells contain {marker!r}"
    return found[0]


def assert_ran(nb: nbformat.NotebookNode) -> None:
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        assert c.execution_count is not None, f"not run: {c.source[:60]!r}"
        errors = [o for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{c.source[:60]!r}: {errors}"


def require_jupyter() -> None:
    """Skip without nbclient and ipykernel, unless CI is set: then fail (it must run there)."""
    missing = [m for m in ("nbclient", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"running notebooks needs {', '.join(missing)} (pip install -e '.[notebooks]')"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so it must run")
        pytest.skip(reason)


@pytest.fixture
def env(orthanc_stock: OrthancServer, move_scp_port: int) -> dict[str, str]:
    require_jupyter()
    return kernel_env(orthanc_stock, move_scp_port)


# -- as committed ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name: str) -> None:
    require_jupyter()
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, c.source[:60]
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "pacs = cnb.connect()" in sources  # the PACS comes from CLARINET_* only


# -- executed -------------------------------------------------------------------------------


def test_quickstart(tmp_path: Path, env: dict[str, str], cohort: Cohort) -> None:
    nb = execute("01_quickstart.ipynb", tmp_path, env)
    assert_ran(nb)
    peer = f"ORTHANC@127.0.0.1:{env['CLARINET_PACS_PORT']}"
    everything = outputs(cell(nb, 'find_studies(PatientID="*")'))
    assert f"{len(cohort.studies())} studies from {peer}" in everything
    assert outputs(cell(nb, "pacs.echo()")).strip() == "True"
    ct_study = [i for i in cohort.instances if i.patient_id == "CLN-0001" and i.modality == "CT"]
    assert "CT studies of patient CLN-0001: 1" in outputs(cell(nb, 'PatientID="CLN-0001"'))
    assert f"{len(ct_study)} instances in series" in outputs(cell(nb, "find_instances"))
    assert f"Retrieved {len(ct_study)} instances" in outputs(cell(nb, "pacs.get(axial)"))


def test_cohort_building(tmp_path: Path, env: dict[str, str], cohort: Cohort) -> None:
    nb = execute("02_cohort_building.ipynb", tmp_path, env)
    assert_ran(nb)
    wanted = {"CLN-0001", "CLN-0003"}
    n = len({i.study_uid for i in cohort.instances if i.patient_id in wanted})
    text = outputs(cell(nb, "studies = pacs.find_studies(mrns)"))
    assert f"{n} studies for 2 of 3 patients" in text
    assert "no studies for: ['CLN-9999']" in text
    total = len(cohort.studies())
    assert f"{total} rows; truncated: True" in outputs(cell(nb, "result_cap=3"))
    assert f"{total} rows; truncated: False" in outputs(cell(nb, 'split="auto"'))
    assert "repeated query from cache: True" in outputs(cell(nb, 'cache="cache/"'))
    assert "from cache: False" in outputs(cell(nb, "refresh=True"))
    assert (tmp_path / "mrns.csv").exists()
    assert list((tmp_path / "cache" / "level=STUDY").glob("peer=*/*.parquet"))
    exported = pd.read_parquet(tmp_path / "cohort_studies.parquet")
    assert len(exported) == n and set(exported["subject"]) == {"S01", "S02"}
    assert len(pd.read_csv(tmp_path / "cohort_studies.csv")) == n


def test_ml_dataset_pull(tmp_path: Path, env: dict[str, str], cohort: Cohort) -> None:
    nb = execute("03_ml_dataset_pull.ipynb", tmp_path, env)
    assert_ran(nb)
    ct = [i for i in cohort.instances if i.modality == "CT"]
    per_series: dict[str, int] = {}
    for i in ct:
        per_series[i.series_uid] = per_series.get(i.series_uid, 0) + 1
    slices = max(per_series.values())
    text = outputs(cell(nb, "def stack_volume"))
    assert f"volume ({slices}, 64, 64), voxel spacing (2.5, 0.7, 0.7) mm" in text
    assert "same as C-GET: True" in outputs(cell(nb, 'method="move"'))
    headers = pd.read_parquet(tmp_path / "data" / "headers.parquet")
    assert sorted(headers["SOPInstanceUID"]) == sorted(i.sop_uid for i in ct)
    assert f"read_headers: {len(ct)} files in {len(per_series)} series" in outputs(
        cell(nb, "cnb.read_headers")
    )
    assert f"present    {len(ct)}" in outputs(cell(nb, "again = pacs.get"))
    with np.load(tmp_path / "ct_volume.npz") as saved:
        assert saved["volume"].shape == (slices, 64, 64)


def test_widgets(tmp_path: Path, env: dict[str, str], cohort: Cohort) -> None:
    pytest.importorskip("clarinet_nb.widgets")
    nb = execute("04_widgets.ipynb", tmp_path, env)
    assert_ran(nb)
    shown = cell(nb, "cnb.QueryBuilder(pacs)").outputs
    assert any(WIDGET_VIEW in o.get("data", {}) for o in shown)
    text = outputs(cell(nb, "builder.search()"))
    assert "pacs.find_studies(PatientID='*')" in text and f"{len(cohort.studies())} rows" in text
    most = max(len(cohort.instances_in(study_uid=s)) for s in cohort.studies())
    assert f"{most} datasets in builder.datasets" in outputs(cell(nb, "builder.retrieve()"))
    preview = cell(nb, "cnb.preview(").outputs
    assert any(WIDGET_VIEW in o.get("data", {}) for o in preview)


# -- the demo -------------------------------------------------------------------------------


@pytest.fixture
def demo_workdir(tmp_path: Path) -> Iterator[Path]:
    workdir = tmp_path / "demo"
    yield workdir
    leftovers = [
        pid for pid in os.listdir("/proc") if pid.isdigit() and str(workdir) in _cmdline(pid)
    ]
    assert not leftovers, f"the demo left processes running: {leftovers}"


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.integration
def test_demo_runs_the_quickstart(demo_workdir: Path, cohort: Cohort) -> None:
    """``python -m clarinet_nb.demo`` on free ports: the quickstart's output, nothing left."""
    require_jupyter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARINET_")}
    env.update({"CLARINET_PACS_PORT": str(free_port()), "CLARINET_DICOM_PORT": str(free_port())})
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "clarinet_nb.demo", "--workdir", str(demo_workdir)],
        cwd=demo_workdir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"ORTHANC@127.0.0.1:{env['CLARINET_PACS_PORT']}" in out
    assert f"{len(cohort.studies())} studies from" in out
    assert "Retrieved 5 instances" in out
    assert "export CLARINET_PACS_PORT" not in out  # it ran where the settings said
    assert out.rstrip().endswith("demo PACS stopped")
    assert (demo_workdir / "run" / "01_quickstart.ipynb").exists()
