"""Property-based attacks on result decoding: whatever a peer answers never breaks us.

Every example is a C-FIND identifier as a peer sends it: well-formed values are encoded by
pydicom's writer (``pynetdicom.dsutils.encode``) in the example's transfer syntax and
character set; malformed ones are hand-made elements (any bytes, any length that fits the
length field). The bytes are decoded back with ``pynetdicom.dsutils.decode``, exactly as
pynetdicom hands a C-FIND response identifier to us, so every element arrives raw.

Both decoders are attacked: the result models (``*Result.from_dataset``) and the typed frames
(``to_frame``), on a fresh decode and on a dataset the models already converted (what
``names_look_emptied`` leaves behind in a real C-FIND).  Properties: nothing raises; an
unusable value is None / NA; a well-formed value is kept exactly; both decoders agree; and
decoding never writes a received value into a warning or a log record.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.filereader import read_dataset
from pynetdicom.dsutils import decode, encode

from clarinet_nb.dicom.results import (
    ImageResult,
    PatientResult,
    SeriesResult,
    StudyResult,
    names_look_emptied,
)
from clarinet_nb.notebook.frames import to_frame

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

MODELS = (PatientResult, StudyResult, SeriesResult, ImageResult)
FIELD_OF: dict[str, str] = {}
for _model in MODELS:
    FIELD_OF.update(_model.fields_by_keyword)

PROPERTY = settings(
    max_examples=200,
    deadline=None,  # 2 shared cores: a slow example is not a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- the wire


@dataclass(frozen=True)
class Syntax:
    """A transfer syntax a C-FIND identifier may be encoded in."""

    name: str
    implicit: bool
    little: bool
    deflated: bool = False


SYNTAXES = (
    Syntax("implicit-le", True, True),
    Syntax("explicit-le", False, True),
    Syntax("explicit-be", False, False),
    Syntax("deflated-explicit-le", False, True, True),
)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def encode_raw(elements: dict[int, tuple[str, bytes]], syntax: Syntax) -> bytes:
    """Hand-made elements (any value bytes), padded to even length as a peer does."""
    end = "<" if syntax.little else ">"
    out = bytearray()
    for tag in sorted(elements):
        vr, value = elements[tag]
        if len(value) % 2:
            value += b"\x00" if vr == "UI" else b" "
        group, number = tag >> 16, tag & 0xFFFF
        if syntax.implicit:
            out += struct.pack(f"{end}HHI", group, number, len(value))
        elif vr in _LONG_VRS:
            out += struct.pack(f"{end}HH2s2xI", group, number, vr.encode(), len(value))
        else:
            out += struct.pack(f"{end}HH2sH", group, number, vr.encode(), len(value))
        out += value
    return deflate(bytes(out)) if syntax.deflated else bytes(out)


def encode_pydicom(ds: Dataset, syntax: Syntax) -> bytes:
    """Well-formed values encoded by pydicom's writer, as a pydicom/pynetdicom peer does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. pydicom on an unknown character set term
        data = encode(ds, syntax.implicit, syntax.little, syntax.deflated)
    assert data is not None
    return data


def received(data: bytes, syntax: Syntax) -> Dataset:
    """Decode as pynetdicom does for a C-FIND response identifier."""
    return decode(BytesIO(data), syntax.implicit, syntax.little, syntax.deflated)


def raw_value(ds: Dataset, keyword: str, syntax: Syntax) -> bytes:
    """The value bytes pydicom's writer gives one element (encoded in ``ds``'s charset)."""
    data = encode_pydicom(ds, Syntax("explicit-le", False, True))
    raw = read_dataset(BytesIO(data), False, True)
    value = raw.get_item(keyword).value
    assert isinstance(value, bytes)
    return value


# --------------------------------------------------------------------------- decoders


@dataclass
class Decoded:
    """What every decoder made of one identifier."""

    fields: dict[str, Any]  # model field values by keyword (all four models agree)
    attributes: dict[str, Any]
    frame: pd.Series  # the frame row of a fresh decode
    converted_frame: pd.Series  # the frame row after the models converted the dataset


