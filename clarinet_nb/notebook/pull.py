"""Pulls of whole frames: into memory (with a memory limit) or onto disk (with a manifest).

Every target (study, series or instance group) is planned first with an
IMAGE level C-FIND, so a pull knows how many instances it should bring.  A disk
pull skips instances whose files are already there, which makes a second
``get`` of the same frame a resume; it writes ``manifest.parquet`` next to the
files.  A memory pull stops early, with C-CANCEL, when what arrives projects
past the memory limit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydicom import Dataset

from clarinet_nb.dicom.cancel import CancelToken
from clarinet_nb.dicom.client import DicomClient
from clarinet_nb.dicom.handlers import storage_reason
from clarinet_nb.dicom.models import DicomNode, RetrieveResult, StorageConfig, StorageMode
from clarinet_nb.dicom.paths import instance_path
from clarinet_nb.dicom.plan import PlannedInstance, RetrievePlan
from clarinet_nb.dicom.requests import RetrieveRequest
from clarinet_nb.errors import DicomError, LocalStorageError, MemoryLimitError, RetrieveError
from clarinet_nb.notebook.concurrency import run_bounded
from clarinet_nb.notebook.parquet import write_parquet
from clarinet_nb.notebook.progress import ProgressLike, SharedProgress

__all__ = ["DatasetList", "MANIFEST_NAME", "pull_to_disk", "pull_to_memory"]

logger = logging.getLogger("clarinet_nb")

MANIFEST_NAME = "manifest.parquet"
MANIFEST_COLUMNS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "path",
    "status",
    "error",
]
Method = Literal["get", "move"]


class DatasetList(list[Dataset]):
    """Datasets of an in-memory pull, sorted by study, series and instance number."""

    failures: list[dict[str, Any]]
    results: list[RetrieveResult]

    def by_series(self) -> dict[str, list[Dataset]]:
        """Series Instance UID -> datasets in InstanceNumber order."""
        groups: dict[str, list[Dataset]] = {}
        for ds in self:
            groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
        return groups


def _sort_key(ds: Dataset) -> tuple[str, int, str, int, str]:
    def number(keyword: str) -> int:
        try:
            return int(ds.get(keyword) or 0)
        except (TypeError, ValueError):
            return 0

    return (
        str(ds.get("StudyInstanceUID", "")),
        number("SeriesNumber"),
        str(ds.get("SeriesInstanceUID", "")),
        number("InstanceNumber"),
        str(ds.get("SOPInstanceUID", "")),
    )


@dataclass
class _Outcome:
    """What happened to one target."""

    request: RetrieveRequest
    plan: RetrievePlan | None = None
    result: RetrieveResult | None = None
    error: Exception | None = None
    present: list[PlannedInstance] = field(default_factory=list)


def _describe(request: RetrieveRequest) -> dict[str, Any]:
    return {
        "level": request.level.value,
        "StudyInstanceUID": request.study_uid,
        "SeriesInstanceUID": request.series_uid,
        "SOPInstanceUID": list(request.sop_uids) or None,
    }


def _failure(outcome: _Outcome) -> dict[str, Any] | None:
    if outcome.error is not None:
        return {
            **_describe(outcome.request),
            "error": type(outcome.error).__name__,
            "message": str(outcome.error),
        }
    return None


async def _plan_all(
    client: DicomClient, peer: DicomNode, targets: Sequence[RetrieveRequest], cancel: CancelToken
) -> list[_Outcome]:
    async def plan(request: RetrieveRequest) -> _Outcome:
        outcome = _Outcome(request)
        try:
            outcome.plan = await client.plan(request, peer=peer, cancel=cancel)
            if not outcome.plan.instances:
                outcome.error = LookupError(f"nothing on {peer} matches {_describe(request)}")
        except DicomError as exc:
            outcome.error = exc
        return outcome

    return await run_bounded(client.max_associations, [functools.partial(plan, r) for r in targets])


def _subplan(plan: RetrievePlan, instances: list[PlannedInstance]) -> RetrievePlan:
    return RetrievePlan(list(instances), plan.declared_classes)


async def _retrieve(
    client: DicomClient,
    peer: DicomNode,
    method: Method,
    outcome: _Outcome,
    request: RetrieveRequest,
    plan: RetrievePlan,
    storage: StorageConfig,
    progress: SharedProgress,
    cancel: CancelToken,
    on_stored: Callable[[str, int], object] | None = None,
) -> None:
    try:
        outcome.result = await client.retrieve(
            method,
            request,
            peer=peer,
            storage=storage,
            plan=plan,
            progress=progress,
            cancel=cancel,
            on_stored=on_stored,
        )
    except RetrieveError as exc:
        outcome.result = exc.result
        outcome.error = exc
    except DicomError as exc:
        outcome.error = exc


class _MemoryGuard:
    """Stops a memory pull (C-CANCEL) once what arrives projects past the limit."""

    def __init__(self, limit: int, expected: int, cancel: CancelToken) -> None:
        self.limit = limit
        self.expected = max(expected, 1)
        self.cancel = cancel
        self.bytes = 0
        self.count = 0
        self.tripped = False
        self.lock = threading.Lock()

    def projected(self) -> int:
        return int(self.bytes / max(self.count, 1) * self.expected)

    def add(self, sop_uid: str, nbytes: int) -> None:
        with self.lock:
            self.bytes += nbytes
            self.count += 1
            sample = max(3, self.expected // 20)
            over = self.bytes > self.limit or (
                self.count >= sample and self.projected() > self.limit
            )
            if over and not self.tripped:
                self.tripped = True
                self.cancel.cancel()


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


async def pull_to_memory(
    client: DicomClient,
    peer: DicomNode,
    targets: Sequence[RetrieveRequest],
    *,
    method: Method = "get",
    memory_limit: int,
    progress: bool | ProgressLike = True,
    interrupted: list[Any] | None = None,
) -> DatasetList:
    """Retrieve ``targets`` as pydicom datasets, stopping early past ``memory_limit`` bytes.

    When the pull is cancelled (an interrupt), what arrived is appended to
    ``interrupted`` as a DatasetList before CancelledError propagates.
    """
    cancel = CancelToken()
    outcomes = await _plan_all(client, peer, targets, cancel)
    expected = sum(len(o.plan) for o in outcomes if o.plan is not None and o.error is None)
    guard = _MemoryGuard(memory_limit, expected, cancel)
    bar = SharedProgress(expected, f"C-{method.upper()} to memory", progress)
    storage = StorageConfig(mode=StorageMode.MEMORY)
    try:
        jobs = [
            functools.partial(
                _retrieve,
                client,
                peer,
                method,
                o,
                o.request,
                o.plan,
                storage,
                bar,
                cancel,
                guard.add,
            )
            for o in outcomes
            if o.plan is not None and o.error is None
        ]
        await run_bounded(client.max_associations, jobs)
    except asyncio.CancelledError:
        if interrupted is not None:
            results = [o.result for o in outcomes if o.result is not None]
            results += [r for r in cancel.partials if isinstance(r, RetrieveResult)]
            arrived = DatasetList(sorted((d for r in results for d in r.datasets), key=_sort_key))
            arrived.failures, arrived.results = [], results
            interrupted.append(arrived)
        raise
    finally:
        bar.close()
    datasets = DatasetList(
        sorted((ds for o in outcomes if o.result for ds in o.result.datasets), key=_sort_key)
    )
    if guard.tripped:
        projected = guard.projected()
        raise MemoryLimitError(
            f"this pull would bring about {_size(projected)} ({expected} instances, "
            f"{_size(guard.bytes / max(guard.count, 1))} each on average so far), over the "
            f"memory limit of {_size(memory_limit)}; stopped after {guard.count} instances. "
            "Retrieve to disk with output_dir=, pull fewer rows, or raise memory_limit.",
            projected_bytes=projected,
            limit=memory_limit,
            received=guard.count,
        )
    datasets.failures = [f for f in map(_failure, outcomes) if f]
    datasets.results = [o.result for o in outcomes if o.result is not None]
    return datasets


async def pull_to_disk(
    client: DicomClient,
    peer: DicomNode,
    targets: Sequence[RetrieveRequest],
    output_dir: Path,
    *,
    method: Method = "get",
    progress: bool | ProgressLike = True,
    interrupted: list[Any] | None = None,
) -> pd.DataFrame:
    """Retrieve ``targets`` into ``output_dir``, skipping files already there.

    Returns the manifest of every planned instance (also written to
    ``output_dir/manifest.parquet``): UIDs, ``path`` and ``status`` (``present``
    from an earlier pull, ``retrieved``, ``failed``, ``missing``) with ``error``.
    A local storage failure (disk full, read-only) stops the pull and raises
    LocalStorageError carrying that manifest (``.manifest``), written if it can be.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalStorageError(
            f"cannot create output_dir {output_dir}: {storage_reason(exc)}; nothing was retrieved"
        ) from exc
    cancel = CancelToken()
    outcomes = await _plan_all(client, peer, targets, cancel)
    work: list[tuple[_Outcome, RetrieveRequest, RetrievePlan]] = []
    for outcome in outcomes:
        if outcome.plan is None or outcome.error is not None:
            continue
        todo = []
        for inst in outcome.plan.instances:
            if _path(output_dir, inst).is_file():
                outcome.present.append(inst)
            else:
                todo.append(inst)
        if not outcome.present:
            work.append((outcome, outcome.request, outcome.plan))
            continue
        by_series: dict[tuple[str, str], list[PlannedInstance]] = {}
        for inst in todo:
            by_series.setdefault((inst.study_uid, inst.series_uid), []).append(inst)
        for (study, series), insts in by_series.items():
            request = RetrieveRequest.instances([i.sop_uid for i in insts], series, study)
            work.append((outcome, request, _subplan(outcome.plan, insts)))
    total = sum(len(plan) for _, _, plan in work)
    bar = SharedProgress(total, f"C-{method.upper()} to {output_dir.name or output_dir}", progress)
    storage = StorageConfig(mode=StorageMode.DISK, output_dir=output_dir)
    results: dict[int, list[tuple[RetrieveResult | None, Exception | None]]] = {}

    storage_failed: list[LocalStorageError] = []

    async def run(outcome: _Outcome, request: RetrieveRequest, plan: RetrievePlan) -> None:
        part = _Outcome(request)
        if storage_failed:  # the disk is full or read-only: do not even ask
            part.error = LocalStorageError("not retrieved: local storage had failed")
        else:
            await _retrieve(client, peer, method, part, request, plan, storage, bar, cancel)
        if isinstance(part.error, LocalStorageError) and part.error.result is not None:
            part.result = part.result or part.error.result
            if not storage_failed:
                storage_failed.append(part.error)
                cancel.cancel()  # stop the other retrieves of this pull too (C-CANCEL)
        results.setdefault(id(outcome), []).append((part.result, part.error))
        if part.error is not None and outcome.error is None:
            outcome.error = part.error

    try:
        await run_bounded(client.max_associations, [functools.partial(run, *w) for w in work])
    except asyncio.CancelledError:
        # what is on disk now is complete (written then renamed): list it, then stop
        manifest = _manifest(output_dir, outcomes, results, interrupted=True)
        try:
            _write_manifest(output_dir, manifest)
        except OSError as exc:
            logger.warning("could not write the manifest: %s", storage_reason(exc))
        if interrupted is not None:
            interrupted.append(manifest)
        raise
    finally:
        bar.close()
    manifest = _manifest(output_dir, outcomes, results)
    manifest.attrs["failures"] = [f for f in map(_failure, outcomes) if f]
    try:
        _write_manifest(output_dir, manifest)
        not_written = None
    except OSError as exc:
        not_written = storage_reason(exc)
    if storage_failed or not_written:
        raise _storage_error(output_dir, manifest, storage_failed, not_written)
    return manifest


