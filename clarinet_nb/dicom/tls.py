"""DICOM TLS: :class:`TLSConfig` and the ``ssl`` contexts built from it.

The same configuration serves both directions: the associations we open (we are
the TLS client and present ``cert_file`` when the PACS asks for a client
certificate) and our Storage SCP during a C-MOVE over TLS (the PACS is then the
TLS client of our SCP; we present ``cert_file`` and require the PACS's
certificate, verified against ``ca_file``).  TLS 1.2 is the minimum.

Handshake failures are recorded on the connection's own context, so that the
association layer can raise :class:`~clarinet_nb.errors.TLSError` saying what
went wrong rather than "connection refused".
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, field_validator

from clarinet_nb.dicom.base import StrictModel
from clarinet_nb.errors import InvalidInputError, TLSError

if TYPE_CHECKING:
    from clarinet_nb.settings import Settings

__all__ = [
    "ClientTLS",
    "TLSConfig",
    "client_tls",
    "scp_context",
    "speaks_tls",
    "tls_from_settings",
]

logger = logging.getLogger("clarinet_nb")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class _EncryptedKeyError(Exception):
    """Raised by our password callback: we never prompt for a key password."""


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal, hanging a kernel.
    raise _EncryptedKeyError


class TLSConfig(StrictModel):
    """DICOM TLS settings: the CA we trust and our own certificate and key (PEM files).

    ``TLSConfig(ca_file="ca.pem", cert_file="clarinet.pem", key_file="clarinet.key")``.
    Files are checked when the config is made (they exist, are readable and
    load; the key matches the certificate and has no password): a problem
    raises ``InvalidInputError`` naming the file, never showing its content.

    - ``ca_file``: the CA certificate(s) that signed the PACS's certificate (and,
      for C-MOVE, the certificate the PACS presents to our Storage SCP).
      Required with ``verify_peer``.
    - ``cert_file`` / ``key_file``: our certificate and its unencrypted private
      key, given together.  Needed when the PACS requires client certificates
      (Orthanc's default) and for C-MOVE over TLS (our SCP is then a TLS server).
    - ``verify_peer`` (default True): the peer's certificate must chain to
      ``ca_file``; our Storage SCP then also requires one from the PACS.
      ``False`` encrypts without authenticating the peer (tests only).
    - ``check_hostname`` (default True, only with ``verify_peer``): the PACS's
      certificate must name the host we connect to (``DicomNode.host``) in its
      subjectAltName.  A PACS addressed by IP address needs that IP address
      there (an IP SAN), not only its DNS name.  Set it False only when the
      certificate cannot be reissued; the chain to ``ca_file`` is still checked.
    """

    model_config = ConfigDict(frozen=True)

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_peer: bool = True
    check_hostname: bool = True

    @field_validator("ca_file", "cert_file", "key_file", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str | os.PathLike):
            text = os.fspath(value)
            if isinstance(text, str) and text.strip():
                return Path(text).expanduser().absolute()
        raise InvalidInputError(f"{value!r} is not a file path")

    def __init__(self, /, **data: Any) -> None:
        super().__init__(**data)
        # checked here rather than in a validator so that the message names the file plainly
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidInputError("TLS: give cert_file and key_file together (or neither)")
        if self.verify_peer and self.ca_file is None:
            raise InvalidInputError(
                "TLS: verify_peer needs ca_file, the CA certificate that signed the peer's "
                "certificate (or set verify_peer=False to encrypt without authenticating)"
            )
        for kind in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, kind)
            if path is None:
                continue
            if not path.exists():
                raise InvalidInputError(f"TLS {kind} {path} does not exist")
            if not path.is_file():
                raise InvalidInputError(f"TLS {kind} {path} is not a file")
            if not os.access(path, os.R_OK):
                raise InvalidInputError(f"TLS {kind} {path} is not readable by this process")
        _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), self)

    @property
    def has_certificate(self) -> bool:
        """True when we can present a certificate (cert_file and key_file)."""
        return self.cert_file is not None

    def describe(self) -> str:
        """Where the files are, for messages (never their content)."""
        parts = [f"{k}={v}" for k in ("ca_file", "cert_file") if (v := getattr(self, k))]
        if not self.verify_peer:
            parts.append("verify_peer=False")
        elif not self.check_hostname:
            parts.append("check_hostname=False")
        return ", ".join(parts)


def _load(context: ssl.SSLContext, tls: TLSConfig) -> None:
    """Load ``tls``'s files into ``context``: InvalidInputError naming a bad file."""
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise InvalidInputError(
                f"TLS ca_file {tls.ca_file} holds no usable PEM certificate ({_reason(exc)})"
            ) from None
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=_no_password)
        except _EncryptedKeyError:
            raise InvalidInputError(
                f"TLS key_file {tls.key_file} is encrypted: DICOM TLS needs an unencrypted "
                "key (keep it readable by its owner only)"
            ) from None
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise InvalidInputError(
                f"TLS cert_file {tls.cert_file} / key_file {tls.key_file}: not a PEM "
                f"certificate and its matching private key ({_reason(exc)})"
            ) from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or reason or "verification failed")
    if reason:
        return str(reason).replace("_", " ").lower()
    return type(exc).__name__


