"""Deterministic synthetic DICOM cohorts for integration tests and benchmarks.

:func:`generate_cohort` writes a small, varied cohort (3 patients, 6 studies,
CT/MR/CR images, SR, KO, GSPS, Secondary Capture, Encapsulated PDF, a JPEG
Baseline instance and a multi-frame instance). :func:`generate_bulk` writes
many near-identical CT instances quickly. Files are written flat as
``root/<index>.dcm``; both return a :class:`Cohort` describing what was written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)

from clarinet_nb.testing import _datasets as b
from clarinet_nb.testing._datasets import (
    Header,
    PatientSpec,
    StudySpec,
    make_uid,
    rng_for,
)

__all__ = ["Cohort", "CohortInstance", "generate_bulk", "generate_cohort"]


@dataclass(frozen=True)
class CohortInstance:
    """One written DICOM file and the attributes a test needs to check it."""

    path: Path
    patient_id: str
    patient_name: str
    patient_birth_date: dt.date
    study_uid: str
    study_date: dt.date
    accession_number: str
    study_description: str
    series_uid: str
    series_number: int
    modality: str
    sop_class_uid: str
    sop_uid: str
    instance_number: int
    transfer_syntax_uid: str
    number_of_frames: int
    size_bytes: int


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class Cohort:
    """The instances of a generated cohort, in file index order."""

    instances: tuple[CohortInstance, ...]

    def patients(self) -> list[str]:
        """Patient IDs, in order of first appearance."""
        return _unique([i.patient_id for i in self.instances])

    def studies(self, patient_id: str | None = None) -> list[str]:
        """Study Instance UIDs, optionally of one patient."""
        return _unique([i.study_uid for i in self.instances if patient_id in (None, i.patient_id)])

    def series(self, study_uid: str | None = None) -> list[str]:
        """Series Instance UIDs, optionally of one study."""
        return _unique([i.series_uid for i in self.instances if study_uid in (None, i.study_uid)])

    def instances_in(
        self, study_uid: str | None = None, series_uid: str | None = None
    ) -> list[CohortInstance]:
        """Instances, optionally restricted to a study and/or a series."""
        return [
            i
            for i in self.instances
            if study_uid in (None, i.study_uid) and series_uid in (None, i.series_uid)
        ]

    def by_sop_uid(self) -> dict[str, CohortInstance]:
        """Instances keyed by SOP Instance UID."""
        return {i.sop_uid: i for i in self.instances}

    def sop_classes(self) -> set[str]:
        """The set of SOP Class UIDs present."""
        return {i.sop_class_uid for i in self.instances}

    def modalities_in_study(self, study_uid: str) -> set[str]:
        """The set of series Modality values of one study."""
        return {i.modality for i in self.instances if i.study_uid == study_uid}

    def paths(self) -> list[Path]:
        """File paths, in index order."""
        return [i.path for i in self.instances]


class _Writer:
    """Writes datasets as ``root/<index>.dcm`` and records them."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.written: list[CohortInstance] = []

    def write(self, ds: Dataset, h: Header, ts: str = ExplicitVRLittleEndian) -> None:
        path = self.root / f"{len(self.written)}.dcm"
        b.write_part10(ds, path, ts)
        p = h.study.patient
        self.written.append(
            CohortInstance(
                path=path,
                patient_id=p.patient_id,
                patient_name=p.name,
                patient_birth_date=p.birth_date,
                study_uid=h.study_uid,
                study_date=h.study.date,
                accession_number=h.study.accession,
                study_description=h.study.description,
                series_uid=h.series_uid,
                series_number=h.series_number,
                modality=h.modality,
                sop_class_uid=h.sop_class_uid,
                sop_uid=h.sop_uid,
                instance_number=h.instance_number,
                transfer_syntax_uid=ts,
                number_of_frames=int(ds.get("NumberOfFrames", 1)),
                size_bytes=path.stat().st_size,
            )
        )

    def cohort(self) -> Cohort:
        return Cohort(instances=tuple(self.written))


