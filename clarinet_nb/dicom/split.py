"""Splitting one C-GET into parts that several associations can fetch at once.

A retrieve whose pre-query listed enough instances is cut into work items, in
plan order: a series that fits one item and that the request covers whole is
asked at SERIES level (one UID, cheap for the peer), a longer series (or part
of an instance list) in contiguous UID lists.  The items are a queue that each
association of the retrieve takes from until it is empty (``WorkQueue``).

Whether to split is measured, not assumed (``SplitProbe``): extra associations
only help when the client waits on the peer or the network.  The request first
goes out whole on one association (as without splitting: one STUDY- or
SERIES-level C-GET, cheaper for the peer than UID lists).  Once
``PROBE_INSTANCES`` instances have arrived after its first one, the process CPU
time over that stretch, plus the time the receiving thread waited for a CPU
(Linux run-queue delay: a busy machine, not a slow peer), is compared with its
wall time.  A client that used less than ``SPLIT_BUSY`` of it was waiting on the
other side (a network round trip per C-STORE, a PACS slow per sub-operation):
the request is cancelled (C-CANCEL) and what has not arrived is fetched in parts
over several associations.  A busier client (a peer on the same machine
answering as fast as we read, the CPU-bound pynetdicom receive path, a loaded
machine) gains little from more associations and would pay their CPU: the
request runs to its end, alone.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TypeVar

from pydicom import Dataset

from clarinet_nb.dicom.plan import PlannedInstance, RetrievePlan
from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.dicom.requests import RetrieveRequest, image_identifier

__all__ = [
    "MIN_CHUNK",
    "PROBE_INSTANCES",
    "SPLIT_BUSY",
    "SPLIT_MIN",
    "SplitProbe",
    "WorkQueue",
    "Workers",
    "busy_seconds",
    "work_items",
]

T = TypeVar("T")
logger = logging.getLogger("clarinet_nb")

MIN_CHUNK = 50
"""Fewest instances worth one C-GET request of their own."""
SPLIT_MIN = 2 * MIN_CHUNK
"""Fewest planned instances for which a retrieve is split over several associations."""
PROBE_INSTANCES = 16
"""Instances, after the first, over which the split probe measures the client's CPU."""
SPLIT_BUSY = 0.5
"""Split only when the client used (or waited for) less than this fraction of one CPU
over the probe.  Measured (benchmarks/PARALLEL.md, medians): 0.07-0.30 with 1 ms one-way
latency (splitting paid 1.3-2.1x), 0.22-0.35 against Orthanc with 0.25 ms (1.4-1.6x),
0.48-0.51 against dcmqrscp with 0.25 ms (0.9x: no gain), 0.65-1.01 for a peer on the
same 2-core machine, lean path or pynetdicom's (where it only cost CPU)."""


def busy_seconds() -> float:
    """Process CPU seconds plus the calling thread's run-queue delay (Linux; else 0)."""
    cpu = time.process_time()
    try:
        with open("/proc/thread-self/schedstat", "rb") as fh:
            fields = fh.read().split()
        return cpu + int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return cpu


class SplitProbe:
    """Decides, from the first instances received, whether extra associations would help.

    :meth:`tick` is called once per stored instance (from any receiving thread).
    The stretch measured runs from the first instance to the ``instances``-th after
    it; at its end ``start`` is called (in the ticking thread) when the busy time
    over the stretch (``cpu``: :func:`busy_seconds`) was less than ``busy`` times
    its wall time.  Decides once; :meth:`stop` ends it undecided (the request
    finished first)."""

    def __init__(
        self,
        start: Callable[[], object],
        instances: int = PROBE_INSTANCES,
        busy: float = SPLIT_BUSY,
        clock: Callable[[], float] = time.perf_counter,
        cpu: Callable[[], float] = busy_seconds,
    ) -> None:
        self._start = start
        self.instances = max(1, instances)
        self.busy = busy
        self._clock = clock
        self._cpu = cpu
        self._lock = threading.Lock()
        self._seen = 0
        self._t0 = self._c0 = 0.0
        self.decided = False
        self.load: float | None = None
        """Busy seconds per wall second over the stretch, once measured."""
        self.split: bool | None = None

    def tick(self, _n: int = 1) -> None:
        with self._lock:
            if self.decided:
                return
            self._seen += 1
            if self._seen == 1:
                self._t0, self._c0 = self._clock(), self._cpu()
                return
            if self._seen <= self.instances:
                return
            self.decided = True
            wall = self._clock() - self._t0
            self.load = (self._cpu() - self._c0) / wall if wall > 0 else float("inf")
            self.split = self.load < self.busy
        logger.debug(
            "split probe: the client used %.2f CPU over %d instances: %s",
            self.load,
            self.instances,
            "splitting" if self.split else "one association",
        )
        if self.split:
            self._start()

    def stop(self) -> None:
        """Decide nothing more."""
        with self._lock:
            self.decided = True


