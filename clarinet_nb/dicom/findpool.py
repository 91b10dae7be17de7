"""C-FIND associations kept open for the length of one batch of queries.

A frame of 200 series asks 200 C-FINDs; opening and releasing an association for
each costs more than a small answer.  A :class:`FindPool` lends the associations of
finished queries to the next ones of the same batch (one association serves one
query at a time) and releases them all when the batch ends (:meth:`FindPool.close`),
so nothing stays open between a user's calls: a PACS counts its associations.

Only an association whose last C-FIND ended with a final status goes back to the
pool; one that was cancelled, failed or aborted is released (or is already gone).
"""

from __future__ import annotations

import contextlib
import logging
import threading

from pynetdicom.association import Association

from clarinet_nb.dicom.association import release
from clarinet_nb.dicom.models import DicomNode

__all__ = ["FindPool", "usable"]

logger = logging.getLogger("clarinet_nb")


def usable(assoc: Association) -> bool:
    """True when ``assoc`` is established and neither aborted nor disconnected."""
    try:
        return bool(
            assoc.is_established
            and not assoc.is_aborted
            and not assoc.is_released
            and not assoc.acse.is_aborted()
            and not assoc.acse.is_release_requested()
            and assoc.dul.is_alive()
        )
    except Exception:  # noqa: BLE001 - a half torn-down association is not usable
        return False


class FindPool:
    """Idle C-FIND associations to one peer, shared by the queries of one batch.

    Thread-safe: the queries of a batch run in several worker threads."""

    def __init__(self, limit: int = 4, peer: DicomNode | None = None) -> None:
        self.peer = peer
        """The peer of this pool: the first one asked for when not given."""
        self.limit = max(1, limit)
        self._idle: list[Association] = []
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0
        """Associations opened for this pool's queries (for tests and benchmarks)."""
        self.reused = 0

    def take(self, peer: DicomNode) -> Association | None:
        """An idle usable association to ``peer``, or None (open a new one)."""
        with self._lock:
            if self.peer is None:
                self.peer = peer
        if peer != self.peer:
            return None
        stale: list[Association] = []
        found: Association | None = None
        with self._lock:
            while self._idle and found is None:
                assoc = self._idle.pop()
                if usable(assoc):
                    found = assoc
                    self.reused += 1
                else:
                    stale.append(assoc)
        for assoc in stale:
            release(assoc)
        return found

    def give(self, peer: DicomNode, assoc: Association) -> None:
        """Hand ``assoc`` back after a C-FIND that ended with a final status."""
        keep = peer == self.peer and usable(assoc)
        if keep:
            with self._lock:
                keep = not self._closed and len(self._idle) < self.limit
                if keep:
                    self._idle.append(assoc)
        if not keep:
            release(assoc)

    def close(self) -> None:
        """Release every idle association; later :meth:`give` calls release at once."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for assoc in idle:
            with contextlib.suppress(Exception):
                release(assoc)
        if self.opened:
            logger.debug(
                "C-FIND batch: %d association(s) opened, reused %d time(s)",
                self.opened,
                self.reused,
            )

    def __enter__(self) -> FindPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
