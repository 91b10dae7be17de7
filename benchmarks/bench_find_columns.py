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
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid

import clarinet_nb as cnb
from clarinet_nb.notebook.criteria import build_query
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


def _keys(criteria: dict[str, Any]) -> list[tuple[str, str]]:
    """The -k arguments of exactly the identifier clarinet_nb sends for ``criteria``."""
    identifier = build_query("IMAGE", criteria).to_dataset()
    keys = []
    for elem in identifier:
        value = elem.value
        if isinstance(value, list | tuple | MultiValue):
            value = "\\".join(str(v) for v in value)
        keys.append((elem.keyword, "" if value is None else str(value)))
    return keys


def _findscu(port: int, keys: list[tuple[str, str]], out: Path, files: Sequence[str] = ()) -> None:
    args = ["/usr/bin/findscu", "-S", "-pdu", "131072", "-aet", "FINDSCU", "-aec", "ORTHANC"]
    args += ["-Xs", str(out)]
    for k, v in keys:
        args += ["-k", f"{k}={v}"]
    args += ["127.0.0.1", str(port), *files]
    env = {**os.environ, "TCP_NODELAY": "1"}
    subprocess.run(args, env=env, check=True, capture_output=True)


def _peer_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(fn: Callable[[], int], expect: int, pid: int | None) -> tuple[float, float, float]:
    """Wall seconds, our CPU seconds (children included: findscu), the PACS's CPU seconds."""
    c0, p0, t0 = _cpu(), _peer_cpu(pid), time.perf_counter()
    got = fn()
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    if got != expect:
        raise SystemExit(f"expected {expect} rows, got {got}")
    return wall, cpu, _peer_cpu(pid) - p0


def run(work: Path, repeat: int) -> None:
    with OrthancServer(work / "orthanc", tuned=True) as orthanc:
        target = f"{orthanc.aet}@127.0.0.1:{orthanc.port}"
        pacs = cnb.connect(target, calling_aet="CLARINET", max_pdu=0, scp_port=free_port())
        try:
            studies = sorted(pacs.find_studies(PatientID="*")["StudyInstanceUID"])
            assert len(studies) == N_STUDIES, len(studies)
            total = N_STUDIES * 2 * PER_SERIES
            scratch = Path(tempfile.mkdtemp(dir=work))
            frames: dict[str, pd.DataFrame] = {}

            def cnb_one(mode: str) -> Callable[[], int]:
                def go() -> int:
                    os.environ["CLARINET_FIND_FAST"] = mode
                    frame = pacs.find_instances(StudyInstanceUID=studies, progress=False)
                    frames[f"one-{mode}"] = frame
                    return len(frame)

                return go

            series_frame = pacs.find_series(StudyInstanceUID=list(studies))
            assert len(series_frame) == 2 * N_STUDIES, len(series_frame)

            def cnb_series(mode: str) -> Callable[[], int]:
                def go() -> int:
                    os.environ["CLARINET_FIND_FAST"] = mode
                    frame = pacs.find_instances(series_frame, progress=False)  # one query per row
                    frames[f"series-{mode}"] = frame
                    return len(frame)

                return go

            def cnb_loop() -> int:
                os.environ["CLARINET_FIND_FAST"] = "1"
                n = 0
                for row in series_frame.itertuples():
                    n += len(
                        pacs.find_instances(
                            StudyInstanceUID=row.StudyInstanceUID,
                            SeriesInstanceUID=row.SeriesInstanceUID,
                        )
                    )
                return n

            def scu_one() -> int:
                out = scratch / "one.xml"
                _findscu(orthanc.port, _keys({"StudyInstanceUID": studies}), out)
                return out.read_text().count("<data-set")

            query_files = []
            for n, row in enumerate(series_frame.itertuples()):
                criteria = {
                    "StudyInstanceUID": row.StudyInstanceUID,
                    "SeriesInstanceUID": row.SeriesInstanceUID,
                }
                path = scratch / f"q{n:03d}.dcm"
                build_query("IMAGE", criteria).to_dataset().save_as(
                    path, implicit_vr=True, little_endian=True
                )
                query_files.append(path)

            def scu_series() -> int:
                """One findscu, one association, the 200 query files in a row (as bench_speed)."""
                out = scratch / "s.xml"
                _findscu(orthanc.port, [], out, [str(p) for p in query_files])
                return out.read_text().count("<data-set")

            cases: dict[str, Callable[[], int]] = {
                "one query: clarinet_nb fast receive": cnb_one("1"),
                "one query: clarinet_nb pynetdicom receive": cnb_one("0"),
                "one query: findscu TCP_NODELAY=1 -Xs": scu_one,
                "per series: clarinet_nb fast receive": cnb_series("1"),
                "per series: clarinet_nb pynetdicom receive": cnb_series("0"),
                "per series: clarinet_nb loop, one at a time": cnb_loop,
                "per series: findscu TCP_NODELAY=1 -Xs, 1 process": scu_series,
            }
            results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in cases}
            for r in range(repeat):
                order = list(cases.items())
                for label, fn in order if r % 2 == 0 else order[::-1]:
                    results[label].append(_timed(fn, total, orthanc.pid))
                print(f"round {r + 1}/{repeat}, load {os.getloadavg()[0]:.2f}", flush=True)
            for shape in ("one", "series"):
                fast, slow = frames[f"{shape}-1"], frames[f"{shape}-0"]
                for frame in (fast, slow):
                    frame.attrs = {k: v for k, v in frame.attrs.items() if k != "time"}
                pd.testing.assert_frame_equal(fast, slow)
            print("frames equal (fast vs pynetdicom receive), both shapes")
            head = f"{'case':45s} {'wall med':>8s} {'rows/s':>7s} {'cpu med':>7s} {'PACS cpu':>8s}"
            print(f"{head}  walls")
            for label, samples in results.items():
                walls = [w for w, _, _ in samples]
                med = statistics.median(walls)
                cpu = statistics.median(c for _, c, _ in samples)
                peer = statistics.median(p for _, _, p in samples)
                runs = " ".join(f"{w:.2f}" for w in walls)
                print(f"{label:45s} {med:8.2f} {total / med:7.0f} {cpu:7.2f} {peer:8.2f}  {runs}")
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
