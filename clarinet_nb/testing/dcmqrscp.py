"""A DCMTK ``dcmqrscp`` archive run as a child process for integration tests."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from clarinet_nb.testing.peer import PeerProcess
from clarinet_nb.testing.ports import free_port

__all__ = ["DcmqrscpServer"]

#: Studies kept before dcmqrscp's quota deletes the oldest ones (500 is its maximum).
MAX_STUDIES = 500
#: Per-study size limit of the quota.
MAX_STUDY_SIZE = "1024mb"


class DcmqrscpServer(PeerProcess):
    """dcmqrscp 3.6.x with its config, database and log in ``workdir``.

    It serves only the AE title ``aet`` (any calling AE may connect), forks
    one process per association (``--fork``; single-process mode segfaults) and
    resolves C-MOVE destinations from ``move_destinations`` (name -> (AET,
    host, port)). Storage quota: at most 500 studies (dcmqrscp's ceiling).

    ``--prefer-jpeg8`` makes it accept JPEG Baseline besides the uncompressed
    syntaxes on incoming associations, so the cohort's JPEG instance can be
    stored and fetched by C-GET. Caveats (dcmqrscp never transcodes, and sends
    each C-GET/C-MOVE sub-operation on the first context accepted for its SOP
    class): a C-GET context offering JPEG Baseline among several syntaxes is
    accepted as JPEG, so uncompressed instances of that class then fail; and
    C-MOVE sub-associations propose uncompressed syntaxes only, so a stored
    JPEG instance is never delivered by C-MOVE (0xB000, in the failed list).
    """

    kind = "dcmqrscp"
    FAST_LOAD_MIN_FILES = 10  # stops at once: restarting is cheap

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "DCMQRSCP",
        tuned: bool = False,
        move_destinations: Mapping[str, tuple[str, str, int]] | None = None,
        max_pdu: int = 16384,
    ) -> None:
        super().__init__(workdir, aet=aet, port=free_port(), tuned=tuned)
        if any(c.isspace() for c in str(self._workdir)):
            raise ValueError(f"dcmqrscp cannot use a path with whitespace: {self._workdir}")
        self._move_destinations = dict(move_destinations or {})
        self._max_pdu = max_pdu
        self._binary = shutil.which("dcmqrscp") or "/usr/bin/dcmqrscp"

    @property
    def log_path(self) -> Path:
        return self.output_path

    @property
    def config_path(self) -> Path:
        return self._workdir / "dcmqrscp.cfg"

    @property
    def storage_path(self) -> Path:
        return self._workdir / "db"

    def config(self) -> str:
        """The dcmqrscp configuration file text."""
        hosts = [
            f"{name} = ({aet}, {host}, {port})"
            for name, (aet, host, port) in self._move_destinations.items()
        ]
        vendor = f'"Clarinet test destinations" = {", ".join(self._move_destinations)}'
        lines = [
            f"NetworkTCPPort  = {self._port}",
            f"MaxPDUSize      = {self._max_pdu}",
            "MaxAssociations = 16",
            "",
            "HostTable BEGIN",
            *hosts,
            "HostTable END",
            "",
            "VendorTable BEGIN",
            *([vendor] if self._move_destinations else []),
            "VendorTable END",
            "",
            "AETable BEGIN",
            f"{self._aet} {self.storage_path} RW ({MAX_STUDIES}, {MAX_STUDY_SIZE}) ANY",
            "AETable END",
            "",
        ]
        return "\n".join(lines)

    def _write_config(self) -> None:
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config(), encoding="ascii")

    def _command(self) -> list[str]:
        return [
            self._binary,
            "--fork",
            "--config", str(self.config_path),
            "--prefer-jpeg8",  # also accept JPEG Baseline (see the class docstring)
            "--disable-host-lookup",
            str(self._port),
        ]  # fmt: skip
