"""Builders of synthetic DICOM datasets used by :mod:`clarinet_nb.testing.cohort`."""

from __future__ import annotations

import datetime as dt
import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    BasicTextSRStorage,
    EncapsulatedPDFStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = [
    "Header",
    "PatientSpec",
    "StudySpec",
    "base_dataset",
    "make_uid",
    "rng_for",
    "write_part10",
]

IMPLEMENTATION_VERSION = "CLARINET_TEST"


def make_uid(*parts: str) -> str:
    """Deterministic UID from ``parts`` joined with a separator (see PEERS.md)."""
    return str(generate_uid(entropy_srcs=["|".join(("clarinet_nb", *parts))]))


def rng_for(*parts: str) -> np.random.Generator:
    """A numpy generator seeded deterministically from ``parts``."""
    return np.random.default_rng(zlib.crc32("|".join(parts).encode()))


@dataclass(frozen=True)
class PatientSpec:
    """Patient-level attributes of a synthetic patient."""

    patient_id: str
    name: str
    birth_date: dt.date
    sex: str
    charset: str


@dataclass(frozen=True)
class StudySpec:
    """Study-level attributes of a synthetic study."""

    key: str
    patient: PatientSpec
    date: dt.date
    time: str
    accession: str
    description: str
    referring: str
    study_id: str


@dataclass(frozen=True)
class Header:
    """Everything that identifies one instance in the hierarchy."""

    study: StudySpec
    study_uid: str
    series_uid: str
    series_number: int
    series_description: str
    modality: str
    sop_class_uid: str
    sop_uid: str
    instance_number: int


def _da(value: dt.date) -> str:
    return value.strftime("%Y%m%d")


def base_dataset(h: Header) -> Dataset:
    """Patient, study, series and SOP common attributes for ``h``."""
    s, p = h.study, h.study.patient
    ds = Dataset()
    ds.SpecificCharacterSet = p.charset
    ds.SOPClassUID = h.sop_class_uid
    ds.SOPInstanceUID = h.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _da(s.date)
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = s.time
    ds.AccessionNumber = s.accession
    ds.Modality = h.modality
    ds.Manufacturer = "clarinet_nb"
    ds.InstitutionName = "Clarinet Test Hospital"
    ds.ReferringPhysicianName = s.referring
    ds.StudyDescription = s.description
    ds.SeriesDescription = h.series_description
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = _da(p.birth_date)
    ds.PatientSex = p.sex
    ds.StudyInstanceUID = h.study_uid
    ds.SeriesInstanceUID = h.series_uid
    ds.StudyID = s.study_id
    ds.SeriesNumber = h.series_number
    ds.InstanceNumber = h.instance_number
    return ds


