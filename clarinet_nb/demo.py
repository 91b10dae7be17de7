"""Demo: a local PACS with a synthetic cohort, queried and retrieved with clarinet_nb.

``python -m clarinet_nb.demo`` (or ``bash scripts/demo.sh``, which installs
Orthanc and the Python packages first) starts Orthanc (admitting only loopback
clients with known AE titles), loads a generated cohort (3 patients, 6
studies: CT/MR/CR, SR, KO, PR, Secondary Capture, PDF, a JPEG, Japanese and
German names), runs the quickstart notebook (``notebooks/01_quickstart.ipynb``)
against it and prints what each cell showed, then stops Orthanc.

The demo PACS sits where clarinet_nb looks by default, so that a plain
``cnb.connect()`` reaches it: AE title ORTHANC on port 4242, with our C-MOVE
destination CLARINET on port 11112 (or the ``CLARINET_PACS_AET/PORT`` and
``CLARINET_DICOM_AET/PORT`` you have set).  When a port is taken it picks a free
one and says which ``CLARINET_*`` variables reach it.

``--serve`` instead keeps the PACS running and starts JupyterLab on 127.0.0.1
in the notebooks folder (it prints the address; no browser is opened) until
Ctrl-C, then stops both.  ``--keep`` keeps only the PACS running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import clarinet_nb
from clarinet_nb.settings import Settings
from clarinet_nb.testing import OrthancServer, free_port, generate_cohort
from clarinet_nb.testing.jupyter import JupyterLab

__all__ = ["DemoPacs", "main", "print_notebook", "run_notebook", "start_pacs"]

HOST = "127.0.0.1"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

#: Calling AE titles the demo PACS admits, from 127.0.0.1 only (besides dicom_aet):
#: DCMTK's and pynetdicom's defaults.  Orthanc 1.10 cannot bind to loopback, so it
#: refuses everyone else instead.
DEMO_CLIENTS = ("ECHOSCU", "FINDSCU", "GETSCU", "MOVESCU", "STORESCU", "PYNETDICOM")
PACKAGE_ROOT = Path(clarinet_nb.__file__).resolve().parent.parent
NOTEBOOKS = PACKAGE_ROOT / "notebooks"
QUICKSTART = "01_quickstart.ipynb"
CELL_TIMEOUT = 120


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- the PACS -------------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    """True if nothing listens on TCP ``port`` (Orthanc and our Storage SCP bind all addresses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))  # a probe, closed at once
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _pick(preferred: int, taken: set[int]) -> int:
    if preferred and preferred not in taken and port_is_free(preferred):
        return preferred
    return free_port()


class DemoPacs:
    """Where the demo PACS runs, and the ``CLARINET_*`` variables that reach it."""

    def __init__(self, config: Settings) -> None:
        self.aet = config.pacs_aet
        self.port = _pick(config.pacs_port, set())
        self.scp_aet = config.dicom_aet
        self.scp_port = _pick(config.dicom_port, {self.port})
        self.defaults = config

    @property
    def environment(self) -> dict[str, str]:
        """The variables that make ``cnb.connect()`` reach this PACS and receive its C-MOVEs."""
        return {
            "CLARINET_PACS_AET": self.aet,
            "CLARINET_PACS_HOST": HOST,
            "CLARINET_PACS_PORT": str(self.port),
            "CLARINET_DICOM_AET": self.scp_aet,
            "CLARINET_DICOM_PORT": str(self.scp_port),
        }

    def changed(self) -> dict[str, str]:
        """The variables you must set yourself: those the settings do not already match."""
        config = self.defaults
        out = {}
        if config.pacs_host not in LOOPBACK_NAMES:
            out["CLARINET_PACS_HOST"] = HOST
        if self.port != config.pacs_port:
            out["CLARINET_PACS_PORT"] = str(self.port)
        if self.scp_port != config.dicom_port:
            out["CLARINET_DICOM_PORT"] = str(self.scp_port)
        return out


