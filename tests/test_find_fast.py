"""The lean C-FIND receive paths (``FastFind``, ``FindReceiver``) against real peers.

Every answer read with the lean path must equal the answer read through pynetdicom's own
DIMSE decoding (``CLARINET_FIND_FAST=0``): the same frames (columns, dtypes, values, NA,
attrs) at every level on Orthanc and dcmqrscp, the same datasets from the core API, and
the same statuses and errors.  A pynetdicom Find SCP sends identifiers split over many
PDUs (a 4 KiB max PDU), pending responses without identifier, and failure statuses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

import clarinet_nb as cnb
from clarinet_nb.dicom import fastfind, rawfind
from clarinet_nb.dicom.cancel import CancelToken
from clarinet_nb.dicom.models import DicomNode
from clarinet_nb.dicom.operations import DicomOperations
from clarinet_nb.dicom.queries import StudyQuery
from clarinet_nb.settings import settings
from clarinet_nb.testing import Cohort, Peer, free_port
from tests.notebook_support import pacs_for
from tests.support import TEST_TIMEOUTS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")


@pytest.fixture(params=["socket", "receiver"])
def assembled(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the pending responses the lean path assembled (it must not silently fall back).

    Two lean paths: ``socket`` (settings.fast_path: the socket is ours between the
    request and the final response, fastfind.py) and ``receiver`` (fast_path off: pynetdicom
    reads the PDUs, :class:`rawfind.FindReceiver` assembles the responses)."""
    count: list[int] = []
    if request.param == "receiver":
        monkeypatch.setattr(settings, "fast_path", False)
        original = rawfind._Pending.__init__

        def counting(self: Any, status: int, identifier: bytes) -> None:
            count.append(status)
            original(self, status, identifier)

        monkeypatch.setattr(rawfind._Pending, "__init__", counting)
    else:
        monkeypatch.setattr(settings, "fast_path", True)
        exchange = fastfind._FindRun.exchange

        def counted(self: Any, rq: bytes, syntax: Any) -> Iterator[Any]:
            for response in exchange(self, rq, syntax):
                if response[0] in fastfind.PENDING:
                    count.append(int(response[0]))
                yield response

        monkeypatch.setattr(fastfind._FindRun, "exchange", counted)
    return count


def _both(monkeypatch: pytest.MonkeyPatch, run: Callable[[], Any]) -> tuple[Any, Any]:
    """``run()`` with the lean path, then with pynetdicom's."""
    monkeypatch.setenv("CLARINET_FIND_FAST", "1")
    fast = run()
    monkeypatch.setenv("CLARINET_FIND_FAST", "0")
    slow = run()
    monkeypatch.delenv("CLARINET_FIND_FAST")
    return fast, slow


def _same_frames(fast: pd.DataFrame, slow: pd.DataFrame) -> None:
    for frame in (fast, slow):
        frame.attrs = {k: v for k, v in frame.attrs.items() if k != "time"}
    pd.testing.assert_frame_equal(fast, slow)


@pytest.mark.parametrize("max_pdu", [0, 4096])
def test_frames_equal_at_every_level(
    peer: Peer,
    cohort: Cohort,
    move_scp_port: int,
    max_pdu: int,
    monkeypatch: pytest.MonkeyPatch,
    assembled: list[int],
) -> None:
    pacs = pacs_for(peer, move_scp_port, max_pdu=max_pdu)
    try:
        levels: list[tuple[str, Callable[[], pd.DataFrame]]] = [
            ("patients", lambda: pacs.find_patients(PatientID="*")),
            ("studies", lambda: pacs.find_studies(PatientID="*")),
            ("series", lambda: pacs.find_series(pacs.find_studies(PatientID="*"))),
            ("instances", lambda: pacs.find_instances(StudyInstanceUID=cohort.studies())),
        ]
        for level, run in levels:
            fast, slow = _both(monkeypatch, run)
            _same_frames(fast, slow)
            assert len(fast) > 0, level
        assert len(assembled) >= len(cohort.instances)
    finally:
        pacs.close()


def test_core_datasets_and_models_equal(
    peer: Peer, cohort: Cohort, monkeypatch: pytest.MonkeyPatch, assembled: list[int]
) -> None:
    ops = DicomOperations("CLARINET")
    node = DicomNode(aet=peer.aet, host=peer.host, port=peer.port)
    query = StudyQuery(patient_id="*")
    fast, slow = _both(monkeypatch, lambda: ops.find(query, node))
    assert [ds._dict for ds in fast.datasets] == [ds._dict for ds in slow.datasets]
    assert (fast.status, fast.truncated, fast.cancelled) == (slow.status, slow.truncated, False)
    assert len(fast.datasets) == len(cohort.studies())
    assert len(assembled) == len(cohort.studies())


# --------------------------------------------------------------------------- pynetdicom SCP

BIG = "x" * 9000  # an identifier of ~9 KB: three PDUs at a 4 KiB max PDU


def _answers(request: Dataset) -> Iterator[tuple[int, Dataset | None]]:
    kind = str(request.get("PatientID", ""))
    for n in range(5):
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.SpecificCharacterSet = "ISO_IR 192" if n % 2 else "ISO_IR 100"
        ds.PatientName = "山田^太郎" if n % 2 else "Müller^Jürgen"
        ds.PatientID = f"P{n}"
        ds.StudyInstanceUID = f"1.2.3.{n}"
        ds.StudyDate = "20200101" if n != 3 else "2020-13-45"
        ds.ImageComments = BIG if n == 2 else "short"
        yield 0xFF00 if n != 4 else 0xFF01, ds
    if kind == "FAIL":
        yield 0xC001, None
    else:
        yield 0x0000, None


