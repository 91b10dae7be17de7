"""``cnb.QueryBuilder(pacs)``: a search form, results table and retrieve panel for Jupyter.

The widget never blocks the kernel: Search and Retrieve schedule the async
twins (``pacs.afind``, ``pacs.aget``) as a task on the running event loop of
the current thread (a Jupyter kernel), or, without one (a script, a test), run
them on clarinet_nb's private loop from a background thread.  ``builder.wait()``
(outside a loop) or ``await builder.await_idle()`` (inside one) waits for the
pending operation.  Errors become plain-language status messages, never
tracebacks.

CSS classes (a contract with notebooks and browser tests): ``cnb-level``,
``cnb-patient-id``, ``cnb-patient-name``, ``cnb-accession``, ``cnb-description``,
``cnb-date-from``, ``cnb-date-to``, ``cnb-modality``, ``cnb-search``,
``cnb-results``, ``cnb-select``, ``cnb-destination``, ``cnb-folder``,
``cnb-method``, ``cnb-retrieve``, ``cnb-progress``, ``cnb-status`` (plus
``cnb-error`` / ``cnb-warning`` on it), ``cnb-query-builder`` on the whole.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, cast

import ipywidgets as widgets  # type: ignore[import-untyped]
import numpy as np
import pandas as pd
from pydicom import Dataset
from pydicom.uid import UID

from clarinet_nb.dicom.queries import QueryLevel
from clarinet_nb.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    DicomError,
    DicomTimeoutError,
    InvalidInputError,
    LocalPortError,
    MemoryLimitError,
    MoveDestinationUnknownError,
    NotFoundError,
    OperationError,
    PeerUnreachableError,
    QueryError,
    RetrieveError,
)
from clarinet_nb.notebook.criteria import build_query
from clarinet_nb.notebook.pacs import Pacs
from clarinet_nb.notebook.runner import run_sync

__all__ = ["LEVELS", "MODALITIES", "QueryBuilder", "status_message"]

logger = logging.getLogger("clarinet_nb")

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
MODALITIES = (
    "CT",
    "MR",
    "CR",
    "DX",
    "US",
    "MG",
    "NM",
    "PT",
    "XA",
    "OT",
    "SR",
    "KO",
    "PR",
    "DOC",
    "SEG",
    "RTSTRUCT",
)
FINDERS = {
    "PATIENT": "find_patients",
    "STUDY": "find_studies",
    "SERIES": "find_series",
    "IMAGE": "find_instances",
}
_NOUNS = {
    "PATIENT": ("patient", "patients"),
    "STUDY": ("study", "studies"),
    "SERIES": ("series", "series"),
    "IMAGE": ("instance", "instances"),
}
#: The columns of the results table, per level (those present in the frame).
TABLE_COLUMNS = {
    "PATIENT": [
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ],
    "STUDY": [
        "PatientID",
        "PatientName",
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ],
    "SERIES": [
        "PatientID",
        "SeriesDate",
        "SeriesNumber",
        "Modality",
        "SeriesDescription",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
    ],
    "IMAGE": ["PatientID", "Modality", "InstanceNumber", "SOPClassUID", "SOPInstanceUID"],
}
_PATIENT_KEYS = ("PatientID", "PatientName")
_STUDY_KEYS = ("AccessionNumber", "StudyDescription", "StudyDate")

Destination = Literal["memory", "folder"]


# -- formatting ---------------------------------------------------------------------------


def _cell(value: Any, column: str = "") -> str:
    """A frame value as display text (no HTML escaping)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return ""
    if isinstance(value, pd.Timestamp | dt.datetime):
        ts = pd.Timestamp(value)
        return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.isoformat(sep=" ")
    if isinstance(value, pd.Timedelta):
        seconds = int(value.total_seconds())
        return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    if column == "SOPClassUID":
        return UID(str(value)).name or str(value)
    return str(value)


