#!/usr/bin/env python
"""The speed targets of issue 8, measured side by side against one Orthanc and one data set.

Rows (see benchmarks/README.md): C-GET 2,000 small instances (memory, disk) vs getscu;
C-GET 200 x 512x512 vs getscu (MB/s); C-GET against STOCK Orthanc vs getscu; C-MOVE
2,000 instances vs movescu + storescp; C-FIND IMAGE 20,000 rows to a DataFrame vs
findscu -Xs, as one query and as 200 per-series queries; the peak RSS of an in-memory
pull of ~500 MB; a cProfile of the clarinet_nb C-GET and C-FIND.  Every timed run checks
it got every instance / row: a failed check marks the case FAILED and exits 1.

    python benchmarks/bench_speed.py [--quick] [--repeat 3]
"""

# ruff: noqa: E402  (the sys.path bootstrap below must run before the clarinet_nb imports)
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("clarinet_nb") is None:  # not installed: use the checkout
    sys.path.insert(0, str(_ROOT))

import argparse
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pydicom
import pynetdicom
from bench_core import DCMTK_MAX_PDU, SEGFAULT, BenchError, _check, dcmtk_version, find_dcmtk
from pydicom import Dataset
from pynetdicom import _config
from speed_support import FastCohort, Snapshot, Usage, busy_warning, write_cohort

import clarinet_nb as cnb
from clarinet_nb import DicomNode, RetrieveRequest, StorageConfig, StorageMode
from clarinet_nb.notebook.criteria import build_query
from clarinet_nb.notebook.frames import to_frame
from clarinet_nb.testing import OrthancServer, free_port

CPUS = os.cpu_count() or 1
TIMEOUT = 900.0
MB = 1e6


def nodelay_env(on: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if on:
        env["TCP_NODELAY"] = "1"
    return env


ENVS = ((False, "stock env"), (True, "TCP_NODELAY=1"))


# --------------------------------------------------------------------------- the bench


@dataclass
class Case:
    tool: str
    run: Callable[[Path], int]  # fresh scratch dir -> items got (already checked)
    clarinet: bool
    rounds: int | None = None  # run in the first N rounds only (None: every round)
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)
    orthanc_cpu: list[float] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)
    error: str | None = None


@dataclass
class Group:
    key: str
    title: str
    items: int
    bytes: int
    unit: str  # "inst" or "rows"
    cases: list[Case]


@dataclass
class Bench:
    """The peers and the processes whose CPU we attribute."""

    dcmtk: Path
    work: Path
    orthanc: OrthancServer | None = None
    storescp: subprocess.Popen[bytes] | None = None
    warnings: list[str] = field(default_factory=list)

    def pids(self) -> dict[str, int | None]:
        return {
            "orthanc": self.orthanc.pid if self.orthanc else None,
            "storescp": self.storescp.pid if self.storescp else None,
        }

    def timed(self, group: Group, case: Case) -> None:
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=self.work))
        try:
            before = Snapshot.take(self.pids())
            got = case.run(scratch)
            after = Snapshot.take(self.pids())
            _check(got, group.items, f"{group.key} | {case.tool}")
            use = Usage.between(before, after)
            # clarinet_nb runs in this process; DCMTK tools are children (+ storescp)
            cpu = use.own if case.clarinet else use.children + use.pids["storescp"]
            case.samples.append(use.wall)
            case.cpu.append(cpu)
            case.orthanc_cpu.append(use.pids["orthanc"])
            case.others.append(use.others_share(CPUS))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def run_group(self, group: Group, repeat: int) -> None:
        print(f"{group.title}: ", end="", flush=True)
        for round_ in range(repeat):
            order = (
                group.cases[round_ % len(group.cases) :] + group.cases[: round_ % len(group.cases)]
            )
            for case in order:  # rotated each round: drift spreads over every tool
                if case.error is not None or (case.rounds is not None and round_ >= case.rounds):
                    continue
                try:
                    self.timed(group, case)
                except Exception as exc:  # noqa: BLE001 - recorded, reported, exit status 1
                    case.error = f"round {round_ + 1}: {type(exc).__name__}: {exc}"
                print(".", end="", flush=True)
        print(flush=True)
        share = [s for c in group.cases for s in c.others]
        if share:
            warning = busy_warning(f"during '{group.key}'", statistics.median(share))
            if warning:
                self.warnings.append(warning)
                print(warning, file=sys.stderr)


# --------------------------------------------------------------------------- DCMTK tools


