"""The exception hierarchy of clarinet_nb.

One base class, :class:`DicomError`, and a short tree grouped by cause::

    DicomError
    ├── InvalidInputError          bad input, refused before any network traffic
    ├── NetworkError               the conversation with the peer broke down
    │   ├── PeerUnreachableError
    │   ├── AssociationRejectedError
    │   ├── AssociationAbortedError
    │   ├── DicomTimeoutError
    │   ├── LocalPortError
    │   └── TLSError               the TLS handshake failed (certificate not trusted, ...)
    ├── MemoryLimitError           an in-memory pull would exceed the memory limit
    ├── LocalStorageError          disk full, read-only or no permission; what arrived is kept
    └── OperationError             the peer answered, but not with success
        ├── QueryError
        └── RetrieveError          carries the RetrieveResult of what did arrive
            ├── NotFoundError
            ├── MoveDestinationUnknownError
            └── PartialRetrieveError

``ClarinetWarning`` marks warnings about partial results (failed rows of a
batch, truncated answers).

pynetdicom's outcomes are translated to these classes in one place,
``clarinet_nb.dicom.association``; nothing else raises pynetdicom's errors at you.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from clarinet_nb.dicom.models import RetrieveResult

__all__ = [
    "AssociationAbortedError",
    "AssociationRejectedError",
    "ClarinetWarning",
    "MemoryLimitError",
    "DicomError",
    "DicomTimeoutError",
    "InvalidInputError",
    "LocalPortError",
    "LocalStorageError",
    "MoveDestinationUnknownError",
    "NetworkError",
    "NotFoundError",
    "OperationError",
    "PartialRetrieveError",
    "PeerUnreachableError",
    "QueryError",
    "RetrieveError",
    "TLSError",
]


class DicomError(Exception):
    """Base class of every error clarinet_nb raises."""


class InvalidInputError(DicomError, ValueError):
    """The request is invalid (UID, AE title, date range...); nothing was sent."""


class NetworkError(DicomError):
    """The network conversation with a DICOM peer failed."""


class PeerUnreachableError(NetworkError):
    """No TCP connection could be made to the peer (closed port, unknown host)."""


class AssociationRejectedError(NetworkError):
    """The peer refused the association (called/calling AE title, no service)."""

    def __init__(self, message: str, *, result: int = 0, source: int = 0, reason: int = 0):
        super().__init__(message)
        self.result = result
        self.source = source
        self.reason = reason


class AssociationAbortedError(NetworkError):
    """The association was aborted, or the connection dropped, mid-operation."""


class DicomTimeoutError(NetworkError, TimeoutError):
    """A configured timeout (connect, ACSE, DIMSE, network) expired."""


class LocalPortError(NetworkError):
    """Our own Storage SCP could not listen on its port (in use, no permission)."""


class TLSError(NetworkError):
    """The TLS handshake failed: certificate not trusted, none presented, not TLS on this port."""


class MemoryLimitError(DicomError):
    """An in-memory pull would exceed the memory limit; nothing more is fetched."""

    def __init__(self, message: str, *, projected_bytes: int, limit: int, received: int):
        super().__init__(message)
        self.projected_bytes = projected_bytes
        self.limit = limit
        self.received = received


class LocalStorageError(DicomError):
    """Local storage failed (disk full, read-only, no permission); what arrived is kept."""

    def __init__(
        self,
        message: str,
        *,
        result: RetrieveResult | None = None,
        manifest: pd.DataFrame | None = None,
    ):
        super().__init__(message)
        self.result = result
        """The RetrieveResult of the retrieve that hit the error (what arrived, what not)."""
        self.manifest = manifest
        """Notebook pulls to disk: the manifest of every planned instance."""


class ClarinetWarning(UserWarning):
    """Results are usable but incomplete (failed batch rows, truncated answers)."""


class OperationError(DicomError):
    """The peer answered a request with a failure status."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class QueryError(OperationError):
    """A C-FIND ended with a failure status."""


class RetrieveError(OperationError):
    """A C-GET or C-MOVE did not deliver everything; ``result`` says what did."""

    def __init__(self, message: str, *, result: RetrieveResult, status: int | None = None):
        super().__init__(message, status=status if status is not None else result.dimse_status)
        self.result = result


class NotFoundError(RetrieveError):
    """Nothing on the peer matched the retrieve request."""


class MoveDestinationUnknownError(RetrieveError):
    """The PACS does not know our AE title as a C-MOVE destination."""


class PartialRetrieveError(RetrieveError):
    """Some instances failed or are missing; ``result`` lists what arrived and what not."""