def _row_label(level: str, index: int, row: dict[str, Any]) -> str:
    """One option of the row selector, e.g. ``0: 2019-03-14 CT,KO,PR,SR CT CHEST (8)``."""

    def get(column: str) -> str:
        return _cell(row.get(column), column)

    if level == "PATIENT":
        parts = [get("PatientID"), get("PatientName")]
        count = get("NumberOfPatientRelatedStudies")
    elif level == "STUDY":
        modalities = row.get("ModalitiesInStudy")
        if isinstance(modalities, np.ndarray):
            modalities = modalities.tolist()
        mods = ",".join(sorted(str(m) for m in modalities)) if isinstance(modalities, list) else ""
        parts = [get("StudyDate"), mods, get("StudyDescription")]
        count = get("NumberOfStudyRelatedInstances")
    elif level == "SERIES":
        number = get("SeriesNumber")
        parts = [get("Modality"), f"#{number}" if number else "", get("SeriesDescription")]
        count = get("NumberOfSeriesRelatedInstances")
    else:
        number = get("InstanceNumber")
        parts = [get("Modality"), f"#{number}" if number else "", get("SOPClassUID")]
        count = ""
    text = " ".join(p for p in parts if p)
    return f"{index}: {text}" + (f" ({count})" if count else "")


def _table_html(frame: pd.DataFrame, level: str, limit: int) -> str:
    columns = [c for c in TABLE_COLUMNS.get(level, []) if c in frame.columns]
    if not columns:
        columns = [str(c) for c in frame.columns[:8]]
    head = "".join(
        f"<th style='text-align:left;padding:2px 8px'>{html.escape(c)}</th>"
        for c in ["#", *columns]
    )
    body = []
    records = frame[columns].iloc[:limit].to_dict("records")
    for i, record in enumerate(records):
        cells = "".join(
            f"<td style='padding:2px 8px'>{html.escape(_cell(record[c], c))}</td>" for c in columns
        )
        body.append(f"<tr data-row='{i}'><td style='padding:2px 8px'>{i}</td>{cells}</tr>")
    more = (
        f"<div><i>showing the first {limit} of {len(frame)} rows (all are in builder.result)"
        "</i></div>"
        if len(frame) > limit
        else ""
    )
    return (
        "<div style='max-height:24em;overflow:auto'>"
        "<table class='cnb-table' style='border-collapse:collapse;font-size:90%'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{more}"
    )


NO_CRITERIA_MESSAGE = (
    "Fill in at least one field (for example Patient ID), or type * in Patient ID "
    "to list everything."
)


def status_message(exc: BaseException, peer: str) -> str:
    """A plain-language sentence for an error (no traceback)."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, InvalidInputError):
        return f"Invalid input: {text}"
    if isinstance(exc, PeerUnreachableError):
        return f"Cannot reach the PACS at {peer} — is it running?"
    if isinstance(exc, AssociationRejectedError):
        return f"The PACS refused the association: {text}"
    if isinstance(exc, AssociationAbortedError):
        return f"The PACS dropped the connection: {text}"
    if isinstance(exc, DicomTimeoutError):
        return f"The PACS did not answer in time: {text}"
    if isinstance(exc, LocalPortError):
        return f"Cannot receive C-MOVE here: our port is not available ({text})"
    if isinstance(exc, MemoryLimitError):
        return f"Too much to keep in memory; retrieve to a folder instead. {text}"
    if isinstance(exc, MoveDestinationUnknownError):
        return f"The PACS does not know us as a C-MOVE destination: {text}"
    if isinstance(exc, NotFoundError):
        return f"Nothing to retrieve: {text}"
    if isinstance(exc, RetrieveError):
        return f"The retrieval was incomplete: {text}"
    if isinstance(exc, QueryError):
        return f"The PACS could not answer the query: {text}"
    if isinstance(exc, OperationError | DicomError):
        return f"The PACS reported an error: {text}"
    return f"Something went wrong ({type(exc).__name__}): {text}"


def _count(n: int, level: str) -> str:
    one, many = _NOUNS.get(level, ("row", "rows"))
    return f"{n} {one if n == 1 else many}"


class _Progress:
    """tqdm's face (``update``, ``total``) over an ipywidgets IntProgress."""

    def __init__(self, bar: widgets.IntProgress) -> None:
        self.bar = bar
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return int(self.bar.max)

    @total.setter
    def total(self, value: float | None) -> None:
        with self._lock:
            self.bar.max = max(int(value or 0), 0)

    def update(self, n: float = 1) -> None:
        with self._lock:
            self.bar.value = min(int(self.bar.value) + int(n), int(self.bar.max))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# -- the widget ---------------------------------------------------------------------------


