#!/usr/bin/env python
"""A/B of ``settings.lean_plan`` (study/series counts) vs the full IMAGE listing up front.

One tuned Orthanc with N_STUDIES x PER_STUDY small CT instances (one series each); the
two plans alternate REPS times in one process, through ``DicomOperations.retrieve``
and ``Pacs.get`` (memory and disk); medians of wall and CPU seconds.

    PYTHONPATH=. python benchmarks/bench_lean_plan.py N_STUDIES PER_STUDY [REPS [ONLY]]
    e.g. 2 100 7 | 1 2000 5 | 1 2000 9 pacs.get:memory
"""

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import clarinet_nb as cnb
from clarinet_nb import DicomNode, StorageConfig, StorageMode
from clarinet_nb.dicom.operations import DicomOperations
from clarinet_nb.dicom.requests import RetrieveRequest
from clarinet_nb.settings import settings
from clarinet_nb.testing import OrthancServer, generate_bulk

work = Path(tempfile.mkdtemp())
n_studies, per = int(sys.argv[1]), int(sys.argv[2])
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 7
cohort = generate_bulk(work / "cohort", n_studies=n_studies, per_study=per, seed="ab")
server = OrthancServer(work / "orthanc", tuned=True)
with server:
    assert server.load(cohort.paths()) == n_studies * per
    peer = DicomNode(aet=server.aet, host=server.host, port=server.port)
    ops = DicomOperations()
    pacs = cnb.connect(f"{server.aet}@{server.host}:{server.port}")
    frame = pacs.find_studies(StudyInstanceUID=cohort.studies())

    def ops_get(mode):
        for s in cohort.studies():
            out = work / "out"
            st = (
                StorageConfig(mode=StorageMode.DISK, output_dir=out)
                if mode == "disk"
                else StorageConfig(mode=StorageMode.MEMORY)
            )
            r = ops.retrieve("get", RetrieveRequest.study(s), peer, st)
            assert r.received == per
        shutil.rmtree(work / "out", ignore_errors=True)

    def pacs_get(mode):
        if mode == "disk":
            m = pacs.get(frame, output_dir=work / "out", progress=False)
            assert len(m) == n_studies * per
            shutil.rmtree(work / "out", ignore_errors=True)
        else:
            d = pacs.get(frame, progress=False)
            assert len(d) == n_studies * per

    only = sys.argv[4] if len(sys.argv) > 4 else ""
    for name, fn in (("DicomOperations.retrieve", ops_get), ("pacs.get", pacs_get)):
        for mode in ("memory", "disk"):
            if only and only != f"{name}:{mode}":
                continue
            res = {True: [], False: []}
            for _i in range(reps):
                for lean in (False, True):
                    settings.lean_plan = lean
                    t = time.perf_counter()
                    c = time.process_time()
                    fn(mode)
                    res[lean].append((time.perf_counter() - t, time.process_time() - c))
            line = f"{name:24} {mode:6} {n_studies}x{per}:"
            for lean in (False, True):
                w = statistics.median(r[0] for r in res[lean])
                c = statistics.median(r[1] for r in res[lean])
                line += (
                    f"  {'lean' if lean else 'listed'} wall {w * 1e3:7.1f} ms cpu {c * 1e3:6.1f} ms"
                )
            print(line, flush=True)
    pacs.close()
shutil.rmtree(work, ignore_errors=True)
