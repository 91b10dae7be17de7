"""The lean C-GET receive path (``settings.fast_path``, clarinet_nb/dicom/fastpath.py).

Pure logic first: the PDU/PDV reader over a real socket pair fed in arbitrary pieces
(fragments split across PDUs, several PDVs per PDU), the command-set codec against
pynetdicom's own encoding.  Then real peers (Orthanc stock and tuned, dcmqrscp): the
same bytes on disk, the same datasets in memory and the same counters as pynetdicom's
path; tiny and unlimited max PDU on both sides; an instance larger than 100 MB;
C-CANCEL and a connection reset in the middle of an instance.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from clarinet_nb import (
    AssociationAbortedError,
    CancelToken,
    DicomNode,
    DicomOperations,
    PartialRetrieveError,
    RetrieveRequest,
    RetrieveResult,
    RetrieveStatus,
    StorageConfig,
    StorageMode,
)
from clarinet_nb.dicom import fastpath
from clarinet_nb.dicom.wire import (
    PDU_HEAD,
    PDV_HEAD,
    PduReader,
    PeerPduError,
    ProtocolError,
    WireClosedError,
    WireTimeoutError,
    command_uid,
    command_us,
    parse_command,
    pdata_pdus,
    store_response,
)
from clarinet_nb.settings import settings
from clarinet_nb.testing import Cohort, DcmqrscpServer, OrthancServer, Peer
from clarinet_nb.testing.faults import FaultProxy
from tests.support import TEST_TIMEOUTS, node

# -- pure logic: the codec ---------------------------------------------------------------


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\x00" * (len(raw) % 2)


def store_rq(msg_id: int, sop_class: str, sop_uid: str, shuffle: random.Random | None) -> bytes:
    """A C-STORE-RQ command set, with optional elements, in any element order."""
    elements = [
        _element(0x0002, _uid(sop_class)),
        _element(0x0100, struct.pack("<H", 0x0001)),
        _element(0x0110, struct.pack("<H", msg_id)),
        _element(0x0700, struct.pack("<H", 0)),
        _element(0x0800, struct.pack("<H", 0x0000)),
        _element(0x1000, _uid(sop_uid)),
        _element(0x1030, b"MOVER "),  # Move Originator AE Title (optional)
        _element(0x1031, struct.pack("<H", 7)),
    ]
    if shuffle is not None:
        shuffle.shuffle(elements)
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return PDV_HEAD.pack(len(data) + 2, context_id, control) + data


def pdu(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return PDU_HEAD.pack(0x04, len(body)) + body


def split(data: bytes, pieces: int, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(0.0)
    yield ours, theirs
    ours.close()
    theirs.close()


def feed(sock: socket.socket, chunks: list[bytes]) -> threading.Thread:
    """Write ``chunks`` one send at a time from another thread."""

    def run() -> None:
        for chunk in chunks:
            sock.sendall(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("seed", range(12))
def test_messages_from_fragments_split_across_pdus_and_several_pdvs_per_pdu(
    pair: tuple[socket.socket, socket.socket], seed: int
) -> None:
    rng = random.Random(seed)
    ours, theirs = pair
    messages = []
    stream = bytearray()
    for n in range(4):
        sop = f"1.2.3.{seed}.{n}"
        command = store_rq(n + 1, "1.2.840.10008.5.1.4.1.1.7", sop, rng)
        data = rng.randbytes(rng.choice([1, 2, 300, 70_000, 300_000]))
        messages.append((command, data))
        # fragments of random sizes; PDVs packed into PDUs several at a time
        cmd_parts = split(command, rng.randint(0, 3), rng)
        data_parts = split(data, rng.randint(0, 6), rng) if len(data) > 1 else [data]
        pdvs = [pdv(3, 0x01, p) for p in cmd_parts[:-1]] + [pdv(3, 0x03, cmd_parts[-1])]
        pdvs += [pdv(3, 0x00, p) for p in data_parts[:-1]] + [pdv(3, 0x02, data_parts[-1])]
        while pdvs:
            take = rng.randint(1, 3)
            stream += pdu(*pdvs[:take])
            del pdvs[:take]
    # the final C-GET-RSP without a dataset, and an A-RELEASE-RQ after it
    rsp = _element(0x0100, struct.pack("<H", 0x8010)) + _element(0x0800, b"\x01\x01")
    rsp += _element(0x0900, b"\x00\x00") + _element(0x1021, struct.pack("<H", 4))
    stream += pdu(pdv(1, 0x03, rsp)) + PDU_HEAD.pack(0x05, 4) + b"\x00" * 4
    writer = feed(theirs, split(bytes(stream), rng.randint(1, 200), rng))
    reader = PduReader(ours, network=10, size=rng.choice([64, 4096, 1 << 18]))
    for command, data in messages:
        context, parsed, got = reader.next_message()
        assert context == 3
        assert parsed == parse_command(command)
        assert got is not None and bytes(got) == data
        assert command_us(parsed, 0x0100) == 0x0001
    context, parsed, got = reader.next_message()
    assert (context, got, command_us(parsed, 0x1021)) == (1, None, 4)
    with pytest.raises(PeerPduError) as caught:
        reader.next_message()
    assert caught.value.kind == 0x05 and len(caught.value.pdu) == 10
    writer.join(10)


def test_pdus_after_the_last_message_are_read_whole_for_pynetdicom(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    rsp = _element(0x0100, struct.pack("<H", 0x8010)) + _element(0x0800, b"\x01\x01")
    release = PDU_HEAD.pack(0x05, 4) + b"\x00" * 4
    # the final response and the first 3 bytes of an A-RELEASE-RQ arrive together
    theirs.sendall(pdu(pdv(1, 0x03, rsp)) + release[:3])
    reader = PduReader(ours, network=10)
    assert reader.next_message()[2] is None
    feed(theirs, [release[3:]])
    assert reader.leftover() == [release]
    assert reader.end == reader.pos


def test_command_parse_any_order_and_optional_elements() -> None:
    command = parse_command(store_rq(9, "1.2.3", "1.2.3.4.5", random.Random(1)))
    assert command_us(command, 0x0110) == 9
    assert command_uid(command, 0x0002) == "1.2.3"
    assert command_uid(command, 0x1000) == "1.2.3.4.5"
    assert command_us(command, 0x1031) == 7
    assert command_us(command, 0x0900) is None


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("<HHI", 8, 0x0018, 2) + b"ab",  # not group 0000
        struct.pack("<HHI", 0, 0x0100, 10) + b"ab",  # longer than the command set
        b"\x00\x00\x00",  # truncated header
    ],
)
def test_bad_command_sets_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_command(raw)


@pytest.mark.parametrize(
    "stream",
    [
        pdu(pdv(1, 0x02, b"data first")),  # dataset before its command set
        PDU_HEAD.pack(0x04, 8) + PDV_HEAD.pack(50, 1, 3) + b"ab",  # PDV beyond its PDU
        pdu(pdv(1, 0x01, store_rq(1, "1.2", "1.3", None)[:10]), pdv(2, 0x03, b"x")),  # 2 contexts
    ],
)
def test_malformed_pdvs_are_protocol_errors(
    pair: tuple[socket.socket, socket.socket], stream: bytes
) -> None:
    ours, theirs = pair
    theirs.sendall(stream)
    with pytest.raises(ProtocolError):
        PduReader(ours, network=10).next_message()


def test_closed_connection_and_timeouts(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    reader = PduReader(ours, network=10)
    reader.deadline = 0.0  # already passed: no data means a DIMSE timeout at once
    with pytest.raises(WireTimeoutError, match="dimse"):
        reader.next_message()
    reader.deadline = float("inf")
    theirs.sendall(pdu(pdv(1, 0x01, b"abc"))[:9])
    theirs.close()
    with pytest.raises(WireClosedError):
        reader.next_message()


def test_wake_up_pipe_calls_back_while_waiting(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK)
    calls: list[int] = []
    reader: PduReader

    def on_wake() -> None:
        calls.append(1)
        reader.grace = 0.0  # as a C-CANCEL sent long ago: the grace is over

    reader = PduReader(ours, network=10, wake_fd=wake_r, on_wake=on_wake)
    os.write(wake_w, b"c")
    with pytest.raises(WireTimeoutError, match="cancel"):
        reader.next_message()
    assert calls == [1]
    os.close(wake_r)
    os.close(wake_w)


@pytest.mark.parametrize("status", [0x0000, 0x0111, 0xA700, 0xC211])
def test_store_response_is_what_pynetdicom_encodes(status: int) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 513
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    expected = encode(message.command_set, True, True)
    got = store_response(513, "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.1", status)
    assert got == expected


@pytest.mark.parametrize("max_pdu", [0, 20, 64, 4096])
def test_responses_are_fragmented_under_the_peers_max_pdu(max_pdu: int) -> None:
    command = store_response(1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3." + "9" * 60, 0)
    stream = pdata_pdus(5, command, max_pdu)
    joined = bytearray()
    pos = 0
    controls = []
    while pos < len(stream):
        kind, length = PDU_HEAD.unpack_from(stream, pos)
        assert kind == 0x04 and (max_pdu == 0 or length <= max_pdu)
        item, context, control = PDV_HEAD.unpack_from(stream, pos + 6)
        assert context == 5 and item == length - 4
        joined += stream[pos + 12 : pos + 6 + length]
        controls.append(control)
        pos += 6 + length
    assert bytes(joined) == command
    assert controls == [0x01] * (len(controls) - 1) + [0x03]


# -- real peers ---------------------------------------------------------------------------


class Spy:
    """Counts the C-GETs that went through the lean path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = fastpath.FastGet.get

        def get(this: fastpath.FastGet, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(this, *args, **kwargs)

        monkeypatch.setattr(fastpath.FastGet, "get", get)


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``; nothing half written."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            assert not path.name.endswith(".part")
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            out[str(path.relative_to(root))] = digest.hexdigest()
    return out


def _counts(result: RetrieveResult) -> tuple[Any, ...]:
    return (
        result.status,
        result.dimse_status,
        result.expected,
        result.received,
        result.completed,
        result.failed,
        result.warning,
        sorted(result.received_sop_instance_uids),
        sorted(result.failed_sop_instance_uids),
        result.bytes_received,
    )


def _both_paths(
    monkeypatch: pytest.MonkeyPatch,
    retrieve: Callable[[bool], RetrieveResult],
) -> tuple[RetrieveResult, RetrieveResult, int]:
    spy = Spy(monkeypatch)
    monkeypatch.setattr(settings, "fast_path", False)
    slow = retrieve(False)
    assert spy.calls == 0
    monkeypatch.setattr(settings, "fast_path", True)
    fast = retrieve(True)
    return slow, fast, spy.calls


@pytest.mark.parametrize("peer_name", ["orthanc_stock", "orthanc_tuned", "dcmqrscp_tuned"])
def test_same_files_and_counters_as_pynetdicom(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    cohort: Cohort,
    tmp_path: Path,
    peer_name: str,
) -> None:
    """Every study of the cohort (multi-frame, JPEG, SR, PDF...) to disk by both paths."""
    peer: Peer = request.getfixturevalue(peer_name)
    ops = DicomOperations(timeouts=TEST_TIMEOUTS)

    def retrieve(fast: bool) -> RetrieveResult:
        results = []
        for study in cohort.studies():
            out = tmp_path / str(fast)
            results.append(
                ops.retrieve(
                    "get",
                    RetrieveRequest.study(study),
                    node(peer),
                    StorageConfig(mode=StorageMode.DISK, output_dir=out),
                )
            )
        return results[-1].model_copy(
            update={
                "received_sop_instance_uids": [
                    u for r in results for u in r.received_sop_instance_uids
                ],
                "received": sum(r.received for r in results),
                "completed": sum(r.completed for r in results),
                "bytes_received": sum(r.bytes_received for r in results),
            }
        )

    slow, fast, calls = _both_paths(monkeypatch, retrieve)
    assert calls >= len(cohort.studies())
    assert _counts(fast) == _counts(slow)
    assert fast.received == len(cohort.instances)
    assert _tree(tmp_path / "True") == _tree(tmp_path / "False")


def test_same_datasets_in_memory(
    monkeypatch: pytest.MonkeyPatch, orthanc_tuned: OrthancServer, cohort: Cohort
) -> None:
    ops = DicomOperations(timeouts=TEST_TIMEOUTS)
    study = cohort.studies()[0]

    def retrieve(fast: bool) -> RetrieveResult:
        return ops.retrieve(
            "get",
            RetrieveRequest.study(study),
            node(orthanc_tuned),
            StorageConfig(mode=StorageMode.MEMORY),
        )

    slow, fast, calls = _both_paths(monkeypatch, retrieve)
    assert calls >= 1
    assert _counts(fast) == _counts(slow)
    by_uid = {ds.SOPInstanceUID: ds for ds in slow.datasets}
    assert len(fast.datasets) == len(by_uid) == len(cohort.instances_in(study))
    for ds in fast.datasets:
        other = by_uid[ds.SOPInstanceUID]
        assert ds == other
        assert ds.file_meta == other.file_meta


# -- max PDU on both sides, a very large instance ---------------------------------------------


def _big_instance(folder: Path, megabytes: int) -> Path:
    """A Secondary Capture of 8-bit 1024x1024 frames, ``megabytes`` MB of pixel data."""
    frames = megabytes
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "FASTPATH"
    ds.PatientName = "Fast^Path"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 1024
    ds.NumberOfFrames = frames
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(8)
    ds.PixelData = rng.integers(0, 256, size=(frames, 1024, 1024), dtype=np.uint8).tobytes()
    path = folder / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def big_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = _big_instance(tmp_path_factory.mktemp("big"), 101)
    assert path.stat().st_size > 100 * 2**20
    return path, str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def tiny_pdu_orthanc(
    tmp_path_factory: pytest.TempPathFactory, cohort: Cohort, big_study: tuple[Path, str]
) -> Iterator[OrthancServer]:
    """A tuned Orthanc sending 4096-byte PDUs, holding the cohort and the big instance."""
    with OrthancServer(tmp_path_factory.mktemp("o-tiny"), tuned=True, max_pdu=4096) as srv:
        assert srv.load([*cohort.paths(), big_study[0]]) == len(cohort.instances) + 1
        yield srv


@pytest.fixture(scope="module")
def large_pdu_dcmqrscp(
    tmp_path_factory: pytest.TempPathFactory, cohort: Cohort
) -> Iterator[DcmqrscpServer]:
    with DcmqrscpServer(tmp_path_factory.mktemp("q-large"), tuned=True, max_pdu=131072) as srv:
        assert srv.load(cohort.paths()) == len(cohort.instances)
        yield srv


@pytest.mark.parametrize("ours", [4096, 0])
@pytest.mark.parametrize("server", ["tiny_pdu_orthanc", "large_pdu_dcmqrscp"])
def test_tiny_and_unlimited_max_pdu_on_both_sides(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    cohort: Cohort,
    tmp_path: Path,
    ours: int,
    server: str,
) -> None:
    peer: Peer = request.getfixturevalue(server)
    monkeypatch.setattr(settings, "fast_path", True)
    spy = Spy(monkeypatch)
    ops = DicomOperations(timeouts=TEST_TIMEOUTS, max_pdu=ours)
    study = cohort.studies()[1]
    result = ops.retrieve(
        "get",
        RetrieveRequest.study(study),
        node(peer),
        StorageConfig(mode=StorageMode.DISK, output_dir=tmp_path),
    )
    assert spy.calls >= 1
    assert result.status is RetrieveStatus.SUCCESS
    assert sorted(result.received_sop_instance_uids) == sorted(
        i.sop_uid for i in cohort.instances_in(study)
    )
    for inst in cohort.instances_in(study):
        written = tmp_path / inst.study_uid / inst.series_uid / f"{inst.sop_uid}.dcm"
        assert dcmread(written) == dcmread(inst.path)


@pytest.mark.parametrize("ours", [16384, 0])
def test_instance_larger_than_100_mb(
    monkeypatch: pytest.MonkeyPatch,
    tiny_pdu_orthanc: OrthancServer,
    big_study: tuple[Path, str],
    tmp_path: Path,
    ours: int,
) -> None:
    """101 MB in 4096-byte PDUs from Orthanc: the same bytes as the file Orthanc stored."""
    monkeypatch.setattr(settings, "fast_path", True)
    spy = Spy(monkeypatch)
    path, study = big_study
    ops = DicomOperations(timeouts=TEST_TIMEOUTS, max_pdu=ours)
    result = ops.retrieve(
        "get",
        RetrieveRequest.study(study),
        node(tiny_pdu_orthanc),
        StorageConfig(mode=StorageMode.DISK, output_dir=tmp_path),
    )
    assert spy.calls == 1
    assert result.status is RetrieveStatus.SUCCESS and result.received == 1
    assert result.bytes_received > 100 * 2**20
    (written,) = result.paths
    original = dcmread(path, defer_size=1024)
    got = dcmread(written, defer_size=1024)
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert hashlib.sha256(got.PixelData).digest() == hashlib.sha256(original.PixelData).digest()


# -- cancel and reset in the middle of an instance -------------------------------------------


@pytest.fixture(scope="module")
def big_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three 12 MB instances of one study."""
    folder = tmp_path_factory.mktemp("series")
    first = dcmread(_big_instance(folder, 12))
    paths = []
    for n in range(3):
        first.SOPInstanceUID = first.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        first.InstanceNumber = n + 1
        path = folder / f"{n}.dcm"
        first.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def series_orthanc(
    tmp_path_factory: pytest.TempPathFactory, big_series: list[Path]
) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("o-series"), tuned=True) as srv:
        assert srv.load(big_series) == 3
        yield srv


def _no_association_threads() -> bool:
    for thread in threading.enumerate():
        if isinstance(thread, Association):
            thread.join(timeout=20)
    return not any(isinstance(t, Association) and t.is_alive() for t in threading.enumerate())


def test_cancel_in_the_middle_of_an_instance(
    monkeypatch: pytest.MonkeyPatch,
    series_orthanc: OrthancServer,
    big_series: list[Path],
    tmp_path: Path,
) -> None:
    """The token fires inside the 300th P-DATA PDU of the C-GET association (the first
    instance is ~770 PDUs): C-CANCEL goes out mid-instance, the PACS ends with Cancel."""
    monkeypatch.setattr(settings, "fast_path", True)
    spy = Spy(monkeypatch)
    token = CancelToken()
    study = str(dcmread(big_series[0], stop_before_pixels=True).StudyInstanceUID)
    ops = DicomOperations(timeouts=TEST_TIMEOUTS)
    with FaultProxy(series_orthanc.host, series_orthanc.port) as proxy:
        trigger = proxy.arm(token.cancel, pdu_number=300, offset=10, connection=1)
        result = ops.retrieve(
            "get",
            RetrieveRequest.study(study),
            DicomNode(aet=series_orthanc.aet, host=proxy.host, port=proxy.port),
            StorageConfig(mode=StorageMode.DISK, output_dir=tmp_path),
            cancel=token,
        )
        assert trigger.fired.is_set()
    assert spy.calls == 1
    assert result.status is RetrieveStatus.CANCELLED
    assert result.dimse_status == 0xFE00
    assert result.received < 3
    files = _tree(tmp_path)
    assert len(files) == result.received
    assert sorted(Path(p).stem for p in files) == sorted(result.received_sop_instance_uids)
    assert _no_association_threads()


def test_connection_reset_in_the_middle_of_an_instance(
    monkeypatch: pytest.MonkeyPatch,
    series_orthanc: OrthancServer,
    big_series: list[Path],
    tmp_path: Path,
) -> None:
    """A TCP reset inside the 1000th PDU (the second instance): the first instance is
    kept, the cut one is never written, the error says the association broke."""
    monkeypatch.setattr(settings, "fast_path", True)
    study = str(dcmread(big_series[0], stop_before_pixels=True).StudyInstanceUID)
    ops = DicomOperations(timeouts=TEST_TIMEOUTS)
    with FaultProxy(series_orthanc.host, series_orthanc.port) as proxy:
        trigger = proxy.arm("cut", pdu_number=1000, offset=10, connection=1)
        with pytest.raises(PartialRetrieveError) as caught:
            ops.retrieve(
                "get",
                RetrieveRequest.study(study),
                DicomNode(aet=series_orthanc.aet, host=proxy.host, port=proxy.port),
                StorageConfig(mode=StorageMode.DISK, output_dir=tmp_path),
            )
        assert trigger.fired.is_set()
    assert isinstance(caught.value.__cause__, AssociationAbortedError)
    result = caught.value.result
    assert result.received == 1
    files = _tree(tmp_path)
    assert [Path(p).stem for p in files] == result.received_sop_instance_uids
    assert _no_association_threads()


# -- a peer that aborts with an A-ABORT PDU ---------------------------------------------------


@pytest.fixture
def aborting_peer(cohort: Cohort) -> Iterator[tuple[DicomNode, list[str]]]:
    """A real pynetdicom C-GET SCP that sends two instances of a study, then A-ABORT."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import StoragePresentationContexts
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelGet,
    )

    from clarinet_nb.testing import free_port

    study = cohort.studies()[0]
    instances = [i for i in cohort.instances_in(study) if i.sop_class_uid.endswith(".1.2")]
    sent: list[str] = []

    def on_get(event: evt.Event) -> Iterator[Any]:
        yield len(instances)
        for inst in instances:
            if len(sent) == 2:
                event.assoc.abort()
                return
            sent.append(inst.sop_uid)
            yield 0xFF00, dcmread(inst.path)

    ae = AE("ABORTER")
    for cx in StoragePresentationContexts:
        assert cx.abstract_syntax is not None
        ae.add_supported_context(cx.abstract_syntax, scp_role=True, scu_role=False)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)]
    )
    assert server is not None
    yield DicomNode(aet="ABORTER", host="127.0.0.1", port=port), sent
    server.shutdown()


