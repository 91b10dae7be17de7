"""Every ``connect()`` / ``DicomClient()`` / ``Timeouts`` / settings parameter is checked up
front: a typed ``InvalidInputError`` naming the parameter, before any thread or traffic."""

from __future__ import annotations

import math
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import clarinet_nb as cnb
from clarinet_nb import DicomClient, DicomNode, InvalidInputError, PeerUnreachableError, Timeouts
from clarinet_nb.settings import Settings
from tests.support import ConnectionCounter, silent_listener

__all__ = ["silent_listener"]

TARGET = "ORTHANC@127.0.0.1:4242"

BAD_CONNECT: list[tuple[dict[str, Any], str]] = [
    ({"scp_port": 70000}, "scp_port"),
    ({"scp_port": -1}, "scp_port"),
    ({"scp_port": 0}, "scp_port"),
    ({"scp_port": "11112"}, "scp_port"),
    ({"scp_port": True}, "scp_port"),
    ({"max_pdu": -1}, "max_pdu"),
    ({"max_pdu": 100}, "max_pdu"),
    ({"max_pdu": 2**31}, "max_pdu"),
    ({"max_pdu": 16384.0}, "max_pdu"),
    ({"timeouts": "fast"}, "timeouts"),
    ({"timeouts": 5}, "timeouts"),
    ({"timeouts": {"acse": 5}}, "timeouts"),
    ({"max_associations": 0}, "max_associations"),
    ({"max_associations": 65}, "max_associations"),
    ({"max_associations": -3}, "max_associations"),
    ({"max_associations": 2.5}, "max_associations"),
    ({"calling_aet": ""}, "calling_aet"),
    ({"calling_aet": "A_CALLING_AE_TITLE_TOO_LONG"}, "calling_aet"),
    ({"calling_aet": "BAD\\AET"}, "calling_aet"),
    ({"calling_aet": 42}, "calling_aet"),
    ({"memory_limit": 0}, "memory_limit"),
    ({"memory_limit": -5}, "memory_limit"),
    ({"memory_limit": "lots"}, "memory_limit"),
    ({"memory_limit": "inf"}, "memory_limit"),
    ({"memory_limit": "nan GB"}, "memory_limit"),
    ({"memory_limit": True}, "memory_limit"),
    ({"memory_limit": [1]}, "memory_limit"),
    ({"result_cap": 0}, "result_cap"),
    ({"result_cap": -1}, "result_cap"),
    ({"result_cap": "100"}, "result_cap"),
    ({"cache": ""}, "cache"),
    ({"cache": 3}, "cache"),
    ({"config": {"dicom_aet": "X"}}, "config"),
    ({"retries": -1}, "retries"),
    ({"retries": "3"}, "retries"),
    ({"tls": "yes"}, "tls"),
]


@pytest.mark.parametrize(("kwargs", "name"), BAD_CONNECT, ids=[repr(k) for k, _ in BAD_CONNECT])
def test_connect_refuses_bad_parameters(kwargs: dict[str, Any], name: str) -> None:
    threads = threading.active_count()
    with pytest.raises(InvalidInputError, match=name):
        cnb.connect(TARGET, **kwargs)
    assert threading.active_count() == threads


def test_cache_that_is_a_file_is_refused(tmp_path: Path) -> None:
    existing = tmp_path / "cache.txt"
    existing.write_text("not a folder")
    with pytest.raises(InvalidInputError, match="cache must be a folder"):
        cnb.connect(TARGET, cache=existing)


@pytest.mark.parametrize("target", [42, b"ORTHANC@127.0.0.1:4242", "ORTHANC@127.0.0.1:70000",
                                    "ORTHANC@127.0.0.1", "@127.0.0.1:4242"])  # fmt: skip
def test_connect_refuses_bad_targets(target: Any) -> None:
    with pytest.raises(InvalidInputError):
        cnb.connect(target)


BAD_CLIENT: list[tuple[dict[str, Any], str]] = [
    ({"scp_port": 70000}, "scp_port"),
    ({"scp_ip": "pacs.example.org"}, "scp_ip"),
    ({"scp_ip": "300.1.1.1"}, "scp_ip"),
    ({"scp_ip": 127}, "scp_ip"),
    ({"max_pdu": -1}, "max_pdu"),
    ({"max_pdu": 4095}, "max_pdu"),
    ({"max_pdu": 131073}, "max_pdu"),
    ({"timeouts": "fast"}, "timeouts"),
    ({"max_associations": 0}, "max_associations"),
    ({"calling_aet": " "}, "calling_aet"),
]


