"""The core DICOM service: models, the sync operations layer and the async client."""

from clarinet_nb.dicom.association import Timeouts
from clarinet_nb.dicom.cancel import CancelToken
from clarinet_nb.dicom.client import DicomClient, QueryResults
from clarinet_nb.dicom.handlers import StorageHandler
from clarinet_nb.dicom.models import (
    DateRange,
    DicomNode,
    ImageQuery,
    ImageResult,
    PatientQuery,
    PatientResult,
    QueryLevel,
    RefusedStore,
    RetrieveResult,
    RetrieveStatus,
    SeriesQuery,
    SeriesResult,
    StorageConfig,
    StorageMode,
    StudyQuery,
    StudyResult,
)
from clarinet_nb.dicom.operations import DicomOperations, FindOutcome
from clarinet_nb.dicom.requests import RetrieveRequest
from clarinet_nb.dicom.retry import RetryPolicy
from clarinet_nb.dicom.tls import TLSConfig

__all__ = [
    "CancelToken",
    "DateRange",
    "DicomClient",
    "DicomNode",
    "DicomOperations",
    "FindOutcome",
    "ImageQuery",
    "ImageResult",
    "PatientQuery",
    "PatientResult",
    "QueryLevel",
    "QueryResults",
    "RefusedStore",
    "RetrieveRequest",
    "RetrieveResult",
    "RetrieveStatus",
    "RetryPolicy",
    "SeriesQuery",
    "SeriesResult",
    "StorageConfig",
    "StorageHandler",
    "StorageMode",
    "StudyQuery",
    "StudyResult",
    "TLSConfig",
    "Timeouts",
]