def write_part10(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    """Write ``ds`` as a DICOM Part-10 file with proper file meta."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    dcmwrite(path, ds, enforce_file_format=True)


# --------------------------------------------------------------------------- images


def phantom(rows: int, cols: int, rng: np.random.Generator, peak: int) -> npt.NDArray[np.float64]:
    """A bright disc on a dark background with a little noise, in [0, peak]."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    cy, cx = rows / 2 + rng.uniform(-3, 3), cols / 2 + rng.uniform(-3, 3)
    r = np.hypot(yy - cy, xx - cx) / (min(rows, cols) / 2)
    img = np.where(r < 0.7, 0.7 * peak, 0.1 * peak) + rng.normal(0, 0.02 * peak, (rows, cols))
    return np.clip(img, 0, peak)


def _grey16(ds: Dataset, pixels: npt.NDArray[np.float64], bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()


def add_slice(
    ds: Dataset, frame_of_reference: str, z: float, rng: np.random.Generator, size: int = 64
) -> None:
    """Cross-sectional image attributes shared by CT and MR slices."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [-22.4, -22.4, round(z, 2)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = round(z, 2)
    ds.SliceThickness = 2.5
    ds.PixelSpacing = [0.7, 0.7]
    ds.PatientPosition = "HFS"
    _grey16(ds, phantom(size, size, rng, 4095), 12)


def make_ct(h: Header, frame_of_reference: str, z: float, rng: np.random.Generator) -> Dataset:
    """A 64x64 CT slice with rescale and window attributes."""
    ds = base_dataset(h)
    add_slice(ds, frame_of_reference, z, rng)
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    return ds


def make_mr(h: Header, frame_of_reference: str, z: float, rng: np.random.Generator) -> Dataset:
    """A 64x64 MR slice."""
    ds = base_dataset(h)
    add_slice(ds, frame_of_reference, z, rng)
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = 500
    ds.EchoTime = 15
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = 1.5
    ds.WindowCenter = 1200
    ds.WindowWidth = 2400
    return ds


def make_cr(h: Header, rng: np.random.Generator) -> Dataset:
    """A 128x128 CR image."""
    ds = base_dataset(h)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PatientOrientation = ["L", "F"]
    _grey16(ds, phantom(128, 128, rng, 4095), 12)
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    return ds


def _add_sc(ds: Dataset) -> None:
    ds.ConversionType = "WSD"
    ds.PatientOrientation = ""


def make_sc_rgb(h: Header, rng: np.random.Generator) -> Dataset:
    """A 64x64 RGB 8-bit Secondary Capture image."""
    ds = base_dataset(h)
    _add_sc(ds)
    rgb = np.stack([phantom(64, 64, rng, 255) for _ in range(3)], axis=-1)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = 64, 64
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.astype(np.uint8).tobytes()
    return ds


def _grey8(ds: Dataset, rows: int, cols: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def make_jpeg_sc(h: Header, rng: np.random.Generator) -> Dataset:
    """A 64x64 8-bit grayscale Secondary Capture, JPEG Baseline encoded by Pillow."""
    ds = base_dataset(h)
    _add_sc(ds)
    _grey8(ds, 64, 64)
    pixels = phantom(64, 64, rng, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=90)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = round(pixels.size / len(buf.getvalue()), 2)
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    return ds


def make_multiframe(h: Header, rng: np.random.Generator, frames: int = 3) -> Dataset:
    """A multi-frame grayscale byte Secondary Capture image."""
    ds = base_dataset(h)
    assert ds.SOPClassUID == MultiFrameGrayscaleByteSecondaryCaptureImageStorage
    _add_sc(ds)
    _grey8(ds, 64, 64)
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00182001  # Page Number Vector
    ds.PageNumberVector = list(range(1, frames + 1))
    data = np.stack([phantom(64, 64, rng, 255) for _ in range(frames)])
    ds.PixelData = data.astype(np.uint8).tobytes()
    return ds


# ----------------------------------------------------------------------- non-images


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _sop_ref(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def _sr_document(ds: Dataset, title: Dataset) -> None:
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [title]
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []


def make_basic_text_sr(h: Header, text: str) -> Dataset:
    """A Basic Text SR report with one finding."""
    ds = base_dataset(h)
    assert ds.SOPClassUID == BasicTextSRStorage
    _sr_document(ds, _code("18748-4", "LN", "Diagnostic Imaging Report"))
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    finding.TextValue = text
    ds.ContentSequence = [finding]
    return ds


def make_key_objects(h: Header, refs: Sequence[Header]) -> Dataset:
    """A Key Object Selection document referencing the images ``refs``."""
    ds = base_dataset(h)
    assert ds.SOPClassUID == KeyObjectSelectionDocumentStorage
    _sr_document(ds, _code("113000", "DCM", "Of Interest"))
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = [template]
    series: dict[str, list[Dataset]] = {}
    for ref in refs:
        series.setdefault(ref.series_uid, []).append(_sop_ref(ref.sop_class_uid, ref.sop_uid))
    evidence = Dataset()
    evidence.StudyInstanceUID = refs[0].study_uid
    evidence.ReferencedSeriesSequence = []
    for series_uid, sops in series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = sops
        evidence.ReferencedSeriesSequence.append(item)
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    content = []
    for ref in refs:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "IMAGE"
        item.ReferencedSOPSequence = [_sop_ref(ref.sop_class_uid, ref.sop_uid)]
        content.append(item)
    ds.ContentSequence = content
    return ds


def make_gsps(h: Header, ref: Header) -> Dataset:
    """A Grayscale Softcopy Presentation State applying a window to ``ref``."""
    ds = base_dataset(h)
    assert ds.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    ds.ContentLabel = "CLARINET_PR"
    ds.ContentDescription = "Soft tissue window"
    ds.PresentationCreationDate = ds.StudyDate
    ds.PresentationCreationTime = ds.StudyTime
    ds.ContentCreatorName = "Test^Reader"
    image = _sop_ref(ref.sop_class_uid, ref.sop_uid)
    series = Dataset()
    series.SeriesInstanceUID = ref.series_uid
    series.ReferencedImageSequence = [image]
    ds.ReferencedSeriesSequence = [series]
    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner = [1, 1]
    area.DisplayedAreaBottomRightHandCorner = [64, 64]
    area.PresentationSizeMode = "SCALE TO FIT"
    area.PresentationPixelAspectRatio = [1, 1]
    ds.DisplayedAreaSelectionSequence = [area]
    voi = Dataset()
    voi.WindowCenter = 40
    voi.WindowWidth = 350
    ds.SoftcopyVOILUTSequence = [voi]
    ds.PresentationLUTShape = "IDENTITY"
    return ds


def minimal_pdf(text: str) -> bytes:
    """A small, valid one-page PDF showing ``text`` (ASCII), built by hand."""
    stream = f"BT /F1 18 Tf 50 750 Td ({text}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def make_pdf(h: Header, title: str) -> Dataset:
    """An Encapsulated PDF document."""
    ds = base_dataset(h)
    assert ds.SOPClassUID == EncapsulatedPDFStorage
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf = minimal_pdf(title)
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)
    return ds
