#!/usr/bin/env python
"""Split C-GET benchmark: one study of several series over 1 vs N associations.

Starts Orthanc stock, Orthanc tuned (``TCP_NODELAY=1``) and dcmqrscp on loopback,
loads one study of ``--series`` series of ``--per-series`` 64x64 instances, and
times ``DicomClient.get_study`` (pre-query included) to memory and to disk with
splitting off (``one``: ``split_min=0``), forced (``split``: ``split_busy=None``,
the extra associations opened at once) and as by default (``auto``: the split
probe decides from the first instances), ``--repeat`` times each, interleaved.
Prints medians of wall and CPU seconds, the associations of each run and, for
``auto``, the median CPU load the probe measured.  To model a PACS that is slow per
sub-operation (a network round trip per C-STORE), run it in a network namespace
whose loopback has a delay (root):

    PYTHONPATH=. python benchmarks/bench_parallel.py --repeat 5
    unshare -n sh -c 'ip link set lo up; tc qdisc add dev lo root netem delay 1ms;
        PYTHONPATH=. python benchmarks/bench_parallel.py --repeat 5'
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

import pydicom

from clarinet_nb import DicomClient, DicomNode, StorageConfig, StorageMode
from clarinet_nb.testing import DcmqrscpServer, OrthancServer, PeerProcess, generate_bulk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_proxy

from clarinet_nb.dicom.split import SPLIT_MIN
from clarinet_nb.settings import settings

VARIANTS = ("one", "split", "auto")


class ProbeLog(logging.Handler):
    """Keeps the CPU loads the split probe logged (at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.loads: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.match(r"split probe: the client used ([0-9.]+) CPU", record.getMessage())
        if found:
            self.loads.append(float(found.group(1)))


PROBE = ProbeLog()


def multi_series_study(root: Path, series: int, per: int) -> tuple[str, list[Path]]:
    """One study of ``series`` CT series (generate_bulk's studies given one study UID)."""
    cohort = generate_bulk(root, n_studies=series, per_study=per, seed="benchpar")
    study = cohort.instances[0].study_uid
    for inst in cohort.instances:
        ds = pydicom.dcmread(inst.path)
        ds.StudyInstanceUID = study
        ds.save_as(inst.path)
    return study, cohort.paths()


async def one(
    node: DicomNode, study: str, variant: str, mode: str, scratch: Path, n: int, split_min: int
) -> tuple[float, float, int]:
    storage = (
        StorageConfig(mode=StorageMode.DISK, output_dir=scratch)
        if mode == "disk"
        else StorageConfig(mode=StorageMode.MEMORY)
    )
    async with DicomClient(max_associations=4) as client:
        client.operations.split_min = (split_min or SPLIT_MIN) if variant != "one" else 0
        if variant == "split":
            client.operations.split_busy = None
        wall, cpu = time.perf_counter(), time.process_time()
        result = await client.get_study(study, peer=node, storage=storage)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if result.received != n:
        raise SystemExit(f"FAILED: {result.received} of {n} instances")
    shutil.rmtree(scratch, ignore_errors=True)
    return wall, cpu, result.associations


def pull_bench(args: argparse.Namespace, work: Path) -> int:
    """A notebook pull of ``--pull`` studies of ``--per-series`` instances, split off/on."""
    import clarinet_nb as cnb

    cohort = generate_bulk(work / "data", n_studies=args.pull, per_study=args.per_series)
    n = len(cohort.instances)
    print(f"pull of {args.pull} studies, {n} instances; load {os.getloadavg()[0]:.2f}")
    try:
        for kind in args.peers.split(","):
            peer: PeerProcess
            if kind == "dcmqrscp":
                peer = DcmqrscpServer(work / kind)
            else:
                peer = OrthancServer(work / kind, tuned=kind.endswith("tuned"))
            with peer:
                peer.load(cohort.paths())
                runs: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
                for _ in range(args.repeat):
                    for split in (False, True):
                        pacs = cnb.connect(
                            f"{peer.aet}@{peer.host}:{peer.port}", max_associations=4
                        )
                        if not split:
                            pacs.client.operations.split_min = 0
                        studies = pacs.find_studies(PatientID="*")
                        wall, cpu = time.perf_counter(), time.process_time()
                        got = pacs.get(studies, progress=False)
                        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                        if len(got) != n:
                            raise SystemExit(f"FAILED: {len(got)} of {n}")
                        assocs = sum(r.associations for r in got.results)
                        runs[split].append((wall, cpu, assocs))
                        pacs.client.close()
                for split, done in runs.items():
                    wall = statistics.median(r[0] for r in done)
                    cpu = statistics.median(r[1] for r in done)
                    print(
                        f"{kind:14} pull   {'split' if split else 'one  '} assoc {done[0][2]}  "
                        f"wall {wall:.3f} s  ({n / wall:5.0f} inst/s)  cpu {cpu:.3f} s  "
                        f"walls {[round(r[0], 2) for r in done]}"
                    )
    finally:
        print(f"load at end {os.getloadavg()[0]:.2f}")
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--per-series", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--peers", default="orthanc-stock,orthanc-tuned,dcmqrscp")
    parser.add_argument(
        "--split-min", type=int, default=0, help="split from this many instances (default)"
    )
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="one-way latency added by a proxy (0)"
    )
    parser.add_argument(
        "--pull", type=int, default=0, help="instead: a notebook pull of N one-series studies"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="one,split,auto")
    parser.add_argument(
        "--lean-plan", action="store_true", help="keep settings.lean_plan (never split)"
    )
    args = parser.parse_args()
    if not args.lean_plan:  # a lean plan (counts only) is never split: plan by listing
        settings.lean_plan = False
    log = logging.getLogger("clarinet_nb")
    log.setLevel(logging.DEBUG)
    log.addHandler(PROBE)
    n = args.series * args.per_series
    work = Path(tempfile.mkdtemp(prefix="bench-par-"))
    if args.pull:
        return pull_bench(args, work)
    study, paths = multi_series_study(work / "data", args.series, args.per_series)
    print(
        f"{n} instances of 64x64 in {args.series} series, {args.delay_ms:g} ms one-way "
        f"latency; load {os.getloadavg()[0]:.2f}"
    )
    try:
        for kind in args.peers.split(","):
            peer: PeerProcess
            if kind == "dcmqrscp":
                peer = DcmqrscpServer(work / kind)
            else:
                peer = OrthancServer(work / kind, tuned=kind.endswith("tuned"))
            with peer:
                peer.load(paths)
                node = DicomNode(aet=peer.aet, host=peer.host, port=peer.port)
                proxy = None
                if args.delay_ms:
                    proxy, port = latency_proxy.start(peer.port, args.delay_ms / 1000)
                    node = DicomNode(aet=peer.aet, host=peer.host, port=port)
                times: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
                loads: dict[str, list[float]] = {}
                for _ in range(args.repeat):
                    for mode in ("memory", "disk"):
                        for variant in args.variants.split(","):
                            out = work / "out"
                            PROBE.loads.clear()
                            got = asyncio.run(
                                one(node, study, variant, mode, out, n, args.split_min)
                            )
                            times.setdefault((mode, variant), []).append(got)
                            if variant == "auto":
                                loads.setdefault(mode, []).extend(PROBE.loads)
                if proxy is not None:
                    proxy.kill()
                    proxy.join()
                for (mode, variant), runs in times.items():
                    wall = statistics.median(r[0] for r in runs)
                    cpu = statistics.median(r[1] for r in runs)
                    probe = ""
                    if variant == "auto" and loads.get(mode):
                        probe = f"  probe load {statistics.median(loads[mode]):.2f}"
                    print(
                        f"{kind:14} {mode:6} {variant:5} "
                        f"wall {wall:.3f} s ({n / wall:5.0f} inst/s)  cpu {cpu:.3f} s  "
                        f"assocs {''.join(str(r[2]) for r in runs)}  "
                        f"walls {[round(r[0], 2) for r in runs]}{probe}"
                    )
    finally:
        print(f"load at end {os.getloadavg()[0]:.2f}")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