@contextmanager
def no_value_leaks(values: list[str]) -> Iterator[None]:
    """Fail if a warning or a log record (any logger, any level) quotes one of ``values``."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    texts = records + [str(w.message) for w in caught]
    for value in values:
        leaks = [t for t in texts if value in t]
        assert not leaks, f"a received value is quoted in {leaks[:3]}"


def decode_everything(data: bytes, syntax: Syntax) -> Decoded:
    """Run every decoder on fresh decodes of ``data``; nothing may raise."""
    fresh = received(data, syntax)
    frame = to_frame([fresh], [])
    assert len(frame) == 1
    ds = received(data, syntax)
    names_look_emptied(ds)  # must not raise either (it converts PN elements)
    fields: dict[str, Any] = {}
    attributes: dict[str, Any] | None = None
    for model in MODELS:
        result = model.from_dataset(ds)
        if attributes is None:
            attributes = dict(result.attributes)
        assert result.attributes == attributes, "the four models read different attributes"
        for keyword, name in model.fields_by_keyword.items():
            value = getattr(result, name)
            if keyword in fields:
                assert fields[keyword] == value, keyword
            fields[keyword] = value
    converted = to_frame([ds], [])
    assert attributes is not None
    return Decoded(fields, attributes, frame.iloc[0], converted.iloc[0])


def cell(row: pd.Series, keyword: str) -> Any:
    """A frame cell as a plain value (None for NA, lists as lists)."""
    if keyword not in row.index:
        return None
    value = row[keyword]
    if isinstance(value, list):
        return value
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
        return value
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


# --------------------------------------------------------------------------- keywords

DATES = ("StudyDate", "PatientBirthDate", "SeriesDate")
TIMES = ("StudyTime",)
DATETIMES = ("AcquisitionDateTime",)
INTS = ("NumberOfStudyRelatedInstances", "SeriesNumber", "InstanceNumber", "NumberOfFrames")
DECIMALS = ("PatientWeight", "PatientSize")
TEXTS = ("PatientID", "AccessionNumber", "StudyDescription", "StudyID", "SeriesDescription")
NAMES = ("PatientName", "ReferringPhysicianName")
CODES = ("PatientSex", "Modality")
LISTS = ("ModalitiesInStudy",)
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
ALL_KEYS = DATES + TIMES + DATETIMES + INTS + DECIMALS + TEXTS + NAMES + CODES + LISTS + UIDS
MAX_LENGTH = {"LO": 64, "SH": 16, "PN": 64, "CS": 16}

_NS_MIN = dt.datetime(1677, 9, 22)
_NS_MAX = dt.datetime(2262, 4, 11)


def vr_of(keyword: str) -> str:
    return str(dictionary_VR(keyword))


def tag_of(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return int(tag)


# --------------------------------------------------------------------------- character sets

# Characters of JIS X 0208 (ISO 2022 IR 87): kanji, hiragana, katakana.  "東" and "能"
# encode with a 0x5C ("\\") byte, the VM delimiter.
JIS = "山田太郎花子佐藤鈴木一郎次郎日本東京大阪病院能表やまだたろうはなこヤマダタロウハナコ"
_NOT_TEXT = ("Cc", "Cs", "Co", "Cn", "Zl", "Zp")


@dataclass(frozen=True)
class Charset:
    """A SpecificCharacterSet a peer may send, and the text it can carry."""

    name: str
    term: str | list[str] | None
    alphabet: st.SearchStrategy[str]


def _chars(codec: str | None = None) -> st.SearchStrategy[str]:
    return st.characters(codec=codec, exclude_categories=_NOT_TEXT, exclude_characters="\\")


ASCII = _chars("ascii")
CHARSETS = (
    Charset("absent", None, ASCII),
    Charset("ISO_IR 6", "ISO_IR 6", ASCII),
    Charset("ISO_IR 100", "ISO_IR 100", _chars("latin-1")),
    Charset("ISO_IR 192", "ISO_IR 192", _chars("utf-8")),
    Charset("ISO 2022 IR 87", ["", "ISO 2022 IR 87"], ASCII | st.sampled_from(JIS)),
    Charset("GB18030", "GB18030", _chars("utf-8")),
    Charset("unknown term", "ISO_IR 999", ASCII),
)
ODD_TERMS = ("ISO_IR 999", "KLINGON", "ISO 2022 IR 100\\ISO_IR 192", "", "\\\\", "ISO_IR 192\x00")


def text_value(charset: Charset, max_size: int, delimiters: str = "") -> st.SearchStrategy[str]:
    """Text the character set can carry, without padding (leading/trailing spaces)."""
    alphabet = charset.alphabet.filter(lambda c: c not in delimiters)
    return st.text(alphabet, min_size=1, max_size=max_size).map(lambda s: s.strip(" ")).filter(bool)


def name_value(charset: Charset) -> st.SearchStrategy[str]:
    """A person name: 1-3 component groups of 1-5 components."""
    component = text_value(charset, 12, delimiters="^=")
    group = st.lists(component, min_size=1, max_size=5).map("^".join)
    return st.lists(group, min_size=1, max_size=3).map("=".join)


# --------------------------------------------------------------------------- well-formed values


@dataclass(frozen=True)
class Value:
    """A value as sent (``sent``, what pydicom is given) and as it must be read."""

    sent: Any
    expected: Any  # the model / attributes value
    frame: Any  # the frame cell


def _date_value(day: dt.date) -> Value:
    inside = _NS_MIN < dt.datetime.combine(day, dt.time()) < _NS_MAX
    text = f"{day.year:04d}{day.month:02d}{day.day:02d}"
    return Value(text, day, pd.Timestamp(day) if inside else None)


@st.composite
def time_value(draw: st.DrawFn) -> Value:
    h, m, s = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    precision = draw(st.integers(0, 3))
    digits = draw(st.integers(1, 6))
    micro = draw(st.integers(0, 10**digits - 1)) * 10 ** (6 - digits)
    text = f"{h:02d}"
    if precision == 0:
        m = s = micro = 0
    else:
        text += f"{m:02d}"
    if precision <= 1:
        s = micro = 0
    else:
        text += f"{s:02d}"
    if precision <= 2:
        micro = 0
    else:
        text += "." + f"{micro:06d}"[:digits]
    value = dt.time(h, m, s, micro)
    delta = pd.Timedelta(hours=h, minutes=m, seconds=s, microseconds=micro)
    return Value(text, value, delta)


@st.composite
def datetime_value(draw: st.DrawFn) -> Value:
    moment = draw(st.datetimes(dt.datetime(1700, 1, 1), dt.datetime(2200, 12, 31)))
    precision = draw(st.integers(0, 6))
    digits = draw(st.integers(1, 6))
    parts = ["%Y", "%m", "%d", "%H", "%M", "%S"][: min(precision, 5) + 1]
    text = moment.strftime("".join(parts))
    keep = {
        "year": moment.year,
        "month": moment.month if precision >= 1 else 1,
        "day": moment.day if precision >= 2 else 1,
        "hour": moment.hour if precision >= 3 else 0,
        "minute": moment.minute if precision >= 4 else 0,
        "second": moment.second if precision >= 5 else 0,
        "microsecond": 0,
    }
    if precision == 6:
        micro = f"{moment.microsecond:06d}"[:digits]
        text += "." + micro
        keep["microsecond"] = int(micro.ljust(6, "0"))
    if draw(st.booleans()):  # a UTC offset: allowed, and dropped (naive local time)
        text += draw(st.sampled_from(["+0000", "-0500", "+0130", "+1400", "-1200"]))
    value = dt.datetime(**keep)
    return Value(text, value, pd.Timestamp(value))


@st.composite
def is_value(draw: st.DrawFn) -> Value:
    number = draw(st.integers(-(2**31), 2**31 - 1))
    text = str(number)
    if number >= 0 and draw(st.booleans()):
        text = draw(st.sampled_from(["+", "", "0", "00"])) + text
    text = text[:12] if len(text) > 12 else text
    return Value(text, int(text), int(text))


@st.composite
def ds_value(draw: st.DrawFn) -> Value:
    sign = draw(st.sampled_from(["", "-", "+"]))
    whole = draw(st.integers(0, 10**6))
    frac = draw(st.sampled_from(["", ".", ".5", ".25", ".125", ".0001"]))
    exponent = draw(st.sampled_from(["", "e3", "E-2", "e+10", "e-300"]))
    text = f"{sign}{whole}{frac}{exponent}"[:16]
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", text):
        text = str(whole)
    return Value(text, float(text), float(text))


def uid_value() -> st.SearchStrategy[Value]:
    parts = st.lists(st.integers(0, 10**9), min_size=2, max_size=10)
    return (
        parts.map(lambda p: ".".join(map(str, p)))
        .filter(lambda u: len(u) <= 64)
        .map(lambda u: Value(u, u, u))
    )


def code_value() -> st.SearchStrategy[str]:
    alphabet = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ")
    return st.text(alphabet, min_size=1, max_size=16).map(str.strip).filter(bool)


def well_formed_value(keyword: str, charset: Charset) -> st.SearchStrategy[Value]:
    vr = vr_of(keyword)
    if keyword in DATES:
        return st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)).map(_date_value)
    if keyword in TIMES:
        return time_value()
    if keyword in DATETIMES:
        return datetime_value()
    if keyword in INTS:
        return is_value()
    if keyword in DECIMALS:
        return ds_value()
    if keyword in LISTS:
        return st.lists(code_value(), min_size=1, max_size=4).map(lambda v: Value(v, v, v))
    if keyword in CODES:
        return code_value().map(lambda v: Value(v, v, v))
    if keyword in UIDS:
        return uid_value()
    if keyword in NAMES:
        return name_value(charset).map(lambda v: Value(v, v, v))
    return text_value(charset, MAX_LENGTH[vr]).map(lambda v: Value(v, v, v))


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[Charset, Syntax, dict[str, Value]]:
    charset = draw(st.sampled_from(CHARSETS))
    keys = draw(st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=12, unique=True))
    values = {k: draw(well_formed_value(k, charset)) for k in keys}
    return charset, draw(st.sampled_from(SYNTAXES)), values


def dataset_of(charset: Charset, values: dict[str, Value]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    if charset.term is not None:
        ds.SpecificCharacterSet = charset.term
    for keyword, value in values.items():
        ds.add_new(tag_of(keyword), vr_of(keyword), value.sent)
    return ds


def model_value(decoded: Decoded, keyword: str) -> Any:
    """The models' reading of a keyword: its field if it has one, else its attribute."""
    if keyword in FIELD_OF:
        return decoded.fields[keyword]
    return decoded.attributes.get(keyword)