def _headers(
    seed: str,
    study: StudySpec,
    series_number: int,
    description: str,
    modality: str,
    sop_class: str,
    count: int,
) -> list[Header]:
    study_uid = make_uid(seed, "study", study.key)
    series_uid = make_uid(seed, "series", study.key, str(series_number))
    return [
        Header(
            study=study,
            study_uid=study_uid,
            series_uid=series_uid,
            series_number=series_number,
            series_description=description,
            modality=modality,
            sop_class_uid=sop_class,
            sop_uid=make_uid(seed, "sop", study.key, str(series_number), str(n)),
            instance_number=n,
        )
        for n in range(1, count + 1)
    ]


_SliceBuilder = Callable[[Header, str, float, np.random.Generator], Dataset]


def _slices(
    w: _Writer, study: StudySpec, number: int, desc: str, modality: str, count: int
) -> list[Header]:
    """Write a CT or MR series of ``count`` 64x64 slices; return their headers."""
    sop_class, build = {
        "CT": (CTImageStorage, b.make_ct),
        "MR": (MRImageStorage, b.make_mr),
    }[modality]
    builder: _SliceBuilder = build
    frame_of_reference = make_uid("cohort", "for", study.key)
    headers = _headers("cohort", study, number, desc, modality, sop_class, count)
    for h in headers:
        z = -40.0 + 2.5 * (h.instance_number - 1)
        rng = rng_for("cohort", "pixels", h.sop_uid)
        w.write(builder(h, frame_of_reference, z, rng), h)
    return headers


def _one(
    study: StudySpec, number: int, desc: str, modality: str, sop_class: str
) -> tuple[Header, np.random.Generator]:
    h = _headers("cohort", study, number, desc, modality, sop_class, 1)[0]
    return h, rng_for("cohort", "pixels", h.sop_uid)


YAMADA = PatientSpec("CLN-0001", "山田^太郎", dt.date(1958, 4, 3), "M", "ISO_IR 192")
MUELLER = PatientSpec("CLN-0002", "Müller^Jürgen", dt.date(1972, 11, 25), "M", "ISO_IR 192")
DOE = PatientSpec("CLN-0003", "Doe^Jane", dt.date(1990, 6, 17), "F", "ISO_IR 100")

STUDIES = (
    StudySpec("s1", YAMADA, dt.date(2019, 3, 14), "101500", "ACC19001", "CT CHEST",
              "佐藤^花子", "1"),
    StudySpec("s2", YAMADA, dt.date(2021, 7, 2), "083000", "ACC21002", "MR BRAIN",
              "佐藤^花子", "2"),
    StudySpec("s3", MUELLER, dt.date(2020, 11, 23), "140200", "ACC20003", "CR CHEST PA",
              "Schmidt^Anna", "3"),
    StudySpec("s4", MUELLER, dt.date(2022, 5, 9), "164500", "ACC22004", "CT ABDOMEN",
              "Schmidt^Anna", "4"),
    StudySpec("s5", DOE, dt.date(2023, 1, 17), "090500", "ACC23005", "MR KNEE",
              "House^Gregory", "5"),
    StudySpec("s6", DOE, dt.date(2019, 9, 30), "112000", "ACC19006", "CT HEAD",
              "House^Gregory", "6"),
)  # fmt: skip