def _base_context(tls: TLSConfig, purpose: int) -> ssl.SSLContext:
    context = _RecordingContext(purpose)
    context.minimum_version = MINIMUM_VERSION
    _load(context, tls)
    return context


# -- our associations (TLS client) ----------------------------------------------------------


class _RecordingSocket(ssl.SSLSocket):
    """An SSLSocket that remembers the first TLS failure on its context."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as exc:
            _record(self, exc)
            raise
        _record(self, None)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        try:
            count = super().recv_into(buffer, nbytes, flags)  # type: ignore[arg-type]
        except TimeoutError:
            raise
        except OSError as exc:  # an alert, a reset: the peer refused something
            _record(self, exc)
            raise
        if count:
            self.__dict__["_clarinet_got_data"] = True
        elif not self.__dict__.get("_clarinet_got_data"):
            # closed without a word after the handshake: what a peer that does not
            # accept our certificate does under TLS 1.3
            _record(self, ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "closed before any data"))
        return count

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except TimeoutError:
            raise
        except OSError as exc:
            _record(self, exc)
            raise


def _record(sock: ssl.SSLSocket, exc: OSError | None) -> None:
    """Note a TLS failure on ``sock`` (None: its handshake completed)."""
    context = sock.context
    if isinstance(context, _RecordingContext):
        context.note(exc, sock)


class _RecordingContext(ssl.SSLContext):
    """One connection's context: remembers how its TLS handshake went."""

    sslsocket_class = _RecordingSocket
    server_side_timeout: float | None = None
    error: OSError | None = None
    handshake_done: bool = False

    def note(self, exc: OSError | None, sock: ssl.SSLSocket) -> None:
        if exc is None:
            self.handshake_done = True
            return
        if self.error is None:
            self.error = exc
        if self.server_side:
            _warn_refused(sock, exc)

    @property
    def server_side(self) -> bool:
        return bool(self.protocol == ssl.PROTOCOL_TLS_SERVER)

    def wrap_socket(  # type: ignore[override]
        self,
        sock: Any,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | None = None,
        session: Any = None,
    ) -> ssl.SSLSocket:
        if server_side:
            # Our Storage SCP: pynetdicom wraps each accepted connection in its
            # accept loop.  Handshaking there would let one silent client block
            # every other (the PACS's C-STOREs included); deferred, the handshake
            # runs on the connection's first read, in the association's thread.
            do_handshake_on_connect = False
            if self.server_side_timeout is not None:
                sock.settimeout(self.server_side_timeout)
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def _warn_refused(sock: ssl.SSLSocket, exc: OSError) -> None:
    try:
        host, port = sock.getpeername()[:2]
        where = f"{host}:{port}"
    except OSError:
        where = "a peer"
    logger.warning(
        "our Storage SCP dropped a TLS connection from %s: %s", where, explain_server_side(exc)
    )