@PROPERTY
@given(well_formed())
def test_well_formed_values_are_kept_exactly(
    case: tuple[Charset, Syntax, dict[str, Value]],
) -> None:
    charset, syntax, values = case
    data = encode_pydicom(dataset_of(charset, values), syntax)
    decoded = decode_everything(data, syntax)
    for keyword, value in values.items():
        assert model_value(decoded, keyword) == value.expected, keyword
        assert decoded.attributes[keyword] == value.expected, keyword
        assert cell(decoded.frame, keyword) == value.frame, keyword
        assert cell(decoded.converted_frame, keyword) == value.frame, keyword


# --------------------------------------------------------------------------- malformed values

_DIGITS = "[0-9]"
_DA = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})|([0-9]{4})([-.])([0-9]{2})\5([0-9]{2})")
_TM = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?")
_DT = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})"
    r"(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?)?)?)?([+-][0-9]{4})?"
)
_IS = re.compile(r"[+-]?[0-9]+")
_DS = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _single(text: str) -> str | None:
    """The one value of a single-valued element (None when empty or multi-valued)."""
    if "\\" in text:
        return None
    return text.strip(" \x00") or None


def oracle_da(text: str) -> dt.date | None:
    value = _single(text)
    match = _DA.fullmatch(value or "")
    if match is None:
        return None
    year, month, day = (g for g in match.groups() if g is not None and g not in "-.")
    try:
        return dt.date(int(year), int(month), int(day))
    except ValueError:
        return None


