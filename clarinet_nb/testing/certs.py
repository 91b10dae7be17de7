"""A throw-away PKI for DICOM TLS tests: a CA, server and client certificates.

Made with the ``cryptography`` package (a test dependency): RSA 2048 keys,
PEM files, private keys unencrypted (Orthanc needs them so) and readable by
the owner only.  Leaf certificates carry both serverAuth and clientAuth
(Orthanc and our Storage SCP are TLS servers and TLS clients) and name
``localhost`` and ``127.0.0.1`` in their subjectAltName unless told otherwise.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "KeyPair", "TestPKI", "make_test_pki"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clarinet_nb tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates into its directory."""

    def __init__(self, directory: Path, name: str = "clarinet-test-ca", *, days: int = 7) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = _key()
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = self.directory / f"{name}.crt"
        _write_cert(self._cert, self.cert_file)

    def issue(
        self,
        common_name: str,
        *,
        hosts: Sequence[str] = LOOPBACK_NAMES,
        days: int = 7,
        not_before: dt.datetime | None = None,
    ) -> KeyPair:
        """A leaf certificate for ``common_name`` naming ``hosts`` in its subjectAltName.

        ``days`` may be negative (with ``not_before`` in the past) for an expired one.
        """
        key = _key()
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_alt_names(hosts)), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        stem = common_name.lower().replace(" ", "-")
        pair = KeyPair(
            cert_file=self.directory / f"{stem}.crt", key_file=self.directory / f"{stem}.key"
        )
        _write_cert(cert, pair.cert_file)
        _write_key(key, pair.key_file)
        return pair


@dataclass(frozen=True)
class TestPKI:
    """Everything a DICOM TLS test needs, in one directory.

    ``ca`` signs ``server`` (the PACS, e.g. Orthanc) and ``client`` (us: our
    calling AE and our Storage SCP); ``rogue_ca`` is a second, unrelated CA that
    signs ``rogue_client`` (a certificate the PACS must refuse).
    """

    __test__ = False  # not a pytest test class

    directory: Path
    ca_file: Path
    server: KeyPair
    client: KeyPair
    rogue_ca_file: Path
    rogue_client: KeyPair


def make_test_pki(directory: Path, *, hosts: Sequence[str] = LOOPBACK_NAMES) -> TestPKI:
    """Generate a CA, a server and a client certificate, and a rogue CA with its client."""
    directory = Path(directory)
    ca = CertificateAuthority(directory / "ca", "clarinet-test-ca")
    rogue = CertificateAuthority(directory / "rogue", "rogue-ca")
    return TestPKI(
        directory=directory,
        ca_file=ca.cert_file,
        server=ca.issue("orthanc-server", hosts=hosts),
        client=ca.issue("clarinet-client", hosts=hosts),
        rogue_ca_file=rogue.cert_file,
        rogue_client=rogue.issue("rogue-client", hosts=hosts),
    )