class ClientTLS:
    """TLS for one association we open: ``tls_args`` for pynetdicom and what went wrong."""

    def __init__(self, tls: TLSConfig, host: str) -> None:
        self.tls = tls
        self.host = host
        context = _base_context(tls, ssl.PROTOCOL_TLS_CLIENT)
        assert isinstance(context, _RecordingContext)
        if tls.verify_peer:
            context.verify_mode = ssl.CERT_REQUIRED
            context.check_hostname = tls.check_hostname
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.context = context

    @property
    def tls_args(self) -> tuple[ssl.SSLContext, str]:
        """``(ssl_context, server_hostname)`` for ``AE.associate(tls_args=...)``."""
        return self.context, self.host

    @property
    def error(self) -> OSError | None:
        """The first TLS failure of this connection, if any."""
        return self.context.error

    def failure(self, where: str) -> TLSError | None:
        """A TLSError describing what went wrong, or None if TLS did not fail."""
        exc = self.context.error
        if exc is None or isinstance(exc, TimeoutError):
            return None  # a handshake that timed out is a DicomTimeoutError
        return TLSError(f"DICOM TLS with {where} failed: {self._explain(exc)}")

    def _explain(self, exc: OSError) -> str:
        tls = self.tls
        reason = _reason(exc)
        upper = str(getattr(exc, "reason", "") or "").upper()
        if isinstance(exc, ssl.SSLCertVerificationError):
            message = str(exc.verify_message or "").lower()
            if "hostname" in message or "ip address" in message:
                return (
                    f"the PACS's certificate does not name {self.host!r} ({reason}). Connect "
                    "with the host name the certificate was issued for, have the certificate "
                    "reissued with it in subjectAltName (a PACS addressed by IP address needs "
                    "the IP there), or set check_hostname=False"
                )
            if "expired" in message or "not yet valid" in message:
                return f"the PACS's certificate is not valid now ({reason})"
            return (
                f"the PACS's certificate is not trusted ({reason}): ca_file {tls.ca_file} "
                "must hold the CA that signed it"
            )
        if "CERTIFICATE_REQUIRED" in upper:
            return (
                "the PACS requires a client certificate and we presented none: set cert_file "
                "and key_file (CLARINET_TLS_CERT_FILE / CLARINET_TLS_KEY_FILE)"
            )
        if "ALERT" in upper and ("CA" in upper or "CERTIFICATE" in upper):
            return (
                f"the PACS refused our certificate ({reason}): cert_file {tls.cert_file} is not "
                "signed by a CA the PACS trusts (Orthanc: DicomTlsTrustedCertificates) or has "
                "expired"
            )
        if "WRONG_VERSION_NUMBER" in upper or "RECORD_LAYER" in upper or "PACKET_LENGTH" in upper:
            return f"the peer does not speak TLS on this port ({reason}); is it a plain DICOM port?"
        if isinstance(exc, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError) or (
            "EOF" in upper
        ):
            if tls.has_certificate:
                ours = (
                    f"it did not accept our certificate (cert_file {tls.cert_file}: signed by a "
                    "CA the PACS trusts? Orthanc: DicomTlsTrustedCertificates; expired?)"
                )
            else:
                ours = (
                    "it requires a client certificate and we presented none (set cert_file and "
                    "key_file, CLARINET_TLS_CERT_FILE / CLARINET_TLS_KEY_FILE)"
                )
            if self.context.handshake_done:
                return f"the PACS closed the connection right after the handshake: {ours}"
            return (
                f"the peer closed the connection during the handshake ({reason}): {ours}, "
                "or it does not speak TLS on this port"
            )
        if "PROTOCOL_VERSION" in upper or "UNSUPPORTED_PROTOCOL" in upper:
            return f"no common TLS version (we require TLS 1.2 or later; {reason})"
        return reason


def explain_server_side(exc: OSError) -> str:
    """Why our Storage SCP refused a TLS connection, in a few words."""
    upper = str(getattr(exc, "reason", "") or "").upper()
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in upper:
        return f"its certificate is not trusted ({_reason(exc)})"
    if "NO_CERTIFICATE" in upper or "CERTIFICATE_REQUIRED" in upper or "PEER_DID_NOT" in upper:
        return "it presented no certificate (a TLS Storage SCP requires one)"
    if "WRONG_VERSION_NUMBER" in upper or "HTTP_REQUEST" in upper or "RECORD_LAYER" in upper:
        return "it does not speak TLS (Orthanc: set UseDicomTls on our modality entry)"
    return _reason(exc)


_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER", "PACKET_LENGTH", "UNEXPECTED_RECORD")


def speaks_tls(host: str, port: int, timeout: float) -> bool:
    """True when ``host:port`` answers a TLS ClientHello like a TLS server.

    Used only to explain why a plain association was dropped: nothing is
    verified and nothing but the ClientHello is sent.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw),
        ):
            return True
    except ssl.SSLError as exc:
        reason = str(exc.reason or "").upper()
        return "ALERT" in reason and not any(word in reason for word in _NOT_TLS)
    except OSError:
        return False


def client_tls(tls: TLSConfig, host: str) -> ClientTLS:
    """TLS for one association we open to ``host``."""
    return ClientTLS(tls, host)


def scp_context(tls: TLSConfig, timeout: float | None = None) -> ssl.SSLContext:
    """The server context of our Storage SCP during a C-MOVE over TLS.

    We present ``cert_file``; with ``verify_peer`` the PACS must present a
    certificate that chains to ``ca_file``.  ``timeout`` bounds every read on an
    accepted connection (the handshake included).
    """
    if not tls.has_certificate:
        raise InvalidInputError(
            "a C-MOVE over TLS needs cert_file and key_file: our Storage SCP is then a TLS "
            "server the PACS connects to (or retrieve with C-GET)"
        )
    context = _base_context(tls, ssl.PROTOCOL_TLS_SERVER)
    assert isinstance(context, _RecordingContext)
    context.verify_mode = ssl.CERT_REQUIRED if tls.verify_peer else ssl.CERT_NONE
    context.server_side_timeout = timeout
    return context


def tls_from_settings(config: Settings) -> TLSConfig | None:
    """The TLSConfig the ``CLARINET_TLS_*`` settings describe, or None if none is set."""
    files = (config.tls_ca_file, config.tls_cert_file, config.tls_key_file)
    if all(not f for f in files):
        return None
    return TLSConfig(
        ca_file=config.tls_ca_file or None,
        cert_file=config.tls_cert_file or None,
        key_file=config.tls_key_file or None,
        verify_peer=config.tls_verify_peer,
        check_hostname=config.tls_check_hostname,
    )
