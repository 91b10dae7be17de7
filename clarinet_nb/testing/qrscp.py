"""pynetdicom's own ``qrscp`` application run as a child process for integration tests.

Useful as a protocol peer, not as a PACS (see PEERS.md): its C-FIND answers
carry only its indexed attributes (no SOPClassUID, no SOPClassesInStudy), it
cannot match a list of UIDs (0xC320 on C-FIND) and, as a pynetdicom peer, it
sends an instance in its stored transfer syntax only when that syntax is
offered in a presentation context of its own.  It needs ``sqlalchemy``.

It is started with a configuration file on a free port, bound to 127.0.0.1,
and with ``require_called_aet`` set (the app itself accepts any called AE
title): a tiny launcher sets it before running the app's ``main``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from clarinet_nb.testing.peer import HOST, PeerProcess
from clarinet_nb.testing.ports import free_port

__all__ = ["QrscpServer"]

#: Runs ``python -m pynetdicom qrscp`` with every AE requiring our AE title as called AE.
_LAUNCHER = """
import sys
from pynetdicom.ae import ApplicationEntity
from pynetdicom.apps.qrscp import qrscp

_init = ApplicationEntity.__init__

def _strict_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.require_called_aet = True

ApplicationEntity.__init__ = _strict_init
qrscp.main(sys.argv[1:])
"""


class QrscpServer(PeerProcess):
    """pynetdicom's qrscp with its config, SQLite index, instances and log in ``workdir``.

    ``move_destinations`` (name -> (AET, host, port)) become the app's move
    destination sections (keyed by AE title).  ``tuned`` has no effect
    (pynetdicom sets TCP_NODELAY itself) and is kept for the Peer protocol.
    """

    kind = "qrscp"
    FAST_LOAD_MIN_FILES = 1_000_000  # restarting never speeds up loading

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "QRSCP",
        port: int | None = None,
        move_destinations: Mapping[str, tuple[str, str, int]] | None = None,
        max_pdu: int = 16382,
    ) -> None:
        super().__init__(workdir, aet=aet, port=port or free_port(), tuned=False)
        self._move_destinations = dict(move_destinations or {})
        self._max_pdu = max_pdu

    @property
    def log_path(self) -> Path:
        return self.output_path

    @property
    def config_path(self) -> Path:
        return self._workdir / "qrscp.ini"

    @property
    def storage_path(self) -> Path:
        return self._workdir / "instances"

    def config(self) -> str:
        """The qrscp configuration file text (absolute paths: the app joins them to its dir)."""
        lines = [
            "[DEFAULT]",
            f"    ae_title: {self._aet}",
            f"    port: {self._port}",
            f"    max_pdu: {self._max_pdu}",
            "    acse_timeout: 30",
            "    dimse_timeout: 30",
            "    network_timeout: 30",
            f"    bind_address: {HOST}",
            f"    instance_location: {self.storage_path}",
            f"    database_location: {self._workdir / 'instances.sqlite'}",
            "    log_identifier: False",
            "",
        ]
        for aet, host, port in self._move_destinations.values():
            lines += [f"[{aet}]", f"    address: {host}", f"    port: {port}", ""]
        return "\n".join(lines)

    def _write_config(self) -> None:
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config(), encoding="ascii")

    def _command(self) -> list[str]:
        return [sys.executable, "-c", _LAUNCHER, "--config", str(self.config_path)]