def _storage_error(
    root: Path, manifest: pd.DataFrame, failed: list[LocalStorageError], not_written: str | None
) -> LocalStorageError:
    """A pull to disk stopped (or could not record itself) on a local storage failure."""
    arrived = int(manifest["status"].isin(["present", "retrieved"]).sum())
    first = failed[0] if failed else None
    cause = first.__cause__ if first is not None else None
    reason = storage_reason(cause) if isinstance(cause, OSError) else not_written
    where = (
        f"also written to {root / MANIFEST_NAME}"
        if not_written is None
        else f"{MANIFEST_NAME} could NOT be written ({not_written}): save exc.manifest elsewhere"
    )
    stopped = "the pull was stopped; " if first is not None else ""
    error = LocalStorageError(
        f"local storage failed in {root}: {reason}; {stopped}{arrived} of {len(manifest)} "
        f"instance(s) are complete on disk. The manifest of every instance and its outcome is "
        f"exc.manifest ({where}). Free space or choose a writable output_dir, then get again: "
        "what is there is skipped.",
        result=first.result if first is not None else None,
        manifest=manifest,
    )
    error.__cause__ = cause
    return error


def _path(root: Path, inst: PlannedInstance) -> Path:
    return instance_path(root, inst.study_uid, inst.series_uid, inst.sop_uid)