@contextlib.contextmanager
def start_pacs(workdir: Path, config: Settings | None = None) -> Iterator[DemoPacs]:
    """Start Orthanc with the synthetic cohort (from the calling thread: it dies with it)."""
    pacs = DemoPacs(config or Settings())
    cohort = generate_cohort(workdir / "cohort")
    destinations = {"clarinet": (pacs.scp_aet, HOST, pacs.scp_port)}
    server = OrthancServer(
        workdir / "orthanc",
        aet=pacs.aet,
        port=pacs.port,
        move_destinations=destinations,
        loopback_clients=DEMO_CLIENTS,
    )
    with server:
        server.load(cohort.paths())
        patients, studies = len(cohort.patients()), len(cohort.studies())
        _say(
            f"demo PACS: Orthanc {pacs.aet}@{HOST}:{pacs.port} with {len(cohort.instances)} "
            f"synthetic instances ({patients} patients, {studies} studies); C-MOVE destination "
            f"{pacs.scp_aet}@{HOST}:{pacs.scp_port}"
        )
        changed = pacs.changed()
        if changed:
            _say("the default ports are taken; to reach the demo PACS from your own notebooks:")
            for name, value in changed.items():
                _say(f"  export {name}={value}")
        os.environ.update(pacs.environment)  # for what the demo runs (kernels, JupyterLab)
        yield pacs


def _child_environment() -> dict[str, str]:
    """Our environment, with this checkout importable even when clarinet_nb is not installed."""
    env = dict(os.environ)
    paths = [str(PACKAGE_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


# -- running a notebook ---------------------------------------------------------------------


def run_notebook(path: Path, cwd: Path, env: Mapping[str, str], *, width: int = 100) -> Any:
    """Execute the notebook at ``path`` with nbclient in ``cwd``; return the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` when a cell fails (the
    notebook then holds the outputs up to that cell: ``error.nb`` is not set, so
    catch it and print the notebook you passed).
    """
    import nbformat
    from nbclient import NotebookClient
    from traitlets.config import Config

    nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    setup = nbformat.v4.new_code_cell(  # type: ignore[no-untyped-call]
        f"import pandas as _pd\n_pd.set_option('display.width', {width})\n"
        "_pd.set_option('display.max_columns', 12)\ndel _pd"
    )
    setup.metadata["clarinet_demo_setup"] = True
    nb.cells.insert(0, setup)
    # Unix sockets instead of TCP ports; an absolute path, as the kernel runs in ``cwd``.
    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = str(cwd / "kernel")
    client = NotebookClient(
        nb,
        config=config,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(cwd)}},
    )
    try:
        client.execute(env=dict(env), cwd=str(cwd))
    finally:
        nb.cells.pop(0)
    return nb


