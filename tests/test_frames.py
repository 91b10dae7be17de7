"""Typed frames of C-FIND results and header frames of instances (no network).

Datasets are encoded with pydicom and decoded back with ``read_dataset`` so that
their elements are raw, as they arrive from a PACS.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from pydicom import Dataset, FileMetaDataset, dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from clarinet_nb.errors import InvalidInputError
from clarinet_nb.notebook.frames import dtype_for, empty_frame, to_frame
from clarinet_nb.notebook.headers import header_frame, read_headers, write_headers

STRING = pd.StringDtype("pyarrow")
ENCODINGS = [
    pytest.param(False, True, id="explicit-le"),
    pytest.param(True, True, id="implicit-le"),
    pytest.param(False, False, id="explicit-be"),
]


def roundtrip(ds: Dataset, implicit: bool = False, little: bool = True) -> Dataset:
    """Encode ``ds`` and decode it back: every element is raw again."""
    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return read_dataset(BytesIO(fp.getvalue()), implicit, little)


def explicit_le(*elements: tuple[int, str, bytes]) -> Dataset:
    """A raw dataset from hand-made explicit VR little endian elements (may be malformed)."""
    out = bytearray()
    for tag, vr, value in sorted(elements):
        out += struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value
    return read_dataset(BytesIO(bytes(out)), False, True)


def study(**values: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def is_raw(ds: Dataset, keyword: str) -> bool:
    return isinstance(ds.get_item(keyword), RawDataElement)


# --------------------------------------------------------------------------- columns


def test_columns_keys_first_then_first_seen_order() -> None:
    first = roundtrip(study(PatientID="1", StudyDate="20200101", Modality="CT"))
    second = roundtrip(study(AccessionNumber="A1", PatientID="2", ProtocolName="P"))
    frame = to_frame([first, second], ["StudyDate", "PatientID", "StudyDescription"])
    assert list(frame.columns) == [
        "StudyDate",
        "PatientID",
        "StudyDescription",
        "Modality",
        "AccessionNumber",
        "ProtocolName",
    ]
    assert frame["StudyDescription"].isna().all()
    assert frame["StudyDescription"].dtype == STRING
    assert frame["PatientID"].tolist() == ["1", "2"]
    assert frame["Modality"].isna().tolist() == [False, True]
    assert isinstance(frame.index, pd.RangeIndex)


def test_excluded_tags_never_become_columns() -> None:
    ds = study(SpecificCharacterSet="ISO_IR 192", PatientID="1")
    ds.add_new(0x00090010, "LO", "ACME")  # private creator
    ds.add_new(0x00091010, "LO", "secret")  # private
    ds.add_new(0x00080002, "LO", "no keyword")  # public group, unknown element
    memory = ds.copy()
    memory.add_new(0x00000000, "UL", 4)  # CommandGroupLength
    memory.add_new(0x00020013, "SH", "IMPL")  # ImplementationVersionName
    for item in (roundtrip(ds), roundtrip(ds, implicit=True), memory):
        frame = to_frame([item], [])
        assert list(frame.columns) == ["PatientID"]


def test_excluded_keys_are_dropped_and_unknown_keys_refused() -> None:
    frame = to_frame([study(PatientID="1")], ["QueryRetrieveLevel", "PatientID"])
    assert list(frame.columns) == ["PatientID"]
    with pytest.raises(InvalidInputError):
        to_frame([study(PatientID="1")], ["PatientIdentifier"])
    with pytest.raises(InvalidInputError):
        dtype_for("NotAKeyword")


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    ("keyword", "expected"),
    [
        ("StudyDate", np.dtype("datetime64[ns]")),
        ("AcquisitionDateTime", np.dtype("datetime64[ns]")),
        ("StudyTime", np.dtype("timedelta64[ns]")),
        ("InstanceNumber", pd.Int64Dtype()),  # IS
        ("Rows", pd.Int64Dtype()),  # US
        ("TagAngleSecondAxis", pd.Int64Dtype()),  # SS
        ("NumberOfWaveformSamples", pd.Int64Dtype()),  # UL
        ("ReferencePixelX0", pd.Int64Dtype()),  # SL
        ("PixelPaddingValue", pd.Int64Dtype()),  # US or SS
        ("PatientWeight", pd.Float64Dtype()),  # DS
        ("RecommendedDisplayFrameRateInFloat", pd.Float64Dtype()),  # FL
        ("ExposureTimeInms", pd.Float64Dtype()),  # FD
        ("PatientName", STRING),
        ("StudyInstanceUID", STRING),
        ("PatientID", STRING),
        ("Modality", STRING),
        ("ReferencedSeriesSequence", STRING),
        ("ICCProfile", STRING),  # OB: base64 text
        ("ModalitiesInStudy", pd.ArrowDtype(pa.list_(pa.string()))),
        ("SOPClassesInStudy", pd.ArrowDtype(pa.list_(pa.string()))),
        ("ImageType", pd.ArrowDtype(pa.list_(pa.string()))),
        ("PixelSpacing", pd.ArrowDtype(pa.list_(pa.float64()))),
        ("ReferencedFrameNumber", pd.ArrowDtype(pa.list_(pa.int64()))),
        ("AcquisitionMatrix", pd.ArrowDtype(pa.list_(pa.int64()))),  # US, VM 4
        ("SelectorUVValue", pd.ArrowDtype(pa.list_(pa.int64()))),
        ("TableOfYBreakPoints", pd.ArrowDtype(pa.list_(pa.float64()))),  # FD, 1-n
    ],
)
def test_dtype_for(keyword: str, expected: object) -> None:
    assert dtype_for(keyword) == expected
    assert empty_frame([keyword])[keyword].dtype == expected


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(("implicit", "little"), ENCODINGS)
def test_values_from_raw_elements(implicit: bool, little: bool) -> None:
    ds = study(
        PatientID="P1 ",
        StudyInstanceUID="1.2.3.4",
        StudyDate="20200131",
        StudyTime="101502.250000",
        AcquisitionDateTime="20200131101502.123456+0100",
        NumberOfStudyRelatedInstances="42",
        PatientWeight="70.5",
        Rows=512,
        TagAngleSecondAxis=-7,
        ReferencePixelX0=-70000,
        RecommendedDisplayFrameRateInFloat=12.5,
        ExposureTimeInms=0.125,
        ModalitiesInStudy=["CT", "MR"],
        PixelSpacing=["0.5", "0.25"],
        ReferencedFrameNumber=["1", "3"],
        AcquisitionMatrix=[0, 256, 256, 0],
    )
    decoded = roundtrip(ds, implicit, little)
    assert is_raw(decoded, "StudyDate")
    row = to_frame([decoded], []).iloc[0]
    assert row["PatientID"] == "P1"
    assert row["StudyInstanceUID"] == "1.2.3.4"  # NUL padding stripped
    assert row["StudyDate"] == pd.Timestamp("2020-01-31")
    assert row["StudyTime"] == pd.Timedelta(hours=10, minutes=15, seconds=2.25)
    assert row["AcquisitionDateTime"] == pd.Timestamp("2020-01-31 10:15:02.123456")
    assert row["NumberOfStudyRelatedInstances"] == 42
    assert row["PatientWeight"] == 70.5
    assert row["Rows"] == 512
    assert row["TagAngleSecondAxis"] == -7
    assert row["ReferencePixelX0"] == -70000
    assert row["RecommendedDisplayFrameRateInFloat"] == 12.5
    assert row["ExposureTimeInms"] == 0.125
    assert row["ModalitiesInStudy"] == ["CT", "MR"]
    assert row["PixelSpacing"] == [0.5, 0.25]
    assert row["ReferencedFrameNumber"] == [1, 3]
    assert row["AcquisitionMatrix"] == [0, 256, 256, 0]
    assert "QueryRetrieveLevel" not in row.index
    # decoded here from the raw bytes, not through pydicom's per-element conversion
    for keyword in ("StudyDate", "StudyTime", "Rows", "PixelSpacing", "StudyInstanceUID"):
        assert is_raw(decoded, keyword), keyword


def test_raw_and_memory_datasets_give_the_same_frame() -> None:
    ds = study(
        PatientID="P1",
        StudyDate="20200131",
        StudyTime="1015",
        NumberOfStudyRelatedInstances="42",
        PatientWeight="70.5",
        Rows=512,
        ModalitiesInStudy="CT",
        PixelSpacing=[0.5, 0.25],
    )
    memory = to_frame([ds], ["PatientID"])
    for implicit in (False, True):
        pd.testing.assert_frame_equal(to_frame([roundtrip(ds, implicit)], ["PatientID"]), memory)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10", pd.Timedelta(hours=10)),
        ("1015", pd.Timedelta(hours=10, minutes=15)),
        ("101502", pd.Timedelta(hours=10, minutes=15, seconds=2)),
        ("101502.123456", pd.Timedelta("10:15:02.123456")),
        ("101502.1", pd.Timedelta("10:15:02.1")),
        ("10:15:02", pd.Timedelta(hours=10, minutes=15, seconds=2)),
        ("235959", pd.Timedelta("23:59:59")),
        ("", None),
        ("25", None),
        ("1061", None),
        ("10a5", None),
        ("10.5", None),
    ],
)
def test_times(text: str, expected: pd.Timedelta | None) -> None:
    raw = explicit_le((0x00080030, "TM", text.encode().ljust(len(text) + len(text) % 2)))
    value = to_frame([raw], ["StudyTime"])["StudyTime"].iloc[0]
    assert (value is pd.NaT) if expected is None else value == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20200131", "2020-01-31"),
        ("2020.01.31", "2020-01-31"),  # ACR-NEMA
        ("2020-01-31", "2020-01-31"),
        ("20201331", None),
        ("20200230", None),
        ("2020013", None),
        ("abcdefgh", None),
        ("20200101-20201231", None),  # a range echoed back is not a date
        ("15000101", None),  # outside datetime64[ns]
        ("", None),
    ],
)
def test_dates(text: str, expected: str | None) -> None:
    raw = explicit_le((0x00080020, "DA", text.encode().ljust(len(text) + len(text) % 2)))
    value = to_frame([raw], ["StudyDate"])["StudyDate"].iloc[0]
    assert (value is pd.NaT) if expected is None else value == pd.Timestamp(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20200131101502.5", "2020-01-31 10:15:02.5"),
        ("20200131101502.123456-0500", "2020-01-31 10:15:02.123456"),  # offset dropped
        ("202001311015", "2020-01-31 10:15"),
        ("2020", "2020-01-01"),
        ("20201331", None),
        ("2020013110150x", None),
    ],
)
def test_datetimes(text: str, expected: str | None) -> None:
    raw = explicit_le((0x0008002A, "DT", text.encode().ljust(len(text) + len(text) % 2)))
    frame = to_frame([raw], [])
    value = frame["AcquisitionDateTime"].iloc[0]
    assert frame["AcquisitionDateTime"].dtype == np.dtype("datetime64[ns]")
    assert (value is pd.NaT) if expected is None else value == pd.Timestamp(expected)


def test_malformed_values_are_na_with_one_debug_line_per_column(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = explicit_le(
        (0x00080020, "DA", b"20200131"),
        (0x00200013, "IS", b"7 "),
        (0x00101030, "DS", b"70.5"),
        (0x00280010, "US", b"\x00\x02"),
    )
    bad = explicit_le(
        (0x00080020, "DA", b"31/01/20"),
        (0x00200013, "IS", b"seven "),
        (0x00101030, "DS", b"heavy "),
        (0x00280010, "US", b"\x01\x02\x03\x04"),  # two values for a VM 1 attribute
    )
    also_bad = explicit_le(
        (0x00080020, "DA", b"2020-99-99"),
        (0x00200013, "IS", b"1.5 "),
        (0x00101030, "DS", b"NaN "),
        (0x00280010, "US", b"\x01\x02\x03 "),
    )
    with caplog.at_level(logging.DEBUG, logger="clarinet_nb"):
        frame = to_frame([good, bad, also_bad], ["StudyDate"])
    assert frame["StudyDate"].tolist()[0] == pd.Timestamp("2020-01-31")
    assert frame["InstanceNumber"].tolist() == [7, pd.NA, pd.NA]
    assert frame["PatientWeight"].tolist() == [70.5, pd.NA, pd.NA]
    assert frame["Rows"].tolist() == [512, pd.NA, pd.NA]
    assert frame["StudyDate"].isna().tolist() == [False, True, True]
    lines = [r.getMessage() for r in caplog.records if r.name == "clarinet_nb"]
    for keyword in ("StudyDate", "InstanceNumber", "PatientWeight", "Rows"):
        assert sum(keyword in line for line in lines) == 1
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_empty_values_are_na() -> None:
    ds = study(
        PatientID="",
        PatientName="",
        StudyDate="",
        StudyTime="",
        NumberOfStudyRelatedInstances="",
        PatientWeight=None,
        ModalitiesInStudy="",
        ReferencedSeriesSequence=[],
    )
    for item in (ds, roundtrip(ds), roundtrip(ds, implicit=True)):
        frame = to_frame([item], [])
        assert len(frame.columns) == 8
        assert frame.iloc[0].isna().all(), frame.iloc[0]


def test_single_value_of_multivalued_attribute_is_a_one_element_list() -> None:
    ds = study(ModalitiesInStudy="CT", PixelSpacing="0.5", SOPClassesInStudy="1.2.3")
    for item in (ds, roundtrip(ds), roundtrip(ds, implicit=True)):
        row = to_frame([item], []).iloc[0]
        assert row["ModalitiesInStudy"] == ["CT"]
        assert row["PixelSpacing"] == [0.5]
        assert row["SOPClassesInStudy"] == ["1.2.3"]
        assert isinstance(row["ModalitiesInStudy"], list)


def test_list_items_keep_their_positions() -> None:
    raw = explicit_le((0x00280030, "DS", b"0.5\\x "), (0x00080008, "CS", b"ORIGINAL\\\\AXIAL "))
    row = to_frame([raw], []).iloc[0]
    assert row["PixelSpacing"] == [0.5, None]
    assert row["ImageType"] == ["ORIGINAL", None, "AXIAL"]


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 192", "山田^太郎"),
        ("ISO_IR 192", "Müller^Jürgen"),
        ("ISO_IR 100", "Müller^Jürgen"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),  # pydicom decodes
        (None, "Smith^John"),
    ],
)
def test_names_decoded_with_the_dataset_character_set(
    implicit: bool, charset: str | list[str] | None, name: str
) -> None:
    ds = study(PatientName=name, StudyDescription=name.split("^", maxsplit=1)[0] + " Kopf")
    if charset is not None:
        ds.SpecificCharacterSet = charset
    decoded = roundtrip(ds, implicit)
    assert is_raw(decoded, "PatientName")
    frame = to_frame([decoded], ["PatientName"])
    assert frame["PatientName"].iloc[0] == name
    assert is_raw(decoded, "PatientName") == (charset != ["", "ISO 2022 IR 87"])
    assert frame["StudyDescription"].iloc[0] == name.split("^", maxsplit=1)[0] + " Kopf"
    assert "SpecificCharacterSet" not in frame.columns


def test_mixed_character_sets_in_one_answer() -> None:
    utf8 = roundtrip(study(SpecificCharacterSet="ISO_IR 192", PatientName="山田^太郎"))
    latin1 = roundtrip(study(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen"))
    frame = to_frame([utf8, latin1], ["PatientName"])
    assert frame["PatientName"].tolist() == ["山田^太郎", "Müller^Jürgen"]


def test_sequences_become_json_text() -> None:
    item = Dataset()
    item.SeriesInstanceUID = "1.2.3"
    item.SeriesNumber = 4
    big = Dataset()
    big.ICCProfile = b"\x01" * 4000  # bulk: left out of the JSON
    ds = study(
        ReferencedSeriesSequence=[item],
        RequestAttributesSequence=[],
        IconImageSequence=[big],
    )
    for source in (ds, roundtrip(ds), roundtrip(ds, implicit=True)):
        row = to_frame([source], []).iloc[0]
        items = json.loads(row["ReferencedSeriesSequence"])
        assert items == [
            {"0020000E": {"vr": "UI", "Value": ["1.2.3"]}, "00200011": {"vr": "IS", "Value": [4]}}
        ]
        assert row["RequestAttributesSequence"] is pd.NA
        assert len(row["IconImageSequence"]) < 200


def test_empty_input_gives_typed_empty_frame() -> None:
    keys = [
        "PatientID",
        "StudyDate",
        "StudyTime",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    ]
    frame = to_frame([], keys)
    assert list(frame.columns) == keys
    assert len(frame) == 0
    assert [frame[k].dtype for k in keys] == [dtype_for(k) for k in keys]
    pd.testing.assert_frame_equal(frame, empty_frame(keys))


# --------------------------------------------------------------------------- Parquet


def _rich_frame() -> pd.DataFrame:
    first = study(
        SpecificCharacterSet="ISO_IR 192",
        PatientName="山田^太郎",
        PatientID="1",
        StudyDate="20200131",
        StudyTime="101502.5",
        AcquisitionDateTime="20200131101502",
        NumberOfStudyRelatedInstances="42",
        PatientWeight="70.5",
        ModalitiesInStudy=["CT", "MR"],
        PixelSpacing=[0.5, 0.5],
        ReferencedFrameNumber=[1, 2],
        ReferencedSeriesSequence=[Dataset()],
    )
    second = study(PatientID="2", StudyDate="", ModalitiesInStudy="")
    frame = to_frame([roundtrip(first), roundtrip(second, implicit=True)], ["PatientID"])
    frame.attrs["query"] = {"level": "STUDY", "criteria": {"PatientID": "1"}}
    return frame


def test_parquet_round_trip_keeps_dtypes_lists_and_attrs(tmp_path: Path) -> None:
    frame = _rich_frame()
    path = tmp_path / "studies.parquet"
    frame.to_parquet(path)
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, frame)
    assert back.attrs == frame.attrs
    assert back["ModalitiesInStudy"].iloc[0] == ["CT", "MR"]
    assert back["ModalitiesInStudy"].isna().tolist() == [False, True]


def test_parquet_schema_is_plain_arrow(tmp_path: Path) -> None:
    """DuckDB and Spark read the file through its Arrow/Parquet schema, not pandas metadata."""
    path = tmp_path / "studies.parquet"
    _rich_frame().to_parquet(path)
    schema = pq.read_schema(path)
    assert pa.types.is_list(schema.field("ModalitiesInStudy").type)
    assert schema.field("ModalitiesInStudy").type.value_type == pa.string()
    assert schema.field("PixelSpacing").type.value_type == pa.float64()
    assert schema.field("ReferencedFrameNumber").type.value_type == pa.int64()
    assert pa.types.is_timestamp(schema.field("StudyDate").type)
    assert schema.field("StudyDate").type.tz is None
    assert schema.field("NumberOfStudyRelatedInstances").type == pa.int64()
    assert schema.field("PatientWeight").type == pa.float64()
    table = pq.read_table(path)
    assert table.column("PatientName").to_pylist() == ["山田^太郎", None]


def test_empty_frame_parquet_round_trip(tmp_path: Path) -> None:
    frame = to_frame([], ["PatientID", "StudyDate", "ModalitiesInStudy", "PixelSpacing"])
    path = tmp_path / "empty.parquet"
    frame.to_parquet(path)
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)


# --------------------------------------------------------------------------- headers


def _instance(study_uid: str, series_uid: str, number: int, *, pixels: bool = True) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = "PID-1"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = f"{series_uid}.{number}"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.StudyDate = "20200131"
    ds.ContentTime = "101502"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = "1.25"
    ds.ICCProfile = b"\x00\x01" * 8  # small binary: kept (base64)
    ds.add_new(0x00091010, "LO", "private")
    ds.ReferencedSeriesSequence = [Dataset()]
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = series_uid
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if pixels:
        ds.PixelData = bytes(range(64))
        ds.EncapsulatedDocument = b"%PDF" * 8
        ds.add_new(0x60003000, "OW", b"\x00" * 64)  # OverlayData, small but bulk by name
    else:
        ds.ICCProfile = b"\x01" * 4096  # not bulk by name: left out by size
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = (
        ExplicitVRLittleEndian if number % 2 else ImplicitVRLittleEndian
    )
    return ds


def _instances() -> list[Dataset]:
    return [
        _instance("1.2.9", "1.2.9.2", 2),
        _instance("1.2.9", "1.2.9.2", 10),
        _instance("1.2.9", "1.2.9.1", 3, pixels=False),
        _instance("1.2.3", "1.2.3.1", 1),
    ]


def _write(folder: Path, datasets: list[Dataset]) -> list[Path]:
    paths = []
    for ds in datasets:
        path = folder / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def test_header_frame_columns_and_bulk_data() -> None:
    frame = header_frame(_instances())
    assert list(frame.columns[:10]) == [
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "Modality",
        "SeriesNumber",
        "InstanceNumber",
        "TransferSyntaxUID",
    ]
    rest = list(frame.columns[10:])
    assert rest == sorted(rest)
    for bulk in ("PixelData", "EncapsulatedDocument", "OverlayData"):
        assert bulk not in frame.columns
    assert "path" not in frame.columns
    assert frame["ICCProfile"].iloc[0] == base64.b64encode(b"\x00\x01" * 8).decode()
    assert frame["ICCProfile"].isna().tolist() == [False, False, True, False]
    assert frame["PatientName"].iloc[0] == "Müller^Jürgen"
    assert frame["TransferSyntaxUID"].tolist() == [
        ImplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
    ]
    assert frame["InstanceNumber"].dtype == pd.Int64Dtype()
    assert frame["StudyDate"].dtype == np.dtype("datetime64[ns]")
    assert frame["ImageType"].iloc[0] == ["ORIGINAL", "PRIMARY"]
    assert frame["SliceThickness"].iloc[0] == 1.25


def test_header_frame_paths_and_missing_file_meta() -> None:
    ds = _instance("1.2.3", "1.2.3.1", 1)
    del ds.file_meta
    frame = header_frame([ds], [Path("/x/a.dcm")])
    assert frame["TransferSyntaxUID"].isna().all()
    assert frame["path"].tolist() == [str(Path("/x/a.dcm"))]
    assert frame["path"].dtype == STRING
    with pytest.raises(InvalidInputError):
        header_frame([ds], [None, None])


def test_read_headers_memory_equals_disk(tmp_path: Path) -> None:
    datasets = _instances()
    paths = _write(tmp_path, datasets)
    disk = read_headers(tmp_path)
    memory = read_headers(datasets)
    assert disk["SOPInstanceUID"].tolist() == ["1.2.3.1.1", "1.2.9.1.3", "1.2.9.2.2", "1.2.9.2.10"]
    assert disk["path"].tolist() == [str(paths[i]) for i in (3, 2, 0, 1)]
    assert list(disk.columns).index("path") == 10
    pd.testing.assert_frame_equal(disk.drop(columns="path"), memory)
    assert read_headers(str(tmp_path)).equals(disk)


def test_read_headers_skips_hidden_partial_and_non_dicom_files(tmp_path: Path) -> None:
    datasets = _instances()
    _write(tmp_path, datasets[:1])
    hidden = datasets[1]
    dcmwrite(
        tmp_path / f".{hidden.SOPInstanceUID}.dcm.1234abcd.part", hidden, enforce_file_format=True
    )
    (tmp_path / ".cache").mkdir()
    dcmwrite(tmp_path / ".cache" / "x.dcm", datasets[2], enforce_file_format=True)
    (tmp_path / "notes.txt").write_text("not DICOM " * 50)
    (tmp_path / "short.dcm").write_bytes(b"DICM")
    headerless = tmp_path / "headerless.dcm"  # no preamble: not Part 10
    dcmwrite(headerless, datasets[3], enforce_file_format=False)
    headerless.write_bytes(headerless.read_bytes()[132:])
    frame = read_headers(tmp_path)
    assert frame["SOPInstanceUID"].tolist() == [datasets[0].SOPInstanceUID]


def test_read_headers_skips_damaged_dicom_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path, _instances()[:2])
    (tmp_path / "damaged.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 7)
    with caplog.at_level(logging.WARNING, logger="clarinet_nb"):
        frame = read_headers(tmp_path)
    assert len(frame) == 2
    assert any("1 unreadable" in r.getMessage() for r in caplog.records)


def test_read_headers_single_file_and_dataset(tmp_path: Path) -> None:
    ds = _instance("1.2.3", "1.2.3.1", 1)
    (path,) = _write(tmp_path, [ds])
    from_file = read_headers(path)
    assert from_file["path"].tolist() == [str(path)]
    pd.testing.assert_frame_equal(from_file.drop(columns="path"), read_headers(ds))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInputError):
        read_headers(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        read_headers(tmp_path / "missing")


def test_read_headers_empty_folder(tmp_path: Path) -> None:
    frame = read_headers(tmp_path)
    assert len(frame) == 0
    assert list(frame.columns[:10])[-1] == "TransferSyntaxUID"
    assert frame["InstanceNumber"].dtype == pd.Int64Dtype()


def test_write_headers_round_trip_and_atomic(tmp_path: Path) -> None:
    _write(tmp_path / "dicom", _instances())
    frame = read_headers(tmp_path / "dicom")
    frame.attrs["source"] = "test"
    target = write_headers(frame, tmp_path / "headers.parquet")
    assert target == tmp_path / "headers.parquet"
    back = pd.read_parquet(target)
    pd.testing.assert_frame_equal(back, frame)
    assert back.attrs == {"source": "test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom", "headers.parquet"]


def test_write_headers_failure_leaves_nothing(tmp_path: Path) -> None:
    bad = pd.DataFrame({"x": pd.Series([1, "a", dt.date(2020, 1, 1)], dtype=object)})
    with pytest.raises(pa.ArrowException):
        write_headers(bad, tmp_path / "headers.parquet")
    assert list(tmp_path.iterdir()) == []
