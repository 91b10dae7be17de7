"""Matching values of a C-FIND request, checked against their VR before any traffic.

Two steps, both raising :class:`~clarinet_nb.errors.InvalidInputError` that names
the keyword and the rule (never the value of a patient attribute):

- :func:`encode_matching` turns a Python value (str, date, time, number, a
  ``(start, end)`` range, a list of UIDs or code strings) into the DICOM string
  sent, refusing blank values: ``None``, NaN, ``pd.NA``, ``""``, ``" "``, ``[]``,
  ``[None]``... would all match everything.  ``"*"`` is the one way to ask for
  everything, on keys that take wildcards.
- :func:`check_matching` checks a DICOM string against its VR (PS3.5 6.2 and
  PS3.4 C.2.2.2): length, character repertoire, no control characters, DA/TM/DT
  syntax and ordered ranges, UID syntax, multiple values only on UI and CS keys,
  wildcards only on text VRs, encodable in the character set we declare
  (the default repertoire, or ISO_IR 192 when a value is not ASCII).
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.valuerep import format_number_as_ds

from clarinet_nb.dicom.values import check_uid, format_da
from clarinet_nb.errors import InvalidInputError

__all__ = [
    "MAX_LENGTH",
    "check_matching",
    "element_value",
    "encode_matching",
    "is_blank",
    "is_patient_keyword",
    "needs_utf8",
]

#: Maximum length of one value, in characters (PS3.5 Table 6.2-1); ranges in RANGE_LENGTH.
MAX_LENGTH: dict[str, int] = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "PN": 64,  # per component group
    "SH": 16,
    "TM": 14,
    "UI": 64,
    "ST": 1024,
    "LT": 10240,
    "UC": 2**32 - 2,
    "UT": 2**32 - 2,
    "UR": 2**32 - 2,
}
RANGE_LENGTH = {"DA": 18, "TM": 28, "DT": 54}
_NOUN = {"DA": "date", "TM": "time", "DT": "datetime"}

#: VRs whose values may carry the wildcards ``*`` and ``?`` (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
#: VRs whose values may use characters beyond the default repertoire.
EXTENDED_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: VRs where several values (backslash-separated) may be matched.
LIST_VRS = frozenset({"UI", "CS"})
INT_VRS = {
    "IS": (-(2**31), 2**31 - 1),
    "US": (0, 2**16 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "UV": (0, 2**64 - 1),
    "SV": (-(2**63), 2**63 - 1),
}
FLOAT_VRS = frozenset({"DS", "FL", "FD"})
TEXT_VRS = frozenset({"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CS = re.compile(r"^[A-Z0-9 _*?]+$")
_AS = re.compile(r"^\d{3}[DWMY]$")
_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_TM_COLONS = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?$")
_DT = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)
_DS = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INT = re.compile(r"^[+-]?\d+$")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")

_PATIENT_KEYWORDS = frozenset(
    {
        "AccessionNumber",
        "AdmissionID",
        "EthnicGroup",
        "MedicalRecordLocator",
        "MilitaryRank",
        "RequestedProcedureID",
        "ResponsiblePerson",
        "StudyID",
    }
)


def is_patient_keyword(keyword: str) -> bool:
    """Attributes whose values must never appear in messages (patient data)."""
    if keyword in _PATIENT_KEYWORDS or "Patient" in keyword:
        return True
    return keyword in keyword_dict and dictionary_VR(keyword) == "PN"


def _shown(keyword: str, value: Any) -> str:
    """`` 'value'`` for messages, or nothing for patient attributes and free text."""
    vr = dictionary_VR(keyword) if keyword in keyword_dict else ""
    if is_patient_keyword(keyword) or vr in EXTENDED_VRS or vr in ("AE", "AS"):
        return ""
    text = repr(value)
    return f" {text[:40]}{'...' if len(text) > 40 else ''}"


def _fail(keyword: str, rule: str) -> InvalidInputError:
    return InvalidInputError(f"{keyword}: {rule}")


# -- blank values -------------------------------------------------------------------------


def is_blank(value: Any) -> bool:
    """None, NaN, NaT, pandas NA, an empty or whitespace-only string, an empty container."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.replace("\x00", "").strip()
    if isinstance(value, bytes | bytearray):
        return not bytes(value).replace(b"\x00", b"").strip()
    if isinstance(value, list | tuple | set | frozenset | dict):
        return len(value) == 0
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        try:
            return math.isnan(value)
        except (TypeError, ValueError):
            return False
    size = getattr(value, "size", None)
    if isinstance(size, int) and hasattr(value, "tolist") and getattr(value, "ndim", None):
        return size == 0  # numpy arrays, pandas Series
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return True
        result = pd.isna(value)
    except (TypeError, ValueError):  # pragma: no cover - pd.isna on odd objects
        return False
    return type(result).__name__ in ("bool", "bool_") and bool(result)


