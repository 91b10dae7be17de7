"""An Orthanc server run as a child process for integration tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clarinet_nb.dicom.tls import TLSConfig
from clarinet_nb.testing.peer import HOST, PeerProcess
from clarinet_nb.testing.ports import free_port

__all__ = ["OrthancServer", "OrthancTLS"]


@dataclass(frozen=True)
class OrthancTLS:
    """DICOM TLS for a test Orthanc (configuration keys of Orthanc >= 1.9.3).

    Orthanc then speaks only TLS on its DICOM port: ``certificate`` /
    ``private_key`` (PEM, key unencrypted) are what it presents, ``trusted``
    the CA certificates it accepts from clients (and from the move destinations
    it connects to), ``remote_certificate_required`` refuses clients without a
    certificate.  ``client`` is how the test rig itself reaches it (readiness
    C-ECHO, loading).  ``move_destinations`` names the move destinations Orthanc
    reaches over TLS (``"UseDicomTls": true``); None: all of them.
    """

    certificate: Path
    private_key: Path
    trusted: Path
    client: TLSConfig
    remote_certificate_required: bool = True
    move_destinations: Collection[str] | None = None

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration keys."""
        return {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(self.certificate),
            "DicomTlsPrivateKey": str(self.private_key),
            "DicomTlsTrustedCertificates": str(self.trusted),
            "DicomTlsRemoteCertificateRequired": self.remote_certificate_required,
        }

    def for_destination(self, name: str) -> bool:
        """True when Orthanc C-STOREs to move destination ``name`` over TLS."""
        return self.move_destinations is None or name in self.move_destinations


#: calling AE titles of our own start-up echo and loader
INTERNAL_CLIENTS = ("ECHOSCU", "LOADER")


class OrthancServer(PeerProcess):
    """Orthanc (binary ``Orthanc``) with storage, index, config and log in ``workdir``.

    ``tuned=True`` runs it with ``TCP_NODELAY=1`` in its environment (DCMTK
    then disables Nagle's algorithm); stock runs it without. The REST API is
    off unless ``http=True`` (then loopback only, ``RemoteAccessAllowed: false``,
    on :attr:`http_port`): Orthanc 1.10.1 takes ~2 s longer to stop with it on.
    ``port`` is the DICOM port (default: a free loopback port).

    Orthanc 1.10 cannot bind its DICOM port to one address: it listens on all
    interfaces.  ``loopback_clients=[AET, ...]`` makes that harmless: Orthanc
    then accepts associations only from those calling AE titles (and the move
    destinations) connecting from 127.0.0.1 (``DicomAlwaysAllow*`` off,
    ``DicomCheckModalityHost`` on).
    """

    kind = "orthanc"
    FAST_LOAD_MIN_FILES = 100  # a stop takes ~1.3 s

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        port: int | None = None,
        tuned: bool = False,
        move_destinations: Mapping[str, tuple[str, str, int]] | None = None,
        check_called_aet: bool = False,
        limit_find_results: int = 0,
        limit_find_instances: int = 0,
        max_pdu: int = 16384,
        default_encoding: str = "Utf8",
        http: bool = False,
        lua: str = "",
        loopback_clients: Sequence[str] | None = None,
        tls: OrthancTLS | None = None,
    ) -> None:
        super().__init__(workdir, aet=aet, port=port or free_port(), tuned=tuned)
        self._http_port = free_port()
        self._move_destinations = dict(move_destinations or {})
        self._check_called_aet = check_called_aet
        self._limit_find_results = limit_find_results
        self._limit_find_instances = limit_find_instances
        self._max_pdu = max_pdu
        self._default_encoding = default_encoding
        self._http = http
        self._lua = lua
        self._loopback_clients = list(loopback_clients) if loopback_clients is not None else None
        self._binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self.tls = tls
        self.client_tls = tls.client if tls is not None else None

    def _lua_path(self) -> Path:
        """A Lua script (``lua=``) Orthanc loads, e.g. an ``IncomingFindRequestFilter``."""
        path = self._workdir / "filter.lua"
        self._workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(self._lua, encoding="utf-8")
        return path

    @property
    def http_port(self) -> int:
        """The REST API port (listening only when constructed with ``http=True``)."""
        return self._http_port

    @property
    def log_path(self) -> Path:
        return self._workdir / "orthanc.log"

    @property
    def config_path(self) -> Path:
        return self._workdir / "orthanc.json"

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this server runs with."""
        anyone = self._loopback_clients is None
        return {
            "Name": f"clarinet-test-{self.name}",
            "StorageDirectory": str(self._workdir / "storage"),
            "IndexDirectory": str(self._workdir / "index"),
            "StorageCompression": False,
            "MaximumStorageSize": 0,
            "MaximumPatientCount": 0,
            "Plugins": [],
            "LuaScripts": [str(self._lua_path())] if self._lua else [],
            "HttpServerEnabled": self._http,
            "HttpPort": self._http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self._aet,
            "DicomPort": self._port,
            "DicomCheckCalledAet": self._check_called_aet,
            "DicomAlwaysAllowEcho": anyone,
            "DicomAlwaysAllowFind": anyone,
            "DicomAlwaysAllowGet": anyone,
            "DicomAlwaysAllowMove": anyone,
            "DicomAlwaysAllowStore": anyone,
            "DicomCheckModalityHost": not anyone,
            "DicomModalities": self._modalities(),
            "DicomThreadsCount": 4,
            "DicomScpTimeout": 30,
            "DicomScuTimeout": 30,
            "MaximumPduLength": self._max_pdu,
            "LimitFindResults": self._limit_find_results,
            "LimitFindInstances": self._limit_find_instances,
            "DefaultEncoding": self._default_encoding,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            "SaveJobs": False,
            "HttpVerbose": False,
            **(self.tls.config() if self.tls is not None else {}),
        }

    def _modalities(self) -> dict[str, Any]:
        modalities: dict[str, Any] = {}
        for name, (aet, host, port) in self._move_destinations.items():
            if self.tls is not None and self.tls.for_destination(name):
                modalities[name] = {"AET": aet, "Host": host, "Port": port, "UseDicomTls": True}
            else:
                modalities[name] = [aet, host, port]
        if self._loopback_clients is None:
            return modalities
        known = {
            str(entry["AET"] if isinstance(entry, dict) else entry[0])
            for entry in modalities.values()
        }
        for aet in [*self._loopback_clients, *INTERNAL_CLIENTS]:
            if aet not in known:
                # a client only: the port is never called (C-MOVE to it would fail)
                modalities[f"client-{aet.lower()}"] = [aet, HOST, 104]
                known.add(aet)
        return modalities

    def _write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")

    def _command(self) -> list[str]:
        return [self._binary, f"--logfile={self.log_path}", str(self.config_path)]