def dcmtk(
    bench: Bench,
    tool: str,
    args: list[str],
    node: DicomNode,
    nodelay: bool,
    notes: set[str],
    files: list[Path],
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (study root, max PDU 131072); ``files`` are its query files."""
    command = [
        str(bench.dcmtk / tool),
        "-S",
        "-pdu",
        str(DCMTK_MAX_PDU),
        "-aet",
        tool.upper(),
        "-aec",
        node.aet,
        *args,
        node.host,
        str(node.port),
        *map(str, files),
    ]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=nodelay_env(nodelay),
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode == SEGFAULT and tool == "getscu":
        notes.add("getscu exited 139 (segfault) after its C-GETs; files counted")
    elif proc.returncode != 0:
        raise BenchError(f"{tool} exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return proc


def write_query(path: Path, level: str, **keys: str) -> Path:
    """A DCMTK query file (dataset only, Implicit VR Little Endian)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def image_query_file(path: Path, criteria: dict[str, Any]) -> Path:
    """The same IMAGE keys clarinet_nb's find_instances asks, as a findscu query file."""
    ds = build_query("IMAGE", criteria).to_dataset()
    ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def getscu_case(
    bench: Bench,
    queries: list[Path],
    nodelay: bool,
    node: Callable[[], DicomNode],
    rounds: int | None = None,
) -> Case:
    case = Case(f"DCMTK getscu {dict(ENVS)[nodelay]}", lambda s: 0, clarinet=False, rounds=rounds)
    if rounds is not None:
        case.notes.add(f"timed in the first {rounds} round(s) only (it stalls ~40 ms per instance)")

    def run(scratch: Path) -> int:
        dcmtk(bench, "getscu", ["-od", str(scratch)], node(), nodelay, case.notes, queries)
        return sum(1 for _ in scratch.iterdir())

    case.run = run
    return case


def findscu_case(bench: Bench, queries: list[Path], node: Callable[[], DicomNode]) -> Case:
    case = Case("DCMTK findscu -Xs TCP_NODELAY=1", lambda s: 0, clarinet=False)

    def run(scratch: Path) -> int:
        out = scratch / "answers.xml"
        args = ["-od", str(scratch), "-Xs", str(out)]
        dcmtk(bench, "findscu", args, node(), True, case.notes, queries)
        return out.read_text(encoding="utf-8", errors="replace").count("<data-set")

    case.run = run
    return case


def start_storescp(bench: Bench, port: int, folder: Path) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(bench.dcmtk / "storescp"), "-aet", "STORESCP", "-pdu", str(DCMTK_MAX_PDU),
         "-od", str(folder), str(port)],
        env=nodelay_env(True),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return proc


def movescu_case(bench: Bench, query: Path, folder: Path, node: Callable[[], DicomNode]) -> Case:
    case = Case("DCMTK movescu + storescp TCP_NODELAY=1", lambda s: 0, clarinet=False)

    def run(scratch: Path) -> int:
        for old in folder.iterdir():
            old.unlink()
        dcmtk(bench, "movescu", ["-aem", "STORESCP"], node(), True, case.notes, [query])
        return sum(1 for _ in folder.iterdir())

    case.run = run
    return case


# --------------------------------------------------------------------------- clarinet_nb


def pull_memory(pacs: cnb.Pacs, frame: pd.DataFrame, method: str = "get") -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        datasets = pacs.get(frame, method=method, progress=False, memory_limit="4GB")
        if datasets.failures:  # type: ignore[union-attr]
            raise BenchError(f"failures: {datasets.failures[:1]}")  # type: ignore[union-attr]
        return len(datasets)

    return run


def pull_disk(pacs: cnb.Pacs, frame: pd.DataFrame, method: str = "get") -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        manifest = pacs.get(frame, method=method, output_dir=scratch, progress=False)
        assert isinstance(manifest, pd.DataFrame)
        retrieved = int((manifest["status"] == "retrieved").sum())
        files = sum(1 for _ in scratch.rglob("*.dcm"))
        return _check(files, retrieved, "files on disk vs manifest 'retrieved'")

    return run


def core_get_memory(pacs: cnb.Pacs, study_uid: str) -> Callable[[Path], int]:
    """The DicomClient layer alone (what bench_core.py times), for continuity."""

    async def pull() -> int:
        result = await pacs.client.get_study(
            study_uid, peer=pacs.node, storage=StorageConfig(mode=StorageMode.MEMORY)
        )
        _check(len(result.datasets), result.received, "datasets vs received")
        return result.received

    def run(scratch: Path) -> int:
        from clarinet_nb.notebook.runner import run_sync

        return run_sync(pull())

    return run


def find_one_query(pacs: cnb.Pacs, study_uids: list[str]) -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        return len(pacs.find_instances(StudyInstanceUID=study_uids, progress=False))

    return run


def find_per_series(pacs: cnb.Pacs, series: pd.DataFrame) -> Callable[[Path], int]:
    def run(scratch: Path) -> int:
        return len(pacs.find_instances(series, progress=False))

    return run