@pytest.mark.parametrize(("kwargs", "name"), BAD_CLIENT, ids=[repr(k) for k, _ in BAD_CLIENT])
def test_client_refuses_bad_parameters(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(InvalidInputError, match=name):
        DicomClient(**kwargs)


def test_good_parameters_are_kept() -> None:
    quick = Timeouts(connect=1, acse=2.5, dimse=3, network=4, cancel=5)
    client = DicomClient(
        "ME", max_pdu=0, scp_port=1, scp_ip="127.0.0.1", timeouts=quick, max_associations=64
    )
    try:
        ops = client.operations
        assert (ops.calling_aet, ops.max_pdu, ops.scp_port, ops.scp_ip) == ("ME", 0, 1, "127.0.0.1")
        assert ops.timeouts is quick and client.max_associations == 64
    finally:
        client.close()
    pacs = cnb.connect(TARGET, memory_limit="1.5 GB", result_cap=1, max_pdu=131072)
    try:
        assert pacs.memory_limit == int(1.5 * 1024**3) and pacs.result_cap == 1
        assert pacs.client.operations.max_pdu == 131072
    finally:
        pacs.close()


@pytest.mark.parametrize("field", ["connect", "acse", "dimse", "network", "cancel"])
@pytest.mark.parametrize("value", [-1, 0, math.inf, math.nan, "5", None, True, 10**6])
def test_timeouts_refuse_what_would_wait_forever(field: str, value: Any) -> None:
    with pytest.raises(InvalidInputError, match=rf"Timeouts\.{field}"):
        Timeouts(**{field: value})


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers())
def test_timeouts_accept_exactly_positive_finite_seconds(value: float) -> None:
    good = isinstance(value, int | float) and math.isfinite(value) and 0 < value <= 86400
    if good:
        assert Timeouts(acse=value).acse == value
    else:
        with pytest.raises(InvalidInputError, match=r"Timeouts\.acse"):
            Timeouts(acse=value)


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_max_pdu_rule(value: int) -> None:
    if value == 0 or 4096 <= value <= 131072:
        client = DicomClient(max_pdu=value)
        assert client.operations.max_pdu == value
        client.close()
    else:
        with pytest.raises(InvalidInputError, match=r"max_pdu must be 0 \(unlimited\) or"):
            DicomClient(max_pdu=value)


BAD_ENV = [
    ("CLARINET_DICOM_MAX_PDU", "-1"),
    ("CLARINET_DICOM_PORT", "70000"),
    ("CLARINET_DICOM_PORT", "0"),
    ("CLARINET_DICOM_IP", "pacs"),
    ("CLARINET_DICOM_AET", "WAY_TOO_LONG_AE_TITLE"),
    ("CLARINET_PACS_AET", ""),
    ("CLARINET_ACSE_TIMEOUT", "-1"),
    ("CLARINET_DIMSE_TIMEOUT", "nan"),
    ("CLARINET_CONNECT_TIMEOUT", "inf"),
    ("CLARINET_MEMORY_LIMIT", "lots"),
    ("CLARINET_MAX_ASSOCIATIONS", "0"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_ENV)
def test_settings_refuse_bad_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    field = variable.removeprefix("CLARINET_").lower()
    with pytest.raises(ValidationError, match=field):
        Settings(_env_file=None)  # type: ignore[call-arg]


async def test_unresolvable_host_is_unreachable(silent_listener: ConnectionCounter) -> None:
    """Regression: socket.gaierror escaped; README promises PeerUnreachableError."""
    nowhere = DicomNode(aet="PACS", host="no-such-host.invalid", port=silent_listener.port)
    async with DicomClient(timeouts=Timeouts(connect=5)) as client:
        with pytest.raises(PeerUnreachableError, match="unknown host name"):
            await client.echo(nowhere)
    pacs = cnb.connect(f"PACS@no-such-host.invalid:{silent_listener.port}", retries=3)
    try:
        with pytest.raises(PeerUnreachableError) as caught:
            pacs.echo()  # an unknown name is permanent: not retried
    finally:
        pacs.close()
    assert isinstance(caught.value.__cause__, socket.gaierror)
    silent_listener.close()
    assert silent_listener.accepted == []


def test_validation_happens_before_any_traffic(silent_listener: ConnectionCounter) -> None:
    target = f"COUNTER@127.0.0.1:{silent_listener.port}"
    for kwargs, _ in BAD_CONNECT:
        with pytest.raises(InvalidInputError):
            cnb.connect(target, **kwargs)
    silent_listener.close()
    assert silent_listener.accepted == []