class QueryBuilder(widgets.VBox):  # type: ignore[misc]
    """A query form for ``pacs``: search, see the results, select rows, retrieve them.

    State for code: ``.result`` (the last result frame), ``.selection`` (the
    selected rows), ``.datasets`` (the last in-memory retrieval), ``.manifest``
    (the last retrieval to a folder), ``.code()`` (the equivalent call),
    ``.query_kwargs()``; ``.search()`` and ``.retrieve()`` press the buttons,
    ``.busy``, ``.wait()`` and ``await .await_idle()`` follow them.
    """

    def __init__(
        self,
        pacs: Pacs,
        *,
        level: str = "STUDY",
        folder: str = "data/",
        max_rows: int = 500,
    ) -> None:
        self.pacs = pacs
        self.max_rows = max_rows
        self.result: pd.DataFrame | None = None
        """The last result frame (None before the first search)."""
        self.datasets: list[Dataset] | None = None
        """The last in-memory retrieval (a DatasetList)."""
        self.manifest: pd.DataFrame | None = None
        """The manifest of the last retrieval to a folder."""
        self.message = ""
        """The status line's text."""
        self.error: BaseException | None = None
        """The last error, as raised (the status line shows it in plain language)."""
        self._idle = threading.Event()
        self._idle.set()
        self._task: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

        wide = widgets.Layout(width="24em")
        self.level = widgets.Dropdown(
            options=list(LEVELS), value=level.upper(), description="Level"
        )
        self.patient_id = widgets.Text(
            description="Patient ID", placeholder="e.g. 12345 or 12* (wildcards * ?)", layout=wide
        )
        self.patient_name = widgets.Text(description="Name", placeholder="e.g. DOE^J*", layout=wide)
        self.accession = widgets.Text(description="Accession", layout=wide)
        self.description = widgets.Text(
            description="Description", placeholder="study description, e.g. CT*", layout=wide
        )
        self.date_from = widgets.DatePicker(description="From")
        self.date_to = widgets.DatePicker(description="To")
        self.modality = widgets.SelectMultiple(
            options=list(MODALITIES), value=(), description="Modality", rows=6
        )
        self.search_button = widgets.Button(
            description="Search", button_style="primary", icon="search"
        )
        self.status = widgets.HTML()
        self.table = widgets.HTML()
        self.select = widgets.SelectMultiple(
            options=[], value=(), description="Select", rows=6, layout=widgets.Layout(width="48em")
        )
        self.destination = widgets.ToggleButtons(
            options=[("memory", "memory"), ("folder", "folder")],
            value="memory",
            description="Into",
        )
        self.folder = widgets.Text(value=folder, description="Folder", layout=wide)
        self.method = widgets.Dropdown(options=["get", "move"], value="get", description="Method")
        self.retrieve_button = widgets.Button(
            description="Retrieve", button_style="success", icon="download"
        )
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="Progress")

        for widget, css in [
            (self.level, "cnb-level"),
            (self.patient_id, "cnb-patient-id"),
            (self.patient_name, "cnb-patient-name"),
            (self.accession, "cnb-accession"),
            (self.description, "cnb-description"),
            (self.date_from, "cnb-date-from"),
            (self.date_to, "cnb-date-to"),
            (self.modality, "cnb-modality"),
            (self.search_button, "cnb-search"),
            (self.status, "cnb-status"),
            (self.table, "cnb-results"),
            (self.select, "cnb-select"),
            (self.destination, "cnb-destination"),
            (self.folder, "cnb-folder"),
            (self.method, "cnb-method"),
            (self.retrieve_button, "cnb-retrieve"),
            (self.progress, "cnb-progress"),
        ]:
            widget.add_class(css)

        self.search_button.on_click(lambda _: self.search())
        self.retrieve_button.on_click(lambda _: self.retrieve())
        self.level.observe(self._on_level, names="value")
        self._on_level({"new": self.level.value})

        super().__init__(
            [
                widgets.HTML(f"<b>PACS</b> {html.escape(str(pacs.node))}"),
                self.level,
                widgets.HBox([self.patient_id, self.patient_name]),
                widgets.HBox([self.accession, self.description]),
                widgets.HBox([self.date_from, self.date_to]),
                self.modality,
                self.search_button,
                self.status,
                self.table,
                self.select,
                widgets.HBox([self.destination, self.method]),
                widgets.HBox([self.folder, self.retrieve_button]),
                self.progress,
            ]
        )
        self.add_class("cnb-query-builder")

    # -- the query ------------------------------------------------------------------------

    def _on_level(self, change: dict[str, Any]) -> None:
        patient = change["new"] == "PATIENT"
        for widget in (self.accession, self.description, self.date_from, self.date_to):
            widget.disabled = patient
        self.modality.disabled = patient
        self.modality.description = (
            "Modality" if change["new"] in ("SERIES", "IMAGE") else ("Modalities")
        )

    def query_kwargs(self) -> dict[str, Any]:
        """The keyword criteria of the form (only the fields that are filled in and apply)."""
        level = str(self.level.value)
        kwargs: dict[str, Any] = {}
        for key, widget in [
            ("PatientID", self.patient_id),
            ("PatientName", self.patient_name),
            ("AccessionNumber", self.accession),
            ("StudyDescription", self.description),
        ]:
            text = str(widget.value or "").strip()
            if text and (level != "PATIENT" or key in _PATIENT_KEYS):
                kwargs[key] = text
        if level == "PATIENT":
            return kwargs
        start, end = self.date_from.value, self.date_to.value
        if start is not None or end is not None:
            kwargs["StudyDate"] = (
                start.isoformat() if start is not None else None,
                end.isoformat() if end is not None else None,
            )
        modalities = [str(m) for m in self.modality.value]
        if modalities:
            kwargs["ModalitiesInStudy" if level == "STUDY" else "Modality"] = modalities
        return kwargs

    def code(self) -> str:
        """The equivalent call, e.g. ``pacs.find_studies(PatientID='12*')``."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.query_kwargs().items())
        return f"pacs.{FINDERS[str(self.level.value)]}({args})"

    @property
    def selection(self) -> pd.DataFrame:
        """The selected rows of ``.result`` (an empty frame when none are selected)."""
        if self.result is None:
            return pd.DataFrame()
        rows = sorted(int(i) for i in self.select.value)
        picked = self.result.iloc[rows]
        picked.attrs = dict(self.result.attrs)
        return picked

    # -- state ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a search or retrieval is running."""
        return not self._idle.is_set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the pending search or retrieval has finished.

        Raises RuntimeError when called from the event loop that runs the pending
        operation (use ``await builder.await_idle()`` there), TimeoutError after
        ``timeout`` seconds.
        """
        if self._idle.is_set():
            return
        task = self._task
        if task is not None and not task.done() and _running_loop() is task.get_loop():
            raise RuntimeError(
                "builder.wait() would block the event loop that runs the pending operation; "
                "use `await builder.await_idle()` instead"
            )
        if not self._idle.wait(timeout):
            raise TimeoutError(f"the query builder is still busy after {timeout} s")

    async def await_idle(self) -> None:
        """Wait (without blocking the loop) until the pending operation has finished."""
        task = self._task
        if task is not None and not task.done() and task.get_loop() is _running_loop():
            await asyncio.wait([task])
        while not self._idle.is_set():
            await asyncio.sleep(0.02)

    # -- status -------------------------------------------------------------------------------

    def _set_status(self, text: str, kind: Literal["ok", "error", "warning", "busy"]) -> None:
        self.message = text
        self.status.value = f"<span>{html.escape(text)}</span>"
        for css, wanted in (("cnb-error", "error"), ("cnb-warning", "warning")):
            if kind == wanted:
                self.status.add_class(css)
            else:
                self.status.remove_class(css)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        if isinstance(exc, DicomError):
            logger.info("query builder: %s", type(exc).__name__)
        else:
            logger.warning("query builder: unexpected %s", type(exc).__name__)
        logger.debug("query builder error", exc_info=exc)
        self._set_status(status_message(exc, str(self.pacs.node)), "error")

    # -- running ------------------------------------------------------------------------------

    def _start(self, message: str, job: Coroutine[Any, Any, None]) -> None:
        self._idle.clear()
        self.error = None
        self.search_button.disabled = True
        self.retrieve_button.disabled = True
        self._set_status(message, "busy")
        loop = _running_loop()
        if loop is not None:
            self._task = asyncio.ensure_future(self._guarded(job, idle_when_done=True))
        else:
            self._task = None
            self._thread = threading.Thread(
                target=self._run_in_thread,
                args=(self._guarded(job, idle_when_done=False),),
                name="clarinet-nb-widget",
                daemon=True,
            )
            self._thread.start()

    def _run_in_thread(self, guarded: Coroutine[Any, Any, None]) -> None:
        try:
            run_sync(guarded)  # also issues the warnings the job raised, in this thread
        finally:
            self._idle.set()

    async def _guarded(self, job: Coroutine[Any, Any, None], *, idle_when_done: bool) -> None:
        try:
            await job
        except asyncio.CancelledError:
            self._set_status("Cancelled.", "error")
            raise
        except Exception as exc:  # noqa: BLE001 - shown as a status line, never a traceback
            self._fail(exc)
            if self.progress.bar_style == "info":
                self.progress.bar_style = "danger"
        finally:
            self.search_button.disabled = False
            self.retrieve_button.disabled = False
            if idle_when_done:
                self._idle.set()

    def _refuse_if_busy(self) -> bool:
        if self.busy:
            self._set_status(
                "Still busy with the previous search or retrieval; please wait.", "busy"
            )
            return True
        return False

    # -- search ---------------------------------------------------------------------------

    def search(self) -> None:
        """Run the query of the form (as the Search button does); returns at once."""
        if self._refuse_if_busy():
            return
        level = str(self.level.value)
        try:
            kwargs = self.query_kwargs()
            if not kwargs:  # a blank form never lists the whole PACS
                self.error = None
                self._set_status(NO_CRITERIA_MESSAGE, "error")
                return
            build_query(level, kwargs)  # validate here: bad input never reaches the network
        except InvalidInputError as exc:
            self._fail(exc)
            return
        logger.debug("query builder: %s %s", level, kwargs)
        self._start(f"Searching {_NOUNS[level][1]}…", self._search_job(level, kwargs))

    async def _search_job(self, level: str, kwargs: dict[str, Any]) -> None:
        started = time.monotonic()
        frame = await self.pacs.afind(QueryLevel(level), progress=False, **kwargs)
        self._show_result(frame, level)
        logger.info(
            "query builder: %s level, %d rows in %.2f s",
            level,
            len(frame),
            time.monotonic() - started,
        )

    def _show_result(self, frame: pd.DataFrame, level: str) -> None:
        self.result = frame
        shown = frame.iloc[: self.max_rows]
        records: list[dict[str, Any]] = [
            {str(k): v for k, v in r.items()} for r in shown.to_dict("records")
        ]
        self.select.value = ()
        self.select.options = [
            (_row_label(level, i, record), i) for i, record in enumerate(records)
        ]
        self.table.value = _table_html(frame, level, self.max_rows)
        message = f"Found {_count(len(frame), level)}"
        if len(frame) > self.max_rows:
            message += f" (the first {self.max_rows} are listed; all are in builder.result)"
        if frame.attrs.get("truncated"):
            self._set_status(
                f"{message}. The PACS cut the answer short; narrow the query or pass "
                "split='auto' to the call of builder.code().",
                "warning",
            )
        else:
            self._set_status(message + ".", "ok")

    # -- retrieve -------------------------------------------------------------------------

    def retrieve(self) -> None:
        """Retrieve the selected rows (as the Retrieve button does); returns at once."""
        if self._refuse_if_busy():
            return
        selection = self.selection
        if self.result is None or selection.empty:
            self._fail(InvalidInputError("select one or more rows of the results to retrieve"))
            return
        method = str(self.method.value)
        folder: str | None = None
        if self.destination.value == "folder":
            folder = str(self.folder.value or "").strip()
            if not folder:
                self._fail(InvalidInputError("type the folder to retrieve into"))
                return
        self.progress.value = 0
        self.progress.max = 1
        self.progress.bar_style = "info"
        where = f"to {folder}" if folder else "into memory"
        self._start(
            f"Retrieving {_count(len(selection), str(self.level.value))} {where}…",
            self._retrieve_job(selection, folder, method),
        )

    async def _retrieve_job(self, selection: pd.DataFrame, folder: str | None, method: str) -> None:
        frame = selection
        if frame.attrs.get("level") == "PATIENT":  # patients: retrieve their studies
            frame = await self.pacs.afind(QueryLevel.STUDY, selection, progress=False)
            if frame.empty:
                self._set_status("The selected patients have no studies on the PACS.", "error")
                return
        progress = _Progress(self.progress)
        how = cast(Literal["get", "move"], method)
        if folder is None:
            datasets = await self.pacs.aget(frame, method=how, progress=progress)
            if isinstance(datasets, pd.DataFrame):  # pragma: no cover - aget's contract
                raise TypeError("expected datasets from an in-memory retrieval")
            self.datasets = datasets
            message = f"Retrieved {len(datasets)} instances into memory (builder.datasets)"
            self._finish_retrieve(message, datasets.failures, "builder.datasets")
            return
        manifest = await self.pacs.aget(frame, output_dir=folder, method=how, progress=progress)
        if not isinstance(manifest, pd.DataFrame):  # pragma: no cover - aget's contract
            raise TypeError("expected a manifest from a retrieval to a folder")
        self.manifest = manifest
        counts = manifest["status"].value_counts()
        retrieved, present = int(counts.get("retrieved", 0)), int(counts.get("present", 0))
        message = f"Retrieved {retrieved} instances to {folder}"
        if present:
            message += f" ({present} were already there)"
        bad = len(manifest) - retrieved - present
        failures = list(manifest.attrs.get("failures", []))
        if bad and not failures:
            failures = [{"error": "missing", "message": f"{bad} instances did not arrive"}]
        self._finish_retrieve(message, failures, "builder.manifest")

    def _finish_retrieve(
        self, message: str, failures: Sequence[dict[str, Any]], where: str
    ) -> None:
        if failures:
            first = failures[0]
            self.progress.bar_style = "warning"
            self._set_status(
                f"{message}; {len(failures)} retrieval(s) failed or are incomplete "
                f"(first: {first.get('message', first.get('error', ''))}); see {where}.",
                "error",
            )
        else:
            self.progress.bar_style = "success"
            self._set_status(message + ".", "ok")