# --------------------------------------------------------------------------- RSS worker

_RSS_WORKER = r"""
import json, resource, sys, time
import pandas as pd
import clarinet_nb as cnb
from clarinet_nb import DicomNode
aet, port, study, expected = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
pacs = cnb.connect(DicomNode(aet=aet, host="127.0.0.1", port=port), calling_aet="CLARINET",
                   max_pdu=0)
frame = pd.DataFrame({"StudyInstanceUID": [study]})
pacs.echo()  # threads, loop and association code paths loaded before the baseline
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
base = status("VmRSS")
maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
cpu0, t0 = time.process_time(), time.perf_counter()
data = pacs.get(frame, progress=False, memory_limit="4GB")
wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
peak = status("VmHWM")
held = sum(len(ds.PixelData) for ds in data)
print(json.dumps({"n": len(data), "failures": len(data.failures), "baseline": base,
                  "peak": peak, "maxrss_after_imports": maxrss0, "wall": wall, "cpu": cpu,
                  "pixel_bytes": held}))
"""


def rss_pull(node: DicomNode, study_uid: str, expected: int) -> dict[str, Any]:
    env = dict(os.environ)
    package_dir = str(Path(cnb.__file__).resolve().parents[1])  # the same clarinet_nb
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_dir, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_WORKER, node.aet, str(node.port), study_uid, str(expected)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"RSS worker exited {proc.returncode}: {proc.stderr[-400:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    _check(int(out["n"]), expected, "RSS pull datasets")
    _check(int(out["failures"]), 0, "RSS pull failures")
    return out


# --------------------------------------------------------------------------- profile