def oracle_tm(text: str) -> dt.time | None:
    value = _single(text)
    if value is not None and re.fullmatch(r"[0-9]{2}(:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?", value):
        value = value.replace(":", "")  # ACR-NEMA HH:MM:SS
    match = _TM.fullmatch(value or "")
    if match is None:
        return None
    hour, minute, second, frac = match.groups()
    try:
        return dt.time(
            int(hour),
            int(minute or 0),
            min(int(second or 0), 59) if int(second or 0) <= 60 else 99,  # leap second
            int((frac or "").ljust(6, "0")),
        )
    except ValueError:
        return None


def oracle_dt(text: str) -> dt.datetime | None:
    match = _DT.fullmatch(_single(text) or "")
    if match is None:
        return None
    year, month, day, hour, minute, second, frac, offset = match.groups()
    if offset is not None and (int(offset[1:3]) > 14 or int(offset[3:]) > 59):
        return None
    try:
        return dt.datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            min(int(second or 0), 59) if int(second or 0) <= 60 else 99,
            int((frac or "").ljust(6, "0")),
        )
    except ValueError:
        return None


def oracle_is(text: str) -> int | None:
    value = _single(text) or ""
    number: float | int
    if _IS.fullmatch(value):
        number = int(value)
    elif _DS.fullmatch(value):  # "12.0", "1e3": an integer written as a decimal
        number = float(value)
        if not number.is_integer():
            return None
        number = int(number)
    else:
        return None
    return number if -(2**63) <= number < 2**63 else None


