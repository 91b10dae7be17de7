#!/usr/bin/env python
"""Speed benchmark of clarinet_nb's core C-FIND and C-GET against DCMTK and plain pynetdicom.

One run generates a bulk cohort (``generate_bulk``), loads it into one Orthanc
storage, and benchmarks the same data twice: against Orthanc run stock (Nagle
on, as hospitals run it) and tuned (``TCP_NODELAY=1`` in Orthanc's environment).
Every timed run checks that the tool got every match / instance; a failed check
marks the case FAILED and makes the script exit with status 1.

    python benchmarks/bench_core.py [--studies 2 --per-study 100 --repeat 3 --quick]

See benchmarks/README.md for what is measured and how to read the tables.
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
import asyncio
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pydicom
import pynetdicom
from pydicom import Dataset
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

import clarinet_nb
from clarinet_nb import (
    DicomClient,
    DicomNode,
    ImageQuery,
    StorageConfig,
    StorageMode,
    StudyQuery,
)
from clarinet_nb.testing import Cohort, OrthancServer, free_port, generate_bulk

PENDING = (0xFF00, 0xFF01)
GET_OK = (0x0000,)
SUBPROCESS_TIMEOUT = 600.0
DCMTK_MAX_PDU = 131072  # DCMTK's --max-pdu range is 4096..131072: 0 (unlimited) is refused
SEGFAULT = 139  # getscu 3.6.7 may segfault after its last C-GET (see /work/shared/PEERS.md)
FIND = "C-FIND"
GET = "C-GET"


class BenchError(RuntimeError):
    """A tool did not do the whole job (wrong count, bad status, exit code)."""


# --------------------------------------------------------------------------- the cases


@dataclass
class Env:
    """What every case needs to know about the peer and the cohort."""

    node: DicomNode
    studies: list[str]
    per_study: dict[str, int]
    dcmtk_bin: Path | None
    runner: asyncio.Runner
    client: DicomClient


Run = Callable[[Env, Sequence[str], Path, set[str]], int]
"""A case body: (env, studies to cover, fresh empty scratch dir, notes to add to)
-> the number of items (matches or instances) it got and checked."""


@dataclass
class Case:
    """One tool doing one operation."""

    operation: str  # "C-FIND STUDY", "C-FIND IMAGE", "C-GET"
    tool: str
    run: Run
    expected: Callable[[Env, Sequence[str]], int]
    reference: str | None = None  # clarinet case this one is compared to (None: it is one)
    in_process: bool = True  # warmed up once before timing
    items: int = 0  # matches or instances one timed run covers
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.operation} | {self.tool}"


def _expect_studies(env: Env, studies: Sequence[str]) -> int:
    return len(env.studies)


def _expect_instances(env: Env, studies: Sequence[str]) -> int:
    return sum(env.per_study[s] for s in studies)


def _check(got: int, expected: int, what: str) -> int:
    if got != expected:
        raise BenchError(f"{what}: got {got}, expected {expected}")
    return got


def _study_identifier() -> Dataset:
    return StudyQuery().to_dataset()


def _image_identifier(study_uid: str) -> Dataset:
    return ImageQuery(study_instance_uid=study_uid).to_dataset()


def _get_identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


# -- clarinet_nb


def clarinet_find_studies(env: Env, studies: Sequence[str], scratch: Path, notes: set[str]) -> int:
    results = env.runner.run(env.client.find_studies(StudyQuery(), peer=env.node))
    return len(results)


def clarinet_find_images(env: Env, studies: Sequence[str], scratch: Path, notes: set[str]) -> int:
    async def loop() -> int:
        total = 0
        for uid in studies:
            results = await env.client.find_images(
                ImageQuery(study_instance_uid=uid), peer=env.node
            )
            total += _check(len(results), env.per_study[uid], f"find_images {uid}")
        return total

    return env.runner.run(loop())


def clarinet_get_memory(env: Env, studies: Sequence[str], scratch: Path, notes: set[str]) -> int:
    async def loop() -> int:
        total = 0
        for uid in studies:
            result = await env.client.get_study(
                uid, peer=env.node, storage=StorageConfig(mode=StorageMode.MEMORY)
            )
            _check(len(result.datasets), env.per_study[uid], f"MEMORY datasets of {uid}")
            total += _check(result.received, env.per_study[uid], f"get_study {uid}")
        return total

    return env.runner.run(loop())


def clarinet_get_disk(env: Env, studies: Sequence[str], scratch: Path, notes: set[str]) -> int:
    async def loop() -> int:
        total = 0
        for uid in studies:
            result = await env.client.get_study(uid, peer=env.node, output_dir=scratch)
            total += _check(result.received, env.per_study[uid], f"get_study {uid}")
        return total

    got = env.runner.run(loop())
    files = sum(1 for _ in scratch.rglob("*.dcm"))
    return _check(files, got, "files written by clarinet_nb DISK")


# -- plain pynetdicom


def _plain_ae() -> AE:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    return ae


def _plain_find(env: Env, identifiers: Sequence[Dataset]) -> int:
    ae = _plain_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(env.node.host, env.node.port, ae_title=env.node.aet, max_pdu=0)
    if not assoc.is_established:
        raise BenchError("pynetdicom: C-FIND association not established")
    matches = 0
    try:
        for msg_id, identifier in enumerate(identifiers, start=1):
            responses = assoc.send_c_find(
                identifier, StudyRootQueryRetrieveInformationModelFind, msg_id=msg_id
            )
            for status, _match in responses:
                code = status.get("Status") if status else None
                if code in PENDING:
                    matches += 1
                elif code != 0x0000:
                    raise BenchError(f"pynetdicom C-FIND ended with status {code}")
    finally:
        if assoc.is_established:
            assoc.release()
    return matches


def pynetdicom_find_studies(
    env: Env, studies: Sequence[str], scratch: Path, notes: set[str]
) -> int:
    return _plain_find(env, [_study_identifier()])


def pynetdicom_find_images(env: Env, studies: Sequence[str], scratch: Path, notes: set[str]) -> int:
    return _plain_find(env, [_image_identifier(uid) for uid in studies])


def pynetdicom_get(env: Env, studies: Sequence[str], scratch: Path, notes: set[str]) -> int:
    """The fastest plain loop with the brief's settings: raw writes, no decoding."""
    count = 0

    def on_store(event: evt.Event) -> int:
        nonlocal count
        count += 1
        with open(scratch / f"{count:06d}.dcm", "wb") as fh:
            fh.write(event.encoded_dataset())
        return 0x0000

    ae = _plain_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles: list[Any] = []
    for cx in StoragePresentationContexts[:127]:
        assert cx.abstract_syntax is not None
        ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
        roles.append(build_role(cx.abstract_syntax, scp_role=True))
    assoc = ae.associate(
        env.node.host,
        env.node.port,
        ae_title=env.node.aet,
        max_pdu=0,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    if not assoc.is_established:
        raise BenchError("pynetdicom: C-GET association not established")
    try:
        for msg_id, uid in enumerate(studies, start=1):
            final: int | None = None
            responses = assoc.send_c_get(
                _get_identifier(uid), StudyRootQueryRetrieveInformationModelGet, msg_id=msg_id
            )
            for status, _identifier in responses:
                code = status.get("Status") if status else None
                if code not in PENDING:
                    final = code
            if final not in GET_OK:
                raise BenchError(f"pynetdicom C-GET of {uid} ended with status {final}")
    finally:
        if assoc.is_established:
            assoc.release()
    files = sum(1 for _ in scratch.iterdir())
    return _check(files, count, "files written by the pynetdicom loop")


# -- DCMTK


def _dcmtk_env(nodelay: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def _dcmtk(
    env: Env, tool: str, args: list[str], *, nodelay: bool = False, notes: set[str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert env.dcmtk_bin is not None
    command = [
        str(env.dcmtk_bin / tool),
        "-S",
        "-pdu",
        str(DCMTK_MAX_PDU),
        "-aet",
        tool.upper(),
        "-aec",
        env.node.aet,
        *args,
        env.node.host,
        str(env.node.port),
    ]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=_dcmtk_env(nodelay),
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    if proc.returncode == SEGFAULT and tool == "getscu" and notes is not None:
        notes.add("getscu exited 139 (segfault) after its C-GET; files counted")
    elif proc.returncode != 0:
        raise BenchError(f"{tool} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc


def _keys(identifier: Dataset) -> list[str]:
    args: list[str] = []
    for elem in identifier:
        value = "" if elem.value is None else str(elem.value)
        args += ["-k", f"{elem.keyword}={value}"]
    return args


def _find_responses(proc: subprocess.CompletedProcess[str]) -> int:
    return sum(
        1
        for line in (proc.stdout + proc.stderr).splitlines()
        if "Find Response:" in line and "(Pending)" in line
    )


def _findscu(level: str, nodelay: bool) -> Run:
    """findscu, one process per query (per study at IMAGE level), counting its responses."""

    def run(env: Env, studies: Sequence[str], scratch: Path, notes: set[str]) -> int:
        if level == "STUDY":
            args = ["+sr", *_keys(_study_identifier())]
            return _find_responses(_dcmtk(env, "findscu", args, nodelay=nodelay))
        total = 0
        for uid in studies:
            args = ["+sr", *_keys(_image_identifier(uid))]
            got = _find_responses(_dcmtk(env, "findscu", args, nodelay=nodelay))
            total += _check(got, env.per_study[uid], f"findscu {uid}")
        return total

    return run


def _getscu(nodelay: bool) -> Run:
    def run(env: Env, studies: Sequence[str], scratch: Path, notes: set[str]) -> int:
        total = 0
        for uid in studies:  # one getscu per study: several query files make it segfault
            before = sum(1 for _ in scratch.iterdir())
            _dcmtk(
                env,
                "getscu",
                ["-od", str(scratch), *_keys(_get_identifier(uid))],
                nodelay=nodelay,
                notes=notes,
            )
            got = sum(1 for _ in scratch.iterdir()) - before
            total += _check(got, env.per_study[uid], f"getscu files of {uid}")
        return total

    return run


def make_cases(with_dcmtk: bool) -> list[Case]:
    """Every case, in the order they run within one repeat."""
    fs, fi = "C-FIND STUDY", "C-FIND IMAGE"
    ref_fs, ref_fi = f"{fs} | clarinet_nb find_studies", f"{fi} | clarinet_nb find_images"
    cases = [
        Case(fs, "clarinet_nb find_studies", clarinet_find_studies, _expect_studies),
        Case(fs, "pynetdicom loop", pynetdicom_find_studies, _expect_studies, ref_fs),
        Case(fi, "clarinet_nb find_images", clarinet_find_images, _expect_instances),
        Case(fi, "pynetdicom loop", pynetdicom_find_images, _expect_instances, ref_fi),
        Case(GET, "clarinet_nb MEMORY", clarinet_get_memory, _expect_instances),
        Case(GET, "clarinet_nb DISK", clarinet_get_disk, _expect_instances),
        Case(GET, "pynetdicom loop (disk)", pynetdicom_get, _expect_instances, "DISK"),
    ]
    if with_dcmtk:
        variants = ((False, "(stock env)"), (True, "TCP_NODELAY=1"))
        cases[4:4] = [
            Case(fi, f"DCMTK findscu {env}", _findscu("IMAGE", nodelay), _expect_instances,
                 ref_fi, in_process=False)
            for nodelay, env in variants
        ]  # fmt: skip
        cases[2:2] = [
            Case(fs, f"DCMTK findscu {env}", _findscu("STUDY", nodelay), _expect_studies,
                 ref_fs, in_process=False)
            for nodelay, env in variants
        ]  # fmt: skip
        cases += [
            Case(GET, f"DCMTK getscu {env}", _getscu(nodelay), _expect_instances, "DISK",
                 in_process=False)
            for nodelay, env in variants
        ]  # fmt: skip
    return cases


# --------------------------------------------------------------------------- running


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(
    case: Case, env: Env, studies: Sequence[str], scratch_root: Path, *, timed: bool
) -> None:
    """Run ``case`` once in a fresh scratch dir; record time and CPU if ``timed``."""
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=scratch_root))
    try:
        expected = case.expected(env, studies)
        cpu0, child0 = time.process_time(), _children_cpu()
        start = time.perf_counter()
        got = case.run(env, studies, scratch, case.notes)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0 + _children_cpu() - child0
        _check(got, expected, case.key)
        if timed:
            case.samples.append(elapsed)
            case.cpu.append(cpu)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def bench_peer(cases: list[Case], env: Env, repeat: int, scratch_root: Path) -> None:
    """Warm up the in-process cases (first study only), then time ``repeat`` rounds."""
    for case in cases:
        if case.in_process:
            try:
                run_once(case, env, env.studies[:1], scratch_root, timed=False)
            except Exception as exc:  # noqa: BLE001 - recorded, reported, exit status 1
                case.error = f"warm-up: {type(exc).__name__}: {exc}"
    for round_ in range(repeat):
        for case in cases:
            if case.error is not None:
                continue
            try:
                run_once(case, env, env.studies, scratch_root, timed=True)
            except Exception as exc:  # noqa: BLE001 - recorded, reported, exit status 1
                case.error = f"round {round_ + 1}: {type(exc).__name__}: {exc}"
            print(".", end="", flush=True)
    print(flush=True)


# --------------------------------------------------------------------------- reporting


def summarize(cases: list[Case], n_instances: int, n_bytes: int) -> list[dict[str, Any]]:
    """Medians, throughputs and clarinet/tool ratios (>1: clarinet_nb is faster)."""
    rows: list[dict[str, Any]] = []
    medians = {c.key: statistics.median(c.samples) for c in cases if c.samples}
    for case in cases:
        row: dict[str, Any] = {
            "operation": case.operation,
            "tool": case.tool,
            "error": case.error,
            "samples_s": case.samples,
            "client_cpu_s": case.cpu,
            "notes": sorted(case.notes),
        }
        if case.samples and case.error is None:
            median = medians[case.key]
            items = case.items
            row.update(
                median_s=median,
                min_s=min(case.samples),
                max_s=max(case.samples),
                median_client_cpu_s=statistics.median(case.cpu),
                items=items,
                items_per_s=items / median,
                mb_per_s=(n_bytes / 1e6 / median) if case.operation == GET else None,
            )
            ratios: dict[str, float | None] = {}
            if case.operation == GET:
                for mode in ("DISK", "MEMORY"):
                    ref = medians.get(f"{GET} | clarinet_nb {mode}")
                    ratios[f"clarinet_nb {mode}"] = median / ref if ref else None
            elif case.reference is not None:
                ref = medians.get(case.reference)
                ratios[case.reference.split(" | ")[1]] = median / ref if ref else None
            row["clarinet_over_tool"] = ratios
        rows.append(row)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    header = (
        f"{'operation':<13} {'tool':<28} {'seconds':>8} {'items/s':>9} {'MB/s':>7} "
        f"{'cpu s':>6}  {'clarinet/tool':<22}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if row.get("median_s") is None:
            print(f"{row['operation']:<13} {row['tool']:<28} FAILED: {row['error']}")
            continue
        ratios = row["clarinet_over_tool"]
        if row["operation"] == GET:
            parts = []
            for mode, short in (("DISK", "disk"), ("MEMORY", "mem")):
                value = ratios.get(f"clarinet_nb {mode}")
                if not row["tool"].startswith("clarinet_nb"):
                    parts.append(f"{short} {_fmt(value, '.2f')}")
            ratio = "  ".join(parts) if parts else "(reference)"
        else:
            values = list(ratios.values())
            ratio = _fmt(values[0], ".2f") if values else "(reference)"
        print(
            f"{row['operation']:<13} {row['tool']:<28} {row['median_s']:>8.3f} "
            f"{row['items_per_s']:>9.1f} {_fmt(row['mb_per_s'], '.2f'):>7} "
            f"{row['median_client_cpu_s']:>6.2f}  {ratio:<22}"
        )
        for note in row["notes"]:
            print(f"{'':<13} note: {note}")


# --------------------------------------------------------------------------- main


def find_dcmtk(explicit: str | None) -> Path | None:
    """The directory holding DCMTK's findscu/getscu (pynetdicom installs look-alikes)."""
    candidates = [Path(explicit)] if explicit else [Path("/usr/bin"), Path("/usr/local/bin")]
    for folder in candidates:
        tool = folder / "getscu"
        if not (tool.is_file() and (folder / "findscu").is_file()):
            continue
        proc = subprocess.run(
            [str(tool), "--version"], capture_output=True, text=True, check=False, timeout=30
        )
        if "dcmtk" in (proc.stdout + proc.stderr).lower():
            return folder
    return None


def dcmtk_version(folder: Path | None) -> str | None:
    if folder is None:
        return None
    proc = subprocess.run(
        [str(folder / "getscu"), "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return (proc.stdout + proc.stderr).strip().splitlines()[0]


def load(orthanc: OrthancServer, cohort: Cohort, n_instances: int, attempts: int = 3) -> int:
    """Load the cohort, retrying: pynetdicom's C-STORE loop now and then loses a response
    to its own reactor thread ("Received unexpected C-STORE service message")."""
    for attempt in range(1, attempts + 1):
        try:
            stored = orthanc.load(cohort.paths())
        except RuntimeError as exc:
            if attempt == attempts:
                raise
            print(f"\nWARNING: loading the cohort failed ({exc}); retrying", file=sys.stderr)
            continue
        if stored != n_instances:
            raise BenchError(f"loaded {stored} of {n_instances} instances")
        return attempt
    raise AssertionError("unreachable")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=2, help="studies in the cohort (2)")
    parser.add_argument(
        "--per-study", type=int, default=None, help="instances per study (100; 20 with --quick)"
    )
    parser.add_argument("--rows", type=int, default=64, help="image rows and columns (64)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed runs per case; the median is reported (3; 1 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small, one repeat")
    parser.add_argument("--peers", default="stock,tuned", help="which Orthancs: stock,tuned")
    parser.add_argument("--no-dcmtk", action="store_true", help="skip findscu/getscu")
    parser.add_argument(
        "--dcmtk-bin", default=None, help="folder of DCMTK's findscu/getscu (default: /usr/bin)"
    )
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument(
        "--results",
        default=str(_ROOT / "benchmarks" / "results"),
        help="where core-<timestamp>.json is written",
    )
    args = parser.parse_args(argv)
    args.per_study = args.per_study or (20 if args.quick else 100)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not set(args.peers) <= {"stock", "tuned"} or min(args.studies, args.per_study) < 1:
        parser.error("--peers takes stock and/or tuned; counts must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    _config.LOG_RESPONSE_IDENTIFIERS = False

    dcmtk_bin = None if args.no_dcmtk else find_dcmtk(args.dcmtk_bin)
    if dcmtk_bin is None and not args.no_dcmtk:
        print("WARNING: DCMTK findscu/getscu not found: DCMTK cases skipped", file=sys.stderr)
    started = datetime.now(UTC)
    if os.getloadavg()[0] > 0.5:
        print(f"WARNING: load average {os.getloadavg()[0]:.2f}: other work on this machine "
              "will skew the timings", file=sys.stderr)  # fmt: skip
    failed = False
    report: dict[str, Any] = {
        "benchmark": "core",
        "started": started.isoformat(),
        "args": {k: v for k, v in vars(args).items()},
        "machine": {
            "loadavg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "versions": {
            "clarinet_nb": clarinet_nb.__version__,
            "pynetdicom": pynetdicom.__version__,
            "pydicom": pydicom.__version__,
            "dcmtk": dcmtk_version(dcmtk_bin),
        },
        "settings": {
            "client_max_pdu": {"clarinet_nb": 0, "pynetdicom": 0, "dcmtk": DCMTK_MAX_PDU},
            "orthanc_max_pdu": 16384,
        },
        "peers": {},
    }

    with tempfile.TemporaryDirectory(prefix="clarinet-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        cohort: Cohort = generate_bulk(
            work / "cohort",
            n_studies=args.studies,
            per_study=args.per_study,
            rows=args.rows,
            cols=args.rows,
        )
        n_instances = len(cohort.instances)
        n_bytes = sum(i.size_bytes for i in cohort.instances)
        per_study = {uid: len(cohort.instances_in(uid)) for uid in cohort.studies()}
        report["cohort"] = {
            "studies": args.studies,
            "per_study": args.per_study,
            "rows": args.rows,
            "cols": args.rows,
            "instances": n_instances,
            "bytes": n_bytes,
            "generate_s": time.perf_counter() - t0,
        }
        print(
            f"cohort: {args.studies} studies x {args.per_study} instances of "
            f"{args.rows}x{args.rows} = {n_instances} instances, {n_bytes / 1e6:.2f} MB "
            f"(Part-10 files)"
        )
        loaded = False
        with asyncio.Runner() as runner:
            for flavour in args.peers:
                tuned = flavour == "tuned"
                # Same workdir = same storage and index: both flavours serve the same data.
                with OrthancServer(work / "orthanc", tuned=tuned) as orthanc:
                    if not loaded:
                        t0 = time.perf_counter()
                        report["cohort"]["load_attempts"] = load(orthanc, cohort, n_instances)
                        report["cohort"]["load_s"] = time.perf_counter() - t0
                        loaded = True
                    node = DicomNode(aet=orthanc.aet, host=orthanc.host, port=orthanc.port)
                    client = DicomClient(calling_aet="CLARINET", max_pdu=0, scp_port=free_port())
                    env = Env(
                        node=node,
                        studies=list(per_study),
                        per_study=per_study,
                        dcmtk_bin=dcmtk_bin,
                        runner=runner,
                        client=client,
                    )
                    cases = make_cases(dcmtk_bin is not None)
                    for case in cases:  # what summarize() counts as items per run
                        case.items = case.expected(env, env.studies)
                    print(
                        f"orthanc-{flavour} on {node}: {len(cases)} cases x {args.repeat} ",
                        end="",
                        flush=True,
                    )
                    t0 = time.perf_counter()
                    try:
                        bench_peer(cases, env, args.repeat, work)
                    finally:
                        runner.run(client.aclose())
                    rows = summarize(cases, n_instances, n_bytes)
                    failed |= any(row["error"] for row in rows)
                    report["peers"][f"orthanc-{flavour}"] = {
                        "loadavg_after": os.getloadavg(),
                        "tcp_nodelay": tuned,
                        "bench_s": time.perf_counter() - t0,
                        "cases": rows,
                    }
                    title = (
                        f"== Orthanc {flavour} ({'TCP_NODELAY=1' if tuned else 'Nagle on'}) | "
                        f"{args.studies} studies x {args.per_study} instances, "
                        f"{n_bytes / 1e6:.2f} MB | median of {args.repeat} | "
                        "clarinet/tool > 1: clarinet_nb faster =="
                    )
                    print_table(title, rows)

    report["finished"] = datetime.now(UTC).isoformat()
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"core-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(f"\nresults: {out}")
    if failed:
        print("SOME CASES FAILED (see FAILED rows above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
