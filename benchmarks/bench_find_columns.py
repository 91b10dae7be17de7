#!/usr/bin/env python
"""C-FIND IMAGE of 20,000 rows to a typed DataFrame: the column path, the Dataset path
and DCMTK findscu (``TCP_NODELAY=1``, answers written with ``-Xs``), side by side.

The cohort: 100 studies x 2 series x 100 instances in a tuned Orthanc (``TCP_NODELAY=1``).
Two shapes: one query with a list of the 100 Study Instance UIDs, and 200 queries, one
per series.  Orthanc's storage is kept in ``--workdir`` so the 20k instances load once.

    python benchmarks/bench_find_columns.py --workdir /tmp/bench-find [--repeat 5]
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

import pandas as pd
import pydicom
from pydicom.uid import generate_uid

import clarinet_nb as cnb
from clarinet_nb.testing import OrthancServer, free_port, generate_bulk

N_STUDIES, PER_SERIES = 100, 100


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def prepare(work: Path) -> None:
    """Write the cohort (second half of each study re-filed as a second series) and load it."""
    files = work / "cohort"
    cohort = generate_bulk(files, n_studies=N_STUDIES, per_study=2 * PER_SERIES, seed="find20k")
    for inst in cohort.instances:
        ds = pydicom.dcmread(inst.path)
        if int(ds.InstanceNumber) > PER_SERIES:
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(ds.SeriesInstanceUID), "|2"])
            ds.SeriesNumber = int(ds.SeriesNumber) + 1
            ds.save_as(inst.path)
    with OrthancServer(work / "orthanc", tuned=True) as orthanc:
        orthanc.load(cohort.paths())
    shutil.rmtree(files)


def _series(pacs: Any, studies: Sequence[str]) -> list[str]:
    frame = pacs.find_series(StudyInstanceUID=list(studies))
    return sorted(frame["SeriesInstanceUID"])


def _findscu(port: int, keys: list[tuple[str, str]], out: Path) -> None:
    args = ["/usr/bin/findscu", "-S", "-pdu", "131072", "-aet", "FINDSCU", "-aec", "ORTHANC", "-Xs", str(out)]
    for k, v in keys:
        args += ["-k", f"{k}={v}"]
    args += ["127.0.0.1", str(port)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    subprocess.run(args, env=env, check=True, capture_output=True)


def _timed(fn: Callable[[], int], expect: int) -> tuple[float, float]:
    c0, t0 = _cpu(), time.perf_counter()
    got = fn()
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    if got != expect:
        raise SystemExit(f"expected {expect} rows, got {got}")
    return wall, cpu


def run(work: Path, repeat: int) -> None:
    keys = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
            "InstanceNumber"]  # fmt: skip
    with OrthancServer(work / "orthanc", tuned=True) as orthanc:
        target = f"{orthanc.aet}@127.0.0.1:{orthanc.port}"
        pacs = cnb.connect(target, calling_aet="CLARINET", max_pdu=0, scp_port=free_port())
        try:
            studies = sorted(pacs.find_studies(PatientID="*")["StudyInstanceUID"])
            assert len(studies) == N_STUDIES, len(studies)
            series = _series(pacs, studies)
            assert len(series) == 2 * N_STUDIES, len(series)
            total = N_STUDIES * 2 * PER_SERIES
            scratch = Path(tempfile.mkdtemp(dir=work))
            frames: dict[str, pd.DataFrame] = {}

            def cnb_one(mode: str) -> Callable[[], int]:
                def go() -> int:
                    os.environ["CLARINET_FIND_FAST"] = mode
                    frame = pacs.find_instances(StudyInstanceUID=studies)
                    frames[f"one-{mode}"] = frame
                    return len(frame)
                return go

            series_frame = pacs.find_series(StudyInstanceUID=list(studies))

            def cnb_series(mode: str) -> Callable[[], int]:
                def go() -> int:
                    os.environ["CLARINET_FIND_FAST"] = mode
                    frame = pacs.find_instances(series_frame)  # one query per row
                    frames[f"series-{mode}"] = frame
                    return len(frame)

                return go

            def scu_one() -> int:
                out = scratch / "one.xml"
                _findscu(orthanc.port, [("QueryRetrieveLevel", "IMAGE"),
                                         ("StudyInstanceUID", "\\".join(studies)),
                                         *[(k, "") for k in keys[1:]]], out)  # fmt: skip
                return out.read_text().count("<data-set")

            def scu_series() -> int:
                n = 0
                for uid in series:
                    out = scratch / "s.xml"
                    _findscu(orthanc.port, [("QueryRetrieveLevel", "IMAGE"),
                                             ("SeriesInstanceUID", uid),
                                             *[(k, "") for k in keys if k != "SeriesInstanceUID"]],
                             out)  # fmt: skip
                    n += out.read_text().count("<data-set")
                return n

            cases: dict[str, Callable[[], int]] = {
                "one query: clarinet_nb fast receive": cnb_one("1"),
                "one query: clarinet_nb pynetdicom receive": cnb_one("0"),
                "one query: findscu TCP_NODELAY=1 -Xs": scu_one,
                "per series: clarinet_nb fast receive": cnb_series("1"),
                "per series: clarinet_nb pynetdicom receive": cnb_series("0"),
                "per series: findscu TCP_NODELAY=1 -Xs": scu_series,
            }
            results: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
            for r in range(repeat):
                order = list(cases.items())
                for label, fn in order if r % 2 == 0 else order[::-1]:
                    results[label].append(_timed(fn, total))
                print(f"round {r + 1}/{repeat}, load {os.getloadavg()[0]:.2f}", flush=True)
            for shape in ("one", "series"):
                fast, slow = frames[f"{shape}-1"], frames[f"{shape}-0"]
                for frame in (fast, slow):
                    frame.attrs = {k: v for k, v in frame.attrs.items() if k != "time"}
                pd.testing.assert_frame_equal(fast, slow)
            print("frames equal (fast vs pynetdicom receive), both shapes")
            print(f"{'case':42s} {'wall med':>9s} {'rows/s':>8s} {'cpu med':>8s}  walls")
            for label, samples in results.items():
                walls = [w for w, _ in samples]
                cpus = [c for _, c in samples]
                med = statistics.median(walls)
                print(f"{label:42s} {med:9.2f} {total / med:8.0f} {statistics.median(cpus):8.2f}"
                      f"  {' '.join(f'{w:.2f}' for w in walls)}")  # fmt: skip
        finally:
            pacs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--prepare", action="store_true", help="only build the cohort")
    args = parser.parse_args()
    if not (args.workdir / "orthanc" / "index").exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        prepare(args.workdir)
    if not args.prepare:
        run(args.workdir, args.repeat)


if __name__ == "__main__":
    main()
