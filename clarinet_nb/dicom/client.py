"""DicomClient: the async face of the DICOM service.

Each method runs the matching :class:`DicomOperations` call in a worker thread
(pynetdicom is synchronous) from a pool of ``max_associations`` threads, which
also bounds how many associations one client opens at once.  Cancelling the
awaiting task sends C-CANCEL to the PACS, waits (bounded) for the association
to be released and re-raises ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from tqdm.auto import tqdm

from clarinet_nb.dicom.association import Timeouts
from clarinet_nb.dicom.cancel import CancelToken
from clarinet_nb.dicom.findpool import FindPool
from clarinet_nb.dicom.models import (
    DicomNode,
    ImageQuery,
    ImageResult,
    PatientQuery,
    PatientResult,
    RetrieveResult,
    SeriesQuery,
    SeriesResult,
    StorageConfig,
    StorageMode,
    StudyQuery,
    StudyResult,
)
from clarinet_nb.dicom.operations import DicomOperations, FindOutcome, Progress
from clarinet_nb.dicom.params import (
    check_ae_param,
    check_ip,
    check_max_associations,
    check_max_pdu,
    check_port,
)
from clarinet_nb.dicom.plan import RetrievePlan
from clarinet_nb.dicom.queries import AnyQuery
from clarinet_nb.dicom.requests import RetrieveRequest
from clarinet_nb.dicom.retry import RetryPolicy
from clarinet_nb.dicom.split import Workers
from clarinet_nb.dicom.tls import TLSConfig, tls_from_settings
from clarinet_nb.errors import InvalidInputError, LocalStorageError, RetrieveError
from clarinet_nb.settings import Settings, settings

__all__ = ["DicomClient", "QueryResults"]

logger = logging.getLogger("clarinet_nb")

T = TypeVar("T")
R = TypeVar("R")


class QueryResults(list[R], Generic[R]):
    """A list of C-FIND results that also says whether the peer cut it short."""

    truncated: bool = False
    """True when the peer stopped early (e.g. Orthanc's LimitFindResults)."""
    status: int | None = None


class DicomClient:
    """Async DICOM Query/Retrieve client.

    Defaults come from :data:`clarinet_nb.settings.settings` (``CLARINET_*``).
    Every parameter is checked here (``InvalidInputError`` naming it and its
    rule): ``calling_aet`` an AE title, ``max_pdu`` 0 (unlimited) or
    4096..131072, ``scp_port`` 1..65535, ``scp_ip`` an IP address,
    ``timeouts`` a :class:`Timeouts`, ``max_associations`` 1..64.
    """

    def __init__(
        self,
        calling_aet: str | None = None,
        *,
        max_pdu: int | None = None,
        scp_port: int | None = None,
        scp_ip: str | None = None,
        timeouts: Timeouts | None = None,
        max_associations: int | None = None,
        config: Settings | None = None,
        retries: int | RetryPolicy | None = None,
        tls: TLSConfig | bool | None = None,
    ) -> None:
        if config is not None and not isinstance(config, Settings):
            raise InvalidInputError(f"config must be a Settings, not {type(config).__name__}")
        cfg = config or settings
        if timeouts is not None and not isinstance(timeouts, Timeouts):
            raise InvalidInputError(
                "timeouts must be a Timeouts(connect=..., acse=..., dimse=..., network=..., "
                f"cancel=...), not {type(timeouts).__name__}"
            )
        self.retry_policy = RetryPolicy.of(retries, cfg.retries)
        """How the notebook layer retries transient failures (``retries=``, CLARINET_RETRIES)."""
        self.tls, self._tls_only_for = _client_tls(tls, cfg)
        self.timeouts = timeouts or Timeouts(
            connect=cfg.connect_timeout,
            acse=cfg.acse_timeout,
            dimse=cfg.dimse_timeout,
            network=cfg.network_timeout,
            cancel=cfg.cancel_timeout,
        )
        aet = check_ae_param("calling_aet", cfg.dicom_aet if calling_aet is None else calling_aet)
        pdu = check_max_pdu("max_pdu", cfg.dicom_max_pdu if max_pdu is None else max_pdu)
        port = check_port("scp_port", cfg.dicom_port if scp_port is None else scp_port)
        ip = scp_ip if scp_ip is not None else cfg.dicom_ip
        ip = check_ip("scp_ip", ip) if ip is not None and ip != "" else None
        most = cfg.max_associations if max_associations is None else max_associations
        self.max_associations = check_max_associations("max_associations", most)
        self.operations = DicomOperations(
            aet,
            max_pdu=pdu,
            timeouts=self.timeouts,
            scp_port=port,
            scp_ip=ip,
            move_allowed_aets=cfg.move_allowed_aets,
            move_check_host=cfg.move_check_host,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_associations, thread_name_prefix="clarinet-dicom"
        )
        # a retrieve may split over the free threads of this pool: never more associations
        self._workers = Workers(self._executor, self.max_associations)
        self.operations.workers = self._workers

    @property
    def retries(self) -> int:
        """Retries after a transient failure (0: none); see :attr:`retry_policy`."""
        return self.retry_policy.retries

    @property
    def calling_aet(self) -> str:
        """Our AE title."""
        return self.operations.calling_aet

    def secure(self, peer: DicomNode) -> DicomNode:
        """``peer`` with this client's TLS when it has none of its own.

        ``tls=TLSConfig(...)`` applies to every peer; TLS from the ``CLARINET_TLS_*``
        settings only to the default PACS (``CLARINET_PACS_HOST``/``_PORT``).
        """
        if peer.tls is not None or self.tls is None:
            return peer
        if self._tls_only_for is not None and (peer.host, peer.port) != self._tls_only_for:
            return peer
        return peer.model_copy(update={"tls": self.tls})

    # -- plumbing -------------------------------------------------------------------------

    async def run(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        cancel: CancelToken | None = None,
        **kwargs: Any,
    ) -> T:
        """Run a DicomOperations call in a worker thread, cancellably.

        ``fn`` must accept a ``cancel=`` CancelToken keyword; pass ``cancel`` to
        share one token between several calls (cancelling it stops them all).
        """
        token = cancel or CancelToken()
        loop = asyncio.get_running_loop()
        call = self._workers.wrap(functools.partial(fn, *args, cancel=token, **kwargs))
        future = loop.run_in_executor(self._executor, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            token.cancel()
            limit = self.timeouts.cancel + self.timeouts.acse + 1.0
            done = await _wait_through_cancellation(future, limit)
            if not done:
                logger.warning("a cancelled DICOM operation did not stop within %.0f s", limit)
            elif not future.cancelled():
                exc = future.exception()
                if exc is None:
                    token.partials.append(future.result())  # e.g. what a retrieve brought so far
                else:
                    logger.debug("cancelled operation ended with", exc_info=exc)
                    if isinstance(exc, RetrieveError | LocalStorageError) and exc.result:
                        token.partials.append(exc.result)  # what arrived before it broke off
            raise

    async def aclose(self) -> None:
        """Stop the worker threads (running operations finish first)."""
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    def close(self) -> None:
        """Synchronous close."""
        self._executor.shutdown()

    async def __aenter__(self) -> DicomClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- C-ECHO / C-FIND ------------------------------------------------------------------

    async def echo(self, peer: DicomNode) -> bool:
        """C-ECHO ``peer``: True, or a DicomError saying what is wrong."""

        peer = self.secure(peer)

        def _echo(cancel: CancelToken) -> None:
            self.operations.echo(peer)

        await self.run(_echo)
        return True

    async def find(
        self,
        query: AnyQuery,
        *,
        peer: DicomNode,
        cancel: CancelToken | None = None,
        pool: FindPool | None = None,
    ) -> FindOutcome:
        """C-FIND returning the raw pydicom datasets and how the query ended.

        ``pool`` (from :meth:`find_pool`): the queries of one batch share associations."""
        return await self.run(
            self.operations.find, query, self.secure(peer), cancel=cancel, pool=pool
        )

    def find_pool(self) -> FindPool:
        """Associations for one batch of C-FINDs (at most ``max_associations`` idle);
        close it with :meth:`close_pool` when the batch ends."""
        return FindPool(self.max_associations)

    async def close_pool(self, pool: FindPool) -> None:
        """Release the associations ``pool`` still holds (in a worker thread)."""
        await asyncio.to_thread(pool.close)

    async def plan(
        self,
        request: RetrieveRequest,
        *,
        peer: DicomNode,
        cancel: CancelToken | None = None,
        lean: bool = False,
    ) -> RetrievePlan:
        """List every instance ``request`` would retrieve (the IMAGE level pre-query).

        ``lean=True``: plan from the study/series counts where the peer answers them
        (``DicomOperations.lean_plan``; instances listed only after a shortfall)."""
        planner = self.operations.lean_plan if lean else self.operations.plan
        return await self.run(planner, request, self.secure(peer), cancel=cancel)

    async def _find(self, query: AnyQuery, peer: DicomNode, model: type[Any]) -> QueryResults[Any]:
        outcome = await self.find(query, peer=peer)
        results: QueryResults[Any] = QueryResults(model.from_dataset(ds) for ds in outcome.datasets)
        results.truncated = outcome.truncated
        results.status = outcome.status
        return results

    async def find_patients(
        self, query: PatientQuery | None = None, *, peer: DicomNode
    ) -> QueryResults[PatientResult]:
        """PATIENT level C-FIND."""
        return await self._find(_check(query or PatientQuery(), PatientQuery), peer, PatientResult)

    async def find_studies(
        self, query: StudyQuery | None = None, *, peer: DicomNode
    ) -> QueryResults[StudyResult]:
        """STUDY level C-FIND."""
        return await self._find(_check(query or StudyQuery(), StudyQuery), peer, StudyResult)

    async def find_series(
        self, query: SeriesQuery | None = None, *, peer: DicomNode
    ) -> QueryResults[SeriesResult]:
        """SERIES level C-FIND."""
        return await self._find(_check(query or SeriesQuery(), SeriesQuery), peer, SeriesResult)

    async def find_images(
        self, query: ImageQuery | None = None, *, peer: DicomNode
    ) -> QueryResults[ImageResult]:
        """IMAGE (instance) level C-FIND."""
        return await self._find(_check(query or ImageQuery(), ImageQuery), peer, ImageResult)

    # -- C-GET / C-MOVE -------------------------------------------------------------------

    async def retrieve(
        self,
        method: Literal["get", "move"],
        request: RetrieveRequest,
        *,
        peer: DicomNode,
        output_dir: str | Path | None = None,
        storage: StorageConfig | None = None,
        progress: bool | Progress = False,
        query_first: bool = True,
        plan: RetrievePlan | None = None,
        cancel: CancelToken | None = None,
        on_stored: Callable[[str, int], object] | None = None,
    ) -> RetrieveResult:
        """Retrieve ``request`` by C-GET or C-MOVE (see the get_*/move_* shortcuts).

        ``output_dir`` stores to disk; ``storage`` picks any mode (default: MEMORY).
        ``progress=True`` shows a ``tqdm.auto`` bar; a tqdm-like object is updated instead.
        Raises NotFoundError, PartialRetrieveError (``.result`` says what arrived),
        MoveDestinationUnknownError, or LocalStorageError when the disk is full or
        read-only (the retrieve is stopped; ``.result`` says what arrived).
        """
        config = _storage(output_dir, storage)
        peer = self.secure(peer)
        if method == "move" and peer.tls is not None and not peer.tls.has_certificate:
            raise InvalidInputError(
                "a C-MOVE over TLS needs cert_file and key_file: our Storage SCP is then a TLS "
                "server the PACS connects to (or retrieve with C-GET)"
            )
        own_bar = progress is True
        bar: Progress | None
        if progress is True:
            bar = tqdm(total=None, unit="inst", desc=f"C-{method.upper()}", leave=False)
        else:
            bar = progress or None
        try:
            return await self.run(
                self.operations.retrieve,
                method,
                request,
                peer,
                config,
                progress=bar,
                query_first=query_first,
                plan=plan,
                cancel=cancel,
                on_stored=on_stored,
            )
        finally:
            if own_bar and isinstance(bar, tqdm):
                bar.close()

    async def get_study(self, study_uid: str, *, peer: DicomNode, **kwargs: Any) -> RetrieveResult:
        """C-GET every instance of a study."""
        return await self.retrieve("get", RetrieveRequest.study(study_uid), peer=peer, **kwargs)

    async def get_series(
        self, series_uid: str, *, peer: DicomNode, study_uid: str | None = None, **kwargs: Any
    ) -> RetrieveResult:
        """C-GET every instance of a series."""
        request = RetrieveRequest.series(series_uid, study_uid)
        return await self.retrieve("get", request, peer=peer, **kwargs)

    async def get_instance(
        self,
        sop_uid: str | Sequence[str],
        *,
        peer: DicomNode,
        series_uid: str | None = None,
        study_uid: str | None = None,
        **kwargs: Any,
    ) -> RetrieveResult:
        """C-GET one instance (or several of one series)."""
        request = RetrieveRequest.instances(sop_uid, series_uid, study_uid)
        return await self.retrieve("get", request, peer=peer, **kwargs)

    async def move_study(self, study_uid: str, *, peer: DicomNode, **kwargs: Any) -> RetrieveResult:
        """C-MOVE every instance of a study to our Storage SCP."""
        return await self.retrieve("move", RetrieveRequest.study(study_uid), peer=peer, **kwargs)

    async def move_series(
        self, series_uid: str, *, peer: DicomNode, study_uid: str | None = None, **kwargs: Any
    ) -> RetrieveResult:
        """C-MOVE every instance of a series to our Storage SCP."""
        request = RetrieveRequest.series(series_uid, study_uid)
        return await self.retrieve("move", request, peer=peer, **kwargs)

    async def move_instance(
        self,
        sop_uid: str | Sequence[str],
        *,
        peer: DicomNode,
        series_uid: str | None = None,
        study_uid: str | None = None,
        **kwargs: Any,
    ) -> RetrieveResult:
        """C-MOVE one instance (or several of one series) to our Storage SCP."""
        request = RetrieveRequest.instances(sop_uid, series_uid, study_uid)
        return await self.retrieve("move", request, peer=peer, **kwargs)


def _client_tls(
    tls: TLSConfig | bool | None, cfg: Settings
) -> tuple[TLSConfig | None, tuple[str, int] | None]:
    """The client's TLS and, when it comes from the settings, the one address it is for."""
    if tls is None:
        from_settings = tls_from_settings(cfg)
        scope = (cfg.pacs_host, cfg.pacs_port) if from_settings is not None else None
        return from_settings, scope
    if tls is False:
        return None, None
    if isinstance(tls, TLSConfig):
        return tls, None
    raise InvalidInputError(
        f"tls must be a TLSConfig, False (plain TCP) or None (from settings), not {tls!r}"
    )


def _check(query: Any, expected: type[T]) -> T:
    if not isinstance(query, expected):
        raise InvalidInputError(f"expected a {expected.__name__}, got {type(query).__name__}")
    return query


def _storage(output_dir: str | Path | None, storage: StorageConfig | None) -> StorageConfig:
    if storage is not None and output_dir is not None:
        raise InvalidInputError("give output_dir or storage, not both")
    if storage is not None:
        return storage
    if output_dir is not None:
        return StorageConfig(mode=StorageMode.DISK, output_dir=Path(output_dir))
    return StorageConfig(mode=StorageMode.MEMORY)


async def _wait_through_cancellation(future: asyncio.Future[Any], limit: float) -> bool:
    """Wait up to ``limit`` seconds for ``future``, even if cancelled again meanwhile.

    A second interrupt must not abandon an operation that is handing over
    what arrived; the wait stays bounded by ``limit``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not future.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({future}, timeout=remaining)
    return True
