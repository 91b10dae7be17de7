"""Interrupt a sync memory pull N times and count the runs that lost what arrived.

    python scripts/stress_interrupt.py [--runs 40] [--method get|move]

Each run starts the subprocess of ``tests/test_notebook_interrupt.py`` (a
``pacs.get`` of 2 studies x 120 instances from a test Orthanc), sends SIGINT
once 3 instances have arrived, and checks that ``pacs.interrupted`` lists at
least those 3.  Before the fix of the gather race, 3/30 and 5/40 runs came
back short; a correct build prints ``short 0 of N``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clarinet_nb.testing import OrthancServer, free_port, generate_bulk  # noqa: E402
from tests.test_notebook_interrupt import BULK, SCRIPT  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--method", choices=["get", "move"], default="get")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        scp_port = free_port()
        bulk = generate_bulk(tmp / "bulk", n_studies=2, per_study=BULK // 2)
        destinations = {"c": ("CLARINET", "127.0.0.1", scp_port)}
        with OrthancServer(tmp / "orthanc", move_destinations=destinations) as server:
            server.load(bulk.paths())
            target = f"{server.aet}@{server.host}:{server.port}"
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            short = 0
            for _ in range(args.runs):
                proc = subprocess.Popen(
                    [sys.executable, "-c", SCRIPT, args.method, target, str(scp_port), "memory"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ARRIVING":
                    proc.kill()
                    raise SystemExit(f"the pull did not start: {proc.communicate()[1][-2000:]}")
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=90)
                word, _, count = out.strip().partition(" ")
                if word != "INTERRUPTED" or int(count) < 3:
                    short += 1
                    print(f"short: {out.strip()!r}\n{err[-3000:]}", file=sys.stderr)
    print(f"short {short} of {args.runs}")
    return 1 if short else 0


if __name__ == "__main__":
    raise SystemExit(main())
