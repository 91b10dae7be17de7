"""DICOM TLS against a real Orthanc 1.10.1 (DicomTlsEnabled) and DCMTK's +tls tools.

The test makes its own CA, server and client certificates (and a rogue CA).
Orthanc presents the server certificate, trusts only the test CA and requires a
client certificate; its move destination ``clarinet`` has ``UseDicomTls``, so
during a C-MOVE Orthanc is the TLS client of our Storage SCP.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from pydicom import dcmread

import clarinet_nb as cnb
from clarinet_nb import (
    AssociationAbortedError,
    DicomClient,
    DicomNode,
    InvalidInputError,
    LocalPortError,
    NetworkError,
    RetrieveError,
    RetrieveStatus,
    Settings,
    StorageConfig,
    StorageHandler,
    StorageMode,
    StudyQuery,
    Timeouts,
    TLSConfig,
    TLSError,
)
from clarinet_nb.dicom.scp import Admission, _listeners, receiving
from clarinet_nb.dicom.tls import client_tls, scp_context, tls_from_settings
from clarinet_nb.testing import Cohort, OrthancServer, free_port
from clarinet_nb.testing.certs import CertificateAuthority, TestPKI, make_test_pki
from clarinet_nb.testing.orthanc import OrthancTLS
from tests.support import expected_files, port_is_free

#: the sender our Storage SCP admits in the tests that call receiving() directly
ADMIT = Admission(frozenset({"ORTHANC"}), frozenset({"127.0.0.1"}))

#: short enough that a hang would show, long enough for 2 busy cores
SHORT = Timeouts(connect=3, acse=8, dimse=30, network=30, cancel=3)
FINDSCU, STORESCU = "/usr/bin/findscu", "/usr/bin/storescu"  # DCMTK (not pynetdicom's apps)
PLAIN_DESTINATION = "PLAINDST"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def good(pki: TestPKI) -> TLSConfig:
    """Our TLS identity: the test CA, our client certificate and key."""
    return TLSConfig(
        ca_file=pki.ca_file, cert_file=pki.client.cert_file, key_file=pki.client.key_file
    )


@pytest.fixture(scope="module")
def tls_scp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def plain_destination_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def tls_orthanc(
    tmp_path_factory: pytest.TempPathFactory,
    cohort: Cohort,
    pki: TestPKI,
    good: TLSConfig,
    tls_scp_port: int,
    plain_destination_port: int,
) -> Iterator[OrthancServer]:
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc-tls"),
        move_destinations={
            "clarinet": ("CLARINET", "127.0.0.1", tls_scp_port),
            "plain": (PLAIN_DESTINATION, "127.0.0.1", plain_destination_port),
        },
        tls=OrthancTLS(
            certificate=pki.server.cert_file,
            private_key=pki.server.key_file,
            trusted=pki.ca_file,
            client=good,
            move_destinations=("clarinet",),
        ),
    )
    with server:
        assert server.load(cohort.paths()) == len(cohort.instances)
        yield server


def tls_node(server: OrthancServer, tls: TLSConfig | None, host: str = "127.0.0.1") -> DicomNode:
    return DicomNode(aet=server.aet, host=host, port=server.port, tls=tls)


async def echo_error(server: OrthancServer, tls: TLSConfig | None, host: str = "127.0.0.1"):
    """The error a C-ECHO with ``tls`` raises (the call must return, not hang)."""
    async with DicomClient(timeouts=SHORT) as client:
        with pytest.raises(NetworkError) as info:
            await client.echo(tls_node(server, tls, host))
    return info.value


# -- TLSConfig: checked up front, no network ----------------------------------------------


def test_config_checks_files_up_front(pki: TestPKI, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(InvalidInputError, match=r"nope\.pem does not exist"):
        TLSConfig(ca_file=missing)
    with pytest.raises(InvalidInputError, match="is not a file"):
        TLSConfig(ca_file=tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(InvalidInputError, match=r"garbage\.pem holds no usable PEM certificate"):
        TLSConfig(ca_file=garbage)
    with pytest.raises(InvalidInputError, match="together"):
        TLSConfig(ca_file=pki.ca_file, cert_file=pki.client.cert_file)
    with pytest.raises(InvalidInputError, match="verify_peer needs ca_file"):
        TLSConfig(cert_file=pki.client.cert_file, key_file=pki.client.key_file)
    with pytest.raises(InvalidInputError, match="not a file path"):
        TLSConfig(ca_file=42)  # type: ignore[arg-type]
    # the key of another certificate
    with pytest.raises(InvalidInputError, match="matching private key") as info:
        TLSConfig(ca_file=pki.ca_file, cert_file=pki.client.cert_file, key_file=pki.server.key_file)
    _no_key_material(str(info.value), pki.server.key_file)
    # a key given as the certificate
    with pytest.raises(InvalidInputError, match="cert_file") as info:
        TLSConfig(ca_file=pki.ca_file, cert_file=pki.client.key_file, key_file=pki.client.key_file)
    _no_key_material(str(info.value), pki.client.key_file)
    assert not TLSConfig(verify_peer=False).has_certificate


def test_encrypted_key_is_refused_without_prompting(pki: TestPKI, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.client.key_file.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(InvalidInputError, match=r"encrypted\.key is encrypted") as info:
        TLSConfig(ca_file=pki.ca_file, cert_file=pki.client.cert_file, key_file=encrypted)
    _no_key_material(str(info.value), encrypted)


def _no_key_material(message: str, key_file: Path) -> None:
    assert "PRIVATE KEY" not in message
    for line in key_file.read_text().splitlines()[1:-1]:
        assert line[:20] not in message


def test_contexts_require_tls_1_2_and_verify(good: TLSConfig, pki: TestPKI) -> None:
    client = client_tls(good, "127.0.0.1").context
    assert client.minimum_version is ssl.TLSVersion.TLSv1_2
    assert client.verify_mode is ssl.CERT_REQUIRED and client.check_hostname
    loose = client_tls(TLSConfig(ca_file=pki.ca_file, check_hostname=False), "h").context
    assert loose.verify_mode is ssl.CERT_REQUIRED and not loose.check_hostname
    server = scp_context(good)
    assert server.minimum_version is ssl.TLSVersion.TLSv1_2
    assert server.verify_mode is ssl.CERT_REQUIRED  # the PACS must present a trusted certificate
    with pytest.raises(InvalidInputError, match="C-MOVE over TLS needs cert_file"):
        scp_context(TLSConfig(ca_file=pki.ca_file))


def test_settings_and_connect_arguments(
    good: TLSConfig, pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLARINET_TLS_CA_FILE", str(pki.ca_file))
    monkeypatch.setenv("CLARINET_TLS_CERT_FILE", str(pki.client.cert_file))
    monkeypatch.setenv("CLARINET_TLS_KEY_FILE", str(pki.client.key_file))
    monkeypatch.setenv("CLARINET_PACS_HOST", "127.0.0.1")
    monkeypatch.setenv("CLARINET_PACS_PORT", "2762")
    cfg = Settings()
    assert tls_from_settings(cfg) == good
    assert tls_from_settings(Settings(_env_file=None, tls_ca_file=None, tls_cert_file=None,
                                      tls_key_file=None)) is None  # fmt: skip
    # the settings' TLS is for the default PACS
    assert cnb.connect(config=cfg).node.tls == good
    assert cnb.connect("ORTHANC@127.0.0.1:2762", config=cfg).node.tls == good
    assert cnb.connect("OTHER@127.0.0.1:104", config=cfg).node.tls is None
    assert cnb.connect(config=cfg, tls=False).node.tls is None
    # an explicit tls= applies to any target; a node's own tls wins
    assert cnb.connect("OTHER@127.0.0.1:104", tls=good).node.tls == good
    own = TLSConfig(ca_file=pki.ca_file)
    assert cnb.connect(DicomNode.parse("X@127.0.0.1:104", tls=own), tls=good).node.tls == own
    with pytest.raises(InvalidInputError, match="tls must be a TLSConfig"):
        cnb.connect("OTHER@127.0.0.1:104", tls="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="does not exist"):
        monkeypatch.setenv("CLARINET_TLS_CA_FILE", str(pki.directory / "missing.pem"))
        cnb.connect(config=Settings())


# -- echo, find, get and move over TLS with Orthanc ------------------------------------------


async def test_echo_and_find(tls_orthanc: OrthancServer, good: TLSConfig, cohort: Cohort) -> None:
    async with DicomClient(timeouts=SHORT) as client:
        node = tls_node(tls_orthanc, good)
        assert await client.echo(node)
        assert await client.echo(tls_node(tls_orthanc, good, host="localhost"))
        studies = await client.find_studies(StudyQuery(), peer=node)
        # encrypted without checking the PACS (Orthanc still checks our certificate)
        unchecked = TLSConfig(cert_file=good.cert_file, key_file=good.key_file, verify_peer=False)
        assert await client.echo(tls_node(tls_orthanc, unchecked, host="127.0.0.2"))
    assert {s.study_instance_uid for s in studies} == set(cohort.studies())


async def test_get_to_disk(
    tls_orthanc: OrthancServer, good: TLSConfig, cohort: Cohort, tmp_path: Path
) -> None:
    study = cohort.studies()[0]
    async with DicomClient(timeouts=SHORT) as client:
        node = tls_node(tls_orthanc, good)
        result = await client.get_study(study, peer=node, output_dir=tmp_path)
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    assert set(result.paths) == expected_files(cohort, tmp_path, study)
    by_uid = cohort.by_sop_uid()
    for path in result.paths:
        assert path.read_bytes()[132:] and dcmread(path).SOPInstanceUID == path.stem
        assert dcmread(path).PatientID == dcmread(by_uid[path.stem].path).PatientID


async def test_move_speaks_tls_to_our_scp(
    tls_orthanc: OrthancServer,
    good: TLSConfig,
    cohort: Cohort,
    tls_scp_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="clarinet_nb")
    study = cohort.studies()[1]
    memory = StorageConfig(mode=StorageMode.MEMORY)
    async with DicomClient(scp_port=tls_scp_port, timeouts=SHORT) as client:
        result = await client.move_study(study, peer=tls_node(tls_orthanc, good), storage=memory)
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    assert sorted(result.received_sop_instance_uids) == sorted(
        i.sop_uid for i in cohort.instances_in(study)
    )
    assert port_is_free(tls_scp_port)
    # our SCP spoke TLS only, so Orthanc's C-STOREs came over TLS
    assert any(r.getMessage().endswith(f"port {tls_scp_port} (TLS)") for r in caplog.records)


async def test_notebook_layer_over_tls(
    tls_orthanc: OrthancServer, good: TLSConfig, cohort: Cohort, tls_scp_port: int
) -> None:
    pacs = cnb.connect(
        f"{tls_orthanc.aet}@127.0.0.1:{tls_orthanc.port}",
        tls=good,
        scp_port=tls_scp_port,
        timeouts=SHORT,
    )
    try:
        study = cohort.studies()[2]
        assert await pacs.aecho()
        found = await pacs.afind_studies(StudyInstanceUID=study)
        assert list(found["StudyInstanceUID"]) == [study]
        datasets = await pacs.aget(found, method="move")
        assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(
            i.sop_uid for i in cohort.instances_in(study)
        )
    finally:
        pacs.close()


async def test_settings_make_the_default_pacs_tls(tls_orthanc: OrthancServer, pki: TestPKI) -> None:
    cfg = Settings(
        _env_file=None,
        pacs_aet=tls_orthanc.aet,
        pacs_host="127.0.0.1",
        pacs_port=tls_orthanc.port,
        tls_ca_file=str(pki.ca_file),
        tls_cert_file=str(pki.client.cert_file),
        tls_key_file=str(pki.client.key_file),
        connect_timeout=3,
        acse_timeout=8,
    )
    pacs = cnb.connect(config=cfg)
    try:
        assert await pacs.aecho()
    finally:
        pacs.close()
    async with DicomClient(config=cfg) as client:  # the README's async example
        default = DicomNode(aet=cfg.pacs_aet, host=cfg.pacs_host, port=cfg.pacs_port)
        assert await client.echo(default)


async def test_forward_to_a_tls_node(
    tls_orthanc: OrthancServer, good: TLSConfig, cohort: Cohort
) -> None:
    study = cohort.studies()[0]
    node = tls_node(tls_orthanc, good)
    forward = StorageConfig(mode=StorageMode.FORWARD, forward_to=node)  # to Orthanc itself
    async with DicomClient(timeouts=SHORT) as client:
        result = await client.get_study(study, peer=node, storage=forward)
    assert result.status is RetrieveStatus.SUCCESS, result.summary()
    assert sorted(result.forwarded_sop_instance_uids) == sorted(
        i.sop_uid for i in cohort.instances_in(study)
    )


# -- what must fail, typed and within the timeouts ---------------------------------------------


async def test_client_certificate_from_another_ca(tls_orthanc: OrthancServer, pki: TestPKI) -> None:
    rogue = TLSConfig(
        ca_file=pki.ca_file,
        cert_file=pki.rogue_client.cert_file,
        key_file=pki.rogue_client.key_file,
    )
    error = await echo_error(tls_orthanc, rogue)
    assert isinstance(error, TLSError), repr(error)
    assert "our certificate" in str(error) and str(pki.rogue_client.cert_file) in str(error)


async def test_no_client_certificate(tls_orthanc: OrthancServer, pki: TestPKI) -> None:
    error = await echo_error(tls_orthanc, TLSConfig(ca_file=pki.ca_file))
    assert isinstance(error, TLSError), repr(error)
    assert "client certificate" in str(error) and "cert_file" in str(error)


async def test_plain_tcp_to_the_tls_port(tls_orthanc: OrthancServer) -> None:
    error = await echo_error(tls_orthanc, None)
    assert isinstance(error, TLSError), repr(error)
    assert "speaks DICOM TLS" in str(error)


async def test_wrong_ca_does_not_trust_the_pacs(
    tls_orthanc: OrthancServer, pki: TestPKI, cohort: Cohort, tmp_path: Path
) -> None:
    wrong = TLSConfig(
        ca_file=pki.rogue_ca_file, cert_file=pki.client.cert_file, key_file=pki.client.key_file
    )
    error = await echo_error(tls_orthanc, wrong)
    assert isinstance(error, TLSError), repr(error)
    assert "not trusted" in str(error) and str(pki.rogue_ca_file) in str(error)
    async with DicomClient(timeouts=SHORT) as client:  # a retrieve fails the same way, cleanly
        with pytest.raises(TLSError):
            await client.get_study(
                cohort.studies()[0], peer=tls_node(tls_orthanc, wrong), output_dir=tmp_path
            )
    assert not any(tmp_path.iterdir())


async def test_hostname_must_be_in_the_certificate(
    tls_orthanc: OrthancServer, good: TLSConfig, pki: TestPKI
) -> None:
    # Orthanc listens on every address; its certificate names localhost and 127.0.0.1 only
    error = await echo_error(tls_orthanc, good, host="127.0.0.2")
    assert isinstance(error, TLSError), repr(error)
    assert "does not name '127.0.0.2'" in str(error) and "subjectAltName" in str(error)
    lenient = good.model_copy(update={"check_hostname": False})
    async with DicomClient(timeouts=SHORT) as client:
        assert await client.echo(tls_node(tls_orthanc, lenient, host="127.0.0.2"))


async def test_tls_to_a_plain_port(pki: TestPKI, good: TLSConfig) -> None:
    port = free_port()
    handler = StorageHandler(StorageConfig(mode=StorageMode.MEMORY))
    with receiving(
        handler, aet="PLAINSCP", port=port, ip="127.0.0.1", timeouts=SHORT, admission=ADMIT
    ):
        async with DicomClient(timeouts=SHORT) as client:
            with pytest.raises(TLSError, match="does not speak TLS on this port"):
                await client.echo(DicomNode(aet="PLAINSCP", host="127.0.0.1", port=port, tls=good))
    handler.close()


async def test_move_to_a_destination_orthanc_reaches_without_tls(
    tls_orthanc: OrthancServer,
    good: TLSConfig,
    cohort: Cohort,
    plain_destination_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Our TLS SCP refuses Orthanc's plain connection: the move fails, typed, nothing kept."""
    caplog.set_level(logging.WARNING, logger="clarinet_nb")
    memory = StorageConfig(mode=StorageMode.MEMORY)
    async with DicomClient(
        PLAIN_DESTINATION, scp_port=plain_destination_port, timeouts=SHORT
    ) as client:
        with pytest.raises(RetrieveError) as info:
            await client.move_study(
                cohort.studies()[0], peer=tls_node(tls_orthanc, good), storage=memory
            )
    assert info.value.result.received == 0
    assert port_is_free(plain_destination_port)
    assert any("does not speak TLS" in r.getMessage() for r in caplog.records)


