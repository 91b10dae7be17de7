"""Validation of request values and conversion of DICOM values from peers.

Request side: UIDs, AE titles, dates and date ranges are checked here so that
bad input fails with :class:`~clarinet_nb.errors.InvalidInputError` before any
network traffic.  Response side: values coming from a peer are never trusted;
conversions are tolerant and return ``None`` rather than raise.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from typing import Any

from pydicom import Dataset, config
from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue

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
    "one_value",
    "parse_ds",
    "parse_dt",
    "parse_is",
    "raw_to_python",
    "tm_parts",
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


_PADDING = " \x00"  # padding a peer may leave around a value (NUL from some toolkits)
_DA_FORMS = re.compile(
    r"([0-9]{4})([0-9]{2})([0-9]{2})"  # DICOM DA
    r"|([0-9]{4})([-.])([0-9]{2})\5([0-9]{2})"  # ISO 8601, ACR-NEMA "YYYY.MM.DD"
)
_TM_RE = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?")
_ACR_TM_RE = re.compile(r"[0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)?")  # HH:MM:SS
_DT_RE = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})"
    r"(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?)?)?)?(?:[+-]([0-9]{2})([0-9]{2}))?"
)
_IS_RE = re.compile(r"[+-]?[0-9]+")
_DS_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def one_value(value: Any) -> str | None:
    """The text of a single received value without its padding.

    ``None`` when empty or when it holds several values (a backslash): a peer
    sending two dates for a single-valued attribute sent no usable date.
    """
    text = "" if value is None else str(value)
    if "\\" in text:
        return None
    return text.strip(_PADDING) or None


def parse_da(value: Any) -> dt.date | None:
    """Tolerantly convert a DA value from a peer into a date (``None`` if unusable).

    Accepts ``YYYYMMDD``, ISO ``YYYY-MM-DD`` and ACR-NEMA ``YYYY.MM.DD`` (ASCII digits only).
    """
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    match = _DA_FORMS.fullmatch(one_value(value) or "")
    if match is None:
        return None
    year, month, day = (g for g in match.groups() if g is not None and g not in "-.")
    try:
        return dt.date(int(year), int(month), int(day))
    except ValueError:
        return None


def tm_parts(value: Any) -> tuple[int, int, int, int] | None:
    """(hour, minute, second, microsecond) of a TM value, or ``None`` if unusable.

    ``HH[MM[SS[.F{1,6}]]]`` or ACR-NEMA ``HH:MM:SS``; a leap second (60) reads as 59.
    """
    text = one_value(value) or ""
    if _ACR_TM_RE.fullmatch(text):
        text = text.replace(":", "")
    match = _TM_RE.fullmatch(text)
    if match is None:
        return None
    hour, minute, second, frac = match.groups()
    h, m, s = int(hour), int(minute or 0), int(second or 0)
    if h > 23 or m > 59 or s > 60:
        return None
    return h, m, min(s, 59), int((frac or "").ljust(6, "0"))


def parse_tm(value: Any) -> dt.time | None:
    """Tolerantly convert a TM value (see :func:`tm_parts`) into a time."""
    if isinstance(value, dt.time):
        return value
    parts = tm_parts(value)
    return None if parts is None else dt.time(*parts)


def parse_dt(value: Any) -> dt.datetime | None:
    """Tolerantly convert a DT value (``YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]``) into a
    naive datetime (the UTC offset is checked, then dropped); ``None`` if unusable."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    match = _DT_RE.fullmatch(one_value(value) or "")
    if not match:
        return None
    year, month, day, hour, minute, second, frac, off_h, off_m = match.groups()
    if off_h is not None and (int(off_h) > 14 or int(off_m) > 59):
        return None
    if int(second or 0) > 60:
        return None
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