def generate_cohort(root: Path) -> Cohort:
    """Write the standard test cohort (34 instances) under ``root``."""
    w = _Writer(root)
    s1, s2, s3, s4, s5, s6 = STUDIES

    ct = _slices(w, s1, 1, "Axial 2.5mm", "CT", 5)
    h, _ = _one(s1, 2, "Report", "SR", BasicTextSRStorage)
    w.write(b.make_basic_text_sr(h, "No acute cardiopulmonary findings."), h)
    h, _ = _one(s1, 3, "Key images", "KO", KeyObjectSelectionDocumentStorage)
    w.write(b.make_key_objects(h, ct[1:3]), h)
    h, _ = _one(s1, 4, "Presentation", "PR", GrayscaleSoftcopyPresentationStateStorage)
    w.write(b.make_gsps(h, ct[2]), h)

    _slices(w, s2, 1, "T1 AX", "MR", 4)
    _slices(w, s2, 2, "T2 AX", "MR", 3)
    h, rng = _one(s2, 3, "Cine", "OT", MultiFrameGrayscaleByteSecondaryCaptureImageStorage)
    w.write(b.make_multiframe(h, rng, frames=3), h)

    h, rng = _one(s3, 1, "Chest PA", "CR", ComputedRadiographyImageStorage)
    w.write(b.make_cr(h, rng), h, ImplicitVRLittleEndian)
    h, _ = _one(s3, 2, "Referral letter", "DOC", EncapsulatedPDFStorage)
    w.write(b.make_pdf(h, "Referral letter"), h)

    _slices(w, s4, 1, "Portal venous", "CT", 4)
    h, rng = _one(s4, 2, "Screen capture", "OT", SecondaryCaptureImageStorage)
    w.write(b.make_sc_rgb(h, rng), h)

    _slices(w, s5, 1, "PD SAG", "MR", 4)
    h, rng = _one(s5, 2, "Photo", "OT", SecondaryCaptureImageStorage)
    w.write(b.make_jpeg_sc(h, rng), h, JPEGBaseline8Bit)

    _slices(w, s6, 1, "Brain", "CT", 3)
    _slices(w, s6, 2, "Bone", "CT", 3)
    return w.cohort()


def generate_bulk(
    root: Path,
    *,
    n_studies: int = 2,
    per_study: int = 100,
    rows: int = 64,
    cols: int = 64,
    patients: int = 1,
    seed: str = "bulk",
) -> Cohort:
    """Write ``n_studies`` CT studies of ``per_study`` instances (one series each).

    Studies are spread round-robin over ``patients`` patients and dated one day
    apart from 2024-01-01. All UIDs derive from ``seed``, so two calls with
    different seeds never collide. One template dataset is reused for speed.
    """
    if min(n_studies, per_study, rows, cols, patients) < 1:
        raise ValueError("generate_bulk: all counts must be >= 1")
    w = _Writer(root)
    ds: Dataset | None = None  # the template, updated in place for each instance
    pixels = b.phantom(rows, cols, rng_for(seed, "pixels"), 4095).astype("<u2").tobytes()
    tag = seed.upper().replace(" ", "")[:6]
    for s in range(n_studies):
        p = s % patients
        patient = PatientSpec(
            f"{tag}-P{p:04d}", f"Bulk^Patient{p}", dt.date(1960, 1, 1), "O", "ISO_IR 100"
        )
        study = StudySpec(
            key=f"bulk{s}",
            patient=patient,
            date=dt.date(2024, 1, 1) + dt.timedelta(days=s),
            time="120000",
            accession=f"{tag}{s:06d}"[:16],
            description=f"BULK CT {s}",
            referring="Bulk^Referrer",
            study_id=str(s + 1),
        )
        frame_of_reference = make_uid(seed, "for", study.key)
        for h in _headers(seed, study, 1, "Bulk axial", "CT", CTImageStorage, per_study):
            if ds is None:
                ds = b.make_ct(h, frame_of_reference, 0.0, rng_for(seed, "template"))
                ds.Rows, ds.Columns = rows, cols
                ds.PixelData = pixels
            else:
                ds.update(b.base_dataset(h))
            z = 2.5 * (h.instance_number - 1)
            ds.FrameOfReferenceUID = frame_of_reference
            ds.ImagePositionPatient = [-22.4, -22.4, z]
            ds.SliceLocation = z
            w.write(ds, h)
    return w.cohort()