def _blank_error(keyword: str) -> InvalidInputError:
    vr = dictionary_VR(keyword) if keyword in keyword_dict else ""
    if vr in WILDCARD_VRS:
        hint = "use '*' to ask for everything"
    else:
        hint = f"leave {keyword} out, and use e.g. PatientID='*' to ask for everything"
    return _fail(keyword, f"a blank value would match everything; {hint}")


# -- Python value -> DICOM string -------------------------------------------------------


def encode_matching(keyword: str, value: Any) -> str:
    """Encode one matching value by the keyword's VR and check it; raises InvalidInputError."""
    if keyword not in keyword_dict:
        raise InvalidInputError(f"{keyword!r} is not a DICOM keyword")
    if is_blank(value):
        raise _blank_error(keyword)
    vr = dictionary_VR(keyword)
    if vr == "DA":
        text = _range(keyword, value, _one_date)
    elif vr == "TM":
        text = _range(keyword, value, _one_time)
    elif vr == "DT":
        text = _range(keyword, value, _one_datetime)
    elif vr in INT_VRS:
        text = _one_int(keyword, value)
    elif vr in FLOAT_VRS:
        text = _one_float(keyword, value)
    elif vr in LIST_VRS:
        items = [value] if isinstance(value, str) else _items(keyword, value)
        text = "\\".join(_one_text(keyword, v) for v in items)
    elif vr in TEXT_VRS:
        if not isinstance(value, str) and _is_collection(value):
            raise _fail(
                keyword,
                f"the standard allows no list matching on {vr} keys; to query several "
                f"values pass a frame with one row per value, e.g. "
                f"find_studies(pd.DataFrame({{'{keyword}': [...]}})) (one query per row)",
            )
        text = _one_text(keyword, value)
    else:
        raise _fail(keyword, f"a {vr} attribute can be returned, not matched")
    check_matching(keyword, text)
    return text


def _is_collection(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset | dict) or (
        hasattr(value, "tolist") and bool(getattr(value, "ndim", None))
    )


def _items(keyword: str, value: Any) -> list[Any]:
    if isinstance(value, set | frozenset):
        items = sorted(value, key=str)
    elif isinstance(value, list | tuple):
        items = list(value)
    elif hasattr(value, "tolist") and isinstance(listed := value.tolist(), list):
        items = listed
    else:
        raise _fail(keyword, f"expected a string or a list of strings, not {type(value).__name__}")
    if not items:
        raise _blank_error(keyword)
    for item in items:
        if is_blank(item):
            raise _fail(
                keyword,
                "a list item is blank (None, NaN or empty): it would match everything; remove it",
            )
    return items


def _one_text(keyword: str, value: Any) -> str:
    if is_blank(value):
        raise _fail(
            keyword,
            "a list item is blank (None, NaN or empty): it would match everything; remove it",
        )
    if not isinstance(value, str):
        raise _fail(
            keyword,
            f"expected text, not {type(value).__name__} (read identifiers as strings, e.g. "
            "pd.read_csv(..., dtype=str), so that leading zeros survive)",
        )
    return value.strip(" ")


def _range(keyword: str, value: Any, one: Callable[[str, Any], str]) -> str:
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise _fail(keyword, "a range is a (start, end) pair")
        lo, hi = ("" if is_blank(v) else one(keyword, v) for v in value)
        if not lo and not hi:
            raise _fail(keyword, "a range needs at least one end")
        return f"{lo}-{hi}"
    if isinstance(value, str):
        text = value.strip(" ")
        vr = dictionary_VR(keyword)
        if vr == "DA" and _ISO_DATE.match(text):
            return one(keyword, text)
        if vr == "DT" or "-" not in text or text.count("-") > 1:
            return one(keyword, text)  # DT ranges and malformed text: check_matching decides
        lo, _, hi = text.partition("-")  # a DICOM range "A-B"
        return f"{one(keyword, lo) if lo else ''}-{one(keyword, hi) if hi else ''}"
    return one(keyword, value)


