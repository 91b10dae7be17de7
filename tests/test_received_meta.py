"""File meta and datasets of received instances: built without pydicom's slow
constructors, yet equal to what pydicom and pynetdicom build (pure logic)."""

from __future__ import annotations

from io import BytesIO

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from clarinet_nb.dicom import received
from clarinet_nb.dicom.received import RawInstance

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
