"""File meta and datasets of received instances: built without pydicom's slow
constructors, yet equal to what pydicom and pynetdicom build (pure logic)."""

from __future__ import annotations

from io import BytesIO

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import keyword_dict
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from clarinet_nb.dicom import received
from clarinet_nb.dicom.received import RawInstance
from clarinet_nb.notebook.pull import _sort_key

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_the_fast_file_meta_is_a_plain_file_meta_dataset() -> None:
    assert received._FAST_META  # this pydicom: the shortcut is taken (and checked equal)
    first = RawInstance(CT, "1.2.3", ExplicitVRLittleEndian, "PACS", "", b"").file_meta()
    second = RawInstance(CT, "1.2.4", ExplicitVRLittleEndian, "PACS", "", b"").file_meta()
    assert type(first) is FileMetaDataset
    assert set(vars(first)) == set(vars(FileMetaDataset()))
    first.ImplementationVersionName = "CHANGED"
    assert second.ImplementationVersionName != "CHANGED"  # nothing mutable is shared
    assert first._dict is not second._dict
    assert first._private_blocks is not second._private_blocks
    assert str(second.MediaStorageSOPInstanceUID) == "1.2.4"
    assert str(second.TransferSyntaxUID) == ExplicitVRLittleEndian


def test_datasets_equal_pynetdicoms_decode() -> None:
    ds = Dataset()
    ds.PatientName = "Müller^Jürgen"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPInstanceUID = "1.2.3"
    ds.Rows = 2
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00\x01" * 8
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        implicit = syntax == ImplicitVRLittleEndian
        raw = encode(ds, implicit, True)
        assert raw is not None
        ours = RawInstance(CT, "1.2.3", syntax, "PACS", "", bytearray(raw)).dataset()
        theirs = decode(BytesIO(raw), implicit, True)
        assert ours._dict == theirs._dict
        assert ours == theirs and str(ours.PatientName) == "Müller^Jürgen"


_uids = st.from_regex(r"1\.2\.[1-9][0-9]{0,8}", fullmatch=True)
_numbers = st.one_of(
    st.none(), st.integers(-99, 10**6).map(str), st.sampled_from([" 7", "12 ", "+3", "1.0", ""])
)


@settings(max_examples=200, deadline=None)
@given(study=_uids, series=_uids, sop=_uids, series_no=_numbers, instance_no=_numbers)
def test_sort_key_from_raw_bytes_equals_pydicoms(
    study: str, series: str, sop: str, series_no: str | None, instance_no: str | None
) -> None:
    """Datasets as received are sorted by their raw bytes: the same key pydicom gives."""
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    for keyword, value in (("SeriesNumber", series_no), ("InstanceNumber", instance_no)):
        if value is not None:
            ds[keyword] = DataElement(keyword_dict[keyword], "IS", value, validation_mode=0)
    raw = encode(ds, False, True)
    assert raw is not None
    received = RawInstance(CT, sop, ExplicitVRLittleEndian, "PACS", "", raw).dataset()
    converted = decode(BytesIO(raw), False, True)
    for elem in converted:  # every element converted: the pydicom path of the key
        converted[elem.tag] = elem
    assert _sort_key(received) == _sort_key(converted)
