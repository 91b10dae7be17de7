"""Pydantic models: DICOM nodes, queries, results, storage and retrieval reports."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydicom import Dataset

from clarinet_nb.dicom.base import StrictModel
from clarinet_nb.dicom.queries import (
    DateRange,
    ImageQuery,
    PatientQuery,
    QueryLevel,
    SeriesQuery,
    StudyQuery,
)
from clarinet_nb.dicom.results import (
    ImageResult,
    PatientResult,
    SeriesResult,
    StudyResult,
)
from clarinet_nb.dicom.tls import TLSConfig
from clarinet_nb.dicom.values import check_ae_title
from clarinet_nb.errors import InvalidInputError

__all__ = [
    "DateRange",
    "DicomNode",
    "ImageQuery",
    "ImageResult",
    "PatientQuery",
    "PatientResult",
    "QueryLevel",
    "RefusedStore",
    "RetrieveResult",
    "RetrieveStatus",
    "SeriesQuery",
    "SeriesResult",
    "StorageConfig",
    "StorageMode",
    "StudyQuery",
    "StudyResult",
]

_NODE_RE = re.compile(r"^\s*(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)\s*$")


class DicomNode(StrictModel):
    """A DICOM Application Entity on the network: AE title, host and port.

    ``tls=TLSConfig(...)`` makes every association with it DICOM TLS (and our
    Storage SCP speak TLS during a C-MOVE from it); None is plain TCP.
    """

    model_config = ConfigDict(frozen=True)

    aet: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TLSConfig | None = None

    @field_validator("aet")
    @classmethod
    def _aet(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        host = value.strip().strip("[]")
        if not host or any(c.isspace() for c in host):
            raise InvalidInputError(f"{value!r} is not a host name or address")
        return host

    @classmethod
    def parse(cls, text: str, *, tls: TLSConfig | None = None) -> DicomNode:
        """Parse ``"AET@host:port"``, e.g. ``"ORTHANC@127.0.0.1:4242"``."""
        match = _NODE_RE.match(text)
        if not match:
            raise InvalidInputError(f"{text!r} is not of the form AET@host:port")
        return cls(aet=match["aet"], host=match["host"], port=int(match["port"]), tls=tls)

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


class StorageMode(StrEnum):
    """Where received instances go."""

    DISK = "disk"
    MEMORY = "memory"
    FORWARD = "forward"


class StorageConfig(StrictModel):
    """How to handle instances received by C-GET or C-MOVE."""

    model_config = ConfigDict(frozen=True)

    mode: StorageMode = StorageMode.DISK
    output_dir: Path | None = None
    """DISK: files go to ``{output_dir}/{StudyUID}/{SeriesUID}/{SOPInstanceUID}.dcm``."""
    forward_to: DicomNode | None = None
    """FORWARD: each received instance is C-STOREd to this node."""
    overwrite: bool = True
    """DISK: replace a file that already exists (False keeps it and counts it received)."""

    @model_validator(mode="after")
    def _complete(self) -> StorageConfig:
        if self.mode is StorageMode.DISK and self.output_dir is None:
            raise InvalidInputError("DISK storage needs output_dir")
        if self.mode is StorageMode.FORWARD and self.forward_to is None:
            raise InvalidInputError("FORWARD storage needs forward_to (a DicomNode)")
        return self


class RetrieveStatus(StrEnum):
    """Outcome of a retrieval."""

    SUCCESS = "success"
    """Everything expected arrived."""
    PARTIAL = "partial"
    """Some instances arrived, some failed or are missing."""
    FAILED = "failed"
    """Nothing arrived although something was expected."""
    NOT_FOUND = "not_found"
    """Nothing matched the request."""
    CANCELLED = "cancelled"
    """The retrieval was cancelled; what arrived is listed."""


class RefusedStore(BaseModel):
    """One association or C-STORE our Storage SCP refused during a retrieve (no patient data)."""

    model_config = ConfigDict(frozen=True)

    reason: str
    """Why: ``calling AE title not allowed``, ``source address not allowed``,
    ``not part of this retrieve``, ``duplicate SOP Instance UID``."""
    calling_aet: str = ""
    address: str = ""
    """The sender's IP address."""
    sop_class_uid: str = ""
    """Empty when the whole association was refused."""
    sop_instance_uid: str = ""
    status: int | None = None
    """The C-STORE failure status we answered; None for a refused association."""


class RetrieveResult(BaseModel):
    """Report of one C-GET or C-MOVE: what was expected, what arrived, what failed."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    method: Literal["get", "move"]
    level: QueryLevel
    peer: str
    status: RetrieveStatus
    dimse_status: int | None = None
    """Final DIMSE status of the (last) C-GET/C-MOVE response, e.g. 0x0000, 0xB000."""
    expected: int | None = None
    """How many instances the request matched (from the pre-query or the peer's counts)."""
    received: int = 0
    """How many instances we stored (DISK), kept (MEMORY) or forwarded (FORWARD)."""
    completed: int = 0
    failed: int = 0
    warning: int = 0
    """The peer's sub-operation counters (summed over associations)."""
    failed_sop_instance_uids: list[str] = Field(default_factory=list)
    """UIDs the peer reported as failed, or that we failed to store/forward."""
    missing_sop_instance_uids: list[str] = Field(default_factory=list)
    """UIDs expected from the pre-query that never arrived."""
    received_sop_instance_uids: list[str] = Field(default_factory=list)
    paths: list[Path] = Field(default_factory=list)
    """DISK: the files written, in arrival order."""
    datasets: list[Dataset] = Field(default_factory=list, repr=False)
    """MEMORY: the received datasets (with ``file_meta``), in arrival order."""
    forwarded_sop_instance_uids: list[str] = Field(default_factory=list)
    """FORWARD: the UIDs the forward node accepted."""
    bytes_received: int = 0
    elapsed: float = 0.0
    associations: int = 0
    message: str = ""
    attempts: int = 1
    """How many times it was requested (more than 1 after transient failures were retried)."""
    refused: list[RefusedStore] = Field(default_factory=list)
    """Associations and C-STOREs our Storage SCP refused during this retrieve (not
    counted in ``received``): another sender, an instance not asked for, a duplicate."""
    _plan: Any = PrivateAttr(default=None)
    """The RetrievePlan the result was accounted against (listed after the transfer
    for a lean plan); not a field: the notebook layer builds manifests from it."""

    @property
    def ok(self) -> bool:
        """True when everything expected arrived."""
        return self.status is RetrieveStatus.SUCCESS

    def summary(self) -> str:
        """One line for humans, e.g. ``get: 41/42 received, 1 failed (partial)``."""
        expected = "?" if self.expected is None else str(self.expected)
        text = f"{self.method}: {self.received}/{expected} received"
        bad = len(set(self.failed_sop_instance_uids) | set(self.missing_sop_instance_uids))
        if bad:
            text += f", {bad} failed or missing"
        if self.refused:
            text += f", {len(self.refused)} refused"
        return f"{text} ({self.status.value})"

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            if key in ("datasets",):
                continue
            if isinstance(value, list) and len(value) > 5:
                yield key, f"<{len(value)} items>"
            else:
                yield key, value