@pytest.fixture(scope="module")
def find_scp() -> Iterator[DicomNode]:
    ae = AE(ae_title="FINDSCP")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)

    def handle(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        yield from _answers(event.identifier)

    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, handle)]
    )
    try:
        yield DicomNode(aet="FINDSCP", host="127.0.0.1", port=port)
    finally:
        server.shutdown()


def test_identifiers_split_over_pdus(
    find_scp: DicomNode, monkeypatch: pytest.MonkeyPatch, assembled: list[int]
) -> None:
    ops = DicomOperations("CLARINET", max_pdu=4096)
    query = StudyQuery(patient_id="P*", return_keys=("ImageComments",))
    fast, slow = _both(monkeypatch, lambda: ops.find(query, find_scp))
    assert [ds._dict for ds in fast.datasets] == [ds._dict for ds in slow.datasets]
    assert len(fast.datasets) == 5 and fast.status == 0x0000
    assert sorted(set(assembled)) == [0xFF00, 0xFF01]
    assert str(fast.datasets[2].ImageComments) == BIG
    assert str(fast.datasets[1].PatientName) == "山田^太郎"

    pacs = cnb.connect(str(find_scp), calling_aet="CLARINET", max_pdu=4096, scp_port=free_port())
    try:
        frames = _both(
            monkeypatch,
            lambda: pacs.find_studies(PatientID="P*", return_keys=["ImageComments"]),
        )
    finally:
        pacs.close()
    _same_frames(*frames)
    assert frames[0]["StudyDate"].isna().tolist() == [False, False, False, True, False]


def test_failure_status_after_matches(
    find_scp: DicomNode, monkeypatch: pytest.MonkeyPatch, assembled: list[int]
) -> None:
    ops = DicomOperations("CLARINET", max_pdu=4096)
    errors: list[BaseException] = []

    def run() -> None:
        with pytest.raises(cnb.QueryError) as info:
            ops.find(StudyQuery(patient_id="FAIL"), find_scp)
        errors.append(info.value)

    _both(monkeypatch, run)
    assert [e.status for e in errors] == [0xC001, 0xC001]  # type: ignore[attr-defined]
    assert str(errors[0]) == str(errors[1])
    assert len(assembled) == 5  # the lean run read the five matches before the failure


def test_receiver_hands_back_a_half_message() -> None:
    """Uninstalling mid-message gives pynetdicom the fragments it has not seen (pure logic)."""
    handed: list[list[Any]] = []

    class Dimse:
        message = None
        msg_queue: Any = None

        def receive_primitive(self, primitive: Any) -> None:
            handed.append(list(primitive.presentation_data_value_list))

    class Assoc:
        dimse = Dimse()

    receiver = rawfind.FindReceiver(Assoc())  # type: ignore[arg-type]
    assert receiver.install()
    fragment = b"\x00" + b"\x00\x00\x00\x01\x02\x00"  # a command fragment, not the last
    receiver.receive(_pdata(1, b"\x01" + fragment[1:]))
    assert handed == []  # held, waiting for the rest
    receiver.uninstall()
    assert handed == [[[1, b"\x01" + fragment[1:]]]]
    receiver.receive(_pdata(1, b"\x02abc"))  # after uninstall: straight to pynetdicom
    assert handed[-1] == [[1, b"\x02abc"]]


def _pdata(context_id: int, data: bytes) -> Any:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[context_id, data]]  # type: ignore[list-item]
    return primitive


# --------------------------------------------------------------------------- cancel while waiting


@pytest.fixture
def slow_scp() -> Iterator[tuple[DicomNode, threading.Event, list[bool]]]:
    """A Find SCP that answers nothing until it sees a C-CANCEL (or 20 s pass)."""
    ae = AE(ae_title="SLOWSCP")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    started = threading.Event()
    saw_cancel: list[bool] = []

    def handle(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        started.set()
        deadline = time.monotonic() + 20
        cancelled = False  # pynetdicom's flag is consumed when read: read it once per pass
        while not cancelled and time.monotonic() < deadline:
            cancelled = event.is_cancelled
            time.sleep(0.005)  # the peer polls pynetdicom's flag: nothing else to wait on
        saw_cancel.append(cancelled)
        yield 0xFE00, None

    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, handle)]
    )
    try:
        yield DicomNode(aet="SLOWSCP", host="127.0.0.1", port=port), started, saw_cancel
    finally:
        server.shutdown()


def test_cancel_while_the_peer_computes_its_answer(
    slow_scp: tuple[DicomNode, threading.Event, list[bool]], assembled: list[int]
) -> None:
    """The C-CANCEL goes out while we wait for the first response (the wake-up pipe on the
    socket path, pynetdicom's send_c_cancel on the receiver path); the peer stops."""
    node, started, saw_cancel = slow_scp
    ops = DicomOperations("CLARINET", timeouts=TEST_TIMEOUTS)
    token = CancelToken()

    def cancel_when_started() -> None:
        if started.wait(20):
            token.cancel()

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    outcome = ops.find(StudyQuery(patient_id="P*"), node, cancel=token)
    canceller.join()
    assert started.is_set() and saw_cancel == [True]
    assert outcome.cancelled and not outcome.truncated and outcome.datasets == []
    assert assembled == []
