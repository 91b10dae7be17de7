"""Header frames of retrieved instances: one row per instance, one column per keyword.

The same instances give the same frame whether they are in memory (a MEMORY
retrieve) or read back from disk (a DISK retrieve), apart from the ``path``
column.  Dtypes follow :func:`clarinet_nb.notebook.frames.dtype_for`; bulk data
(pixels, waveforms, encapsulated documents, binary values over 1 KiB) is left out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final

import pandas as pd
from pydicom import Dataset, dcmread

from clarinet_nb.errors import InvalidInputError
from clarinet_nb.notebook.frames import build_frame, string_array
from clarinet_nb.notebook.parquet import write_parquet

__all__ = ["LEADING_COLUMNS", "header_frame", "read_headers", "write_headers"]

logger = logging.getLogger("clarinet_nb")

LEADING_COLUMNS: Final = (
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "SeriesNumber",
    "InstanceNumber",
)
"""The DICOM columns every header frame starts with, in this order."""

SORT_COLUMNS: Final = ("StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber", "SOPInstanceUID")
_BULK_KEYWORDS: Final = frozenset(
    {
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "WaveformData",
        "EncapsulatedDocument",
        "OverlayData",
        # after the pixel data: absent when read with stop_before_pixels
        "DataSetTrailingPadding",
        "DigitalSignaturesSequence",
    }
)
_PREAMBLE: Final = 128
_MAGIC: Final = b"DICM"


def header_frame(
    datasets: Iterable[Dataset], paths: Sequence[Path | None] | None = None
) -> pd.DataFrame:
    """One row per instance: every top-level public element except bulk data.

    Columns: :data:`LEADING_COLUMNS`, ``TransferSyntaxUID`` (from ``file_meta``),
    ``path`` when ``paths`` is given, then the other keywords sorted by name.
    """
    items = list(datasets)
    if paths is not None and len(paths) != len(items):
        raise InvalidInputError(f"{len(paths)} paths given for {len(items)} datasets")
    frame = build_frame(items, LEADING_COLUMNS, exclude=_BULK_KEYWORDS)
    frame["TransferSyntaxUID"] = string_array([_transfer_syntax(ds) for ds in items])
    leading = [*LEADING_COLUMNS, "TransferSyntaxUID"]
    if paths is not None:
        frame["path"] = string_array([None if p is None else str(p) for p in paths])
        leading.append("path")
    rest = sorted(c for c in frame.columns if c not in leading)
    return frame[[*leading, *rest]]


def _transfer_syntax(ds: Dataset) -> str | None:
    """The dataset's Transfer Syntax UID from its file meta, if any."""
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    text = str(value).strip(" \x00") if value is not None else ""
    return text or None


def read_headers(source: Dataset | Iterable[Dataset] | str | Path) -> pd.DataFrame:
    """The header frame of datasets in memory, a DICOM file or a folder (recursive).

    In a folder every regular DICOM Part 10 file is read (128-byte preamble and
    ``DICM``); other files, and files or folders whose name starts with ``.``
    (hidden or being written), are skipped.  Rows are sorted by study, series,
    instance number and SOP Instance UID.
    """
    if isinstance(source, Dataset):
        frame = header_frame([source])
    elif isinstance(source, str | Path):
        frame = _read_path(Path(source))
    else:
        frame = header_frame(source)
    return _sorted(frame)


def _read_path(path: Path) -> pd.DataFrame:
    """The header frame of one file or of every DICOM file under a folder."""
    if path.is_dir():
        files = list(_dicom_files(path))
    elif path.is_file():
        if not _is_part10(path):
            raise InvalidInputError(f"{path} is not a DICOM Part 10 file")
        files = [path]
    else:
        raise FileNotFoundError(f"no such file or folder: {path}")
    datasets: list[Dataset] = []
    read: list[Path | None] = []
    for file in files:
        ds = _read_file(file)
        if ds is not None:
            datasets.append(ds)
            read.append(file)
    if len(read) < len(files):
        logger.warning("skipped %d unreadable DICOM file(s)", len(files) - len(read))
    return header_frame(datasets, read)


def _dicom_files(folder: Path) -> Iterator[Path]:
    """Every visible regular Part 10 file under ``folder``, in sorted order."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            file = Path(root, name)
            if not name.startswith(".") and file.is_file() and _is_part10(file):
                yield file


def _is_part10(path: Path) -> bool:
    """True if the file starts with a 128-byte preamble and ``DICM``."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_PREAMBLE + len(_MAGIC))
    except OSError:
        return False
    return head[_PREAMBLE:] == _MAGIC


def _read_file(path: Path) -> Dataset | None:
    """The file's dataset without pixel data, None if it cannot be parsed or is empty."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception:  # a damaged file must not stop the others
        logger.debug("cannot read %s", path, exc_info=True)
        return None
    if len(ds) == 0:
        logger.debug("no data elements in %s", path)
        return None
    return ds


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in (study, series, instance number, SOP instance) order."""
    ordered = frame.sort_values(list(SORT_COLUMNS), na_position="last", kind="stable")
    return ordered.reset_index(drop=True)


def write_headers(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as Parquet atomically (temporary name, then rename)."""
    return write_parquet(frame, path, index=True)
