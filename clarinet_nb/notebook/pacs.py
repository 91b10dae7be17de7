"""``cnb.connect()``: a PACS for notebooks, DICOM keywords in, DataFrames out.

Every method has an async twin (``find_studies`` / ``afind_studies``): the async
ones run on the caller's event loop; the sync ones run the same coroutine on
clarinet_nb's private loop (see :mod:`clarinet_nb.notebook.runner`), so they
work in a plain script, inside a running Jupyter kernel, and where
nest_asyncio has been applied.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydicom import Dataset, dcmread

from clarinet_nb.dicom.association import Timeouts
from clarinet_nb.dicom.client import DicomClient
from clarinet_nb.dicom.findpool import FindPool
from clarinet_nb.dicom.handlers import storage_reason
from clarinet_nb.dicom.models import DicomNode
from clarinet_nb.dicom.operations import FindOutcome
from clarinet_nb.dicom.params import check_cache_dir, check_result_cap, parse_size
from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.dicom.retry import RetryPolicy, attempts_of, call_with_retries, set_attempts
from clarinet_nb.dicom.tls import TLSConfig
from clarinet_nb.errors import DicomError, InvalidInputError, LocalStorageError
from clarinet_nb.notebook.cache import QueryCache
from clarinet_nb.notebook.concurrency import run_bounded
from clarinet_nb.notebook.criteria import KeywordQuery, is_missing, parse_level
from clarinet_nb.notebook.frames import empty_frame, to_frame
from clarinet_nb.notebook.headers import header_frame, write_headers
from clarinet_nb.notebook.listsplit import split_uid_list
from clarinet_nb.notebook.progress import ProgressLike, SharedProgress
from clarinet_nb.notebook.pull import DatasetList, pull_to_disk, pull_to_memory
from clarinet_nb.notebook.rows import (
    QueryPlan,
    QueryRow,
    drop_duplicate_rows,
    plan_queries,
    retrieve_targets,
)
from clarinet_nb.notebook.runner import run_sync
from clarinet_nb.notebook.split import find_with_split
from clarinet_nb.notebook.warn import warn
from clarinet_nb.settings import Settings, settings

__all__ = ["Pacs", "connect", "parse_size"]

logger = logging.getLogger("clarinet_nb")

DEFAULT_MEMORY_LIMIT = 2 * 1024**3
Split = Literal["auto"] | None


class Pacs:
    """A PACS seen from a notebook (see :func:`connect`)."""

    def __init__(
        self,
        node: DicomNode,
        client: DicomClient,
        *,
        cache: QueryCache | None = None,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        result_cap: int | None = None,
    ) -> None:
        self.node = node
        self.result_cap = result_cap
        """PACS that silently stop at a fixed count: an answer this long counts as truncated."""
        self.client = client
        self.cache = cache
        self.memory_limit = memory_limit
        self.interrupted: DatasetList | pd.DataFrame | None = None
        """What arrived before the last pull was interrupted (datasets or manifest)."""

    def __repr__(self) -> str:
        cache = f", cache={str(self.cache.root)!r}" if self.cache else ""
        return f"<Pacs {self.node} as {self.client.calling_aet}{cache}>"

    # -- echo -----------------------------------------------------------------------------

    async def aecho(self) -> bool:
        """C-ECHO the PACS: True, or a DicomError saying what is wrong."""
        return await self.client.echo(self.node)

    def echo(self) -> bool:
        """C-ECHO the PACS: True, or a DicomError saying what is wrong."""
        return run_sync(self.aecho())

    # -- find -----------------------------------------------------------------------------

    async def afind(
        self,
        level: QueryLevel | str,
        frame: pd.DataFrame | None = None,
        /,
        *,
        return_keys: Sequence[str] = (),
        split: Split = None,
        refresh: bool = False,
        progress: bool | None = None,
        **criteria: Any,
    ) -> pd.DataFrame:
        """C-FIND at ``level``; a frame as first argument means one query per row.

        Criteria never widen: a blank value is an InvalidInputError, a frame row with a
        blank criteria cell a failed row, and a find without criteria is refused (pass
        e.g. ``PatientID="*"`` to ask for everything).  Rows with identical criteria
        share one C-FIND; each row gets its answer once, with its own carried columns.
        """
        lvl = parse_level(level)
        if split not in (None, "auto"):
            raise InvalidInputError("split must be None or 'auto'")
        plan = plan_queries(frame, lvl, criteria, return_keys)  # validates everything first
        queries = plan.distinct
        show = progress if progress is not None else len(queries) > 1
        bar = SharedProgress(len(queries), f"C-FIND {lvl.value}", show, unit="query")

        # the queries of one call share their associations (released when it ends); a
        # single query with a long UID list is asked in parts, max_associations at a time
        # (listsplit.py)
        pool = self.client.find_pool() if queries else None
        most = self.client.max_associations
        parts = 2 * most if len(queries) == 1 and split is None and most > 1 else 1

        async def one(query: KeywordQuery) -> tuple[pd.DataFrame | None, Exception | None]:
            try:
                return await self._find_one(query, split, refresh, pool, parts), None
            except DicomError as exc:
                return None, exc
            finally:
                bar.update(1)

        try:
            answers = await run_bounded(
                self.client.max_associations, [functools.partial(one, q) for q in queries]
            )
        finally:
            bar.close()
            if pool is not None:
                await self.client.close_pool(pool)
        return self._combine(lvl, plan, answers, frame is not None, criteria)

    async def _find_one(
        self,
        query: KeywordQuery,
        split: Split,
        refresh: bool,
        pool: FindPool | None = None,
        parts: int = 1,
    ) -> pd.DataFrame:
        peer = str(self.node)
        if self.cache is not None and not refresh:
            cached = self.cache.get(peer, query)
            if cached is not None:
                cached.attrs["attempts"] = 0  # nothing was sent
                return cached
        started = dt.datetime.now(dt.UTC)
        attempts = 0
        policy = self.client.retry_policy

        async def once(q: KeywordQuery) -> FindOutcome:
            nonlocal attempts
            attempts += 1
            return await self.client.find(q, peer=self.node, pool=pool)

        async def find(q: KeywordQuery) -> FindOutcome:
            what = f"{q.level.value} C-FIND on {self.node}"
            outcome, _ = await call_with_retries(functools.partial(once, q), policy, what)
            if self.result_cap and len(outcome.datasets) >= self.result_cap:
                outcome.truncated = True  # a PACS that stops at a fixed count says nothing
            return outcome

        try:
            pieces = split_uid_list(query, parts) if parts > 1 else None
            if split == "auto":
                datasets, truncated, issued = await find_with_split(find, query)
            elif pieces:
                datasets, truncated, issued = await _find_parts(find, pieces)
            else:
                outcome = await find(query)
                datasets, truncated, issued = outcome.datasets, outcome.truncated, 1
        except DicomError as exc:
            set_attempts(exc, attempts)  # every query of this row, windows included
            raise
        result = to_frame(datasets, query.keys)
        result.attrs.update(
            {
                "peer": peer,
                "level": query.level.value,
                "query": dict(query.criteria),
                "time": started.isoformat(timespec="seconds"),
                "truncated": truncated,
                "queries": issued,
                "attempts": attempts,
                "cached": False,
            }
        )
        if self.cache is not None and not truncated:
            try:
                self.cache.put(peer, query, result)
            except OSError as exc:  # a full or read-only cache must not lose the answer
                logger.warning("could not write the query cache: %s", storage_reason(exc))
        return result

    def _combine(
        self,
        level: QueryLevel,
        plan: QueryPlan,
        answers: Sequence[tuple[pd.DataFrame | None, Exception | None]],
        batch: bool,
        criteria: Mapping[str, Any],
    ) -> pd.DataFrame:
        failures = []
        parts = []
        first_error: Exception | None = None
        unique = UNIQUE_KEY[level]
        answered = [
            (f if f is None or _unique_rows(f, unique) else drop_duplicate_rows(f), e)
            for f, e in answers
        ]
        for row, slot in zip(plan.rows, plan.slots, strict=True):
            found, error = answered[slot] if slot is not None else (None, row.error)
            if error is not None or found is None:
                error = error or RuntimeError("query failed")
                if not batch:
                    raise error
                first_error = first_error or error
                failures.append(
                    {
                        "row": row.index,
                        "criteria": _failed_criteria(row),
                        "error": type(error).__name__,
                        "message": str(error),
                        "attempts": attempts_of(error) if slot is not None else 0,
                    }
                )
                continue
            parts.append((found, row.context))
        if batch and failures and len(failures) == len(plan.rows) and first_error is not None:
            raise first_error
        keys = plan.distinct[0].keys if plan.distinct else ()
        if parts:
            result = _concat_with_context([p for p in parts if len(p[0])] or parts[:1])
        else:
            result = empty_frame(keys)
        answered_frames = [f for f, _ in answered if f is not None]
        truncated = any(bool(p.attrs.get("truncated")) for p in answered_frames)
        result.attrs = {
            "peer": str(self.node),
            "level": level.value,
            "query": dict(criteria) if batch else dict(plan.distinct[0].criteria),
            "rows": len(plan.rows) if batch else None,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "truncated": truncated,
            "failures": failures,
            # every C-FIND issued, retries included, counted once per distinct query
            "attempts": sum(
                (0 if f.attrs.get("cached") else int(f.attrs.get("attempts", 1)))
                if f is not None
                else attempts_of(e)
                if e is not None
                else 0
                for f, e in answers
            ),
            "cached": bool(parts) and all(bool(p.attrs.get("cached")) for p in answered_frames),
            "queries": sum(
                0 if f.attrs.get("cached") else int(f.attrs.get("queries", 1))
                for f in answered_frames
            ),
        }
        result.attrs["query"] = {k: _plain(v) for k, v in result.attrs["query"].items()}
        if failures:
            warn(
                f"{len(failures)} of {len(plan.rows)} queries failed (first: "
                f"{failures[0]['error']}: {failures[0]['message']}); see frame.attrs['failures']",
                stacklevel=4,
            )
        if truncated:
            warn(
                "the PACS cut some answers short (a result limit): more rows may match. "
                "Narrow the query or pass split='auto'",
                stacklevel=4,
            )
        return result

    async def afind_patients(self, frame: pd.DataFrame | None = None, /, **kw: Any) -> pd.DataFrame:
        """PATIENT level C-FIND (async)."""
        return await self.afind(QueryLevel.PATIENT, frame, **kw)

    async def afind_studies(self, frame: pd.DataFrame | None = None, /, **kw: Any) -> pd.DataFrame:
        """STUDY level C-FIND (async)."""
        return await self.afind(QueryLevel.STUDY, frame, **kw)

    async def afind_series(self, frame: pd.DataFrame | None = None, /, **kw: Any) -> pd.DataFrame:
        """SERIES level C-FIND (async)."""
        return await self.afind(QueryLevel.SERIES, frame, **kw)

    async def afind_instances(
        self, frame: pd.DataFrame | None = None, /, **kw: Any
    ) -> pd.DataFrame:
        """IMAGE level C-FIND (async)."""
        return await self.afind(QueryLevel.IMAGE, frame, **kw)

    def find_patients(self, frame: pd.DataFrame | None = None, /, **kw: Any) -> pd.DataFrame:
        """PATIENT level C-FIND: keyword criteria (``PatientID="12*"``) or one query per row."""
        return run_sync(self.afind(QueryLevel.PATIENT, frame, **kw))

    def find_studies(self, frame: pd.DataFrame | None = None, /, **kw: Any) -> pd.DataFrame:
        """STUDY level C-FIND: keyword criteria or one query per row of ``frame``.

        ``find_studies(PatientID="12345", StudyDate=("2020-01-01", "2020-12-31"),
        ModalitiesInStudy="CT")``; ``return_keys=``, ``split="auto"``, ``refresh=True``.
        A blank value or no criteria at all raises InvalidInputError;
        ``find_studies(PatientID="*")`` asks for every study.
        """
        return run_sync(self.afind(QueryLevel.STUDY, frame, **kw))

    def find_series(self, frame: pd.DataFrame | None = None, /, **kw: Any) -> pd.DataFrame:
        """SERIES level C-FIND; a study frame drills down, one query per study."""
        return run_sync(self.afind(QueryLevel.SERIES, frame, **kw))

    def find_instances(self, frame: pd.DataFrame | None = None, /, **kw: Any) -> pd.DataFrame:
        """IMAGE level C-FIND; a series frame drills down, one query per series."""
        return run_sync(self.afind(QueryLevel.IMAGE, frame, **kw))

    # -- get ------------------------------------------------------------------------------

    async def aget(
        self,
        frame: pd.DataFrame,
        *,
        output_dir: str | Path | None = None,
        method: Literal["get", "move"] = "get",
        metadata: str | Path | None = None,
        memory_limit: int | str | None = None,
        progress: bool | ProgressLike = True,
    ) -> DatasetList | pd.DataFrame:
        """Retrieve what the rows of ``frame`` identify (studies, series or instances).

        Without ``output_dir``: a list of pydicom datasets sorted by study, series and
        instance number (``.by_series()`` groups them), within ``memory_limit``.
        With ``output_dir``: files, and a manifest frame (also written next to them);
        a second call skips what is already there.  ``metadata=`` writes the header
        of every instance to Parquet.
        """
        if method not in ("get", "move"):
            raise InvalidInputError("method must be 'get' or 'move'")
        targets = retrieve_targets(frame)
        kept: list[Any] = []
        try:
            return await self._pull(
                targets, output_dir, method, metadata, memory_limit, progress, kept
            )
        except asyncio.CancelledError:
            if kept:
                self.interrupted = kept[0]
                arrived = (
                    int(kept[0]["status"].isin(["present", "retrieved"]).sum())
                    if isinstance(kept[0], pd.DataFrame)
                    else len(kept[0])
                )
                warn(
                    f"interrupted: {arrived} instance(s) arrived before the interrupt; "
                    "they are listed in pacs.interrupted",
                    stacklevel=2,
                )
            raise

    async def _pull(
        self,
        targets: list[Any],
        output_dir: str | Path | None,
        method: Literal["get", "move"],
        metadata: str | Path | None,
        memory_limit: int | str | None,
        progress: bool | ProgressLike,
        kept: list[Any],
    ) -> DatasetList | pd.DataFrame:
        if output_dir is None:
            limit = parse_size(memory_limit) if memory_limit is not None else self.memory_limit
            datasets = await pull_to_memory(
                self.client,
                self.node,
                targets,
                method=method,
                memory_limit=limit,
                progress=progress,
                interrupted=kept,
            )
            self._warn_failures(datasets.failures, len(targets))
            if metadata is not None:
                _write_metadata(header_frame(datasets), Path(metadata), None)
            return datasets
        manifest = await pull_to_disk(
            self.client,
            self.node,
            targets,
            Path(output_dir),
            method=method,
            progress=progress,
            interrupted=kept,
        )
        manifest.attrs["peer"] = str(self.node)
        self._warn_failures(manifest.attrs.get("failures", []), len(targets))
        if metadata is not None:
            here = [
                Path(p) for p in manifest[manifest["status"].isin(["present", "retrieved"])]["path"]
            ]
            headers = header_frame([dcmread(p, stop_before_pixels=True) for p in here], paths=here)
            _write_metadata(headers, Path(metadata), manifest)
        return manifest

    def get(self, frame: pd.DataFrame, **kw: Any) -> DatasetList | pd.DataFrame:
        """Retrieve what the rows of ``frame`` identify; see :meth:`aget`."""
        return run_sync(self.aget(frame, **kw))

    @staticmethod
    def _warn_failures(failures: list[dict[str, Any]], total: int) -> None:
        if failures:
            warn(
                f"{len(failures)} of {total} retrievals failed or are incomplete (first: "
                f"{failures[0]['error']}: {failures[0]['message']}); see .failures / "
                "attrs['failures']",
                stacklevel=4,
            )

    def query_builder(self, **kw: Any) -> Any:
        """An ipywidgets query builder bound to this PACS (see :class:`QueryBuilder`)."""
        from clarinet_nb.widgets import QueryBuilder  # widgets import this module

        return QueryBuilder(self, **kw)

    def close(self) -> None:
        """Stop the worker threads."""
        self.client.close()


def _write_metadata(headers: pd.DataFrame, path: Path, manifest: pd.DataFrame | None) -> None:
    """Write the header frame; a local storage failure is a LocalStorageError."""
    try:
        write_headers(headers, path)
    except OSError as exc:
        raise LocalStorageError(
            f"the retrieve succeeded but metadata= could not be written to {path}: "
            f"{storage_reason(exc)}",
            manifest=manifest,
        ) from exc


UNIQUE_KEY = {
    QueryLevel.PATIENT: "PatientID",
    QueryLevel.STUDY: "StudyInstanceUID",
    QueryLevel.SERIES: "SeriesInstanceUID",
    QueryLevel.IMAGE: "SOPInstanceUID",
}


def _unique_rows(found: pd.DataFrame, key: str) -> bool:
    """True when no two rows can be identical: the level's unique key has no repeat
    (and no NA); a cheap test that spares the full-row comparison of almost every answer."""
    if len(found) < 2:
        return True
    if key not in found.columns:
        return False
    column = found[key]
    return bool(column.notna().all() and column.is_unique)


def _concat_with_context(parts: list[tuple[pd.DataFrame, Mapping[str, Any]]]) -> pd.DataFrame:
    """The answers one after the other, each with its input row's non-key columns.

    When every answer has the same columns (the usual case) the context columns are
    built once for the whole result; otherwise answer by answer."""
    frames = [found for found, _ in parts]
    columns = list(frames[0].columns)
    if any(list(f.columns) != columns for f in frames[1:]):
        pieces = [_with_context(found, context) for found, context in parts]
        return pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0]
    result = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].copy()
    present = set(columns)
    extra = list(dict.fromkeys(c for _, context in parts for c in context if c not in present))
    added = {}
    for column in extra:
        values: list[Any] = []
        for found, context in parts:
            values.extend([context.get(column)] * len(found))
        added[column] = pd.Series(values, index=result.index, dtype=object)
    if added:
        attrs = result.attrs
        result = pd.concat([result, pd.DataFrame(added, index=result.index)], axis=1)
        result.attrs = attrs
    return result


def _with_context(found: pd.DataFrame, context: Mapping[str, Any]) -> pd.DataFrame:
    """Carry the input row's non-key columns onto its results."""
    extra = {c: v for c, v in context.items() if c not in found.columns}
    if not extra:
        return found
    out = found.copy()
    for column, value in extra.items():
        out[column] = pd.Series([value] * len(out), index=out.index, dtype=object)
    return out