def print_notebook(nb: Any) -> None:
    """The notebook as a terminal transcript: headings, code, and what each cell showed."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    _say(f"\n{'=' * 3} {line.lstrip('#').strip()} {'=' * 3}")
            continue
        if cell.cell_type != "code":
            continue
        if cell.execution_count is None and not cell.outputs:
            _say("(not run)")
            continue
        lines = cell.source.splitlines()
        _say("\n".join(f"{'>>>' if i == 0 else '...'} {line}" for i, line in enumerate(lines)))
        for output in cell.outputs:
            if output.output_type == "stream":
                _say(output.text.rstrip("\n"))
            elif output.output_type in ("execute_result", "display_data"):
                data = output.get("data", {})
                if "application/vnd.jupyter.widget-view+json" in data:
                    continue  # progress bars and widgets: nothing to read in a terminal
                _say(str(data.get("text/plain", "")))
            elif output.output_type == "error":
                _say(f"{output.ename}: {output.evalue}")


def run_quickstart(workdir: Path, *, keep: bool = False) -> bool:
    """Run the quickstart notebook (or, without Jupyter, the same calls) and print it.

    ``keep`` writes the executed notebook, with its outputs, into ``workdir/run``.
    """
    notebook = NOTEBOOKS / QUICKSTART
    try:
        import nbclient.exceptions
    except ImportError:
        _say("(nbclient is not installed: running the quickstart's calls without Jupyter)")
        return run_quickstart_inline()
    if not notebook.exists():
        _say(f"({notebook} is not here: running the quickstart's calls without Jupyter)")
        return run_quickstart_inline()
    run_dir = workdir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    _say(f"\nrunning {notebook.relative_to(PACKAGE_ROOT)} (in {run_dir})")
    started = time.monotonic()
    import nbformat

    width = max(80, min(shutil.get_terminal_size((100, 24)).columns, 160))
    try:
        executed = run_notebook(notebook, run_dir, _child_environment(), width=width)
    except nbclient.exceptions.CellExecutionError as exc:
        _say(f"\nthe quickstart failed:\n{exc}")
        return False
    except (RuntimeError, OSError) as exc:  # no kernel, kernel died, timeout
        _say(f"\nthe quickstart could not run: {type(exc).__name__}: {exc}")
        return False
    print_notebook(executed)
    _say(f"\nthe quickstart ran in {time.monotonic() - started:.1f} s")
    if keep:
        nbformat.write(executed, run_dir / QUICKSTART)  # type: ignore[no-untyped-call]
        _say(f"the notebook with its outputs: {run_dir / QUICKSTART}")
    return True


def run_quickstart_inline() -> bool:
    """The quickstart's calls in this process, printing the frames."""
    import clarinet_nb as cnb

    pacs = cnb.connect(config=Settings())  # the environment start_pacs set
    try:
        _say(f"pacs = cnb.connect()  ->  {pacs}")
        _say(f"pacs.echo()  ->  {pacs.echo()}")
        studies = pacs.find_studies(PatientID="*")
        columns = ["PatientID", "PatientName", "StudyDate", "StudyDescription",
                   "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]  # fmt: skip
        _say(f"\npacs.find_studies(PatientID='*'): {len(studies)} studies")
        _say(studies.sort_values(["PatientID", "StudyDate"])[columns].to_string())
        ct = pacs.find_studies(PatientID="CLN-0001", ModalitiesInStudy="CT")
        series = pacs.find_series(ct, progress=False)
        _say(f"\npacs.find_series(<{len(ct)} CT study of CLN-0001>): {len(series)} series")
        _say(series[["SeriesNumber", "Modality", "SeriesDescription",
                     "NumberOfSeriesRelatedInstances"]].to_string())  # fmt: skip
        axial = series[series["Modality"] == "CT"]
        instances = pacs.find_instances(axial, progress=False)
        _say(f"\npacs.find_instances(<CT series>): {len(instances)} instances")
        datasets = pacs.get(axial, progress=False)
        _say(f"pacs.get(<CT series>): retrieved {len(datasets)} instances")
    finally:
        pacs.close()
    return True


# -- JupyterLab -----------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(workdir: Path, notebooks: Path) -> None:
    """JupyterLab on 127.0.0.1 in ``notebooks`` until Ctrl-C (the PACS is already running)."""
    if not notebooks.is_dir():
        raise SystemExit(f"no notebooks folder at {notebooks}; pass --notebooks DIR")
    lab = JupyterLab(notebooks, workdir / "jupyterlab", env=_child_environment())
    _say("\nstarting JupyterLab…")
    with lab:
        _say(f"JupyterLab serves {notebooks} (log: {lab.log_path})")
        _say(f"open  {lab.url('lab/tree/' + QUICKSTART)}")
        _say("Ctrl-C stops JupyterLab and the demo PACS.")
        while lab.running:
            time.sleep(0.5)
        _say("JupyterLab exited")


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m clarinet_nb.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m clarinet_nb.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--serve", action="store_true", help="keep the PACS and start JupyterLab until Ctrl-C"
    )
    mode.add_argument("--keep", action="store_true", help="keep the PACS running until Ctrl-C")
    parser.add_argument("--workdir", type=Path, help="where to keep the PACS (default: a temp dir)")
    parser.add_argument(
        "--notebooks", type=Path, default=NOTEBOOKS, help="the folder JupyterLab serves"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM ends the demo like Ctrl-C: Orthanc and JupyterLab are stopped on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="clarinet-demo-")) if temporary else args.workdir
    ok = True
    try:
        with start_pacs(workdir) as pacs:
            if args.serve:
                serve(workdir, args.notebooks.resolve())
            elif args.keep:
                _say(f"the demo PACS keeps running at {pacs.aet}@{HOST}:{pacs.port}; "
                     "Ctrl-C stops it")  # fmt: skip
                while True:
                    time.sleep(3600)
            else:
                ok = run_quickstart(workdir, keep=not temporary)
        _say("demo PACS stopped")
    except KeyboardInterrupt:  # how --serve and --keep end
        stopped = "JupyterLab and the demo PACS" if args.serve else "the demo PACS"
        _say(f"\ninterrupted; stopped {stopped}")
        ok = args.serve or args.keep
    except RuntimeError as exc:  # Orthanc or JupyterLab would not start
        _say(f"\nthe demo could not run: {exc}")
        ok = False
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
