"""Validation of request values and conversion of DICOM values from peers.

Request side: UIDs, AE titles, dates and date ranges are checked here so that
bad input fails with :class:`~clarinet_nb.errors.InvalidInputError` before any
network traffic.  Response side: values coming from a peer are never trusted;
conversions are tolerant and return ``None`` rather than raise.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from clarinet_nb.errors import InvalidInputError

__all__ = [
    "set_key",
    "check_ae_title",
    "check_uid",
    "element_to_python",
    "format_da",
    "parse_da",
    "parse_dicom_date",
    "parse_tm",
]

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_DA_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_ISO_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def check_uid(value: str) -> str:
    """Return ``value`` if it is a valid DICOM UID, else raise InvalidInputError."""
    if not isinstance(value, str):
        raise InvalidInputError(f"UID must be a string, not {type(value).__name__}")
    uid = value.strip()
    if not uid or len(uid) > 64 or not _UID_RE.match(uid):
        raise InvalidInputError(
            f"{value!r} is not a valid DICOM UID (digits and dots, no leading zeros, "
            "at most 64 characters)"
        )
    return uid


def check_ae_title(value: str) -> str:
    """Return the AE title stripped of padding, or raise InvalidInputError."""
    if not isinstance(value, str):
        raise InvalidInputError(f"AE title must be a string, not {type(value).__name__}")
    aet = value.strip()
    if not aet:
        raise InvalidInputError("AE title must not be empty")
    if len(aet) > 16:
        raise InvalidInputError(f"AE title {aet!r} is longer than 16 characters")
    if "\\" in aet or any(ord(c) < 0x20 or ord(c) > 0x7E for c in aet):
        raise InvalidInputError(
            f"AE title {aet!r} may only contain printable ASCII characters, no backslash"
        )
    return aet


def parse_dicom_date(value: str | dt.date | dt.datetime) -> dt.date:
    """Parse ``YYYYMMDD``, ``YYYY-MM-DD``, a date or a datetime into a date."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        text = value.strip()
        match = _DA_RE.match(text) or _ISO_DATE_RE.match(text)
        if match:
            parts = int(match[1]), int(match[2]), int(match[3])
            if _valid_date(*parts):
                return dt.date(*parts)
            raise InvalidInputError("not a valid date (no such day)")
    # the value is not repeated: it may be a patient's birth date
    raise InvalidInputError("not a date (use YYYYMMDD, YYYY-MM-DD or a date)")


def _valid_date(year: int, month: int, day: int) -> bool:
    try:
        dt.date(year, month, day)
    except ValueError:
        return False
    return True


def format_da(value: dt.date) -> str:
    """Format a date as DICOM DA (``YYYYMMDD``; years before 1000 zero-padded)."""
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def parse_da(value: Any) -> dt.date | None:
    """Tolerantly convert a DA value from a peer into a date (``None`` if unusable)."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value or "").strip()
    match = _DA_RE.match(text) or _ISO_DATE_RE.match(text)
    if not match:
        # Old ACR-NEMA style "YYYY.MM.DD"
        parts = text.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and len(parts[0]) == 4:
            match = re.match(r"(\d{4})(\d{2})(\d{2})", "".join(parts))
    if not match:
        return None
    try:
        return dt.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def parse_tm(value: Any) -> dt.time | None:
    """Tolerantly convert a TM value (``HH``, ``HHMM``, ``HHMMSS[.F]``) into a time."""
    if isinstance(value, dt.time):
        return value
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (frac and not frac.isdigit()):
        return None
    hour = int(whole[0:2])
    minute = int(whole[2:4]) if len(whole) >= 4 else 0
    second = int(whole[4:6]) if len(whole) >= 6 else 0
    micro = int((frac + "000000")[:6]) if frac else 0
    try:
        return dt.time(hour, minute, min(second, 59), micro)
    except ValueError:
        return None


_DT_RE = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:[+-]\d{4})?"
)


def parse_dt(value: Any) -> dt.datetime | None:
    """Tolerantly convert a DT value (``YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]``) into a
    naive datetime (the UTC offset is dropped); ``None`` if unusable."""
    match = _DT_RE.fullmatch(str(value or "").strip())
    if not match:
        return None
    year, month, day, hour, minute, second, frac = match.groups()
    try:
        return dt.datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            min(int(second or 0), 59),
            int((frac or "").ljust(6, "0")),
        )
    except ValueError:
        return None


def _scalar(vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if vr == "DA":
        return parse_da(value)
    if vr == "TM":
        return parse_tm(value)
    if vr == "DT":
        return parse_dt(value)
    if vr == "IS":
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if vr == "DS":
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return int(value)
    if vr in ("FL", "FD"):
        return float(value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return None  # binary values are not carried in query results
    return str(value).strip()


def element_to_python(elem: DataElement) -> Any:
    """Convert an element from a peer's response into a plain Python value.

    DA -> date, TM -> time, DT -> datetime, IS -> int, DS -> float, PN -> str,
    multi-valued elements -> list, sequences and binary values -> ``None``.
    Malformed values become ``None`` rather than raising.
    """
    vr = str(elem.VR)
    if vr == "SQ" or vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return None
    try:
        value = elem.value
    except Exception:  # noqa: BLE001 - pydicom may fail decoding a malformed value
        return None
    if isinstance(value, MultiValue | list | tuple):
        items = [_scalar(vr, v) for v in value]
        return [v for v in items if v is not None]
    try:
        return _scalar(vr, value)
    except (TypeError, ValueError):
        return None


def set_key(ds: Dataset, keyword: str, value: Any) -> None:
    """Set a query key without pydicom's value validation.

    Matching values legitimately break VR rules (``CT*`` in a CS, ranges in a
    DA); our own validation has already run.
    """
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise InvalidInputError(f"{keyword!r} is not a DICOM keyword")
    ds[tag] = DataElement(tag, dictionary_VR(keyword), value, validation_mode=config.IGNORE)