def _failed_criteria(row: QueryRow) -> dict[str, Any]:
    """The criteria of a failed row for ``attrs["failures"]`` (blank cells as None)."""
    if row.query is not None:
        return dict(row.query.criteria)
    return {k: None if is_missing(v) else _plain(v) for k, v in row.criteria.items()}


def _plain(value: Any) -> Any:
    """JSON-friendly criteria for ``frame.attrs`` (kept through Parquet)."""
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def connect(
    target: str | DicomNode | None = None,
    *,
    calling_aet: str | None = None,
    cache: str | Path | None = None,
    max_associations: int | None = None,
    memory_limit: int | str | None = None,
    scp_port: int | None = None,
    timeouts: Timeouts | None = None,
    max_pdu: int | None = None,
    result_cap: int | None = None,
    config: Settings | None = None,
    retries: int | RetryPolicy | None = None,
    tls: TLSConfig | bool | None = None,
) -> Pacs:
    """A :class:`Pacs` for notebooks.

    ``connect()`` uses the settings (``CLARINET_PACS_AET/HOST/PORT``);
    ``connect("ORTHANC@127.0.0.1:4242", calling_aet="CLARINET", cache="cache/")``
    names it.  ``cache=`` keeps query results in Parquet; ``result_cap=`` is the
    count at which your PACS silently stops answering (answers that long are then
    treated as truncated; Orthanc's own limit is detected without it).
    ``retries=`` (default ``CLARINET_RETRIES``, 3; 0 disables) retries each query
    and each retrieve unit after a transient network failure, with bounded
    exponential backoff (a :class:`RetryPolicy` sets the pauses).
    ``tls=TLSConfig(...)`` speaks DICOM TLS (queries, retrieves and the C-MOVE
    Storage SCP); by default the ``CLARINET_TLS_*`` settings apply to the default
    PACS, and ``tls=False`` forces plain TCP.
    Every parameter is checked at once (``InvalidInputError`` naming it and its
    rule, see :class:`DicomClient`); nothing is sent until the first call.
    """
    if config is not None and not isinstance(config, Settings):
        raise InvalidInputError(f"config must be a Settings, not {type(config).__name__}")
    cfg = config or settings
    if target is None:
        node = DicomNode(aet=cfg.pacs_aet, host=cfg.pacs_host, port=cfg.pacs_port)
    elif isinstance(target, DicomNode):
        node = target
    elif isinstance(target, str):
        node = DicomNode.parse(target)
    else:
        raise InvalidInputError(
            "target must be 'AET@host:port', a DicomNode or None (the settings), "
            f"not {type(target).__name__}"
        )
    limit = parse_size(memory_limit if memory_limit is not None else cfg.memory_limit)
    cap = check_result_cap("result_cap", result_cap) if result_cap is not None else None
    cache_dir = check_cache_dir("cache", cache) if cache is not None else None
    client = DicomClient(
        calling_aet,
        max_pdu=max_pdu,
        scp_port=scp_port,
        timeouts=timeouts,
        max_associations=max_associations,
        config=cfg,
        retries=retries,
        tls=tls,
    )
    node = client.secure(node)
    return Pacs(
        node,
        client,
        cache=QueryCache(cache_dir) if cache_dir is not None else None,
        memory_limit=limit,
        result_cap=cap,
    )


async def _find_parts(
    find: Callable[[KeywordQuery], Awaitable[FindOutcome]], pieces: Sequence[KeywordQuery]
) -> tuple[list[Dataset], bool, int]:
    """The parts of one split query, side by side; their matches in part order.

    Every part runs to its end before the first error (if any) is raised: nothing
    is left running on an association when the call returns."""
    outcomes = await asyncio.gather(*(find(p) for p in pieces), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    done = [o for o in outcomes if isinstance(o, FindOutcome)]
    datasets = [ds for o in done for ds in o.datasets]
    return datasets, any(o.truncated for o in done), len(pieces)