def oracle_ds(text: str) -> float | None:
    value = _single(text) or ""
    if not _DS.fullmatch(value):
        return None
    number = float(value)
    return number if abs(number) != float("inf") else None


def _frame_date(value: dt.date | None) -> pd.Timestamp | None:
    if value is None:
        return None
    moment = value if isinstance(value, dt.datetime) else dt.datetime.combine(value, dt.time())
    return pd.Timestamp(moment) if _NS_MIN < moment < _NS_MAX else None


def _frame_time(value: dt.time | None) -> pd.Timedelta | None:
    if value is None:
        return None
    return pd.Timedelta(
        hours=value.hour,
        minutes=value.minute,
        seconds=value.second,
        microseconds=value.microsecond,
    )


ORACLES: dict[str, tuple[Callable[[str], Any], Callable[[Any], Any]]] = {
    **{k: (oracle_da, _frame_date) for k in DATES},
    **{k: (oracle_tm, _frame_time) for k in TIMES},
    **{k: (oracle_dt, _frame_date) for k in DATETIMES},
    **{k: (oracle_is, lambda v: v) for k in INTS},
    **{k: (oracle_ds, lambda v: v) for k in DECIMALS},
}

MALFORMED = {
    "DA": [
        "2020-13-45",
        "",
        "abcd",
        "20200230",
        "2020013",
        "20200101-20201231",
        "00000000",
        " 20200101",
        "20200101\x00",
        "20200101\\20200102",
        "2020.01.31",
        "1958-04-03",
        "\uff12\uff10\uff12\uff100101",
        "2020\u00b2101",
        "+2020101",
        "2020 101",
        "99991231",
        "15000101",
    ],
    "TM": [
        "25",
        "",
        "1061",
        "10.5",
        "101502.1234567",
        "10:15:02",
        "1:2:3",
        "235960",
        "235961",
        "-10000",
        "10a5",
        "101502.",
        "24",
        "12\x0034",
        "\uff11\uff12",
    ],
    "DT": [
        "",
        "2020-01-31",
        "20200131101502+0100",
        "20200131101502.5-0500",
        "2020+2500",
        "20201331",
        "2020013110150x",
        "20200131246000",
        "2020.5",
        "20200131101560",
        "20200131T1015",
        "x",
    ],
    "IS": [
        "1.5",
        "x",
        "",
        "1.0",
        "1e3",
        "1_000",
        "--1",
        "+",
        "9" * 12,
        "9" * 20,
        "\u0661\u0662",
        " 12 ",
        "12\\13",
        "0x10",
        "nan",
        "inf",
        "1e400",
    ],
    "DS": [
        "nan",
        "1e400",
        "-1e400",
        "inf",
        "NaN",
        "x",
        "",
        "1.5.5",
        "1_0.5",
        "1e",
        ".",
        "+.5",
        "12\\13",
        "0x1p3",
        "1" * 40,
        "infinity",
        "1,5",
        "\u0661\u066b\u0665",
    ],
    "CS": ["CT\\MR\\", "\\", "CT\\\\MR", " CT \\ MR", "", "ct", "CT\x00", "C T", "\\CT"],
    "UI": ["1.2.3\x00", "", "abc", "1.2..3", "01.2", "1.2.3\\4.5", " 1.2.3 "],
}


