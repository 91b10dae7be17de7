"""A small cohort stored in every transfer syntax a PACS may hold (odd ones included).

Separate from :func:`~clarinet_nb.testing.generate_cohort` (other tests count
that cohort's instances).  One patient, one study:

- series 1, CT: the same kind of 64x64 slice in Implicit VR Little Endian,
  Explicit VR Little Endian, Deflated Explicit VR Little Endian and Explicit VR
  Big Endian (pixel bytes big endian there);
- series 2, Secondary Capture: one JPEG Baseline image (Pillow);
- series 3, Segmentation: a binary one in Explicit VR Little Endian, one in
  Implicit VR Little Endian, and a fractional (8-bit) one in RLE Lossless
  (segmentations are often stored so);
- series 4, Multi-frame Grayscale Byte Secondary Capture (a class that a C-GET
  not told the SOP classes does not offer on its first pass): one in Explicit VR
  Little Endian and one in Deflated Explicit VR Little Endian.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from clarinet_nb.testing import _datasets as b
from clarinet_nb.testing._datasets import Header, PatientSpec, StudySpec, make_uid, rng_for
from clarinet_nb.testing.cohort import Cohort, _Writer

__all__ = ["CT_SYNTAXES", "MULTIFRAME_SYNTAXES", "SEG_SYNTAXES", "generate_syntax_cohort"]

#: Transfer syntaxes of the CT series, in instance number order.
CT_SYNTAXES: tuple[str, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
#: Transfer syntaxes of the Segmentation series, in instance number order.
SEG_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless)
#: Transfer syntaxes of the multi-frame series, in instance number order.
MULTIFRAME_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)

_SEED = "syntaxes"
PATIENT = PatientSpec("SYN-0001", "Syntax^Test", dt.date(1970, 1, 1), "O", "ISO_IR 100")
STUDY = StudySpec(
    "t1", PATIENT, dt.date(2024, 6, 1), "101010", "SYN0001", "SYNTAX MIX", "Ref^Doc", "1"
)


def _header(number: int, desc: str, modality: str, sop_class: str, n: int) -> Header:
    return Header(
        study=STUDY,
        study_uid=make_uid(_SEED, "study", STUDY.key),
        series_uid=make_uid(_SEED, "series", STUDY.key, str(number)),
        series_number=number,
        series_description=desc,
        modality=modality,
        sop_class_uid=sop_class,
        sop_uid=make_uid(_SEED, "sop", STUDY.key, str(number), str(n)),
        instance_number=n,
    )


def _segmentation(h: Header, ref: Header, fractional: bool = False) -> Dataset:
    """A one-frame Segmentation of ``ref`` (a disc), minimal but well formed: binary
    (1 bit) or fractional (8 bits, RLE Lossless encoded)."""
    ds = b.base_dataset(h)
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "DISC"
    ds.ContentDescription = "Synthetic disc"
    ds.ContentCreatorName = "Test^Reader"
    ds.SegmentationType = "FRACTIONAL" if fractional else "BINARY"
    ds.FrameOfReferenceUID = make_uid(_SEED, "for", STUDY.key)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 8 if fractional else 1
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = 1
    ds.LossyImageCompression = "00"
    segment = Dataset()
    segment.SegmentNumber = 1
    segment.SegmentLabel = "Disc"
    segment.SegmentAlgorithmType = "MANUAL"
    category = Dataset()
    category.CodeValue = "91723000"
    category.CodingSchemeDesignator = "SCT"
    category.CodeMeaning = "Anatomical Structure"
    segment.SegmentedPropertyCategoryCodeSequence = [category]
    segment.SegmentedPropertyTypeCodeSequence = [category]
    ds.SegmentSequence = [segment]
    source = Dataset()
    source.ReferencedSOPClassUID = ref.sop_class_uid
    source.ReferencedSOPInstanceUID = ref.sop_uid
    series = Dataset()
    series.SeriesInstanceUID = ref.series_uid
    series.ReferencedInstanceSequence = [source]
    ds.ReferencedSeriesSequence = [series]
    yy, xx = np.mgrid[0:64, 0:64]
    mask = np.hypot(yy - 32, xx - 32) < 20
    if not fractional:
        ds.PixelData = np.packbits(mask.ravel(), bitorder="little").tobytes()
        return ds
    ds.SegmentationFractionalType = "PROBABILITY"
    ds.MaximumFractionalValue = 255
    ds.PixelData = (mask * 255).astype(np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what compress() starts from
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    return ds


def generate_syntax_cohort(root: Path) -> Cohort:
    """Write the transfer syntax cohort (4 CT, 1 JPEG, 3 SEG, 2 multi-frame) under ``root``."""
    w = _Writer(root)
    frame_of_reference = make_uid(_SEED, "for", STUDY.key)
    cts: list[Header] = []
    for n, ts in enumerate(CT_SYNTAXES, start=1):
        h = _header(1, "Axial mixed syntaxes", "CT", CTImageStorage, n)
        ds = b.make_ct(h, frame_of_reference, 2.5 * n, rng_for(_SEED, "pixels", h.sop_uid))
        if ts == ExplicitVRBigEndian:  # the pixel bytes follow the dataset's byte order
            ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
        w.write(ds, h, ts)
        cts.append(h)
    h = _header(2, "Photo", "OT", SecondaryCaptureImageStorage, 1)
    w.write(b.make_jpeg_sc(h, rng_for(_SEED, "pixels", h.sop_uid)), h, JPEGBaseline8Bit)
    for n, ts in enumerate(SEG_SYNTAXES, start=1):
        h = _header(3, "Segmentation", "SEG", SegmentationStorage, n)
        w.write(_segmentation(h, cts[0], fractional=ts == RLELossless), h, ts)
    for n, ts in enumerate(MULTIFRAME_SYNTAXES, start=1):
        sop_class = MultiFrameGrayscaleByteSecondaryCaptureImageStorage
        h = _header(4, "Cine", "OT", sop_class, n)
        w.write(b.make_multiframe(h, rng_for(_SEED, "pixels", h.sop_uid), frames=2), h, ts)
    return w.cohort()