def profile(
    pacs: cnb.Pacs, study_uid: str, uids: list[str], out_dir: Path, stamp: str
) -> dict[str, str]:
    """cProfile of the C-GET (memory) and the C-FIND to a frame, run in the main thread.

    cProfile sees only the thread it runs in, so this calls the synchronous core that
    the notebook layer runs in a worker thread: ``DicomOperations.retrieve`` and
    ``DicomOperations.find`` + ``to_frame`` (same code, minus the thread hop)."""
    ops = pacs.client.operations
    node = pacs.node
    query = build_query("IMAGE", {"StudyInstanceUID": uids})
    jobs: dict[str, Callable[[], Any]] = {
        "cget-memory": lambda: ops.retrieve(
            "get", RetrieveRequest.study(study_uid), node, StorageConfig(mode=StorageMode.MEMORY)
        ),
        "cfind-image": lambda: to_frame(ops.find(query, node).datasets, query.keys),
    }
    texts: dict[str, str] = {}
    for name, job in jobs.items():
        prof = cProfile.Profile()
        prof.enable()
        job()
        prof.disable()
        path = out_dir / f"speed-{stamp}-{name}.prof"
        prof.dump_stats(str(path))
        parts = []
        for order in ("cumulative", "tottime"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(order).print_stats(25)
            parts.append(f"--- {name}: top 25 by {order}\n" + buf.getvalue().split("\n\n", 1)[-1])
        text = "\n".join(parts)
        (out_dir / f"speed-{stamp}-{name}.txt").write_text(text, encoding="utf-8")
        texts[name] = text
    return texts


def pyspy_profile(
    jobs: dict[str, Callable[[], Any]], out_dir: Path, stamp: str, top: int = 25
) -> dict[str, str]:
    """py-spy (every thread, native tools' view) of the notebook calls themselves.

    py-spy attaches to this process (``record -p``, 250 Hz, active threads only,
    aggregated per function); the raw stacks are kept, and the top functions by own
    and by cumulative samples are written next to them."""
    exe = shutil.which("py-spy")
    if exe is None:
        return {}
    texts: dict[str, str] = {}
    for name, job in jobs.items():
        raw = out_dir / f"speed-{stamp}-pyspy-{name}.txt"
        spy = subprocess.Popen(
            [exe, "record", "-p", str(os.getpid()), "-r", "250", "--function", "-f", "raw",
             "-o", str(raw), "--nonblocking"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert spy.stdout is not None
        for line in spy.stdout:  # py-spy says when it samples; then the job starts
            if "Sampling process" in line:
                break
        job()
        spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
        spy.communicate(timeout=60)
        own: dict[str, int] = {}
        cumulative: dict[str, int] = {}
        total = 0
        for line in raw.read_text(encoding="utf-8").splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            n = int(count)
            total += n
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for frame in set(frames):
                cumulative[frame] = cumulative.get(frame, 0) + n
        parts = [f"--- py-spy {name}: {total} samples at 250 Hz (active threads)"]
        for label, table in (("cumulative", cumulative), ("own", own)):
            parts.append(f"top {top} by {label} samples (share of all samples):")
            ranked = sorted(table.items(), key=lambda kv: -kv[1])[:top]
            parts += [f"{n:>7} {n / max(total, 1):>6.1%}  {frame}" for frame, n in ranked]
        text = "\n".join(parts) + "\n"
        (out_dir / f"speed-{stamp}-pyspy-{name}-top.txt").write_text(text, encoding="utf-8")
        texts[name] = text
    return texts


# --------------------------------------------------------------------------- reporting


def summarize(group: Group) -> list[dict[str, Any]]:
    medians = {
        c.tool: statistics.median(c.samples) for c in group.cases if c.samples and not c.error
    }
    cpus = {c.tool: statistics.median(c.cpu) for c in group.cases if c.samples and not c.error}
    refs = [c.tool for c in group.cases if c.clarinet]
    rows = []
    for case in group.cases:
        row: dict[str, Any] = {
            "tool": case.tool,
            "error": case.error,
            "samples_s": case.samples,
            "client_cpu_s": case.cpu,
            "orthanc_cpu_s": case.orthanc_cpu,
            "others_cpu_share": case.others,
            "notes": sorted(case.notes),
        }
        if case.tool in medians:
            m = medians[case.tool]
            row.update(
                median_s=m,
                items_per_s=group.items / m,
                mb_per_s=group.bytes / MB / m,
                median_client_cpu_s=cpus[case.tool],
                cpu_ms_per_item=1000 * cpus[case.tool] / group.items,
                median_others_share=statistics.median(case.others),
                clarinet_over_tool={
                    r: m / medians[r] for r in refs if r in medians and not case.clarinet
                },
                cpu_clarinet_over_tool={
                    r: cpus[r] / cpus[case.tool]
                    for r in refs
                    if r in cpus and not case.clarinet and cpus[case.tool] > 0
                },
            )
        rows.append(row)
    return rows


def short(tool: str) -> str:
    return tool.replace("clarinet_nb ", "").split(" (")[0]


def print_group(group: Group, rows: list[dict[str, Any]]) -> None:
    print(f"\n== {group.title} | {group.items} {group.unit}, {group.bytes / MB:.1f} MB")
    head = (
        f"{'tool':<44} {'seconds':>8} {f'{group.unit}/s':>9} {'MB/s':>7} {'cpu s':>6} "
        f"{'cpu ms/it':>9} {'others':>6}  clarinet/tool (time; cpu)"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        if row.get("median_s") is None:
            print(f"{row['tool']:<44} FAILED: {row['error']}")
            continue
        ratio = "  ".join(
            f"{short(r)} {v:.2f}; {row['cpu_clarinet_over_tool'].get(r, float('nan')):.2f}"
            for r, v in row["clarinet_over_tool"].items()
        )
        print(
            f"{row['tool']:<44} {row['median_s']:>8.3f} {row['items_per_s']:>9.1f} "
            f"{row['mb_per_s']:>7.1f} {row['median_client_cpu_s']:>6.2f} "
            f"{row['cpu_ms_per_item']:>9.3f} {row['median_others_share']:>6.0%}  "
            f"{ratio or '(reference)'}"
        )
        for note in row["notes"]:
            print(f"{'':<4}note: {note}")


def _ratio(rows: dict[str, dict[str, Any]], tool: str, ref: str, cpu: bool = False) -> str:
    row = rows.get(tool, {})
    table = row.get("cpu_clarinet_over_tool" if cpu else "clarinet_over_tool", {})
    value = table.get(ref)
    return "FAILED" if value is None else f"{value:.2f}x"


def target_table(report: dict[str, Any]) -> str:
    """The issue's target table with this run's figures (markdown)."""
    g = {k: {r["tool"]: r for r in v["cases"]} for k, v in report["groups"].items()}
    mem, disk = "clarinet_nb pacs.get MEMORY", "clarinet_nb pacs.get DISK"
    mmem, mdisk = (f"clarinet_nb pacs.get(method='move') {m}" for m in ("MEMORY", "DISK"))
    nd, st = "DCMTK getscu TCP_NODELAY=1", "DCMTK getscu stock env"
    sm, big, stock = g.get("cget-small", {}), g.get("cget-512", {}), g.get("cget-stock", {})
    mv = g.get("cmove-small", {})
    fo, fs = g.get("cfind-one", {}), g.get("cfind-series", {})
    find = "DCMTK findscu -Xs TCP_NODELAY=1"
    move = "DCMTK movescu + storescp TCP_NODELAY=1"
    one, per = "clarinet_nb find_instances -> DataFrame", "clarinet_nb find_instances(series frame)"
    rss = report.get("rss", {}).get("median_peak_over_bytes")
    lines = [
        "| case | now (clarinet/tool; > 1: clarinet_nb faster) | target |",
        "|---|---|---|",
        f"| C-GET {report['groups'].get('cget-small', {}).get('items')} x 64x64, tuned, vs getscu "
        f"TCP_NODELAY=1 | memory {_ratio(sm, nd, mem)}, disk {_ratio(sm, nd, disk)} "
        f"(getscu stock env: memory {_ratio(sm, st, mem)}, disk {_ratio(sm, st, disk)}) "
        "| >= 1.5x (floor 1.0x) |",
        f"| C-GET {report['groups'].get('cget-512', {}).get('items')} x 512x512, tuned, MB/s vs "
        f"getscu | memory {_ratio(big, nd, mem)}, disk {_ratio(big, nd, disk)} "
        "| >= 1.2x (floor 1.0x) |",
        "| client CPU s per instance, clarinet_nb / getscu TCP_NODELAY=1 (C-GET small) "
        f"| memory {_ratio(sm, nd, mem, True)}, disk {_ratio(sm, nd, disk, True)} | <= 1.0x |",
        f"| C-GET against STOCK Orthanc ({report['groups'].get('cget-stock', {}).get('items')} "
        f"inst) vs getscu stock env / TCP_NODELAY=1 | memory {_ratio(stock, st, mem)} / "
        f"{_ratio(stock, nd, mem)}, disk {_ratio(stock, st, disk)} / {_ratio(stock, nd, disk)} "
        "| keep >= 8x |",
        f"| C-MOVE {report['groups'].get('cmove-small', {}).get('items')} x 64x64 vs movescu + "
        f"storescp (TCP_NODELAY=1) | memory {_ratio(mv, move, mmem)}, "
        f"disk {_ratio(mv, move, mdisk)} | >= 1.5x |",
        f"| C-FIND IMAGE {report['groups'].get('cfind-one', {}).get('items')} rows to a DataFrame "
        f"vs findscu -Xs | one query {_ratio(fo, find, one)}, "
        f"per series {_ratio(fs, find, per)} | >= 1.0x both |",
        "| in-memory pull: (peak RSS - baseline) / bytes received | "
        + ("FAILED" if rss is None else f"{rss:.2f}x")
        + " | <= 1.1x |",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


@dataclass
class Sizes:
    find_studies: int
    find_series: int
    find_per_series: int
    small_series: int
    small_per_series: int
    big_count: int
    big_size: int
    huge_count: int
    huge_size: int
    stock_count: int


FULL = Sizes(100, 2, 100, 20, 100, 200, 512, 250, 1024, 100)
QUICK = Sizes(5, 2, 10, 2, 50, 20, 512, 10, 1024, 50)
SERIES_COLUMNS = ["StudyInstanceUID", "SeriesInstanceUID"]


def frame_of(rows: Sequence[tuple[str, ...]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def study_frame(cohort: FastCohort) -> pd.DataFrame:
    return frame_of([(cohort.studies[0].uid,)], ["StudyInstanceUID"])


@dataclass
class Data:
    """The cohorts on disk and the same queries for every tool (built once per run)."""

    find: FastCohort
    small: FastCohort
    big: FastCohort
    huge: FastCohort
    queries: dict[str, list[Path]]
    stock_series: str

    @property
    def cohorts(self) -> dict[str, FastCohort]:
        return {"find": self.find, "small": self.small, "big": self.big, "huge": self.huge}

    @property
    def study_uids(self) -> list[str]:
        return [st.uid for st in self.find.studies]

    @property
    def series_frame(self) -> pd.DataFrame:
        return frame_of(self.find.series, SERIES_COLUMNS)

    @property
    def stock_frame(self) -> pd.DataFrame:
        return frame_of([(self.small.studies[0].uid, self.stock_series)], SERIES_COLUMNS)


def prepare(work: Path, s: Sizes) -> Data:
    find = write_cohort(work / "find", 0, s.find_studies, s.find_series, s.find_per_series, 64)
    small = write_cohort(work / "small", 1, 1, s.small_series, s.small_per_series, 64)
    big = write_cohort(work / "big", 2, 1, 2, s.big_count // 2, s.big_size)
    huge = write_cohort(work / "huge", 3, 1, 1, s.huge_count, s.huge_size)
    q = work / "queries"
    q.mkdir()
    small_uid, stock_series = small.studies[0].uid, small.studies[0].series[0]
    uids = [st.uid for st in find.studies]
    queries = {
        "small": [write_query(q / "small.dcm", "STUDY", StudyInstanceUID=small_uid)],
        "big": [write_query(q / "big.dcm", "STUDY", StudyInstanceUID=big.studies[0].uid)],
        "stock": [
            write_query(
                q / "stock.dcm",
                "SERIES",
                StudyInstanceUID=small_uid,
                SeriesInstanceUID=stock_series,
            )
        ],
        "find-one": [image_query_file(q / "find-one.dcm", {"StudyInstanceUID": uids})],
        "per-series": [
            image_query_file(
                q / f"series-{i:04d}.dcm", dict(zip(SERIES_COLUMNS, pair, strict=True))
            )
            for i, pair in enumerate(find.series)
        ],
    }
    return Data(find, small, big, huge, queries, stock_series)


def tuned_groups(
    bench: Bench, pacs: cnb.Pacs, d: Data, node: Callable[[], DicomNode], move_dir: Path
) -> list[Group]:
    q = d.queries
    small, big = study_frame(d.small), study_frame(d.big)
    size = dcmread_size(d.big)
    groups = [
        Group("cget-small", f"C-GET {d.small.instances} x 64x64, tuned Orthanc",
              d.small.instances, d.small.bytes, "inst", [
                  Case("clarinet_nb pacs.get MEMORY", pull_memory(pacs, small), True),
                  Case("clarinet_nb pacs.get DISK", pull_disk(pacs, small), True),
                  Case("clarinet_nb client.get_study MEMORY",
                       core_get_memory(pacs, d.small.studies[0].uid), True),
                  getscu_case(bench, q["small"], True, node),
                  getscu_case(bench, q["small"], False, node, rounds=1),
              ]),
        Group("cget-512", f"C-GET {d.big.instances} x {size}, tuned Orthanc",
              d.big.instances, d.big.bytes, "inst", [
                  Case("clarinet_nb pacs.get MEMORY", pull_memory(pacs, big), True),
                  Case("clarinet_nb pacs.get DISK", pull_disk(pacs, big), True),
                  getscu_case(bench, q["big"], True, node),
              ]),
        Group("cmove-small", f"C-MOVE {d.small.instances} x 64x64, tuned Orthanc",
              d.small.instances, d.small.bytes, "inst", [
                  Case("clarinet_nb pacs.get(method='move') MEMORY",
                       pull_memory(pacs, small, "move"), True),
                  Case("clarinet_nb pacs.get(method='move') DISK",
                       pull_disk(pacs, small, "move"), True),
                  movescu_case(bench, q["small"][0], move_dir, node),
              ]),
        Group("cfind-one", f"C-FIND IMAGE, one query of {len(d.study_uids)} study UIDs",
              d.find.instances, 0, "rows", [
                  Case("clarinet_nb find_instances -> DataFrame",
                       find_one_query(pacs, d.study_uids), True),
                  findscu_case(bench, q["find-one"], node),
              ]),
        Group("cfind-series", f"C-FIND IMAGE, {len(q['per-series'])} per-series queries",
              d.find.instances, 0, "rows", [
                  Case("clarinet_nb find_instances(series frame)",
                       find_per_series(pacs, d.series_frame), True),
                  findscu_case(bench, q["per-series"], node),
              ]),
    ]  # fmt: skip
    groups[-1].cases[1].notes.add(
        f"one findscu process, {len(q['per-series'])} query files, one association"
    )
    return groups


def dcmread_size(cohort: FastCohort) -> str:
    ds = pydicom.dcmread(cohort.files[0], stop_before_pixels=True)
    return f"{ds.Rows}x{ds.Columns}"


def stock_group(bench: Bench, pacs: cnb.Pacs, d: Data, node: Callable[[], DicomNode]) -> Group:
    count = d.small.studies[0].per_series
    return Group(
        "cget-stock", f"C-GET {count} x 64x64 (one series), STOCK Orthanc",
        count, d.small.bytes * count // d.small.instances, "inst", [
            Case("clarinet_nb pacs.get MEMORY", pull_memory(pacs, d.stock_frame), True),
            Case("clarinet_nb pacs.get DISK", pull_disk(pacs, d.stock_frame), True),
            getscu_case(bench, d.queries["stock"], False, node),
            getscu_case(bench, d.queries["stock"], True, node),
        ],
    )  # fmt: skip


def warm_up(pacs: cnb.Pacs, d: Data, work: Path) -> None:
    """Untimed: imports, threads and the code paths of every clarinet_nb case."""
    pacs.get(d.stock_frame, progress=False)
    pacs.get(d.stock_frame, progress=False, method="move")
    pacs.get(d.stock_frame, progress=False, output_dir=Path(tempfile.mkdtemp(dir=work)))
    pacs.find_instances(d.stock_frame, progress=False)


def run_rss(node: DicomNode, d: Data, repeat: int, report: dict[str, Any]) -> bool:
    """The RSS of a ~500 MB in-memory pull, each in a fresh process; False if it failed."""
    runs: list[dict[str, Any]] = []
    report["rss"] = {"runs": runs, "bytes_files": d.huge.bytes}
    print("in-memory pull, fresh process: ", end="", flush=True)
    try:
        for _ in range(repeat):
            runs.append(rss_pull(node, d.huge.studies[0].uid, d.huge.instances))
            print(".", end="", flush=True)
    except Exception as exc:  # noqa: BLE001 - reported, exit status 1
        report["rss_error"] = f"{type(exc).__name__}: {exc}"
        print(f"\nFAILED: in-memory pull: {report['rss_error']}", file=sys.stderr)
        return False
    print(flush=True)
    report["rss"]["median_peak_over_bytes"] = statistics.median(
        (r["peak"] - r["baseline"]) / d.huge.bytes for r in runs
    )
    report["rss"]["median_mb_per_s"] = (
        d.huge.bytes / MB / statistics.median(r["wall"] for r in runs)
    )
    return True


def run_profiles(pacs: cnb.Pacs, d: Data, out: Path, stamp: str, work: Path) -> dict[str, str]:
    small_uid = d.small.studies[0].uid
    texts = profile(pacs, small_uid, d.study_uids, out, stamp)
    paths = {k: str(out / f"speed-{stamp}-{k}.txt") for k in texts}
    spied = pyspy_profile(
        {
            "cget-memory": lambda: pull_memory(pacs, study_frame(d.small))(work),
            "cget-disk": lambda: pull_disk(pacs, study_frame(d.small))(
                Path(tempfile.mkdtemp(dir=work))
            ),
            "cfind-one": lambda: find_one_query(pacs, d.study_uids)(work),
            "cfind-series": lambda: find_per_series(pacs, d.series_frame)(work),
        },
        out,
        stamp,
    )
    paths.update({f"py-spy {k}": str(out / f"speed-{stamp}-pyspy-{k}-top.txt") for k in spied})
    return paths


def load(orthanc: OrthancServer, bench: Bench, files: list[Path], parallel: int = 2) -> float:
    """storescu (TCP_NODELAY=1), ``parallel`` processes: ~750 instances/s into Orthanc."""
    t0 = time.perf_counter()
    chunk = 2000
    batches = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    running: list[subprocess.Popen[bytes]] = []

    def finish(proc: subprocess.Popen[bytes]) -> None:
        if proc.wait(timeout=TIMEOUT) != 0:
            raise BenchError(f"storescu load exited {proc.returncode}")

    for batch in batches:
        while len(running) >= parallel:
            finish(running.pop(0))
        running.append(
            subprocess.Popen(
                [str(bench.dcmtk / "storescu"), "-aet", "LOADER", "-aec", orthanc.aet, "-xe",
                 orthanc.host, str(orthanc.port), *map(str, batch)],
                env=nodelay_env(True), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
    for proc in running:
        finish(proc)
    return time.perf_counter() - t0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every case small (~1 minute)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case (3; 1 quick)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiles")
    parser.add_argument("--dcmtk-bin", default=None, help="DCMTK folder (default /usr/bin)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--results", default=str(_ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    return args


def machine_before(report: dict[str, Any], bench: Bench) -> None:
    """What the machine did just before the run: 2 s of /proc/stat while we idle."""
    first = Snapshot.take({})
    time.sleep(2.0)
    pre = Usage.between(first, Snapshot.take({}))
    load = os.getloadavg()
    report["machine"].update(others_share_before=pre.others_share(CPUS), loadavg_at_start=load)
    print(
        f"machine before the run: other processes used {pre.others_share(CPUS):.0%} of the CPU, "
        f"load average {load[0]:.2f} ({CPUS} cpus)"
    )
    warning = busy_warning("before the run", pre.others_share(CPUS), load)
    if warning:
        bench.warnings.append(warning)
        print(warning, file=sys.stderr)


def bench_all(args: argparse.Namespace, bench: Bench, report: dict[str, Any], stamp: str) -> bool:
    """Generate, load, run every group; fills ``report``; False when something failed."""
    work, out = bench.work, Path(args.results)
    t0 = time.perf_counter()
    d = prepare(work, QUICK if args.quick else FULL)
    report["cohorts"] = {
        k: {"instances": c.instances, "bytes": c.bytes} for k, c in d.cohorts.items()
    }
    report["generate_s"] = time.perf_counter() - t0
    print(f"cohorts written in {report['generate_s']:.1f} s: " + ", ".join(
        f"{k} {c.instances} inst {c.bytes / MB:.0f} MB" for k, c in d.cohorts.items()))  # fmt: skip
    scp_port, storescp_port = free_port(), free_port()
    moves = {
        "clarinet": ("CLARINET", "127.0.0.1", scp_port),
        "storescp": ("STORESCP", "127.0.0.1", storescp_port),
    }
    move_dir = work / "storescp-in"
    bench.storescp = start_storescp(bench, storescp_port, move_dir)
    groups: list[Group] = []
    ok = True

    def node() -> DicomNode:
        assert bench.orthanc is not None
        return DicomNode(aet=bench.orthanc.aet, host=bench.orthanc.host, port=bench.orthanc.port)

    try:
        for tuned in (True, False):  # the same storage, tuned then STOCK (Nagle on)
            with OrthancServer(work / "orthanc", tuned=tuned, move_destinations=moves) as orthanc:
                bench.orthanc = orthanc
                if tuned:
                    files = [f for c in d.cohorts.values() for f in c.files]
                    report["load_s"] = load(orthanc, bench, files)
                    print(f"loaded {len(files)} instances in {report['load_s']:.1f} s")
                pacs = cnb.connect(node(), calling_aet="CLARINET", max_pdu=0, scp_port=scp_port)
                try:
                    warm_up(pacs, d, work)
                    now = tuned_groups(bench, pacs, d, node, move_dir) if tuned else []
                    now += [] if tuned else [stock_group(bench, pacs, d, node)]
                    for group in now:
                        bench.run_group(group, args.repeat)
                    groups += now
                    if tuned:
                        ok &= run_rss(node(), d, args.repeat, report)
                    if tuned and not args.no_profile:
                        report["profiles"] = run_profiles(pacs, d, out, stamp, work)
                finally:
                    pacs.close()
    finally:
        if bench.storescp is not None:
            bench.storescp.terminate()
            bench.storescp.wait(timeout=30)
        report["groups"] = {}
        for group in groups:
            rows = summarize(group)
            ok &= not any(r["error"] for r in rows)
            report["groups"][group.key] = {"title": group.title, "items": group.items,
                                           "bytes": group.bytes, "cases": rows}  # fmt: skip
            print_group(group, rows)
        if "median_peak_over_bytes" in report.get("rss", {}):
            rss = report["rss"]
            print(
                f"\n== in-memory pull of {d.huge.instances} x {dcmread_size(d.huge)} "
                f"({d.huge.bytes / MB:.0f} MB), fresh process: (peak RSS - baseline) / bytes = "
                f"{rss['median_peak_over_bytes']:.2f}  (median of {len(rss['runs'])}; "
                f"{rss['median_mb_per_s']:.0f} MB/s, "
                f"baseline {rss['runs'][0]['baseline'] / MB:.0f} MB)"
            )
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    _config.LOG_RESPONSE_IDENTIFIERS = False
    dcmtk_bin = find_dcmtk(args.dcmtk_bin)
    if dcmtk_bin is None:
        print("DCMTK not found: this benchmark compares against it", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_start = Snapshot.take({})
    report: dict[str, Any] = {
        "benchmark": "speed",
        "started": started.isoformat(),
        "args": vars(args),
        "sizes": vars(QUICK if args.quick else FULL),
        "machine": {"cpus": CPUS, "python": platform.python_version(),
                    "platform": platform.platform()},
        "versions": {"clarinet_nb": cnb.__version__, "clarinet_nb_path": cnb.__file__,
                     "pynetdicom": pynetdicom.__version__, "pydicom": pydicom.__version__,
                     "dcmtk": dcmtk_version(dcmtk_bin)},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="clarinet-speed-", dir=args.workdir) as tmp:
        bench = Bench(dcmtk=dcmtk_bin, work=Path(tmp))
        machine_before(report, bench)
        ok = bench_all(args, bench, report, stamp)
    if report.get("groups"):
        report["targets_markdown"] = target_table(report)
        print("\n== the targets of issue 8, this run\n" + report["targets_markdown"])
    for name, path in report.get("profiles", {}).items():
        print(f"\n== profile {name} ({path})\n{Path(path).read_text(encoding='utf-8')}")
    whole = Usage.between(run_start, Snapshot.take({}))
    report["machine"].update(
        loadavg_at_end=os.getloadavg(), wall_s=whole.wall, idle_share_run=whole.idle_share
    )
    report["warnings"] = bench.warnings
    print(
        f"\nwhole run: {whole.wall:.0f} s, machine idle {whole.idle_share:.0%} of the time, "
        f"load average {report['machine']['loadavg_at_start'][0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    for warning in bench.warnings:
        print(warning, file=sys.stderr)
    report["finished"] = datetime.now(UTC).isoformat()
    out = out_dir / f"speed-{stamp}.json"
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(f"results: {out}")
    if not ok:
        print("SOME CASES FAILED (see FAILED rows above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
