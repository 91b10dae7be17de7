"""Pulls of whole frames: into memory (with a memory limit) or onto disk (with a manifest).

Every target (study, series or instance group) is planned first, so a pull
knows how many instances it should bring: a pull to memory from the study and
series counts where the PACS answers them (``settings.lean_plan``; the retrieve
lists only what came up short), a pull to disk with an IMAGE level C-FIND (its
manifest has a row for every instance, and files already there are skipped).  A disk
pull skips instances whose files are already there, which makes a second
``get`` of the same frame a resume; it writes ``manifest.parquet`` next to the
files.  A memory pull stops early, with C-CANCEL, when what arrives projects
past the memory limit.  Pre-queries and retrieve units are retried after
transient failures (:mod:`clarinet_nb.dicom.retry`); a retried unit asks only for
the instances that have not arrived, and reports its ``attempts``.
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
from pydicom.dataelem import RawDataElement

from clarinet_nb.dicom.cancel import CancelToken
from clarinet_nb.dicom.client import DicomClient
from clarinet_nb.dicom.handlers import storage_reason
from clarinet_nb.dicom.models import (
    DicomNode,
    RetrieveResult,
    RetrieveStatus,
    StorageConfig,
    StorageMode,
)
from clarinet_nb.dicom.paths import instance_path
from clarinet_nb.dicom.plan import PlannedInstance, RetrievePlan
from clarinet_nb.dicom.requests import RetrieveRequest
from clarinet_nb.dicom.retry import (
    attempts_of,
    backoff,
    call_with_retries,
    give_up,
    is_transient,
    set_attempts,
)
from clarinet_nb.errors import DicomError, LocalStorageError, MemoryLimitError, RetrieveError
from clarinet_nb.notebook.concurrency import run_bounded
from clarinet_nb.notebook.parquet import write_parquet
from clarinet_nb.notebook.progress import ProgressLike, SharedProgress
from clarinet_nb.settings import settings

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
#: per instance: how many times the retrieve unit that brought it was requested (0: present)
ATTEMPTS_COLUMN = "attempts"
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
    """(study, series number, series, instance number, SOP instance) of a dataset.

    Read from the raw bytes when the elements are still raw (as received: converting
    five elements of every dataset just to sort them was a tenth of a 2,000-instance
    pull); through pydicom otherwise."""
    raw = getattr(ds, "_dict", None)
    if isinstance(raw, dict):
        fast = _raw_sort_key(raw)
        if fast is not None:
            return fast

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


_KEY_TAGS = (0x0020000D, 0x00200011, 0x0020000E, 0x00200013, 0x00080018)


def _raw_sort_key(elements: dict[Any, Any]) -> tuple[str, int, str, int, str] | None:
    """The sort key from raw elements holding plain ASCII single values, else None."""
    parts: list[str] = []
    for tag in _KEY_TAGS:
        elem = elements.get(tag)
        if elem is None:
            parts.append("")
            continue
        if not isinstance(elem, RawDataElement) or not isinstance(elem.value, bytes):
            return None
        value = elem.value
        if b"\\" in value or not value.isascii():
            return None
        parts.append(value.decode("ascii").strip(" \x00"))
    numbers = []
    for text in (parts[1], parts[3]):
        if not text:
            numbers.append(0)
        elif text.lstrip("+-").isdigit():
            numbers.append(int(text))
        else:
            return None  # an unusual IS: pydicom decides
    return parts[0], numbers[0], parts[2], numbers[1], parts[4]


@dataclass
class _Outcome:
    """What happened to one target."""

    request: RetrieveRequest
    plan: RetrievePlan | None = None
    result: RetrieveResult | None = None
    error: Exception | None = None
    present: list[PlannedInstance] = field(default_factory=list)
    attempts: int = 0
    """Requests made for this target (its pre-query's attempts until it is retrieved)."""


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
            "attempts": max(outcome.attempts, 1),
        }
    return None


async def _plan_all(
    client: DicomClient,
    peer: DicomNode,
    targets: Sequence[RetrieveRequest],
    cancel: CancelToken,
    lean: bool = False,
) -> list[_Outcome]:
    """Plan every target: listed, or (``lean``) from study/series counts where it can."""
    policy = client.retry_policy
    extra = {"lean": True} if lean else {}

    async def plan(request: RetrieveRequest) -> _Outcome:
        outcome = _Outcome(request)
        call = functools.partial(client.plan, request, peer=peer, cancel=cancel, **extra)
        try:
            what = f"pre-query of a {request.level.value} retrieve from {peer}"
            found, outcome.attempts = await call_with_retries(call, policy, what)
            outcome.plan = found
            if not len(found):
                outcome.error = LookupError(f"nothing on {peer} matches {_describe(request)}")
        except DicomError as exc:
            outcome.error = exc
            outcome.attempts = attempts_of(exc)
        return outcome

    return await run_bounded(client.max_associations, [functools.partial(plan, r) for r in targets])


