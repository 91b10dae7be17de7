"""DicomOperations: the synchronous networking layer (C-ECHO, C-FIND, C-GET, C-MOVE).

Every method opens its own association(s), does one job, and releases them,
whatever happens.  Methods block; the async :class:`DicomClient` runs them in
worker threads and cancels them through a :class:`CancelToken`, which makes
them send C-CANCEL and, if the peer ignores it, abort.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from clarinet_nb.dicom.association import (
    ResponseWaiter,
    Timeouts,
    cancel_watch,
    make_ae,
    open_association,
    release,
    status_of,
)
from clarinet_nb.dicom.cancel import CancelToken
from clarinet_nb.dicom.contexts import (
    REPAIR_PASSES,
    GetChunk,
    default_storage_classes,
    first_get_chunk,
    plan_get_chunks,
    plan_syntax_chunks,
)
from clarinet_nb.dicom.fastfind import FastFind
from clarinet_nb.dicom.fastpath import FastGet
from clarinet_nb.dicom.findpool import FindPool
from clarinet_nb.dicom.handlers import StorageHandler, storage_reason, syntax_flags
from clarinet_nb.dicom.models import (
    DicomNode,
    RetrieveResult,
    RetrieveStatus,
    StorageConfig,
)
from clarinet_nb.dicom.plan import PlannedInstance, PlannedSeries, RetrievePlan
from clarinet_nb.dicom.queries import AnyQuery, ImageQuery, QueryLevel, SeriesQuery, StudyQuery
from clarinet_nb.dicom.rawfind import fast_receive_enabled, find_responses, identifier_dataset
from clarinet_nb.dicom.requests import (
    RetrieveRequest,
    image_identifier,
    listed_sop_uids,
    split_uid_lists,
    uid_list_keywords,
)
from clarinet_nb.dicom.results import names_look_emptied
from clarinet_nb.dicom.scp import Admission, Scope, peer_addresses, receiving
from clarinet_nb.dicom.split import (
    SPLIT_BUSY,
    SPLIT_MIN,
    SplitProbe,
    Workers,
    WorkQueue,
    work_items,
)
from clarinet_nb.dicom.status import describe
from clarinet_nb.dicom.tls import scp_context
from clarinet_nb.dicom.values import check_ae_title
from clarinet_nb.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    DicomError,
    LocalStorageError,
    MoveDestinationUnknownError,
    NetworkError,
    NotFoundError,
    OperationError,
    PartialRetrieveError,
    QueryError,
)
from clarinet_nb.settings import settings

__all__ = ["DicomOperations", "FindOutcome", "Progress"]

logger = logging.getLogger("clarinet_nb")

PENDING = (0xFF00, 0xFF01)
_STUDY_FIND = str(StudyRootQueryRetrieveInformationModelFind)
_PATIENT_FIND = str(PatientRootQueryRetrieveInformationModelFind)
CANCEL = 0xFE00
MOVE_DESTINATION_UNKNOWN = 0xA801


class Progress(Protocol):
    """What we need of a progress bar (``tqdm`` fits)."""

    total: float | None

    def update(self, n: float = 1) -> bool | None:
        """Advance by ``n``."""

    def refresh(self) -> None:
        """Redraw."""


@dataclass
class FindOutcome:
    """The matches of one C-FIND and how it ended."""

    datasets: list[Dataset] = field(default_factory=list)
    status: int | None = None
    truncated: bool = False
    """The peer stopped early (Cancel status it was not asked for): more may match."""
    cancelled: bool = False


@dataclass
class _Counters:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: int | None = None
    failed_uids: list[str] = field(default_factory=list)
    associations: int = 0
    msg_id: int = 0
    settled: RetrievePlan | None = None
    """A lean plan once listed after its transfer (see ``DicomOperations._settle``)."""

    def add(self, other: _Counters) -> None:
        """Fold in the counters of another association of the same pass."""
        self.completed += other.completed
        self.failed += other.failed
        self.warning += other.warning
        self.failed_uids += other.failed_uids
        self.associations += other.associations
        self.status = _worse(self.status, other.status)

    def retry(self) -> None:
        """A new pass re-requests what failed: forget the failures counted so far."""
        self.failed = 0
        self.failed_uids = []

    def final(self, status: Dataset, identifier: Dataset | None) -> None:
        self.status = status_of(status)
        self.completed += int(status.get("NumberOfCompletedSuboperations", 0) or 0)
        self.failed += int(status.get("NumberOfFailedSuboperations", 0) or 0)
        self.warning += int(status.get("NumberOfWarningSuboperations", 0) or 0)
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            value = identifier.FailedSOPInstanceUIDList
            uids = [value] if isinstance(value, str) else list(value or [])
            self.failed_uids += [str(u) for u in uids if u]


class DicomOperations:
    """Synchronous DICOM networking with one calling AE and one set of timeouts."""

    def __init__(
        self,
        calling_aet: str = "CLARINET",
        *,
        max_pdu: int = 16384,
        timeouts: Timeouts | None = None,
        scp_port: int = 11112,
        scp_ip: str | None = None,
        move_allowed_aets: Sequence[str] | None = None,
        move_check_host: bool | None = None,
    ) -> None:
        self.calling_aet = check_ae_title(calling_aet)
        self.max_pdu = max_pdu
        self.timeouts = timeouts or Timeouts()
        self.scp_port = scp_port
        self.scp_ip = scp_ip
        allowed = settings.move_allowed_aets if move_allowed_aets is None else move_allowed_aets
        self.move_allowed_aets = tuple(check_ae_title(aet) for aet in allowed)
        """Calling AE titles admitted during a C-MOVE besides the PACS's own."""
        self.move_check_host = (
            settings.move_check_host if move_check_host is None else move_check_host
        )
        """Admit C-MOVE senders only from the PACS's address(es)."""
        self._list_refusers: set[tuple[str, str, int]] = set()
        self._list_lock = threading.Lock()
        self.workers: Workers | None = None
        """The calling client's worker pool: a C-GET may split over its free threads."""
        self.split_min = SPLIT_MIN
        """Fewest planned instances for which a C-GET is split over several
        associations (0: never split)."""
        self.split_busy: float | None = SPLIT_BUSY
        """A C-GET that may split goes out whole first, and is cancelled and split only
        when the client used less than this fraction of one CPU over its first instances
        (``SplitProbe``: it waits on the peer, not on itself); None: split at once."""

    # -- peers that cannot match a list of UIDs -------------------------------------------

    def refuses_uid_lists(self, peer: DicomNode) -> bool:
        """True once ``peer`` refused a list of UIDs that it took one UID at a time."""
        return (peer.aet, peer.host, peer.port) in self._list_refusers

    def _note_list_refusal(self, peer: DicomNode, what: str, code: int | None) -> None:
        """Remember that ``peer`` refuses UID lists; say so once per peer."""
        key = (peer.aet, peer.host, peer.port)
        with self._list_lock:
            if key in self._list_refusers:
                return
            self._list_refusers.add(key)
        logger.warning(
            "%s refused a %s with a list of UIDs (%s) but answers one UID at a time: "
            "sending one request per UID to it from now on",
            peer,
            what,
            describe(code),
        )

    # -- C-ECHO ---------------------------------------------------------------------------

    def echo(self, peer: DicomNode) -> None:
        """C-ECHO ``peer``; raises a DicomError unless it answers Success."""
        ae = make_ae(self.calling_aet, self.timeouts)
        assoc = open_association(
            ae, peer, contexts=[build_context(Verification)], max_pdu=self.max_pdu, purpose="C-ECHO"
        )
        try:
            code = status_of(assoc.send_c_echo())
            if code is None:
                raise ResponseWaiter(assoc, self.timeouts.dimse, peer).failure("C-ECHO")
            if code != 0x0000:
                raise OperationError(f"{peer} answered C-ECHO with {describe(code)}", status=code)
        finally:
            release(assoc)

    # -- C-FIND ---------------------------------------------------------------------------

    def find(
        self,
        query: AnyQuery,
        peer: DicomNode,
        *,
        cancel: CancelToken | None = None,
        on_match: Callable[[Dataset], None] | None = None,
        pool: FindPool | None = None,
    ) -> FindOutcome:
        """C-FIND ``query`` on ``peer``; returns every match and how the query ended.

        With ``pool`` (one batch of queries) the association comes from and goes back
        to the pool: an idle association of the batch is reused, and a reused one that
        turns out closed by the peer before any answer is replaced once."""
        identifier = query.to_dataset()  # validates before any traffic
        if pool is None:
            with self._find_association(peer) as assoc:
                return self._find_on(assoc, query, identifier, peer, cancel, on_match)
        matched: list[None] = []

        def counted(ds: Dataset) -> None:
            matched.append(None)
            if on_match is not None:
                on_match(ds)

        while True:
            taken = pool.take(peer)
            reused = taken is not None
            if taken is None:
                taken = self._open_find_association(peer)
                pool.opened += 1
            assoc = taken
            try:
                outcome = self._find_on(assoc, query, identifier, peer, cancel, counted)
            except AssociationAbortedError as exc:
                release(assoc)
                if reused and not matched and not _cancelled(cancel):
                    logger.debug("a reused C-FIND association failed (%s): a new one", exc)
                    continue
                raise
            except BaseException:
                release(assoc)
                raise
            if outcome.cancelled:
                release(assoc)
            else:
                pool.give(peer, assoc)
            return outcome

    @contextlib.contextmanager
    def _find_association(self, peer: DicomNode) -> Iterator[Association]:
        """One association offering the Study Root and Patient Root FIND models."""
        assoc = self._open_find_association(peer)
        try:
            yield assoc
        finally:
            release(assoc)

    def _open_find_association(self, peer: DicomNode) -> Association:
        ae = make_ae(self.calling_aet, self.timeouts)
        contexts = [build_context(_STUDY_FIND), build_context(_PATIENT_FIND)]
        return open_association(ae, peer, contexts=contexts, max_pdu=self.max_pdu, purpose="C-FIND")

    def _find_on(
        self,
        assoc: Association,
        query: AnyQuery,
        identifier: Dataset,
        peer: DicomNode,
        cancel: CancelToken | None,
        on_match: Callable[[Dataset], None] | None = None,
    ) -> FindOutcome:
        """One C-FIND; a list of UIDs the peer refuses is asked one UID at a time."""
        listed = bool(uid_list_keywords(identifier))
        if listed and self.refuses_uid_lists(peer):
            return self._find_per_uid(assoc, query, identifier, peer, cancel, on_match, None)
        outcome = FindOutcome()
        try:
            return self._find_once(assoc, query, identifier, peer, cancel, on_match, outcome)
        except QueryError as exc:
            if not listed or outcome.datasets or exc.status in (None, CANCEL):
                raise
            return self._find_per_uid(assoc, query, identifier, peer, cancel, on_match, exc)

    def _find_per_uid(
        self,
        assoc: Association,
        query: AnyQuery,
        identifier: Dataset,
        peer: DicomNode,
        cancel: CancelToken | None,
        on_match: Callable[[Dataset], None] | None,
        refused: QueryError | None,
    ) -> FindOutcome:
        """The C-FIND of ``identifier`` as one query per UID of its lists, on ``assoc``.

        With ``refused`` (the list's failure) the first single-UID query is a probe:
        when it fails too, the list was not the problem and ``refused`` is raised.
        """
        outcome = FindOutcome()
        for part in split_uid_lists(identifier):
            if _cancelled(cancel):
                outcome.cancelled = True
                break
            found = FindOutcome()
            try:
                self._find_once(assoc, query, part, peer, cancel, on_match, found)
            except QueryError:
                if refused is not None:
                    raise refused from None
                raise
            if refused is not None:
                self._note_list_refusal(peer, "C-FIND", refused.status)
                refused = None
            outcome.datasets += found.datasets
            outcome.status = found.status
            outcome.truncated |= found.truncated
            if found.cancelled:
                outcome.cancelled = True
                break
        return outcome

    def _find_once(
        self,
        assoc: Association,
        query: AnyQuery,
        identifier: Dataset,
        peer: DicomNode,
        cancel: CancelToken | None,
        on_match: Callable[[Dataset], None] | None,
        outcome: FindOutcome,
    ) -> FindOutcome:
        """One C-FIND request and its responses, gathered into ``outcome``."""
        model = _PATIENT_FIND if query.level is QueryLevel.PATIENT else _STUDY_FIND
        _require_context(assoc, model, peer, "C-FIND")
        waiter = ResponseWaiter(assoc, self.timeouts.dimse, peer)
        emptied = 0
        # only answers to a query asking for person names can come back with emptied names
        check_names = any(elem.VR == "PN" for elem in identifier)
        self._msg_id = getattr(self, "_msg_id", 0) % 65000 + 1
        msg_id = self._msg_id
        fast = _fast_find(assoc, peer, self.timeouts)
        if fast is not None:  # the socket is ours until the final response (fastfind.py)
            responses = fast.responses(identifier, model, msg_id, cancel)
            watch: contextlib.AbstractContextManager[threading.Event] = contextlib.nullcontext(
                fast.cancel_sent
            )
        else:
            responses = find_responses(assoc, identifier, model, msg_id)
            watch = cancel_watch(
                assoc, cancel, msg_id=msg_id, query_model=model, grace=self.timeouts.cancel
            )
        with contextlib.closing(responses), watch as cancel_sent:
            for code, raw, syntax in responses:
                if code is None:
                    if cancel_sent.is_set():
                        outcome.cancelled = True
                        break
                    raise waiter.failure("C-FIND")
                waiter.touch()
                if code in PENDING:
                    match = _identifier(raw, syntax)
                    if match is not None and not cancel_sent.is_set():
                        if check_names:
                            emptied += names_look_emptied(match)
                        outcome.datasets.append(match)
                        if on_match is not None:
                            on_match(match)
                    continue
                outcome.status = code
                outcome.cancelled = cancel_sent.is_set()
                if code == CANCEL:
                    outcome.truncated = not outcome.cancelled
                elif code != 0x0000:
                    raise QueryError(
                        f"{peer} ended the {query.level.value} C-FIND with {describe(code)} "
                        f"after {len(outcome.datasets)} match(es)",
                        status=code,
                    )
        if outcome.truncated:
            logger.warning(
                "%s stopped the %s C-FIND after %d matches (a result limit): "
                "more may match; narrow the query",
                peer,
                query.level.value,
                len(outcome.datasets),
            )
        if emptied:
            logger.warning(
                "%d match(es) from %s have person names reduced to '^' separators: the peer "
                "answered in a character set that cannot carry them (Orthanc: set "
                "DefaultEncoding to Utf8)",
                emptied,
                peer,
            )
        return outcome

    # -- C-GET / C-MOVE -------------------------------------------------------------------

    def plan(
        self, request: RetrieveRequest, peer: DicomNode, cancel: CancelToken | None = None
    ) -> RetrievePlan:
        """List every instance ``request`` covers (IMAGE level C-FIND), on one association.

        Asking for SOPClassUID at IMAGE level makes Orthanc open every file, so
        when the study's SOPClassesInStudy fits one C-GET association we list the
        instances without it; otherwise (or for peers that do not answer
        SOPClassesInStudy, like dcmqrscp) each instance's SOPClassUID is asked.
        Pass the result as ``retrieve(plan=...)`` to have the expected instances
        named before the transfer (a retrieve plans with :meth:`lean_plan` itself).
        """
        with self._find_association(peer) as assoc:
            return self._listed_plan(assoc, request, peer, cancel, None)

    def lean_plan(
        self, request: RetrieveRequest, peer: DicomNode, cancel: CancelToken | None = None
    ) -> RetrievePlan:
        """Plan ``request`` from the peer's counts, one row per study and per series.

        A study or series retrieve from a peer that answers SOPClassesInStudy,
        NumberOfStudyRelatedInstances and NumberOfSeriesRelatedInstances (Orthanc)
        gets a lean plan (``listed=False``): its series, their counts and the
        study's SOP classes, without listing every instance; the retrieve lists
        only the series that come up short, after the transfer.  Anything else
        (dcmqrscp, qrscp, instance requests, counts that do not add up, SOP
        classes needing several C-GET associations) is listed as :meth:`plan` does.
        """
        with self._find_association(peer) as assoc:
            lean, declared = self._counted_plan(assoc, request, peer, cancel)
            if lean is not None:
                return lean
            return self._listed_plan(assoc, request, peer, cancel, declared)

    def _listed_plan(
        self,
        assoc: Association,
        request: RetrieveRequest,
        peer: DicomNode,
        cancel: CancelToken | None,
        declared: list[str] | None,
    ) -> RetrievePlan:
        """The IMAGE level listing of ``request`` (``declared``: SOPClassesInStudy if
        already asked; None: ask it first)."""
        if declared is None:
            declared = []
            if request.study_uid:
                study = StudyQuery(
                    study_instance_uid=request.study_uid, return_keys=("SOPClassesInStudy",)
                )
                found = self._find_on(assoc, study, study.to_dataset(), peer, cancel)
                for ds in found.datasets:
                    declared += _uid_values(ds.get("SOPClassesInStudy"))
        lean = bool(declared) and len(plan_get_chunks(declared)) == 1
        query = request.pre_query()
        identifier = query.to_dataset()
        if lean:
            del identifier.SOPClassUID
        outcome = self._find_on(assoc, query, identifier, peer, cancel)
        return RetrievePlan.from_datasets(
            outcome.datasets, declared_classes=declared if lean else ()
        )

    def _counted_plan(
        self,
        assoc: Association,
        request: RetrieveRequest,
        peer: DicomNode,
        cancel: CancelToken | None,
    ) -> tuple[RetrievePlan | None, list[str] | None]:
        """(a lean plan or None, the study's SOP classes when asked)."""
        if request.level is QueryLevel.IMAGE:
            return None, None
        study_uid = request.study_uid
        series: list[PlannedSeries] | None = None
        if request.level is QueryLevel.SERIES:
            series = self._series_counts(assoc, study_uid, request.series_uid, peer, cancel)
            studies = {s.study_uid for s in series or ()}
            if series is None or len(studies) != 1:
                return None, None
            study_uid = studies.pop()
        assert study_uid is not None
        declared, total = self._study_counts(assoc, study_uid, peer, cancel)
        if not declared or total is None:
            return None, declared if request.study_uid else None
        if series is None:
            series = self._series_counts(assoc, study_uid, None, peer, cancel)
            if series is None or sum(s.count for s in series) != total:
                return None, declared
        if len(plan_get_chunks(declared)) != 1:
            return None, declared if request.study_uid else None
        return RetrievePlan.from_counts(series, declared), declared

    def _study_counts(
        self, assoc: Association, study_uid: str, peer: DicomNode, cancel: CancelToken | None
    ) -> tuple[list[str], int | None]:
        """(SOPClassesInStudy, NumberOfStudyRelatedInstances) of one study: the classes of
        every answer (none when not answered), the count when one answer gives it."""
        query = StudyQuery(study_instance_uid=study_uid)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        identifier.SOPClassesInStudy = ""
        identifier.NumberOfStudyRelatedInstances = ""
        found = self._find_on(assoc, query, identifier, peer, cancel)
        declared = [c for ds in found.datasets for c in _uid_values(ds.get("SOPClassesInStudy"))]
        if found.truncated or found.cancelled or len(found.datasets) != 1:
            return declared, None
        row = found.datasets[0]
        if _text(row.get("StudyInstanceUID")) != study_uid:
            return declared, None
        return declared, _count(row.get("NumberOfStudyRelatedInstances"))

    def _series_counts(
        self,
        assoc: Association,
        study_uid: str | None,
        series_uid: str | None,
        peer: DicomNode,
        cancel: CancelToken | None,
    ) -> list[PlannedSeries] | None:
        """Series (of ``study_uid``, or ``series_uid``) and their NumberOfSeriesRelatedInstances;
        None when any row lacks one of them."""
        query = SeriesQuery(study_instance_uid=study_uid, series_instance_uid=series_uid)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid or ""
        identifier.SeriesInstanceUID = series_uid or ""
        identifier.NumberOfSeriesRelatedInstances = ""
        found = self._find_on(assoc, query, identifier, peer, cancel)
        if found.truncated or found.cancelled:
            return None
        series: list[PlannedSeries] = []
        for row in found.datasets:
            study, uid = _text(row.get("StudyInstanceUID")), _text(row.get("SeriesInstanceUID"))
            count = _count(row.get("NumberOfSeriesRelatedInstances"))
            if not study or not uid or count is None:
                return None
            if (study_uid and study != study_uid) or (series_uid and uid != series_uid):
                return None  # the peer did not match as asked: list instead
            series.append(PlannedSeries(study, uid, count))
        return series if series else None

    def _settle(
        self,
        request: RetrieveRequest,
        peer: DicomNode,
        plan: RetrievePlan,
        handler: StorageHandler,
        list_short: bool = True,
    ) -> RetrievePlan:
        """The listed plan of a lean plan after its transfer: what arrived, and the
        series that came up short listed (IMAGE level), so that the result names every
        instance that did not arrive.  The lean plan itself when they cannot be listed
        (the peer died or froze: the listing is bounded by the timeouts); its result
        then counts what is missing (``expected``) without naming it."""
        tally = handler.tally
        with tally.lock:
            located = {u: tally.located[u] for u in tally.arrived if u in tally.located}
        arrived = collections.Counter(located.values())
        short = plan.short_series(arrived)
        if not short:  # complete: what arrived is the listing
            return plan.settled(located, [], [])
        if not list_short:
            return plan
        rows: list[Dataset] = []
        try:
            with self._find_association(peer) as assoc:
                if len(short) == len(plan.series):
                    targets = [request.pre_query()]
                else:
                    targets = [
                        ImageQuery(study_instance_uid=s.study_uid, series_instance_uid=s.series_uid)
                        for s in short
                    ]
                for query in targets:
                    identifier = query.to_dataset()
                    del identifier.SOPClassUID  # the study's classes are declared
                    rows += self._find_on(assoc, query, identifier, peer, None).datasets
        except DicomError as exc:
            logger.warning(
                "%d series came up short but could not be listed (%s): the result counts "
                "what is missing without naming it",
                len(short),
                exc,
            )
            return plan
        logger.info("%d series came up short: listed %d instance(s)", len(short), len(rows))
        listing = RetrievePlan.from_datasets(rows, plan.declared_classes).instances
        return plan.settled(located, listing, [s.key for s in short])

    def retrieve(
        self,
        method: Literal["get", "move"],
        request: RetrieveRequest,
        peer: DicomNode,
        storage: StorageConfig,
        *,
        cancel: CancelToken | None = None,
        progress: Progress | None = None,
        query_first: bool = True,
        raise_on_error: bool = True,
        plan: RetrievePlan | None = None,
        on_stored: Callable[[str, int], object] | None = None,
    ) -> RetrieveResult:
        """C-GET or C-MOVE ``request`` from ``peer`` into ``storage``.

        With ``query_first`` (default) the retrieve is planned first (or pass the
        ``plan`` from :meth:`plan` or :meth:`lean_plan`): C-GET then negotiates
        exactly the SOP classes present, and the result names every instance that
        did not arrive.  The plan is :meth:`lean_plan` (study and series counts;
        only series that come up short are listed, after the transfer) unless
        ``settings.lean_plan`` is off; :meth:`plan` lists every instance up front.
        Raises NotFoundError when nothing matches and PartialRetrieveError when
        anything failed or is missing (its ``result`` lists what arrived); a
        cancelled retrieve returns a result with status CANCELLED.
        ``on_stored(sop_uid, nbytes)`` is called for every instance kept.
        """
        started = time.monotonic()
        if plan is None and query_first:
            planner = self.lean_plan if settings.lean_plan else self.plan
            plan = planner(request, peer, cancel)
        if plan is not None:
            if not len(plan):
                result = self._result(method, request, peer, plan, None, None, started)
                raise NotFoundError(
                    f"nothing on {peer} matches the {method} request", result=result
                )
            if request.study_uid is None and request.level is not QueryLevel.STUDY:
                studies = set(plan.study_uids)
                series = set(plan.series_uids)
                if len(studies) == 1 and (len(series) == 1 or request.level is QueryLevel.SERIES):
                    request = RetrieveRequest(
                        request.level,
                        study_uid=studies.pop(),
                        series_uid=request.series_uid
                        or (series.pop() if len(series) == 1 else None),
                        sop_uids=request.sop_uids,
                    )
            if progress is not None:
                progress.total = len(plan)
                progress.refresh()
        # ``stop`` ends the transfer (C-CANCEL) on the caller's cancel or on a local
        # storage failure: a full disk must not fail every remaining instance slowly.
        stop = CancelToken()
        handler = StorageHandler(
            storage,
            locator=plan.locate if plan is not None and plan.listed else None,
            calling_aet=self.calling_aet,
            timeouts=self.timeouts,
            max_pdu=self.max_pdu,
            on_received=_serialised(progress.update) if progress is not None else None,
            on_stored=on_stored,
            on_storage_error=lambda exc: stop.cancel(),
            track_locations=plan is not None and not plan.listed,
        )
        unlink = cancel.on_cancel(stop.cancel) if cancel is not None else None
        counters = _Counters()
        broken: NetworkError | None = None
        try:
            if method == "get":
                self._get(request, peer, plan, handler, counters, stop)
            else:
                self._move(request, peer, plan, handler, counters, stop)
        except NetworkError as exc:
            if not handler.tally.arrived and not handler.tally.failed:
                raise  # nothing happened yet: the network error says it all
            broken = exc
        finally:
            if unlink is not None:
                unlink()
            handler.close()
        if plan is not None and not plan.listed:  # a lean plan: list what came up short
            # after a cancel the PACS ignored (aborted) do not wait on it once more
            stuck = broken is not None and cancel is not None and cancel.cancelled
            plan = counters.settled or self._settle(request, peer, plan, handler, not stuck)
        result = self._result(method, request, peer, plan, handler, counters, started, cancel)
        result._plan = plan
        if handler.storage_error is not None:
            raise _storage_failure(result, handler.storage_error, storage, peer) from (
                handler.storage_error
            )
        if broken is not None and result.status is RetrieveStatus.SUCCESS and plan is not None:
            logger.warning("%s after every expected instance arrived: %s", method, broken)
            broken = None  # everything the pre-query listed is here
        if broken is not None:
            result.message = f"{broken} ({result.message or 'no final status'})"
            if result.status is RetrieveStatus.SUCCESS:
                result.status = RetrieveStatus.PARTIAL
        logger.info("%s from %s: %s", method.upper(), peer, result.summary())
        if broken is not None:
            if cancel is not None and cancel.cancelled:
                return result
            raise PartialRetrieveError(
                f"{method.upper()} from {peer} broke off: {broken}; {result.summary()}",
                result=result,
            ) from broken
        if raise_on_error:
            _raise_for(result, peer, self.calling_aet, self.scp_port)
        return result

    def _get(
        self,
        request: RetrieveRequest,
        peer: DicomNode,
        plan: RetrievePlan | None,
        handler: StorageHandler,
        counters: _Counters,
        cancel: CancelToken | None,
    ) -> None:
        """C-GET over as many associations as the SOP classes need.

        First pass: when the pre-query named every SOP class, each association
        negotiates exactly those classes in every transfer syntax, each syntax in
        a context of its own (so the peer sends as stored); otherwise (dcmqrscp
        and qrscp return no SOPClassUID) the most common storage classes.  Then
        repair passes re-request only what is still missing (every uncompressed
        syntax, then one compressed syntax per pass), for peers that send on the
        first context of a class and cannot convert, or hold classes the first
        pass did not offer.  A first pass of at least ``split_min`` planned
        instances is split over the client's free threads (:meth:`_get_split`).
        """
        known = plan is not None and plan.classes_known
        ae = make_ae(self.calling_aet, self.timeouts)
        if known and plan is not None:
            chunks = plan_get_chunks(plan.sop_classes)
            if len(chunks) == 1 and self._splits(plan):
                self._get_split(request, peer, plan, True, chunks[0], handler, counters, cancel)
                chunks = []
            for chunk in chunks:
                if _cancelled(cancel):
                    return
                self._get_on_association(
                    ae, request, peer, plan, chunk, len(chunks), handler, counters, cancel, None
                )
        else:
            chunk = first_get_chunk(default_storage_classes())
            if plan is not None and self._splits(plan):
                self._get_split(request, peer, plan, False, chunk, handler, counters, cancel)
            else:
                self._get_on_association(
                    ae, request, peer, None, chunk, 1, handler, counters, cancel, None
                )
        if plan is None:
            return
        if not plan.listed:  # a lean plan: the repair passes need the short series listed
            plan = counters.settled = self._settle(request, peer, plan, handler)
            if not plan.listed:
                return
        if all(i.sop_uid in handler.tally.arrived for i in plan.instances):
            return
        try:
            self._repair(request, peer, plan, known, ae, handler, counters, cancel)
        finally:
            if all(i.sop_uid in handler.tally.arrived for i in plan.instances):
                counters.retry()  # all repaired: failures of passes that could not help are moot

    def _splits(self, plan: RetrievePlan) -> bool:
        """True when a C-GET of ``plan`` may use several associations."""
        workers = self.workers
        return (
            workers is not None
            and plan.listed  # a lean plan names no instance: nothing to cut or re-ask
            and workers.inside()  # the first association holds a pool thread
            and self.split_min > 0
            and len(plan) >= self.split_min
            and workers.free() > 0  # a pull that fills the pool is not split
        )

    def _get_split(
        self,
        request: RetrieveRequest,
        peer: DicomNode,
        plan: RetrievePlan,
        known: bool,
        chunk: GetChunk,
        handler: StorageHandler,
        counters: _Counters,
        cancel: CancelToken | None,
    ) -> None:
        """The first pass of a C-GET that may split over up to ``workers.size`` associations.

        With ``split_busy`` set, the request goes out whole on one association, as
        without splitting, while :class:`SplitProbe` watches its first instances.  When
        they show the client waiting on the peer, that request is cancelled (C-CANCEL)
        and what has not arrived is fetched in parts over several associations
        (:meth:`_get_parts`); otherwise it runs to its end, unchanged.
        """
        if self.split_busy is None:
            self._get_parts(request, peer, plan, known, chunk, handler, counters, cancel)
            return
        mine = CancelToken()
        unlink = cancel.on_cancel(mine.cancel) if cancel is not None else None
        probe = SplitProbe(mine.cancel, busy=self.split_busy)
        received = handler.on_received

        def observed(n: int) -> object:
            probe.tick()
            return received(n) if received is not None else None

        first = _Counters()
        handler.on_received = observed
        try:
            self._get_on_association(
                make_ae(self.calling_aet, self.timeouts),
                request, peer, plan if known else None, chunk, 1, handler, first, mine, None,
            )  # fmt: skip
        finally:
            probe.stop()
            handler.on_received = received
            if unlink is not None:
                unlink()
            counters.msg_id = first.msg_id
        if not probe.split or _cancelled(cancel) or first.status not in (None, CANCEL_STATUS):
            counters.add(first)  # ran to its end (or the user cancelled): as one association
            return
        # cancelled by the probe: its counts of what arrived stand, not its status
        counters.completed += first.completed
        counters.warning += first.warning
        counters.associations += first.associations
        arrived = handler.tally.arrived
        missing = [i for i in plan.instances if i.sop_uid not in arrived]
        if not missing:
            return
        begun = {i.series_uid for i in plan.instances if i.sop_uid in arrived}
        logger.debug("C-GET split after %d of %d instances", len(plan) - len(missing), len(plan))
        self._get_parts(
            request, peer, RetrievePlan(missing), known, chunk, handler, counters, cancel, begun
        )

    def _get_parts(
        self,
        request: RetrieveRequest,
        peer: DicomNode,
        plan: RetrievePlan,
        known: bool,
        chunk: GetChunk,
        handler: StorageHandler,
        counters: _Counters,
        cancel: CancelToken | None,
        begun: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """``plan`` in parts over up to ``workers.size`` associations (``begun``: series
        some instances of which already arrived, asked by UID list, never whole).

        This thread opens the first association; once it has the storage contexts
        of every planned class, extra associations are queued on the client's pool
        (each starts when a thread is free, so the client's bound holds).  Every
        association takes parts from one queue until it is empty.  Failures of a
        part are counted as on one association; the first error of an association
        that had taken a part stops the handing out and is raised once all are done.
        """
        workers = self.workers
        assert workers is not None
        extras = workers.free()
        queue = WorkQueue(work_items(request, plan, 1 + extras, begun=begun))
        if not extras or len(queue.items) < 2:  # no thread free after all: as one
            self._get_on_association(
                make_ae(self.calling_aet, self.timeouts),
                request, peer, plan if known else None, chunk, 1, handler, counters, cancel,
                None if not begun else list(queue.items),
            )  # fmt: skip
            return
        lock = threading.Lock()
        extra: list[_Counters] = []
        errors: list[BaseException] = []
        helpers: list[Future[None]] = []

        def helper() -> None:
            if queue.left == 0 or _cancelled(cancel):
                return  # started after the work was done: open nothing
            mine = _Counters()
            taken = [0]

            def source(assoc: Association) -> Iterator[Dataset]:
                for item in queue:
                    taken[0] += 1
                    yield item

            with lock:
                extra.append(mine)
            try:
                self._get_on_association(
                    make_ae(self.calling_aet, self.timeouts),
                    request, peer, None, chunk, 1, handler, mine, cancel, source,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - raised by the first thread below
                if not taken[0]:
                    logger.info("an extra C-GET association to %s failed (%s): the others "
                                "carry on", peer, exc)  # fmt: skip
                    return
                queue.close()
                with lock:
                    errors.append(exc)

        def start(assoc: Association) -> Iterable[Dataset]:
            if known and not begun:
                accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts if cx.as_scp}
                if any(uid not in accepted for uid in chunk.sop_classes):
                    # some class refused: one association, as without splitting
                    return self._get_identifiers(assoc, request, plan, chunk, 1, handler)
            for _ in range(min(extras, len(queue.items) - 1)):
                future = workers.submit(helper)
                if future is not None:
                    helpers.append(future)
            logger.debug("C-GET of %d instances in %d parts", len(plan), len(queue.items))
            return queue

        try:
            self._get_on_association(
                make_ae(self.calling_aet, self.timeouts),
                request, peer, plan if known else None, chunk, 1, handler, counters, cancel, start,
            )  # fmt: skip
        finally:
            queue.close()
            running = [f for f in helpers if not workers.cancel(f)]  # dropped if not started
            wait_futures(running)
            for mine in extra:
                counters.add(mine)
        if errors:
            raise errors[0]

    def _repair(
        self,
        request: RetrieveRequest,
        peer: DicomNode,
        plan: RetrievePlan,
        known: bool,
        ae: AE,
        handler: StorageHandler,
        counters: _Counters,
        cancel: CancelToken | None,
    ) -> None:
        """Repair passes: re-request what is still missing, one syntax set per pass."""
        for syntaxes in REPAIR_PASSES:
            missing = [i for i in plan.instances if i.sop_uid not in handler.tally.arrived]
            if not missing or _cancelled(cancel):
                return
            classes = plan.classes_of(missing) if known else default_storage_classes()
            chunks = plan_syntax_chunks(classes, syntaxes)
            if not chunks:
                continue  # compressed syntaxes, and no image class is missing
            logger.info(
                "C-GET repair pass for %d missing instance(s), offering %s",
                len(missing),
                ", ".join(UID(ts).name for ts in syntaxes),
            )
            counters.retry()
            for chunk in chunks:
                wanted = [
                    i
                    for i in missing
                    if i.sop_uid not in handler.tally.arrived
                    and (not known or not i.sop_class_uid or i.sop_class_uid in chunk.sop_classes)
                ]
                if wanted and not _cancelled(cancel):
                    self._get_on_association(
                        ae,
                        request,
                        peer,
                        None,
                        chunk,
                        1,
                        handler,
                        counters,
                        cancel,
                        _identifiers_for(wanted),
                    )

    def _get_on_association(
        self,
        ae: AE,
        request: RetrieveRequest,
        peer: DicomNode,
        plan: RetrievePlan | None,
        chunk: GetChunk,
        n_chunks: int,
        handler: StorageHandler,
        counters: _Counters,
        cancel: CancelToken | None,
        identifiers: list[Dataset] | Callable[[Association], Iterable[Dataset]] | None,
    ) -> None:
        """C-GET on one association: ``identifiers``, or what a callable returns once the
        association is open, or (None) what :meth:`_get_identifiers` picks."""
        assoc = open_association(
            ae,
            peer,
            contexts=chunk.contexts,
            ext_neg=chunk.roles(),
            evt_handlers=handler.handlers(),
            max_pdu=self.max_pdu,
            purpose="C-GET",
            carries_instances=True,
        )
        counters.associations += 1
        try:
            model = str(StudyRootQueryRetrieveInformationModelGet)
            _require_context(assoc, model, peer, "C-GET")
            parts: Iterable[Dataset]
            if identifiers is None:
                parts = self._get_identifiers(assoc, request, plan, chunk, n_chunks, handler)
            elif callable(identifiers):
                parts = identifiers(assoc)
            else:
                parts = identifiers

            fast = FastGet(assoc, handler, peer, self.timeouts) if settings.fast_path else None

            def send(identifier: Dataset) -> None:
                counters.msg_id = counters.msg_id % 65535 + 1
                if fast is not None:  # the lean receive path (fastpath.py)
                    final = fast.get(identifier, model, counters.msg_id, cancel)
                    if final is not None:
                        counters.final(*final)
                    return
                responses = assoc.send_c_get(identifier, model, msg_id=counters.msg_id)
                self._consume(
                    assoc, responses, counters, cancel, counters.msg_id, peer, "C-GET", model
                )

            for identifier in parts:
                self._send_listed(identifier, send, peer, handler, counters, cancel, "C-GET")
                if cancel is not None and cancel.cancelled:
                    return
        finally:
            release(assoc)

    def _get_identifiers(
        self,
        assoc: Association,
        request: RetrieveRequest,
        plan: RetrievePlan | None,
        chunk: GetChunk,
        n_chunks: int,
        handler: StorageHandler,
    ) -> list[Dataset]:
        """C-GET identifiers for one association: the request itself when it can
        carry everything, else per-series instance lists of what was negotiated."""
        if plan is None:
            return [request.identifier()]
        accepted = {
            str(cx.abstract_syntax)
            for cx in assoc.accepted_contexts
            if cx.as_scp and str(cx.abstract_syntax) in chunk.sop_classes
        }
        refused = [uid for uid in chunk.sop_classes if uid not in accepted]
        for inst in plan.of_classes(refused):
            handler.tally.failed[inst.sop_uid] = (
                f"{peer_name(assoc)} refused storage of SOP class {inst.sop_class_uid}"
            )
        if refused:
            logger.warning(
                "the peer refused C-GET storage contexts for %d SOP class(es): %s",
                len(refused),
                ", ".join(refused),
            )
        per_instance = plan.classes_per_instance
        if n_chunks == 1 and (not refused or not per_instance):
            return [request.identifier()]  # what cannot come is left to the repair passes
        return _identifiers_for(plan.of_classes(accepted))

    def _move(
        self,
        request: RetrieveRequest,
        peer: DicomNode,
        plan: RetrievePlan | None,
        handler: StorageHandler,
        counters: _Counters,
        cancel: CancelToken | None,
    ) -> None:
        """C-MOVE to our own Storage SCP, which admits only ``peer`` (see scp.py).

        The association is opened first: the address it reached is one the
        PACS's C-STOREs may come from."""
        # a lean plan names no instance: each is checked against the request (Scope)
        expected = frozenset(plan.sop_uids) if plan is not None and plan.listed else None
        extra = frozenset(plan.sop_classes) if plan is not None else frozenset()
        ae = make_ae(self.calling_aet, self.timeouts)
        model = str(StudyRootQueryRetrieveInformationModelMove)
        assoc = open_association(
            ae, peer, contexts=[build_context(model)], max_pdu=self.max_pdu, purpose="C-MOVE"
        )
        counters.associations += 1
        try:
            _require_context(assoc, model, peer, "C-MOVE")
            with receiving(
                handler,
                aet=self.calling_aet,
                port=self.scp_port,
                ip=self.scp_ip,
                max_pdu=self.max_pdu,
                timeouts=self.timeouts,
                admission=self._move_admission(peer, assoc),
                expected=expected,
                scope=Scope(request.study_uid, request.series_uid, frozenset(request.sop_uids)),
                extra_classes=extra,
                # a C-MOVE over TLS: the PACS connects to our SCP over TLS too
                ssl_context=scp_context(peer.tls, self.timeouts.network) if peer.tls else None,
            ):
                self._move_on(assoc, request.identifier(), peer, handler, counters, cancel)
        finally:
            release(assoc)

    def _move_admission(self, peer: DicomNode, assoc: Association) -> Admission:
        """Who may C-STORE to us for this move: ``peer``'s AE title (and the
        ``move_allowed_aets``), from ``peer``'s address(es) when ``move_check_host``."""
        aets = frozenset({peer.aet, *self.move_allowed_aets})
        if not self.move_check_host:
            return Admission(aets)
        connected: str | None = None
        with contextlib.suppress(AttributeError, OSError, IndexError, TypeError):
            connected = str(assoc.dul.socket.socket.getpeername()[0])  # type: ignore[union-attr]
        addresses = peer_addresses(peer.host, connected, self.timeouts.connect)
        if not addresses:  # the host neither is an IP nor resolves: check the AE title only
            logger.info("C-MOVE senders not checked by address: %s does not resolve", peer.host)
        return Admission(aets, addresses or None)

    def _move_on(
        self,
        assoc: Association,
        identifier: Dataset,
        peer: DicomNode,
        handler: StorageHandler,
        counters: _Counters,
        cancel: CancelToken | None,
    ) -> None:
        """C-MOVE ``identifier`` on ``assoc`` (one UID at a time if the peer refuses lists)."""
        model = str(StudyRootQueryRetrieveInformationModelMove)
        fast = FastGet(assoc, handler, peer, self.timeouts) if settings.fast_path else None

        def send(part: Dataset) -> None:
            counters.msg_id = counters.msg_id % 65535 + 1
            msg_id = counters.msg_id
            if fast is not None:  # the lean response path (fastpath.py)
                final = fast.move(part, model, msg_id, cancel, self.calling_aet)
                if final is not None:
                    counters.final(*final)
                return
            responses = assoc.send_c_move(part, self.calling_aet, model, msg_id)
            self._consume(assoc, responses, counters, cancel, msg_id, peer, "C-MOVE", model)

        self._send_listed(identifier, send, peer, handler, counters, cancel, "C-MOVE")

    def _send_listed(
        self,
        identifier: Dataset,
        send: Callable[[Dataset], None],
        peer: DicomNode,
        handler: StorageHandler,
        counters: _Counters,
        cancel: CancelToken | None,
        what: str,
    ) -> None:
        """Send one C-GET/C-MOVE ``identifier`` with ``send``.

        When it carries a list of UIDs that the peer refuses outright (pynetdicom's
        qrscp: 0xC413 on C-GET, 0xA801 on C-MOVE), the UIDs not yet arrived are
        requested one at a time.  The first single-UID request is a probe: when the
        peer refuses it too (0xA801 also means "move destination unknown"), the list
        was not the problem and the failure stands.  A peer known to refuse lists
        gets one request per UID at once.
        """
        listed = bool(uid_list_keywords(identifier))
        probing = listed and not self.refuses_uid_lists(peer)
        code: int | None = None
        if not listed or probing:
            refused = _send_refused(send, identifier, handler, counters)
            if not probing or not refused:
                return
            code = counters.status
        for part in split_uid_lists(identifier):
            if _cancelled(cancel):
                return
            uids = listed_sop_uids(part)
            if uids and all(uid in handler.tally.arrived for uid in uids):
                continue
            refused = _send_refused(send, part, handler, counters)
            if refused and counters.status == MOVE_DESTINATION_UNKNOWN:
                return  # a destination problem, the same for every UID
            if probing:
                if refused:
                    return  # one UID alone is refused too: not a matter of lists
                self._note_list_refusal(peer, what, code)
                probing = False

    def _consume(
        self,
        assoc: Association,
        responses: Iterator[tuple[Dataset, Dataset | None]],
        counters: _Counters,
        cancel: CancelToken | None,
        msg_id: int,
        peer: DicomNode,
        what: str,
        model: str,
    ) -> None:
        waiter = ResponseWaiter(assoc, self.timeouts.dimse, peer)
        with cancel_watch(
            assoc, cancel, msg_id=msg_id, query_model=model, grace=self.timeouts.cancel
        ) as cancel_sent:
            for status, identifier in responses:
                code = status_of(status)
                if code is None:
                    if cancel_sent.is_set():
                        return
                    raise waiter.failure(what)
                waiter.touch()
                if code in PENDING:
                    continue
                counters.final(status, identifier)
                return

    def _result(
        self,
        method: Literal["get", "move"],
        request: RetrieveRequest,
        peer: DicomNode,
        plan: RetrievePlan | None,
        handler: StorageHandler | None,
        counters: _Counters | None,
        started: float,
        cancel: CancelToken | None = None,
    ) -> RetrieveResult:
        counters = counters or _Counters()
        tally = handler.tally if handler else None
        received = list(tally.received) if tally else []
        got = set(received)
        failed = list(dict.fromkeys([*counters.failed_uids, *(tally.failed if tally else {})]))
        failed = [u for u in failed if u not in got]
        if plan is not None:
            expected: int | None = len(plan)
            missing = [u for u in plan.sop_uids if u not in got and u not in set(failed)]
        else:
            peer_total = counters.completed + counters.failed + counters.warning
            expected = peer_total if counters.status is not None else None
            missing = []
        short = expected is not None and len(got) < expected
        if cancel is not None and cancel.cancelled:
            status = RetrieveStatus.CANCELLED
        elif expected == 0 and not got:
            status = RetrieveStatus.NOT_FOUND
        elif not failed and not missing and not short and counters.status in (0x0000, 0xB000):
            status = RetrieveStatus.SUCCESS if not counters.failed else RetrieveStatus.PARTIAL
        elif got:
            status = RetrieveStatus.PARTIAL
        else:
            status = RetrieveStatus.FAILED
        return RetrieveResult(
            method=method,
            level=request.level,
            peer=str(peer),
            status=status,
            dimse_status=counters.status,
            expected=expected,
            received=len(got),
            completed=counters.completed,
            failed=counters.failed,
            warning=counters.warning,
            failed_sop_instance_uids=failed,
            missing_sop_instance_uids=missing,
            received_sop_instance_uids=received,
            paths=list(tally.paths) if tally else [],
            datasets=list(tally.datasets) if tally else [],
            forwarded_sop_instance_uids=list(tally.forwarded) if tally else [],
            bytes_received=tally.bytes_received if tally else 0,
            elapsed=time.monotonic() - started,
            associations=counters.associations,
            message=describe(counters.status) if counters.status is not None else "",
            refused=list(tally.refused) if tally else [],
        )


def _storage_failure(
    result: RetrieveResult, exc: OSError, storage: StorageConfig, peer: DicomNode
) -> LocalStorageError:
    """The LocalStorageError of a retrieve stopped by a local storage failure."""
    if result.status is RetrieveStatus.SUCCESS:
        result.status = RetrieveStatus.PARTIAL
    where = f" in {storage.output_dir}" if storage.output_dir is not None else ""
    reason = storage_reason(exc)
    result.message = f"local storage failed: {reason} ({result.message or 'no final status'})"
    logger.info("%s from %s: %s", result.method.upper(), peer, result.summary())
    return LocalStorageError(
        f"local storage failed{where}: {reason}; the {result.method.upper()} from {peer} was "
        f"stopped. {result.received} instance(s) arrived complete (result.received_sop_"
        f"instance_uids); {result.summary()}. Free space or choose a writable output_dir, "
        "then retrieve again.",
        result=result,
    )


def _serialised(update: Callable[[int], object]) -> Callable[[int], object]:
    """``update`` behind a lock: a split C-GET receives on several threads at once."""
    lock = threading.Lock()

    def locked(n: int) -> object:
        with lock:
            return update(n)

    return locked


def _worse(a: int | None, b: int | None) -> int | None:
    """The final status that says more of two associations' (failure > warning > success)."""

    def rank(code: int | None) -> int:
        if code is None:
            return 0
        if code == 0x0000:
            return 1
        if code & 0xF000 == 0xB000:
            return 2
        return 3

    return a if rank(a) >= rank(b) else b


def _fast_find(assoc: Association, peer: DicomNode, timeouts: Timeouts) -> FastFind | None:
    """The lean C-FIND exchange of ``assoc`` (one per association), or None when
    ``settings.fast_path`` or ``CLARINET_FIND_FAST`` is off."""
    if not (settings.fast_path and fast_receive_enabled()):
        return None
    fast = getattr(assoc, "_clarinet_fast_find", None)
    if fast is None:
        fast = FastFind(assoc, peer, timeouts)
        assoc._clarinet_fast_find = fast  # type: ignore[attr-defined]
    return cast(FastFind, fast)


def _identifier(raw: bytes | None, syntax: UID) -> Dataset | None:
    """A C-FIND match as a dataset; None (the match is skipped) when it cannot be decoded."""
    if raw is None:
        return None
    deflated, little, implicit = syntax_flags(syntax)
    try:
        return identifier_dataset(raw, implicit, little, deflated)
    except Exception:  # noqa: BLE001 - a malformed identifier from a peer: skipped, as before
        logger.error("failed to decode a received C-FIND identifier; match skipped")
        return None


CANCEL_STATUS = 0xFE00
"""Final status of a C-GET whose sub-operations a C-CANCEL terminated."""


def _text(value: object) -> str:
    return str(value or "").strip()


def _uid_values(value: object) -> list[str]:
    """The UIDs of a (possibly multi-valued) UI element's value."""
    if not value:
        return []
    items = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return [_text(v) for v in items if _text(v)]


def _count(value: object) -> int | None:
    """A NumberOf*RelatedInstances value; None when absent or not a count."""
    try:
        count = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return count if count >= 0 else None


def _cancelled(cancel: CancelToken | None) -> bool:
    return cancel is not None and cancel.cancelled


def peer_name(assoc: Association) -> str:
    """The peer's AE title, for messages."""
    return str(getattr(assoc.acceptor, "ae_title", "the peer")).strip() or "the peer"


def _send_refused(
    send: Callable[[Dataset], None],
    identifier: Dataset,
    handler: StorageHandler,
    counters: _Counters,
) -> bool:
    """Send ``identifier``; True when the peer failed it outright: a failure status,
    no sub-operation and none of its instances arrived."""
    before = (counters.completed, counters.failed, counters.warning)
    previous, counters.status = counters.status, None
    try:
        send(identifier)
        code = counters.status
    finally:
        if counters.status is None:  # no final status (cancelled, broken): keep the last one
            counters.status = previous
    if code is None:
        return False
    if code < 0xA000 or code & 0xF000 == 0xB000 or code == CANCEL or code in PENDING:
        return False
    if (counters.completed, counters.failed, counters.warning) != before:
        return False
    return not any(uid in handler.tally.arrived for uid in listed_sop_uids(identifier))


def _require_context(assoc: Association, abstract_syntax: str, peer: DicomNode, what: str) -> None:
    if not any(str(cx.abstract_syntax) == abstract_syntax for cx in assoc.accepted_contexts):
        release(assoc)
        raise AssociationRejectedError(
            f"{peer} accepted the association but not the {what} service "
            f"({abstract_syntax}); it may not allow {what} for our AE title"
        )


def _identifiers_for(instances: Sequence[PlannedInstance], per_request: int = 500) -> list[Dataset]:
    """IMAGE level identifiers listing ``instances``, per series, in bounded UID lists."""
    groups: dict[tuple[str, str], list[str]] = {}
    for inst in instances:
        groups.setdefault((inst.study_uid, inst.series_uid), []).append(inst.sop_uid)
    return [
        image_identifier(study, series, sops[i : i + per_request])
        for (study, series), sops in groups.items()
        for i in range(0, len(sops), per_request)
    ]


def _destination_unknown(result: RetrieveResult) -> bool:
    """0xA801, or (Orthanc) a bare failure before any sub-operation of a C-MOVE
    whose pre-query found instances."""
    if result.method != "move" or result.dimse_status is None:
        return False
    if result.dimse_status == MOVE_DESTINATION_UNKNOWN:
        return True
    attempted = result.completed + result.failed + result.warning + result.received
    failure = result.dimse_status >= 0xA000 and result.dimse_status & 0xF000 != 0xB000
    return failure and attempted == 0 and bool(result.expected) and result.dimse_status != CANCEL


def _raise_for(result: RetrieveResult, peer: DicomNode, aet: str, port: int) -> None:
    if result.status in (RetrieveStatus.SUCCESS, RetrieveStatus.CANCELLED):
        return
    if _destination_unknown(result):
        surely = result.dimse_status == MOVE_DESTINATION_UNKNOWN
        raise MoveDestinationUnknownError(
            f"{peer} {'does' if surely else 'most likely does'} not know the C-MOVE "
            f"destination {aet!r} (it answered {result.message} without attempting any "
            "sub-operation). "
            f"Register it on the PACS: AE title {aet}, this machine's address, port {port} "
            "(settings dicom_aet / dicom_port; Orthanc: DicomModalities, dcmqrscp: HostTable), "
            "or retrieve with C-GET instead.",
            result=result,
        )
    if result.status is RetrieveStatus.NOT_FOUND:
        raise NotFoundError(f"nothing on {peer} matched the {result.method} request", result=result)
    raise PartialRetrieveError(
        f"{result.method.upper()} from {peer} incomplete: {result.summary()}; "
        f"peer status: {result.message or 'none'}",
        result=result,
    )