def _plain_datetime(value: Any) -> Any:
    """pandas Timestamps and numpy datetime64 to datetime."""
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    if type(value).__name__ == "datetime64":
        import pandas as pd

        return pd.Timestamp(value).to_pydatetime()
    return value


def _one_date(keyword: str, value: Any) -> str:
    value = _plain_datetime(value)
    if isinstance(value, dt.date):  # datetime included
        return format_da(value)
    if isinstance(value, str):
        text = value.strip(" ")
        match = _ISO_DATE.match(text)
        return "".join(match.groups()) if match else text
    raise _fail(keyword, f"expected a date, 'YYYYMMDD' or 'YYYY-MM-DD', not {type(value).__name__}")


def _one_time(keyword: str, value: Any) -> str:
    if isinstance(value, dt.timedelta) or type(value).__name__ == "timedelta64":
        import pandas as pd

        seconds = pd.Timedelta(value).total_seconds()
        if not 0 <= seconds < 86400:
            raise _fail(keyword, "a time of day is between 00:00 and 24:00")
        value = (dt.datetime.min + dt.timedelta(seconds=seconds)).time()
    if isinstance(value, dt.time):
        text = value.strftime("%H%M%S")
        return f"{text}.{value.microsecond:06d}" if value.microsecond else text
    if isinstance(value, str):
        text = value.strip(" ")
        match = _TM_COLONS.match(text)
        if match:
            return "".join(g for g in match.groups() if g)
        return text
    raise _fail(keyword, f"expected a time or 'HHMMSS', not {type(value).__name__}")


def _one_datetime(keyword: str, value: Any) -> str:
    value = _plain_datetime(value)
    if isinstance(value, dt.datetime):
        text = format_da(value) + value.strftime("%H%M%S")
        if value.microsecond:
            text += f".{value.microsecond:06d}"
        offset = value.utcoffset()
        if offset is not None:
            minutes = int(offset.total_seconds()) // 60
            sign = "+" if minutes >= 0 else "-"
            text += f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
        return text
    if isinstance(value, dt.date):
        return format_da(value)
    if isinstance(value, str):
        return value.strip(" ")
    raise _fail(keyword, f"expected a datetime or 'YYYYMMDDHHMMSS', not {type(value).__name__}")


def _one_int(keyword: str, value: Any) -> str:
    if isinstance(value, bool):
        raise _fail(keyword, "expected an integer, not a bool")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return str(int(float(value)))
    if isinstance(value, str):
        return value.strip(" ")
    raise _fail(keyword, f"expected an integer, not {type(value).__name__}")


def _one_float(keyword: str, value: Any) -> str:
    if isinstance(value, bool):
        raise _fail(keyword, "expected a number, not a bool")
    if isinstance(value, numbers.Real | Decimal):
        number = float(value)
        if not math.isfinite(number):
            raise _fail(keyword, "expected a finite number")
        if dictionary_VR(keyword) == "DS":
            return format_number_as_ds(number)
        return repr(number)
    if isinstance(value, str):
        return value.strip(" ")
    raise _fail(keyword, f"expected a number, not {type(value).__name__}")


# -- DICOM string -> checked --------------------------------------------------------------


def needs_utf8(values: Iterable[str]) -> bool:
    """True when a value is not ASCII (we then declare ISO_IR 192, UTF-8)."""
    return any(not v.isascii() for v in values)


def check_matching(keyword: str, text: str) -> str:
    """Check an encoded matching value against the keyword's VR; return it or raise."""
    if keyword not in keyword_dict:
        raise InvalidInputError(f"{keyword!r} is not a DICOM keyword")
    if not isinstance(text, str):
        raise _fail(keyword, f"expected text, not {type(text).__name__}")
    vr = dictionary_VR(keyword)
    if _CONTROL.search(text):
        raise _fail(
            keyword,
            "control characters (NUL, TAB, CR, LF, ESC, DEL...) are not "
            "allowed in a matching value",
        )
    if not _encodable(text):
        raise _fail(
            keyword, "the value has characters that cannot be encoded in UTF-8 (a lone surrogate?)"
        )
    if "\\" in text and vr not in LIST_VRS:
        raise _fail(
            keyword,
            f"backslash is not allowed: the standard allows no list matching "
            f"on {vr} keys; to query several values pass a frame, one row per value",
        )
    items = text.split("\\") if vr in LIST_VRS else [text]
    for item in items:
        if not item.strip():
            raise _blank_error(keyword)
        _check_one(keyword, vr, item)
    return text