def work_items(
    request: RetrieveRequest,
    plan: RetrievePlan,
    workers: int,
    min_chunk: int = MIN_CHUNK,
    begun: set[str] | frozenset[str] = frozenset(),
) -> list[Dataset]:
    """C-GET identifiers that together ask for exactly what ``plan`` lists.

    About two items per worker (so that a fast association takes more of them),
    none smaller than ``min_chunk`` instances unless its series is.  A series in
    ``begun`` (some of its instances already arrived) is never asked whole.
    Returns [] when the plan cannot be split (an instance without study or series UID).
    """
    groups: dict[tuple[str, str], list[PlannedInstance]] = {}
    for inst in plan.instances:
        if not inst.study_uid or not inst.series_uid:
            return []
        groups.setdefault((inst.study_uid, inst.series_uid), []).append(inst)
    chunk = max(min_chunk, math.ceil(len(plan) / max(1, 2 * workers)))
    whole = request.level in (QueryLevel.STUDY, QueryLevel.SERIES)
    items: list[Dataset] = []
    for (study, series), members in groups.items():
        if whole and len(members) <= chunk and series not in begun:
            items.append(_series_identifier(study, series))
            continue
        # equal contiguous parts of at most ``chunk`` instances
        parts = math.ceil(len(members) / chunk)
        size = math.ceil(len(members) / parts)
        for i in range(0, len(members), size):
            uids = [m.sop_uid for m in members[i : i + size]]
            items.append(image_identifier(study, series, uids))
    return items


def _series_identifier(study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    return ds


@dataclass
class WorkQueue:
    """Work items shared by the associations of one retrieve (thread-safe).

    Iterating takes items until none is left or the queue is closed."""

    items: list[Dataset]
    _next: int = 0
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> Dataset | None:
        """The next item, or None when the queue is empty or closed."""
        with self._lock:
            if self._closed or self._next >= len(self.items):
                return None
            item = self.items[self._next]
            self._next += 1
            return item

    def close(self) -> None:
        """Hand out nothing more."""
        with self._lock:
            self._closed = True

    @property
    def left(self) -> int:
        """Items not handed out yet (0 once closed)."""
        with self._lock:
            return 0 if self._closed else len(self.items) - self._next

    def __iter__(self) -> Iterator[Dataset]:
        while (item := self.take()) is not None:
            yield item


class Workers:
    """The worker threads of one DicomClient: each holds at most one association.

    Extra associations of a split retrieve run as jobs of the same pool, so a
    client never holds more than its ``size`` associations, however its
    retrieves split; a job queued behind other work starts only when a thread
    is free (and is dropped when its retrieve ended first).
    """

    def __init__(self, executor: Executor, size: int) -> None:
        self.executor = executor
        self.size = size
        self._local = threading.local()
        self._lock = threading.Lock()
        self._outstanding = 0

    def wrap(self, fn: Callable[[], T]) -> Callable[[], T]:
        """``fn`` marked as running on one of these threads (see :meth:`inside`), and
        counted as outstanding from now until it ends: submit it at once."""
        with self._lock:
            self._outstanding += 1

        def run() -> T:
            self._local.inside = True
            try:
                return fn()
            finally:
                self._local.inside = False
                self._done()

        return run

    def _done(self) -> None:
        with self._lock:
            self._outstanding -= 1

    def free(self) -> int:
        """Threads neither busy nor promised to a queued job."""
        with self._lock:
            return max(0, self.size - self._outstanding)

    def cancel(self, future: Future[T]) -> bool:
        """Drop a queued job; False when it has started (it will end by itself)."""
        if future.cancel():
            self._done()
            return True
        return False

    def inside(self) -> bool:
        """True on a worker thread running a wrapped job."""
        return bool(getattr(self._local, "inside", False))

    def submit(self, fn: Callable[[], T]) -> Future[T] | None:
        """Queue ``fn`` on the pool; None when the pool is shut down."""
        job = self.wrap(fn)
        try:
            return self.executor.submit(job)
        except RuntimeError:  # shut down
            self._done()
            return None