def _manifest(
    root: Path,
    outcomes: list[_Outcome],
    results: dict[int, list[tuple[RetrieveResult | None, Exception | None]]],
    interrupted: bool = False,
) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.plan is None:
            continue
        got: set[str] = set()
        failed: dict[str, str] = {}
        missing: dict[str, str] = {}
        for result, error in results.get(id(outcome), []):
            if result is not None:
                got.update(result.received_sop_instance_uids)
                for uid in result.failed_sop_instance_uids:
                    failed[uid] = f"the sub-operation failed ({result.message or 'no status'})"
                for uid in result.missing_sop_instance_uids:
                    missing[uid] = f"never arrived ({result.message or 'no status'})"
            if error is not None and result is None:
                message = f"{type(error).__name__}: {error}"
                missing.update({i.sop_uid: message for i in outcome.plan.instances})
        present = {i.sop_uid for i in outcome.present}
        for inst in outcome.plan.instances:
            path = _path(root, inst)
            error_text: str | None = None
            if inst.sop_uid in present:
                status = "present"
            elif (inst.sop_uid in got or interrupted) and path.is_file():
                status = "retrieved"
            elif inst.sop_uid in failed:
                status, error_text = "failed", failed[inst.sop_uid]
            else:
                status = "missing"
                error_text = missing.get(inst.sop_uid) or (
                    "interrupted" if interrupted else _error_text(outcome)
                )
            rows.append(
                {
                    "StudyInstanceUID": inst.study_uid,
                    "SeriesInstanceUID": inst.series_uid,
                    "SOPInstanceUID": inst.sop_uid,
                    "SOPClassUID": inst.sop_class_uid or None,
                    "path": str(path),
                    "status": status,
                    "error": error_text,
                }
            )
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for column in MANIFEST_COLUMNS:
        frame[column] = frame[column].astype(pd.StringDtype("pyarrow"))
    frame.attrs["output_dir"] = str(root)
    frame.attrs["time"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return frame


def _error_text(outcome: _Outcome) -> str:
    if outcome.error is not None:
        return f"{type(outcome.error).__name__}: {outcome.error}"
    return "never arrived"


def _write_manifest(root: Path, manifest: pd.DataFrame) -> None:
    """Merge ``manifest`` into ``root/manifest.parquet`` (newest row per instance wins)."""
    path = root / MANIFEST_NAME
    frame = manifest
    if path.is_file():
        try:
            old = pd.read_parquet(path)
            keep = old[~old["SOPInstanceUID"].isin(manifest["SOPInstanceUID"])]
            frame = pd.concat([keep, manifest], ignore_index=True) if len(keep) else manifest
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("replacing an unreadable manifest: %s", exc)
    write_parquet(frame, path)
