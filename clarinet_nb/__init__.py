"""clarinet_nb: query and retrieve from PACS servers straight from Jupyter notebooks."""

import logging

from clarinet_nb.dicom import (
    CancelToken,
    DateRange,
    DicomClient,
    DicomNode,
    DicomOperations,
    FindOutcome,
    ImageQuery,
    ImageResult,
    PatientQuery,
    PatientResult,
    QueryLevel,
    QueryResults,
    RefusedStore,
    RetrieveRequest,
    RetrieveResult,
    RetrieveStatus,
    RetryPolicy,
    SeriesQuery,
    SeriesResult,
    StorageConfig,
    StorageHandler,
    StorageMode,
    StudyQuery,
    StudyResult,
    Timeouts,
    TLSConfig,
)
from clarinet_nb.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    ClarinetWarning,
    DicomError,
    DicomTimeoutError,
    InvalidInputError,
    LocalPortError,
    LocalStorageError,
    MemoryLimitError,
    MoveDestinationUnknownError,
    NetworkError,
    NotFoundError,
    OperationError,
    PartialRetrieveError,
    PeerUnreachableError,
    QueryError,
    RetrieveError,
    TLSError,
)
from clarinet_nb.notebook import (
    DatasetList,
    Pacs,
    QueryCache,
    connect,
    header_frame,
    read_headers,
    to_frame,
    write_headers,
)
from clarinet_nb.settings import Settings, settings

_LAZY = {"Preview", "QueryBuilder", "preview"}  # ipywidgets: imported on first use


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from clarinet_nb import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module 'clarinet_nb' has no attribute {name!r}")


logging.getLogger("clarinet_nb").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "AssociationAbortedError",
    "AssociationRejectedError",
    "ClarinetWarning",
    "DatasetList",
    "CancelToken",
    "DateRange",
    "DicomClient",
    "DicomError",
    "DicomNode",
    "DicomOperations",
    "DicomTimeoutError",
    "FindOutcome",
    "ImageQuery",
    "ImageResult",
    "InvalidInputError",
    "LocalPortError",
    "LocalStorageError",
    "MemoryLimitError",
    "MoveDestinationUnknownError",
    "NetworkError",
    "NotFoundError",
    "OperationError",
    "Pacs",
    "PartialRetrieveError",
    "PatientQuery",
    "PatientResult",
    "PeerUnreachableError",
    "Preview",
    "QueryBuilder",
    "QueryCache",
    "QueryError",
    "QueryLevel",
    "QueryResults",
    "RefusedStore",
    "RetrieveError",
    "RetrieveRequest",
    "RetrieveResult",
    "RetrieveStatus",
    "RetryPolicy",
    "SeriesQuery",
    "SeriesResult",
    "Settings",
    "StorageConfig",
    "StorageHandler",
    "StorageMode",
    "StudyQuery",
    "StudyResult",
    "TLSConfig",
    "TLSError",
    "Timeouts",
    "__version__",
    "connect",
    "header_frame",
    "preview",
    "read_headers",
    "settings",
    "to_frame",
    "write_headers",
]