def _subplan(plan: RetrievePlan, instances: list[PlannedInstance]) -> RetrievePlan:
    return RetrievePlan(list(instances), plan.declared_classes)


def _split_by_series(
    plan: RetrievePlan, instances: list[PlannedInstance]
) -> list[tuple[RetrieveRequest, RetrievePlan]]:
    """One instance-level request (and its sub-plan) per series of ``instances``."""
    by_series: dict[tuple[str, str], list[PlannedInstance]] = {}
    for inst in instances:
        by_series.setdefault((inst.study_uid, inst.series_uid), []).append(inst)
    return [
        (
            RetrieveRequest.instances([i.sop_uid for i in insts], series, study),
            _subplan(plan, insts),
        )
        for (study, series), insts in by_series.items()
    ]


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
    present: Callable[[PlannedInstance], bool] | None = None,
) -> None:
    """Retrieve one unit into ``outcome``; after a transient failure, retry what is missing.

    A retry re-requests only the instances that have not arrived (nor, with
    ``present``, are already stored), one instance-level request per series.
    ``outcome.result`` always holds what arrived over every attempt so far
    (with ``attempts``), ``outcome.error`` the error that ended them, if any.
    """
    policy = client.retry_policy
    what = f"{method.upper()} of a {request.level.value} from {peer}"
    results: list[RetrieveResult] = []
    todo = [(request, plan)]
    outcome.attempts = 0
    while True:
        outcome.attempts += 1
        errors: list[Exception] = []
        for req, sub in todo:
            try:
                results.append(
                    await client.retrieve(
                        method,
                        req,
                        peer=peer,
                        storage=storage,
                        plan=sub,
                        progress=progress,
                        cancel=cancel,
                        on_stored=on_stored,
                    )
                )
            except (RetrieveError, LocalStorageError) as exc:
                if exc.result is not None:  # what arrived before it broke off or the disk filled
                    results.append(exc.result)
                errors.append(exc)
            except DicomError as exc:
                errors.append(exc)
            finally:
                outcome.result = _merged(method, request, peer, plan, results, outcome.attempts)
        if not plan.listed:  # a lean plan: the retrieve listed it after the transfer
            plan = await _listed(client, peer, request, outcome, errors, cancel)
            if not plan.listed:
                if errors:  # nothing to name, nothing to retry by instance: the error stands
                    outcome.error = errors[0]
                    set_attempts(errors[0], outcome.attempts)
                return
            outcome.plan = plan
        arrived = set(outcome.result.received_sop_instance_uids) if outcome.result else set()
        missing = [
            i
            for i in plan.instances
            if i.sop_uid not in arrived and not (present is not None and present(i))
        ]
        if not errors or not missing:
            outcome.error = None
            if errors and outcome.result is not None:
                # the connection broke off after everything the pre-query listed had arrived
                logger.info("%s: every instance arrived despite %s", what, type(errors[0]).__name__)
                outcome.result.status = RetrieveStatus.SUCCESS
            return
        permanent = [e for e in errors if not is_transient(e)]
        error = permanent[0] if permanent else errors[-1]
        if permanent or outcome.attempts > policy.retries or cancel.cancelled:
            if not cancel.cancelled:
                give_up(policy, outcome.attempts, what, error)
            set_attempts(error, outcome.attempts)
            outcome.error = error
            return
        await backoff(policy, outcome.attempts, f"{what} ({len(missing)} missing)", error)
        todo = _split_by_series(plan, missing)


async def _listed(
    client: DicomClient,
    peer: DicomNode,
    request: RetrieveRequest,
    outcome: _Outcome,
    errors: list[Exception],
    cancel: CancelToken,
) -> RetrievePlan:
    """The listed plan of a unit retrieved on a lean plan: the one its retrieve settled,
    else (it broke off before) a listing, when a retry needs to know what is missing."""
    settled = outcome.result._plan if outcome.result is not None else None
    if isinstance(settled, RetrievePlan) and settled.listed:
        return settled
    lean = outcome.plan or RetrievePlan(listed=False)
    if not errors or cancel.cancelled:
        return lean
    call = functools.partial(client.plan, request, peer=peer, cancel=cancel)
    try:
        found, _ = await call_with_retries(call, client.retry_policy, f"listing for {peer}")
    except DicomError as exc:
        logger.info("could not list a unit that broke off: %s", exc)
        return lean
    return found


