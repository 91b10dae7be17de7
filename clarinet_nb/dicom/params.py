"""Validation of client parameters (``DicomClient(...)``, ``cnb.connect(...)``, settings).

Each check names the parameter and the rule, and raises
:class:`~clarinet_nb.errors.InvalidInputError` before anything is started or sent,
so that a typo fails at once rather than as a raw ``OverflowError`` deep in
pynetdicom (or as a timeout that never expires).
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any

from clarinet_nb.dicom.values import check_ae_title
from clarinet_nb.errors import InvalidInputError

__all__ = [
    "MAX_ASSOCIATIONS",
    "MAX_PDU_RANGE",
    "MAX_TIMEOUT",
    "check_ae_param",
    "check_cache_dir",
    "check_ip",
    "check_max_associations",
    "check_max_pdu",
    "check_port",
    "check_result_cap",
    "check_seconds",
    "parse_size",
]

#: Max PDU lengths peers accept (Orthanc's and DCMTK's range); 0 means unlimited.
MAX_PDU_RANGE = (4096, 131072)
#: Concurrent associations one client may open.
MAX_ASSOCIATIONS = (1, 64)
#: Longest timeout accepted, in seconds (one day): longer is a mistake, and
#: sockets and thread waits overflow on very large values.
MAX_TIMEOUT = 86400.0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return type(value).__name__


def check_ae_param(name: str, value: Any) -> str:
    """An AE title parameter (16 characters at most, no backslash or control character)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be an AE title string, not {_kind(value)}")
    try:
        return check_ae_title(value)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{name}: {exc}") from None


def check_port(name: str, value: Any) -> int:
    """A TCP port we listen on or connect to: an integer 1..65535.

    0 (any free port) is refused: a PACS must be told the port of our Storage SCP.
    """
    if not _is_int(value):
        raise InvalidInputError(f"{name} must be an integer port 1..65535, not {_kind(value)}")
    if not 1 <= value <= 65535:
        raise InvalidInputError(
            f"{name} must be a TCP port 1..65535 (got {value}); 0 is refused because the "
            "PACS must know the port of our Storage SCP"
        )
    return int(value)


def check_max_pdu(name: str, value: Any) -> int:
    """0 (unlimited) or 4096..131072 bytes."""
    low, high = MAX_PDU_RANGE
    if not _is_int(value) or not (value == 0 or low <= value <= high):
        shown = value if _is_int(value) else _kind(value)
        raise InvalidInputError(
            f"{name} must be 0 (unlimited) or an integer {low}..{high} bytes (got {shown})"
        )
    return int(value)


def check_seconds(name: str, value: Any) -> float:
    """A timeout: a positive finite number of seconds, at most :data:`MAX_TIMEOUT`."""
    if not (_is_int(value) or isinstance(value, float)):
        raise InvalidInputError(
            f"{name} must be a number of seconds (int or float), not {_kind(value)}"
        )
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise InvalidInputError(
            f"{name} must be a positive finite number of seconds, at most {MAX_TIMEOUT:g} "
            f"(got {value!r})"
        )
    return float(value)


def check_max_associations(name: str, value: Any) -> int:
    """An integer 1..64."""
    low, high = MAX_ASSOCIATIONS
    if not _is_int(value) or not low <= value <= high:
        shown = value if _is_int(value) else _kind(value)
        raise InvalidInputError(f"{name} must be an integer {low}..{high} (got {shown})")
    return int(value)


def check_ip(name: str, value: Any) -> str:
    """An IPv4 or IPv6 address literal (our Storage SCP binds to it)."""
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{name} must be an IP address string such as '127.0.0.1', not {_kind(value)}"
        )
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise InvalidInputError(
            f"{name} must be an IP address of this machine such as '0.0.0.0' or '127.0.0.1' "
            "(None: all interfaces)"
        ) from None


def check_result_cap(name: str, value: Any) -> int:
    """A count of rows, at least 1."""
    if not _is_int(value) or value < 1:
        shown = value if _is_int(value) else _kind(value)
        raise InvalidInputError(f"{name} must be an integer >= 1 or None (got {shown})")
    return int(value)


def check_cache_dir(name: str, value: Any) -> Path:
    """A folder path (str or Path), not empty and not an existing file."""
    if not isinstance(value, str | Path):
        raise InvalidInputError(f"{name} must be a folder path (str or Path), not {_kind(value)}")
    if not str(value).strip():
        raise InvalidInputError(f"{name} must not be an empty path")
    if "\x00" in str(value):
        raise InvalidInputError(f"{name} must not contain a NUL character")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{name} must be a folder, but that path is a file")
    return path


def parse_size(value: int | str, name: str = "memory_limit") -> int:
    """``2_000_000``, ``"500MB"``, ``"2 GB"`` -> bytes (``name`` is the parameter, for errors)."""
    rule = f"{name} must be a positive number of bytes or a size such as '500MB' or '2GB'"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInputError(f"{rule}, not {type(value).__name__}")
    if isinstance(value, int):
        if value <= 0:
            raise InvalidInputError(f"{rule} (got {value})")
        return value
    text = str(value).strip().upper().replace(" ", "").removesuffix("B")
    factors = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    factor = factors.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in factors else text
    try:
        size = int(float(number) * factor)
    except (ValueError, OverflowError):  # "x", "nan", "inf"
        raise InvalidInputError(f"{rule} (got {value!r})") from None
    if size <= 0:
        raise InvalidInputError(f"{rule} (got {value!r})")
    return size