def _malformed_text(vr: str) -> st.SearchStrategy[bytes]:
    return st.sampled_from(MALFORMED.get(vr, [""])).map(
        lambda t: t.encode("utf-8", "surrogateescape")
    )


@st.composite
def mutated(draw: st.DrawFn, keyword: str, charset: Charset) -> bytes:
    """A well-formed value's bytes, then padded, repeated, truncated or mixed with junk."""
    value = draw(well_formed_value(keyword, charset))
    ds = dataset_of(charset, {keyword: value})
    raw = raw_value(ds, keyword, Syntax("explicit-le", False, True))
    how = draw(st.sampled_from(["nul", "space", "long", "cut", "junk", "empty-items", "as is"]))
    if how == "nul":
        raw = raw.rstrip(b" ") + b"\x00" * draw(st.integers(1, 3))
    elif how == "space":
        raw = b"  " + raw + b"  "
    elif how == "long":
        raw = raw * draw(st.integers(2, 60))
    elif how == "cut" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == "junk":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    elif how == "empty-items":
        raw = b"\\" + raw + b"\\\\"
    return raw


def hostile_value(keyword: str, charset: Charset) -> st.SearchStrategy[bytes]:
    vr = vr_of(keyword)
    return st.one_of(
        _malformed_text(vr),
        mutated(keyword, charset),
        st.binary(max_size=80),
        st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


@st.composite
def hostile(draw: st.DrawFn) -> tuple[Syntax, bytes | None, dict[str, bytes]]:
    charset = draw(st.sampled_from(CHARSETS))
    term: bytes | None
    if draw(st.integers(0, 5)) == 0:
        term = draw(st.sampled_from(ODD_TERMS)).encode()
    elif charset.term is None:
        term = None
    else:
        term = "\\".join([charset.term] if isinstance(charset.term, str) else charset.term).encode()
    keys = draw(st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=10, unique=True))
    values = {k: draw(hostile_value(k, charset)) for k in keys}
    return draw(st.sampled_from(SYNTAXES)), term, values


def hostile_bytes(syntax: Syntax, term: bytes | None, values: dict[str, bytes]) -> bytes:
    elements = {tag_of("QueryRetrieveLevel"): ("CS", b"STUDY ")}
    if term is not None:
        elements[tag_of("SpecificCharacterSet")] = ("CS", term)
    for keyword, raw in values.items():
        elements[tag_of(keyword)] = (vr_of(keyword), raw)
    return encode_raw(elements, syntax)


def _quotable(raw: bytes) -> list[str]:
    """Texts of a received value long and odd enough to be found in a message by chance only
    if it was quoted."""
    text = raw.decode("latin-1").strip(" \x00")
    return [text] if len(text) >= 8 and not text.isspace() else []


