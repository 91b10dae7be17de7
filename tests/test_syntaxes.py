"""Instances arrive in the transfer syntax they are stored in, whatever it is.

A PACS may hold Implicit and Explicit VR Little Endian, Deflated Explicit VR
Little Endian, Explicit VR Big Endian, JPEG Baseline, and non-image classes
(a Segmentation).  Orthanc sends an instance as stored only when that syntax
is offered in a context of its own: so a C-GET must offer every syntax
separately, and the bytes that arrive must be the bytes that were loaded.
dcmqrscp converts uncompressed instances to the first context accepted for the
class (Explicit VR Little Endian): that conversion is its own, documented here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from clarinet_nb import DicomClient, RetrieveStatus, StorageConfig, StorageMode
from clarinet_nb.dicom.contexts import (
    MAX_CONTEXTS,
    REPAIR_PASSES,
    UNCOMPRESSED_SYNTAXES,
    contexts_for_class,
    plan_get_chunks,
    plan_syntax_chunks,
)
from clarinet_nb.testing import Cohort, CohortInstance, DcmqrscpServer, OrthancServer
from clarinet_nb.testing.syntaxes import (
    CT_SYNTAXES,
    MULTIFRAME_SYNTAXES,
    SEG_SYNTAXES,
    generate_syntax_cohort,
)
from tests.support import client, node

__all__ = ["client"]

METHODS = ["get", "move"]


@pytest.fixture(scope="session")
def syntax_cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return generate_syntax_cohort(tmp_path_factory.mktemp("syntax-cohort"))


@pytest.fixture(scope="session")
def orthanc_syntaxes(
    tmp_path_factory: pytest.TempPathFactory,
    syntax_cohort: Cohort,
    move_destinations: dict[str, tuple[str, str, int]],
) -> Iterator[OrthancServer]:
    """A stock Orthanc holding only the transfer syntax cohort."""
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc-syntaxes"), move_destinations=move_destinations
    )
    with server:
        assert server.load(syntax_cohort.paths()) == len(syntax_cohort.instances)
        yield server


def _dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part-10 file: what follows the File Meta group."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    group, element, vr, length, value = struct.unpack("<HH2sHI", raw[132:144])
    assert (group, element, vr, length) == (0x0002, 0x0000, b"UL", 4)
    return raw[144 + value :]


def _study(cohort: Cohort) -> str:
    return cohort.instances[0].study_uid


def test_cohort_holds_every_odd_syntax(syntax_cohort: Cohort) -> None:
    stored = [dcmread(i.path).file_meta.TransferSyntaxUID for i in syntax_cohort.instances]
    assert stored == [*CT_SYNTAXES, JPEGBaseline8Bit, *SEG_SYNTAXES, *MULTIFRAME_SYNTAXES]
    assert [i.transfer_syntax_uid for i in syntax_cohort.instances] == stored


def test_every_syntax_has_a_context_of_its_own() -> None:
    ct, seg, sr = (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.66.4",
        "1.2.840.10008.5.1.4.1.1.88.11",
    )
    for uid in (ct, seg, sr):
        contexts = contexts_for_class(uid)
        assert all(len(cx.transfer_syntax) == 1 for cx in contexts)
        offered = [cx.transfer_syntax[0] for cx in contexts]
        assert offered[0] == ExplicitVRLittleEndian  # dcmqrscp sends on the first one
        assert set(UNCOMPRESSED_SYNTAXES) <= set(offered)
    assert JPEGBaseline8Bit in [cx.transfer_syntax[0] for cx in contexts_for_class(ct)]
    assert RLELossless in [cx.transfer_syntax[0] for cx in contexts_for_class(seg)]
    assert [cx.transfer_syntax[0] for cx in contexts_for_class(sr)] == list(UNCOMPRESSED_SYNTAXES)
    # the first repair pass offers every uncompressed syntax, each in its own context
    assert REPAIR_PASSES[0] == UNCOMPRESSED_SYNTAXES
    many = [f"1.2.826.0.1.3680043.9.{n}" for n in range(100)]
    chunks = plan_syntax_chunks(many, UNCOMPRESSED_SYNTAXES)
    assert all(len(c.contexts) <= MAX_CONTEXTS for c in chunks)
    assert [u for c in chunks for u in c.sop_classes] == many
    for chunk in chunks:
        assert all(len(cx.transfer_syntax) == 1 for cx in chunk.contexts[1:])  # [0]: Q/R GET
        assert len(chunk.contexts) == 1 + len(chunk.sop_classes) * len(UNCOMPRESSED_SYNTAXES)
    assert all(len(c.contexts) <= MAX_CONTEXTS for c in plan_get_chunks(many))
    # a compressed pass skips classes that never carry compressed pixel data
    assert plan_syntax_chunks([sr], (RLELossless,)) == []
    assert [c.sop_classes for c in plan_syntax_chunks([sr, seg, ct], (RLELossless,))] == [(seg, ct)]
    assert [c.sop_classes for c in plan_syntax_chunks([sr], UNCOMPRESSED_SYNTAXES)] == [(sr,)]


def _check_as_stored(ds: Dataset, inst: CohortInstance) -> None:
    assert ds.file_meta.TransferSyntaxUID == inst.transfer_syntax_uid, UID(
        inst.transfer_syntax_uid
    ).name
    original = dcmread(inst.path)
    assert ds == original  # every element, values as stored (Big Endian pixel bytes too)


@pytest.mark.parametrize("method", METHODS)
async def test_memory_gets_every_syntax_as_stored(
    client: DicomClient, orthanc_syntaxes: OrthancServer, syntax_cohort: Cohort, method: str
) -> None:
    memory = StorageConfig(mode=StorageMode.MEMORY)
    retrieve = client.get_study if method == "get" else client.move_study
    result = await retrieve(_study(syntax_cohort), peer=node(orthanc_syntaxes), storage=memory)
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    by_uid = {ds.SOPInstanceUID: ds for ds in result.datasets}
    assert sorted(by_uid) == sorted(i.sop_uid for i in syntax_cohort.instances)
    for inst in syntax_cohort.instances:
        _check_as_stored(by_uid[inst.sop_uid], inst)


@pytest.mark.parametrize("method", METHODS)
async def test_disk_gets_the_stored_bytes(
    client: DicomClient,
    orthanc_syntaxes: OrthancServer,
    syntax_cohort: Cohort,
    tmp_path: Path,
    method: str,
) -> None:
    retrieve = client.get_study if method == "get" else client.move_study
    result = await retrieve(_study(syntax_cohort), peer=node(orthanc_syntaxes), output_dir=tmp_path)
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    assert len(result.paths) == len(syntax_cohort.instances)
    by_uid = syntax_cohort.by_sop_uid()
    for path in result.paths:
        inst = by_uid[path.stem]
        meta = dcmread(path, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == inst.transfer_syntax_uid
        assert meta.MediaStorageSOPInstanceUID == inst.sop_uid
        assert _dataset_bytes(path) == _dataset_bytes(inst.path)  # byte for byte
        assert dcmread(path) == dcmread(inst.path)


async def test_one_instance_at_a_time_keeps_its_syntax(
    client: DicomClient, orthanc_syntaxes: OrthancServer, syntax_cohort: Cohort
) -> None:
    """A single-instance C-GET negotiates only that class: still every syntax separately."""
    for inst in syntax_cohort.instances:
        result = await client.get_instance(
            inst.sop_uid,
            series_uid=inst.series_uid,
            study_uid=inst.study_uid,
            peer=node(orthanc_syntaxes),
            storage=StorageConfig(mode=StorageMode.MEMORY),
        )
        assert [ds.SOPInstanceUID for ds in result.datasets] == [inst.sop_uid]
        _check_as_stored(result.datasets[0], inst)


def _dcmqrscp_holds(cohort: Cohort) -> list[CohortInstance]:
    refused = (DeflatedExplicitVRLittleEndian, RLELossless)
    return [i for i in cohort.instances if i.transfer_syntax_uid not in refused]


@pytest.fixture(scope="session")
def dcmqrscp_syntaxes(
    tmp_path_factory: pytest.TempPathFactory,
    syntax_cohort: Cohort,
    move_destinations: dict[str, tuple[str, str, int]],
) -> Iterator[DcmqrscpServer]:
    """dcmqrscp with the cohort minus Deflated and RLE (dcmqrscp does not accept them)."""
    server = DcmqrscpServer(
        tmp_path_factory.mktemp("dcmqrscp-syntaxes"), move_destinations=move_destinations
    )
    with server:
        loadable = [i.path for i in _dcmqrscp_holds(syntax_cohort)]
        assert server.load(loadable) == len(loadable)
        yield server


async def test_dcmqrscp_converts_uncompressed_to_explicit_vr(
    client: DicomClient, dcmqrscp_syntaxes: DcmqrscpServer, syntax_cohort: Cohort
) -> None:
    """dcmqrscp's own conversion: it sends on the first context accepted for the class
    (Explicit VR Little Endian), so Implicit VR and Big Endian arrive as Explicit VR
    Little Endian, with the same values; JPEG arrives as stored (a pass of its own)."""
    result = await client.get_study(
        _study(syntax_cohort),
        peer=node(dcmqrscp_syntaxes),
        storage=StorageConfig(mode=StorageMode.MEMORY),
    )
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    by_uid = {ds.SOPInstanceUID: ds for ds in result.datasets}
    held = _dcmqrscp_holds(syntax_cohort)
    assert sorted(by_uid) == sorted(i.sop_uid for i in held)
    for inst in held:
        ds = by_uid[inst.sop_uid]
        if UID(inst.transfer_syntax_uid).is_compressed:
            assert ds.file_meta.TransferSyntaxUID == inst.transfer_syntax_uid
            assert ds.PixelData == dcmread(inst.path).PixelData
        else:
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            original = dcmread(inst.path)
            assert ds.SOPInstanceUID == original.SOPInstanceUID
            assert (ds.pixel_array == original.pixel_array).all()