def test_peer_a_abort_in_the_middle_of_a_retrieve(
    monkeypatch: pytest.MonkeyPatch,
    aborting_peer: tuple[DicomNode, list[str]],
    cohort: Cohort,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(settings, "fast_path", True)
    spy = Spy(monkeypatch)
    peer, sent = aborting_peer
    ops = DicomOperations(timeouts=TEST_TIMEOUTS)
    with pytest.raises(PartialRetrieveError) as caught:
        ops.retrieve(
            "get",
            RetrieveRequest.study(cohort.studies()[0]),
            peer,
            StorageConfig(mode=StorageMode.DISK, output_dir=tmp_path),
            query_first=False,
        )
    assert spy.calls == 1
    assert isinstance(caught.value.__cause__, AssociationAbortedError)
    assert "aborted the association" in str(caught.value.__cause__)
    result = caught.value.result
    assert sorted(result.received_sop_instance_uids) == sorted(sent) and len(sent) == 2
    assert sorted(Path(p).stem for p in _tree(tmp_path)) == sorted(sent)
    assert _no_association_threads()


def test_elements_appended_to_a_command_set_are_kept_apart() -> None:
    """Orthanc appends the Failed SOP Instance UID List to a final C-GET-RSP's command set
    (Command Data Set Type 0x0101); tests/test_errors.py shows it against the real peer."""
    from clarinet_nb.dicom.wire import TRAILING

    status = struct.pack("<HHI", 0, 0x0900, 2) + struct.pack("<H", 0xC000)
    failed = struct.pack("<HHI", 8, 0x0058, 6) + b"1.2.3\x00"
    command = parse_command(status + failed)
    assert command[0x0900] == struct.pack("<H", 0xC000)
    assert command[TRAILING] == failed