def test_tls_and_plain_moves_cannot_share_a_port(good: TLSConfig) -> None:
    port = free_port()
    handler = StorageHandler(StorageConfig(mode=StorageMode.MEMORY))
    tls = scp_context(good)
    with (
        receiving(
            handler, aet="CLARINET", port=port, ip="127.0.0.1", timeouts=SHORT, admission=ADMIT
        ),
        pytest.raises(LocalPortError, match="already serves plain C-MOVEs"),
        receiving(
            handler, aet="CLARINET", port=port, ip="127.0.0.1", ssl_context=tls, admission=ADMIT
        ),
    ):
        pass
    assert port_is_free(port)


async def test_move_over_tls_needs_our_certificate(
    tls_orthanc: OrthancServer, pki: TestPKI, cohort: Cohort, tls_scp_port: int
) -> None:
    node = tls_node(tls_orthanc, TLSConfig(ca_file=pki.ca_file))
    async with DicomClient(scp_port=tls_scp_port, timeouts=SHORT) as client:
        with pytest.raises(InvalidInputError, match="C-MOVE over TLS needs cert_file"):
            await client.move_study(cohort.studies()[0], peer=node)


# -- interop with DCMTK's own TLS clients ------------------------------------------------------


def _tls_args(cert: Path, key: Path, ca: Path) -> list[str]:
    return ["+tls", str(key), str(cert), "+cf", str(ca)]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_dcmtk_findscu_over_tls(
    tls_orthanc: OrthancServer, pki: TestPKI, cohort: Cohort, tmp_path: Path
) -> None:
    query = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-X"]
    where = ["-aet", "FINDSCU", "-aec", tls_orthanc.aet, "127.0.0.1", str(tls_orthanc.port)]
    good = tmp_path / "good"
    good.mkdir()
    done = _run(
        [FINDSCU, *_tls_args(pki.client.cert_file, pki.client.key_file, pki.ca_file), *query,
         *where], good,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = {str(dcmread(p).StudyInstanceUID) for p in good.glob("rsp*.dcm")}
    assert found == set(cohort.studies())
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    refused = _run(
        [FINDSCU, *_tls_args(pki.rogue_client.cert_file, pki.rogue_client.key_file,
                             pki.ca_file), *query, *where], rogue,
    )  # fmt: skip
    assert refused.returncode != 0 and not list(rogue.glob("rsp*.dcm"))


def test_dcmtk_storescu_to_our_tls_scp(
    pki: TestPKI, good: TLSConfig, cohort: Cohort, tmp_path: Path
) -> None:
    """storescu +tls stores into our Storage SCP; rogue, plain and silent clients do not.

    A silent TCP client stays connected throughout: the TLS handshake of one
    connection must not hold up the others.
    """
    port = free_port()
    one, other = cohort.instances[0], cohort.instances[1]
    handler = StorageHandler(StorageConfig(mode=StorageMode.MEMORY))
    where = ["-aet", "ORTHANC", "-aec", "CLARINET", "127.0.0.1", str(port)]
    server_tls = _tls_args(pki.server.cert_file, pki.server.key_file, pki.ca_file)
    rogue_tls = _tls_args(pki.rogue_client.cert_file, pki.rogue_client.key_file, pki.ca_file)
    with receiving(
        handler,
        aet="CLARINET",
        port=port,
        ip="127.0.0.1",
        timeouts=SHORT,
        ssl_context=scp_context(good, SHORT.network),
        admission=ADMIT,
        expected=frozenset({one.sop_uid, other.sop_uid}),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # silent client
            stored = _run([STORESCU, *server_tls, *where, str(one.path)], tmp_path)
            rogue = _run([STORESCU, *rogue_tls, *where, str(other.path)], tmp_path)
            plain = _run([STORESCU, *where, str(other.path)], tmp_path)
        # let the SCP see the silent client go (pynetdicom cannot abort an association
        # still waiting for its A-ASSOCIATE-RQ: its state machine raises in the reactor)
        server = _listeners[("127.0.0.1", port)].server
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            a.dul.state_machine.current_state == "Sta2" for a in server.active_associations
        ):
            threading.Event().wait(0.02)
    handler.close()
    assert stored.returncode == 0, stored.stderr
    assert rogue.returncode != 0 and plain.returncode != 0
    assert list(handler.tally.received) == [one.sop_uid]
    assert [ds.SOPInstanceUID for ds in handler.tally.datasets] == [one.sop_uid]
    assert port_is_free(port)


async def test_plain_peer_error_is_unchanged_without_tls() -> None:
    """A plain association that a non-TLS listener drops stays AssociationAbortedError."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def drop() -> None:
            for _ in range(2):  # our association, then our TLS probe
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                conn.recv(1024)
                conn.close()

        thread = threading.Thread(target=drop, daemon=True)
        thread.start()
        async with DicomClient(timeouts=SHORT) as client:
            with pytest.raises(AssociationAbortedError):
                await client.echo(DicomNode(aet="X", host="127.0.0.1", port=port))
        thread.join(10)


def test_certificate_authority_helpers(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "helper-ca")
    pair = ca.issue("only-localhost", hosts=("localhost",))
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    context.load_cert_chain(str(pair.cert_file), str(pair.key_file))
    assert pair.key_file.stat().st_mode & 0o077 == 0  # the key is the owner's only
