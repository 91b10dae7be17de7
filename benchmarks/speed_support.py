"""Helpers of ``bench_speed.py``: a fast cohort writer, CPU accounting, the busy monitor.

Kept apart from the script so that the table logic stays readable; nothing here talks
DICOM over the network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID

from clarinet_nb.testing import generate_bulk

_ROOT = "1.2.826.0.1.3680043.9.7433"  # a fixed root: every UID below has the same length
_INSTANCE_PLACEHOLDER = b"987654"  # InstanceNumber (IS, 6 characters) in the template
_CLK = os.sysconf("SC_CLK_TCK")


def _uid(kind: int, cohort: int, study: int, series: int, instance: int) -> str:
    """A 46-character UID (even: no padding byte) unique per (kind, cohort, ...).

    Components are offset so they keep a fixed width without a leading zero."""
    return f"{_ROOT}.{kind}{cohort}.{10000 + study}.{100 + series}.{100000 + instance}"


@dataclass
class Study:
    uid: str
    series: list[str]
    per_series: int


@dataclass
class FastCohort:
    """``n_studies`` x ``series`` x ``per_series`` instances of one template, as files."""

    root: Path
    studies: list[Study] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    bytes: int = 0

    @property
    def instances(self) -> int:
        return len(self.files)

    @property
    def series(self) -> list[tuple[str, str]]:
        """(study UID, series UID) of every series."""
        return [(s.uid, se) for s in self.studies for se in s.series]


def write_cohort(
    root: Path, cohort_id: int, n_studies: int, series: int, per_series: int, size: int
) -> FastCohort:
    """Write a CT cohort by patching UIDs into the bytes of one Part-10 template.

    pydicom writes ~700 files/s; patching fixed-length UIDs writes ~20,000/s, which is
    what makes a 20,000-instance cohort cheap enough to build on every run. The template
    is ``generate_bulk``'s CT instance (Explicit VR Little Endian, ``size`` x ``size``
    16-bit pixels), so the data is the same kind every other benchmark uses.
    """
    if not 0 <= cohort_id <= 8:
        raise ValueError("cohort_id must be 0..8 (9 is the template's placeholder)")
    template_dir = root / "template"
    one = generate_bulk(template_dir, n_studies=1, per_study=1, rows=size, cols=size)
    ds = dcmread(one.instances[0].path)
    holders = [_uid(k, 9, 89999, 899, 899999) for k in (1, 2, 3)]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = holders
    ds.file_meta.MediaStorageSOPInstanceUID = UID(holders[2])
    ds.InstanceNumber = _INSTANCE_PLACEHOLDER.decode()
    ds.save_as(template_dir / "template.dcm", enforce_file_format=True)
    data = (template_dir / "template.dcm").read_bytes()
    marks = [h.encode() for h in holders]
    expected = (1, 1, 2, 1)  # study, series, SOP (meta + dataset), instance number
    for mark, count in zip([*marks, _INSTANCE_PLACEHOLDER], expected, strict=True):
        if data.count(mark) != count:
            raise RuntimeError(f"template: placeholder found {data.count(mark)} times")
    out = FastCohort(root)
    folder = root / "files"
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_studies):
        study_uid = _uid(1, cohort_id, s, 0, 0)
        study = Study(study_uid, [], per_series)
        with_study = data.replace(marks[0], study_uid.encode())
        for r in range(series):
            series_uid = _uid(2, cohort_id, s, r, 0)
            study.series.append(series_uid)
            with_series = with_study.replace(marks[1], series_uid.encode())
            for i in range(per_series):
                sop = _uid(3, cohort_id, s, r, i).encode()
                number = f"{r * per_series + i + 1:06d}".encode()
                blob = with_series.replace(marks[2], sop).replace(_INSTANCE_PLACEHOLDER, number)
                path = folder / f"{s:05d}-{r:03d}-{i:06d}.dcm"
                path.write_bytes(blob)
                out.files.append(path)
                out.bytes += len(blob)
        out.studies.append(study)
    return out


# --------------------------------------------------------------------------- CPU accounting


def pid_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) of a running process; 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in first]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    return (total - idle) / _CLK, total / _CLK


@dataclass
class Snapshot:
    """CPU counters at one instant: the machine, this process, its children, given pids."""

    wall: float
    busy: float
    total: float
    own: float
    children: float
    pids: dict[str, float]

    @classmethod
    def take(cls, pids: dict[str, int | None]) -> Snapshot:
        import resource

        busy, total = machine_cpu()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            wall=time.perf_counter(),
            busy=busy,
            total=total,
            own=time.process_time(),
            children=usage.ru_utime + usage.ru_stime,
            pids={name: pid_cpu(pid) for name, pid in pids.items()},
        )


@dataclass
class Usage:
    """What happened between two snapshots."""

    wall: float
    own: float  # this process, all threads
    children: float  # reaped child processes (DCMTK tools)
    pids: dict[str, float]  # long-running processes we started (Orthanc, storescp)
    idle_share: float  # of the whole machine
    others: float  # CPU seconds of processes that are not ours

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot) -> Usage:
        pids = {k: b.pids[k] - a.pids.get(k, 0.0) for k in b.pids}
        busy, total = b.busy - a.busy, b.total - a.total
        ours = (b.own - a.own) + (b.children - a.children) + sum(pids.values())
        return cls(
            wall=b.wall - a.wall,
            own=b.own - a.own,
            children=b.children - a.children,
            pids=pids,
            idle_share=1.0 - busy / total if total > 0 else 1.0,
            # /proc/stat ticks are coarse (10 ms): a small negative remainder is noise
            others=max(0.0, busy - ours),
        )

    def others_share(self, cpus: int) -> float:
        """Share of the machine's CPU time used by processes that are not ours."""
        return self.others / (self.wall * cpus) if self.wall > 0 else 0.0


def busy_warning(
    label: str, others_share: float, loadavg: Sequence[float] | None = None
) -> str | None:
    """A warning line when other processes used the machine (>10 %), or (before the run,
    ``loadavg`` given) the load is high.  During a group the load average counts the
    benchmark's own processes (client, PACS, DCMTK tools): only ``others_share`` says
    whether anything else ran."""
    load = loadavg[0] if loadavg is not None else 0.0
    if others_share > 0.10 or load > 0.5:
        return (
            f"WARNING: machine busy {label}: other processes used {others_share:.0%} of all "
            f"CPU time, load average {load:.2f}; timings are skewed"
        )
    return None