@PROPERTY
@given(hostile())
@example((SYNTAXES[1], None, {"PatientName": "Müller^Jürgen".encode(), "PatientID": b"P\xfc1"}))
@example((SYNTAXES[0], b"ISO_IR 999", {"StudyDate": b"2020-13-45", "PatientID": b"P1\x00\x00"}))
@example((SYNTAXES[2], b"GB18030", {"PatientName": "王^小明".encode("gb18030")}))
@example((SYNTAXES[3], b"\\ISO 2022 IR 87", {"StudyDescription": b"\x1b$BEl5~\x1b(B"}))
def test_hostile_values_never_raise_and_read_as_na_or_exactly(
    case: tuple[Syntax, bytes | None, dict[str, bytes]],
) -> None:
    syntax, term, values = case
    data = hostile_bytes(syntax, term, values)
    dates = [q for k in DATES if k in values for q in _quotable(values[k])]
    with no_value_leaks(dates):
        decoded = decode_everything(data, syntax)
    for keyword, raw in values.items():
        vr = vr_of(keyword)
        padded = raw + (b"" if len(raw) % 2 == 0 else (b"\x00" if vr == "UI" else b" "))
        text = padded.decode("latin-1")
        frame_cells = (cell(decoded.frame, keyword), cell(decoded.converted_frame, keyword))
        model = model_value(decoded, keyword)
        if keyword in ORACLES:
            parse, in_frame = ORACLES[keyword]
            expected = parse(text)
            assert model == expected, (keyword, text)
            assert frame_cells == (in_frame(expected),) * 2, (keyword, text)
        elif keyword in LISTS:
            items = [item.strip(" \x00") or None for item in text.split("\\")]
            expected_cell = items if any(items) else None
            assert frame_cells == (expected_cell,) * 2, (keyword, text)
            assert model == [i for i in items if i], (keyword, text)
        elif keyword in UIDS or keyword in CODES:
            expected_text = _single(text)
            if "\\" not in text:
                assert model == expected_text, (keyword, text)
                assert frame_cells == (expected_text,) * 2, (keyword, text)
        else:  # text in the character set: both decoders read the same string
            assert model is None or isinstance(model, str)
            if b"\\" not in raw:
                assert frame_cells == (model, model), (keyword, raw)
            if model is not None:
                assert model == model.strip(" \x00"), "padding is stripped"


# --------------------------------------------------------------------------- character sets


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
@pytest.mark.parametrize(
    ("term", "name", "description"),
    [
        ("ISO_IR 100", "Müller^Jürgen", "Thorax ÄÖÜ"),
        ("ISO_IR 192", "山田^太郎", "頭部 CT"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "東京 能"),
        ("GB18030", "王^小明", "胸部 平扫"),
    ],
)
def test_names_in_every_character_set_are_kept(
    syntax: Syntax, term: str | list[str], name: str, description: str
) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = term
    ds.PatientName = name
    ds.StudyDescription = description
    ds.PatientID = "CLN-0001"
    data = encode_pydicom(ds, syntax)
    decoded = decode_everything(data, syntax)
    assert decoded.fields["PatientName"] == name
    assert decoded.fields["StudyDescription"] == description
    for row in (decoded.frame, decoded.converted_frame):
        assert row["PatientName"] == name
        assert row["StudyDescription"] == description
    assert not names_look_emptied(received(data, syntax))


def test_names_emptied_by_a_latin1_peer_are_detected() -> None:
    """Orthanc with DefaultEncoding Latin1 sends 山田^太郎 as "^" (see PEERS.md)."""
    for syntax in SYNTAXES:
        emptied = {"PatientName": b"^", "ReferringPhysicianName": b"^^^=^"}
        data = hostile_bytes(syntax, b"ISO_IR 100", emptied)
        assert names_look_emptied(received(data, syntax))
        decoded = decode_everything(data, syntax)
        assert decoded.fields["PatientName"] == "^"  # kept as sent: the warning says why
        kept = hostile_bytes(
            syntax, b"ISO_IR 100", {"PatientName": "Müller^Jürgen".encode("latin-1")}
        )
        assert not names_look_emptied(received(kept, syntax))
        assert not names_look_emptied(received(hostile_bytes(syntax, None, {}), syntax))


@PROPERTY
@given(st.lists(hostile(), min_size=2, max_size=6))
def test_rows_read_the_same_alone_and_in_one_frame(
    cases: list[tuple[Syntax, bytes | None, dict[str, bytes]]],
) -> None:
    """A frame's columns are converted together: one odd row must not change another's cells
    (nor make the column raise)."""
    datasets = [received(hostile_bytes(*case), case[0]) for case in cases]
    together = to_frame(datasets, [])
    assert len(together) == len(cases)
    for n, case in enumerate(cases):
        alone = to_frame([received(hostile_bytes(*case), case[0])], [])
        for keyword in alone.columns:
            assert cell(together.iloc[n], keyword) == cell(alone.iloc[0], keyword), keyword
        for keyword in set(together.columns) - set(alone.columns):
            assert cell(together.iloc[n], keyword) is None, keyword