def _merged(
    method: Method,
    request: RetrieveRequest,
    peer: DicomNode,
    plan: RetrievePlan,
    results: list[RetrieveResult],
    attempts: int,
) -> RetrieveResult | None:
    """One RetrieveResult for a unit from the results of all its requests."""
    if not results:
        return None
    if len(results) == 1:
        result = results[0].model_copy()
        result.attempts = attempts
        return result
    received = list(dict.fromkeys(u for r in results for u in r.received_sop_instance_uids))
    got = set(received)
    last = results[-1]
    failed = [
        u
        for u in dict.fromkeys(u for r in results for u in r.failed_sop_instance_uids)
        if u not in got
    ]
    bad = got | set(failed)
    missing = [u for u in plan.sop_uids if u not in bad]
    if last.status is RetrieveStatus.CANCELLED:
        status = RetrieveStatus.CANCELLED
    elif not failed and not missing:
        status = RetrieveStatus.SUCCESS
    else:
        status = RetrieveStatus.PARTIAL if got else RetrieveStatus.FAILED
    return RetrieveResult(
        method=method,
        level=request.level,
        peer=str(peer),
        status=status,
        dimse_status=last.dimse_status,
        expected=len(plan),
        received=len(got),
        completed=sum(r.completed for r in results),
        failed=last.failed,
        warning=sum(r.warning for r in results),
        failed_sop_instance_uids=failed,
        missing_sop_instance_uids=missing,
        received_sop_instance_uids=received,
        paths=[p for r in results for p in r.paths],
        datasets=[d for r in results for d in r.datasets],
        forwarded_sop_instance_uids=[u for r in results for u in r.forwarded_sop_instance_uids],
        bytes_received=sum(r.bytes_received for r in results),
        elapsed=sum(r.elapsed for r in results),
        associations=sum(r.associations for r in results),
        message=last.message,
        attempts=attempts,
    )


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
    outcomes = await _plan_all(client, peer, targets, cancel, lean=settings.lean_plan)
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
    # listed up front: the manifest has a row for every instance, even of a unit
    # interrupted or never started, and files already there are skipped
    outcomes = await _plan_all(client, peer, targets, cancel)
    work: list[tuple[_Outcome, RetrieveRequest, RetrievePlan]] = []
    for outcome in outcomes:
        if outcome.plan is None or outcome.error is not None:
            continue
        planned: RetrievePlan = outcome.plan
        todo = []
        for inst in planned.instances:
            if _path(output_dir, inst).is_file():
                outcome.present.append(inst)
            else:
                todo.append(inst)
        if not outcome.present:
            work.append((outcome, outcome.request, planned))
            continue
        for request, subplan in _split_by_series(planned, todo):
            work.append((outcome, request, subplan))
    total = sum(len(plan) for _, _, plan in work)
    bar = SharedProgress(total, f"C-{method.upper()} to {output_dir.name or output_dir}", progress)
    storage = StorageConfig(mode=StorageMode.DISK, output_dir=output_dir)
    results: dict[int, list[_Outcome]] = {}

    def on_disk(inst: PlannedInstance) -> bool:
        return _path(output_dir, inst).is_file()

    storage_failed: list[LocalStorageError] = []

    async def run(outcome: _Outcome, request: RetrieveRequest, plan: RetrievePlan) -> None:
        part = _Outcome(request, plan)
        results.setdefault(id(outcome), []).append(part)  # seen by an interrupt, too
        if storage_failed:  # the disk is full or read-only: do not even ask
            part.error = LocalStorageError("not retrieved: local storage had failed")
        else:
            await _retrieve(
                client, peer, method, part, request, plan, storage, bar, cancel, present=on_disk
            )
        failure = part.error
        first = isinstance(failure, LocalStorageError) and not storage_failed
        if first and isinstance(failure, LocalStorageError) and failure.result is not None:
            storage_failed.append(failure)
            cancel.cancel()  # stop the other retrieves of this pull too (C-CANCEL)
        outcome.attempts = max(outcome.attempts, part.attempts)
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
    results: dict[int, list[_Outcome]],
    interrupted: bool = False,
) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.plan is None:
            continue
        got: set[str] = set()
        failed: dict[str, str] = {}
        missing: dict[str, str] = {}
        attempts: dict[str, int] = {}
        for part in results.get(id(outcome), []):
            result, error = part.result, part.error
            for inst in part.plan.instances if part.plan is not None else ():
                attempts[inst.sop_uid] = max(part.attempts, 1)
            if result is not None:
                got.update(result.received_sop_instance_uids)
                for uid in result.failed_sop_instance_uids:
                    failed[uid] = f"the sub-operation failed ({result.message or 'no status'})"
                for uid in result.missing_sop_instance_uids:
                    missing[uid] = f"never arrived ({result.message or 'no status'})"
            if error is not None:
                message = f"{type(error).__name__}: {error}"
                planned = part.plan or outcome.plan
                missing.update(
                    {i.sop_uid: message for i in planned.instances if i.sop_uid not in got}
                )
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
                    ATTEMPTS_COLUMN: 0 if status == "present" else attempts.get(inst.sop_uid, 1),
                }
            )
    frame = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, ATTEMPTS_COLUMN])
    for column in MANIFEST_COLUMNS:
        frame[column] = frame[column].astype(pd.StringDtype("pyarrow"))
    frame[ATTEMPTS_COLUMN] = frame[ATTEMPTS_COLUMN].astype("int64")
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
