"""A hostile C-STORE sender for testing our Storage SCP: a real pynetdicom Storage SCU.

It C-STOREs datasets to a port with any calling AE title, from any local
address (``bind_address=("127.0.0.2", 0)`` makes it come from another host as
far as the receiver can tell), and reports exactly what the receiver answered:
the association rejected (with its reason) or the status of every C-STORE.
Only loopback addresses are ever targets.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context, evt
from pynetdicom.pdu_primitives import A_ASSOCIATE

__all__ = ["HostileSender", "SendOutcome", "forged_copy", "oversize_dataset", "unrelated_dataset"]

LOGGER = logging.getLogger(__name__)

_SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")


@dataclass
class SendOutcome:
    """What the receiver did with one association attempt."""

    connected: bool = False
    """The receiver accepted the TCP connection."""
    established: bool = False
    rejected: bool = False
    reject_reason: tuple[int, int, int] | None = None
    """(result, source, diagnostic) of the A-ASSOCIATE-RJ."""
    statuses: list[int | None] = field(default_factory=list)
    """One C-STORE status per dataset sent (None: no response)."""


@dataclass
class HostileSender:
    """C-STOREs datasets to ``host:port`` as ``calling_aet``, from ``bind_address``."""

    port: int
    called_aet: str = "CLARINET"
    calling_aet: str = "INTRUDER"
    host: str = "127.0.0.1"
    bind_address: str = "127.0.0.1"
    timeout: float = 30.0

    def send(self, datasets: Sequence[Dataset]) -> SendOutcome:
        """Associate and C-STORE every dataset (each needs ``file_meta``)."""
        if not self.host.startswith("127."):
            raise ValueError("the hostile sender only targets loopback addresses")
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        keys = dict.fromkeys(
            (str(ds.file_meta.MediaStorageSOPClassUID), str(ds.file_meta.TransferSyntaxUID))
            for ds in datasets
        )
        contexts = [build_context(sop, [ts]) for sop, ts in keys]
        answers: list[A_ASSOCIATE] = []
        opened: list[bool] = []

        def on_acse(event: evt.Event) -> None:
            primitive = event.primitive  # type: ignore[attr-defined]
            if isinstance(primitive, A_ASSOCIATE) and primitive.result is not None:
                answers.append(primitive)

        assoc = ae.associate(
            self.host,
            self.port,
            contexts=contexts,
            ae_title=self.called_aet,
            bind_address=(self.bind_address, 0),
            max_pdu=0,
            evt_handlers=[
                (evt.EVT_ACSE_RECV, on_acse),
                (evt.EVT_CONN_OPEN, lambda event: opened.append(True)),
            ],
        )
        outcome = SendOutcome()
        try:
            if assoc.is_rejected:
                outcome.connected = outcome.rejected = True
                if answers:
                    rj = answers[-1]
                    outcome.reject_reason = (
                        int(rj.result or 0),
                        int(rj.result_source or 0),
                        int(rj.diagnostic or 0),
                    )
                return outcome
            if not assoc.is_established:
                outcome.connected = bool(opened)  # the TCP connection at least was accepted
                return outcome
            outcome.connected = outcome.established = True
            for ds in datasets:
                status = assoc.send_c_store(ds)
                outcome.statuses.append(int(status.Status) if "Status" in status else None)
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
        return outcome


def forged_copy(original: Dataset, marker: str = "FORGED") -> Dataset:
    """``original`` with its UIDs kept and its content changed (a forged instance)."""
    ds = copy.deepcopy(original)
    ds.ImageComments = marker
    if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.PixelData = bytes(len(ds.PixelData))
    return ds


def _secondary_capture(study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = _SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "OT"
    ds.PatientID = "HOSTILE"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = _SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def unrelated_dataset(
    study_uid: str | None = None, series_uid: str | None = None, sop_uid: str | None = None
) -> Dataset:
    """A small Secondary Capture instance of a study nobody asked for (new UIDs by default)."""
    return _secondary_capture(
        study_uid or generate_uid(), series_uid or generate_uid(), sop_uid or generate_uid()
    )


def oversize_dataset(megabytes: int = 32, study_uid: str | None = None) -> Dataset:
    """An unrelated instance carrying ``megabytes`` MB of pixel data."""
    ds = unrelated_dataset(study_uid)
    side = 1024
    rows = max(1, megabytes * 1024 * 1024 // side)
    ds.Rows, ds.Columns = rows, side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(rows * side)
    return ds