def _encodable(text: str) -> bool:
    """UTF-8 can encode it (no lone surrogates); checked without raising, so that no
    exception carrying the value is chained to ours."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_one(keyword: str, vr: str, text: str) -> None:
    if vr not in WILDCARD_VRS and ("*" in text or "?" in text):
        raise _fail(
            keyword,
            f"wildcards (* and ?) are not allowed on {vr} keys (only on text); "
            f"to ask for everything leave {keyword} out and use e.g. PatientID='*'",
        )
    if vr not in EXTENDED_VRS and not text.isascii():
        raise _fail(keyword, f"{vr} values may only use ASCII characters")
    if vr == "DA":
        _check_range(keyword, vr, text, _date_key)
    elif vr == "TM":
        _check_range(keyword, vr, text, _time_key)
    elif vr == "DT":
        _check_dt_range(keyword, text)
    elif vr == "UI":
        try:
            check_uid(text)
        except InvalidInputError:
            raise _fail(
                keyword,
                f"{_shown(keyword, text).strip() or 'the value'} is not a valid DICOM UID "
                "(digits and dots, no leading zeros, at most 64 characters)",
            ) from None
    elif vr == "PN":
        groups = text.split("=")
        if len(groups) > 3:
            raise _fail(keyword, "a person name has at most 3 component groups (separated by =)")
        for group in groups:
            if len(group) > MAX_LENGTH["PN"]:
                raise _fail(keyword, "a person name component group is at most 64 characters")
            if group.count("^") > 4:
                raise _fail(keyword, "a person name has at most 5 components (separated by ^)")
    elif vr in INT_VRS:
        _check_int(keyword, vr, text)
    elif vr in FLOAT_VRS:
        _check_float(keyword, vr, text)
    elif vr == "CS":
        if not _CS.match(text):
            raise _fail(
                keyword,
                "CS values may only use uppercase letters, digits, space, "
                "underscore and the wildcards * and ?",
            )
    elif vr == "AS":
        if not _AS.match(text):
            raise _fail(keyword, "an age string is 3 digits and D, W, M or Y (e.g. 045Y)")
    elif vr == "AE":
        pass  # ASCII checked above; control characters and backslash refused
    elif vr not in TEXT_VRS:
        raise _fail(keyword, f"a {vr} attribute can be returned, not matched")
    limit = MAX_LENGTH.get(vr)
    if vr in RANGE_LENGTH and "-" in text:
        limit = RANGE_LENGTH[vr]
    if limit is not None and vr != "PN" and len(text) > limit:
        raise _fail(keyword, f"a {vr} value is at most {limit} characters (got {len(text)})")


def _check_range(
    keyword: str, vr: str, text: str, key: Callable[[str, str], tuple[int, ...]]
) -> None:
    if text.count("-") > 1:
        raise _fail(keyword, f"a {vr} range is 'start-end' with one hyphen")
    if "-" in text:
        lo, _, hi = text.partition("-")
        if not lo and not hi:
            raise _fail(keyword, "a range needs at least one end")
        lo_key = key(keyword, lo) if lo else None
        hi_key = key(keyword, hi) if hi else None
        if lo_key is not None and hi_key is not None and lo_key > hi_key:
            shown = _shown(keyword, text)
            raise _fail(keyword, f"impossible {_NOUN[vr]} range{shown}: start is after end")
        return
    key(keyword, text)


def _date_key(keyword: str, text: str) -> tuple[int, ...]:
    match = _DA.match(text)
    if not match:
        raise _fail(
            keyword,
            f"{_shown(keyword, text).strip() or 'the value'} is not a date "
            "(use YYYYMMDD, YYYY-MM-DD or a date)",
        )
    try:
        dt.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError as exc:
        raise _fail(keyword, f"not a valid date ({exc})") from None
    return int(match[1]), int(match[2]), int(match[3])


def _time_key(keyword: str, text: str) -> tuple[int, ...]:
    match = _TM.match(text)
    if not match:
        raise _fail(
            keyword, "a time is HH, HHMM, HHMMSS or HHMMSS.FFFFFF (or HH:MM:SS, or a datetime.time)"
        )
    hour, minute, second, frac = match.groups()
    if int(hour) > 23 or int(minute or 0) > 59 or int(second or 0) > 60:
        raise _fail(keyword, "a time has hours 00-23, minutes 00-59 and seconds 00-60")
    return int(hour), int(minute or 0), int(second or 0), int((frac or "").ljust(6, "0"))


def _dt_key(keyword: str, text: str) -> tuple[int, ...]:
    match = _DT.match(text)
    if not match:
        raise _fail(keyword, "a datetime is YYYY[MM[DD[HH[MM[SS[.F]]]]]][+-ZZXX]")
    year, month, day, hour, minute, second, frac, offset = match.groups()
    try:
        dt.datetime(int(year), int(month or 1), int(day or 1))
    except ValueError as exc:
        raise _fail(keyword, f"not a valid date ({exc})") from None
    if int(hour or 0) > 23 or int(minute or 0) > 59 or int(second or 0) > 60:
        raise _fail(keyword, "a time has hours 00-23, minutes 00-59 and seconds 00-60")
    if offset is not None:
        sign = -1 if offset[0] == "-" else 1
        zone = sign * (int(offset[1:3]) * 60 + int(offset[3:5]))
        if int(offset[3:5]) > 59 or not -12 * 60 <= zone <= 14 * 60:
            raise _fail(keyword, "a UTC offset is between -1200 and +1400")
    return (
        int(year),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        int((frac or "").ljust(6, "0")),
    )


def _check_dt_range(keyword: str, text: str) -> None:
    single_error: InvalidInputError | None = None
    if _DT.match(text):
        try:
            _dt_key(keyword, text)
        except InvalidInputError as exc:  # "2020-2021" reads as a year and an offset too
            single_error = exc
        else:
            if len(text) > MAX_LENGTH["DT"]:
                raise _fail(keyword, "a DT value is at most 26 characters")
            return
    for i in (i for i, c in enumerate(text) if c == "-"):
        lo, hi = text[:i], text[i + 1 :]
        if (not lo or _DT.match(lo)) and (not hi or _DT.match(hi)) and (lo or hi):
            try:
                lo_key = _dt_key(keyword, lo) if lo else None
                hi_key = _dt_key(keyword, hi) if hi else None
            except InvalidInputError as exc:
                single_error = single_error or exc
                continue
            if lo_key is not None and hi_key is not None and lo_key > hi_key:
                raise _fail(
                    keyword, f"impossible datetime range{_shown(keyword, text)}: start is after end"
                )
            if len(text) > RANGE_LENGTH["DT"]:
                raise _fail(keyword, "a DT range is at most 54 characters")
            return
    raise single_error or _fail(
        keyword,
        "a datetime is YYYY[MM[DD[HH[MM[SS[.F]]]]]][+-ZZXX], a range 'start-end', "
        "or a (start, end) pair",
    )


def _check_int(keyword: str, vr: str, text: str) -> None:
    stripped = text.strip(" ")
    if not _INT.match(stripped):
        raise _fail(keyword, f"expected an integer{_shown(keyword, text)}")
    low, high = INT_VRS[vr]
    if not low <= int(stripped) <= high:
        raise _fail(keyword, f"a {vr} value is between {low} and {high}")


def _check_float(keyword: str, vr: str, text: str) -> None:
    stripped = text.strip(" ")
    if not _DS.match(stripped):
        raise _fail(keyword, f"expected a decimal number{_shown(keyword, text)}")
    if not math.isfinite(float(stripped)):
        raise _fail(keyword, "expected a finite number")


def element_value(keyword: str, text: str) -> Any:
    """The value to put in the identifier: binary numbers as numbers, the rest as text."""
    vr = dictionary_VR(keyword)
    if vr in INT_VRS and vr != "IS":
        return int(text)
    if vr in ("FL", "FD"):
        return float(text)
    return text