def parse_is(value: Any) -> int | None:
    """An IS value as an int within int64 (``"12.0"`` and ``"1e3"`` too), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value) if _INT64_MIN <= value <= _INT64_MAX else None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
        return value if _INT64_MIN <= value <= _INT64_MAX else None
    text = one_value(getattr(value, "original_string", value)) or ""
    number: int
    if _IS_RE.fullmatch(text):
        number = int(text)
    elif _DS_RE.fullmatch(text):
        decimal = float(text)
        if not decimal.is_integer():
            return None
        number = int(decimal)
    else:
        return None
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def parse_ds(value: Any) -> float | None:
    """A DS value as a finite float, else ``None`` (``nan``, ``inf``, ``1e400``, junk)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        text = one_value(getattr(value, "original_string", value)) or ""
        if not _DS_RE.fullmatch(text):
            return None
        number = float(text)
    return number if math.isfinite(number) else None


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "DA": parse_da,
    "TM": parse_tm,
    "DT": parse_dt,
    "IS": parse_is,
    "DS": parse_ds,
}
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
_BULK_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})


def _text(value: Any) -> str | None:
    """A text value without its padding (``None`` when empty)."""
    return str(value).strip(_PADDING) or None


def _scalar(vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    parse = _PARSERS.get(vr)
    if parse is not None:
        return parse(value)
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return int(value)
    if vr in ("FL", "FD"):
        number = float(value)
        return None if math.isnan(number) else number
    if isinstance(value, bytes | bytearray):
        return None  # binary values are not carried in query results
    return _text(value)


def _vr_of(tag: int, received: Any) -> str | None:
    """The VR a value is read as: the dictionary's (whatever the peer claimed), unless the
    dictionary allows several (``US or SS``) or does not know the tag."""
    try:
        known = str(dictionary_VR(tag))
    except KeyError:
        known = ""
    if known and " or " not in known:
        return known
    if received is not None and str(received) != "UN":
        return str(received)
    return known.split(" or ")[0] or None


def _is_multi(tag: int) -> bool:
    """True when the dictionary allows several values for ``tag``."""
    try:
        return str(dictionary_VM(tag)).strip() != "1"
    except KeyError:
        return False


def _from_items(vr: str, items: list[Any], multi: bool) -> Any:
    """The value of an element that arrived as a list of ``items``."""
    if multi:
        converted = [_scalar(vr, item) for item in items]
        return [v for v in converted if v is not None] or None
    if vr in _PARSERS:
        return None  # several dates or numbers for a single-valued attribute
    return "\\".join(_text(item) or "" for item in items).strip("\\") or None


def raw_to_python(vr: str, multi: bool, raw: bytes) -> Any:
    """Convert the received bytes of an element with an ASCII VR (DA, TM, IS, UI, CS, ...).

    Done here rather than by pydicom: pydicom's validation would quote the value in a
    warning (a birth date in a log), and one bad item would lose every item.
    """
    text = raw.decode("latin-1")
    if multi:
        return _from_items(vr, text.split("\\"), True)
    parse = _PARSERS.get(vr)
    return parse(text) if parse is not None else _text(text)


def element_to_python(elem: DataElement | RawDataElement, ds: Dataset | None = None) -> Any:
    """Convert an element from a peer's response into a plain Python value.

    DA -> date, TM -> time, DT -> datetime, IS -> int, DS -> float, PN -> str,
    attributes the dictionary allows several values for -> list (``None`` if empty),
    sequences and binary values -> ``None``.  Malformed values become ``None``
    rather than raising.  A raw element needs its dataset ``ds`` (for the
    character set of text).
    """
    tag = int(elem.tag)
    vr = _vr_of(tag, elem.VR)
    if vr is None:
        return None
    if vr in _BULK_VRS:
        return None
    multi = _is_multi(tag)
    try:
        if isinstance(elem, RawDataElement):
            if vr in _ASCII_VRS and elem.value is not None:
                return raw_to_python(vr, multi, elem.value)
            if ds is None:
                return None
            elem = ds[tag]
        value = elem.value
        if isinstance(value, MultiValue | list | tuple):
            return _from_items(vr, list(value), multi)
        item = _scalar(vr, value)
        return [item] if multi and item is not None else item
    except Exception:  # noqa: BLE001 - pydicom may fail decoding a malformed value
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
