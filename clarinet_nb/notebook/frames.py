"""C-FIND results as typed pandas DataFrames.

Columns are DICOM keywords; each column's dtype follows the keyword's dictionary
VR and VM (:func:`dtype_for`): dates and date-times become ``datetime64[ns]``,
times ``timedelta64[ns]`` since midnight, integers ``Int64``, decimals
``Float64``, multi-valued attributes Arrow lists and everything else Arrow-backed
strings.  The frames round-trip through Parquet with their dtypes intact.

Peer data is untrusted: a missing, empty or malformed value becomes NA, never an
exception.  For speed the raw bytes of elements whose encoding does not depend
on the character set (DA, TM, IS, UI, CS, US, FD, ...) are decoded here, without
pydicom's per-element conversion; text in a simple character set (default,
``ISO_IR 100``, ``ISO_IR 192``) is decoded here too, anything else goes through
pydicom.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]
from pandas.api.extensions import ExtensionDtype, register_extension_dtype
from pydicom import Dataset
from pydicom._dicom_dict import RepeatersDictionary
from pydicom.datadict import (
    dictionary_VM,
    dictionary_VR,
    keyword_for_tag,
    tag_for_keyword,
)
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue

from clarinet_nb.dicom.values import parse_da, parse_ds, parse_dt, parse_is, tm_parts
from clarinet_nb.errors import InvalidInputError

__all__ = [
    "BULK_LIMIT",
    "ColumnSpec",
    "Kind",
    "build_frame",
    "column_spec",
    "dtype_for",
    "empty_frame",
    "string_array",
    "to_frame",
]

logger = logging.getLogger("clarinet_nb")

BULK_LIMIT: Final = 1024
"""Binary values (OB, OW, OF, OD, OL, OV, UN) longer than this many bytes are left out."""

STRING_DTYPE: Final = pd.StringDtype("pyarrow")
_QUERY_EXCLUDED: Final = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})
_ASCII_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
_TEXT_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_STRUCT_CODES: Final = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "UV": "Q",
    "SV": "q",
    "FL": "f",
    "FD": "d",
}
_INT_VRS: Final = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS: Final = frozenset({"DS", "FL", "FD"})
_BYTES_VRS: Final = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
# Character sets whose text decodes as a whole with one Python codec (as pydicom does).
_SIMPLE_CHARSETS: Final = {
    "": "latin-1",
    "ISO_IR 6": "latin-1",
    "ISO_IR 100": "latin-1",
    "ISO_IR 192": "utf-8",
}
_CHARSET_TAG: Final = 0x00080005
_ESC: Final = 0x1B
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_NAT_NS: Final = np.iinfo(np.int64).min
_NS_MIN: Final = np.datetime64(pd.Timestamp.min.ceil("us"), "us")
_NS_MAX: Final = np.datetime64(pd.Timestamp.max.floor("us"), "us")


class Kind(Enum):
    """How a column's values are converted."""

    DATE = "date"
    DATETIME = "datetime"
    TIME = "time"
    INT = "int"
    FLOAT = "float"
    TEXT = "text"
    SEQUENCE = "sequence"
    BYTES = "bytes"


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """A keyword's dictionary VR and VM, and how its values are decoded.

    ``raw`` is ``"ascii"`` when the raw bytes are ASCII by definition, ``"text"``
    for character-set dependent text, a :mod:`struct` code for binary numbers,
    or ``""`` when only pydicom can convert the value.
    """

    keyword: str
    vr: str
    kind: Kind
    multi: bool
    raw: str


_FAILED: Final = object()  # a malformed value: NA, counted for the DEBUG log
_SKIP: Final = object()  # bulk data: no cell at all


# --------------------------------------------------------------------------- specs


def _kind_for(vr: str) -> Kind:
    """The conversion kind of a dictionary VR (which may be ``"US or SS"``)."""
    parts = set(vr.split(" or "))
    simple = {"DA": Kind.DATE, "DT": Kind.DATETIME, "TM": Kind.TIME, "SQ": Kind.SEQUENCE}
    if len(parts) == 1 and vr in simple:
        return simple[vr]
    if parts <= _INT_VRS:
        return Kind.INT
    if parts <= _FLOAT_VRS:
        return Kind.FLOAT
    if parts & _BYTES_VRS:
        return Kind.BYTES
    return Kind.TEXT


def _raw_mode(vr: str) -> str:
    """How raw bytes of ``vr`` may be decoded without pydicom (see :class:`ColumnSpec`)."""
    if vr in _ASCII_VRS:
        return "ascii"
    if vr in _TEXT_VRS:
        return "text"
    return _STRUCT_CODES.get(vr, "")


def _dictionary_entry(keyword: str) -> tuple[str, str] | None:
    """The (VR, VM) of a keyword, including repeating-group keywords."""
    tag = tag_for_keyword(keyword)
    if tag is not None:
        return dictionary_VR(tag), dictionary_VM(tag)
    for vr, vm, _name, _retired, repeater_keyword in RepeatersDictionary.values():
        if repeater_keyword == keyword:
            return vr, vm
    return None


@lru_cache(maxsize=8192)
def column_spec(keyword: str) -> ColumnSpec:
    """The :class:`ColumnSpec` of a DICOM keyword; InvalidInputError if unknown."""
    entry = _dictionary_entry(keyword)
    if entry is None:
        raise InvalidInputError(f"{keyword!r} is not a DICOM keyword")
    vr, vm = entry
    return ColumnSpec(keyword, vr, _kind_for(vr), vm.strip() != "1", _raw_mode(vr))


@lru_cache(maxsize=8192)
def _tag_spec(tag: int) -> ColumnSpec | None:
    """The spec of a tag, or None for tags that never become columns."""
    group = tag >> 16
    if group % 2 or group in (0x0000, 0x0002):
        return None
    keyword = keyword_for_tag(tag)
    if not keyword:
        return None
    try:
        return column_spec(keyword)
    except InvalidInputError:
        return None


def dtype_for(keyword: str) -> ExtensionDtype | np.dtype[Any]:
    """The pandas dtype of a keyword's column, by its dictionary VR and VM."""
    return _dtype(column_spec(keyword))


def _dtype(spec: ColumnSpec) -> ExtensionDtype | np.dtype[Any]:
    """The pandas dtype of a column spec."""
    if spec.multi and spec.kind is not Kind.SEQUENCE:
        return pd.ArrowDtype(pa.list_(_list_item_type(spec.kind)))
    if spec.kind in (Kind.DATE, Kind.DATETIME):
        return np.dtype("datetime64[ns]")
    if spec.kind is Kind.TIME:
        return np.dtype("timedelta64[ns]")
    if spec.kind is Kind.INT:
        return pd.Int64Dtype()
    if spec.kind is Kind.FLOAT:
        return pd.Float64Dtype()
    return STRING_DTYPE


def _list_item_type(kind: Kind) -> pa.DataType:
    """The Arrow item type of a multi-valued column."""
    if kind is Kind.INT:
        return pa.int64()
    if kind is Kind.FLOAT:
        return pa.float64()
    return pa.string()


# --------------------------------------------------------------------------- frames


def empty_frame(keys: Sequence[str]) -> pd.DataFrame:
    """A frame with no rows and exactly the ``keys`` columns, typed."""
    specs = [column_spec(k) for k in dict.fromkeys(keys) if k not in _QUERY_EXCLUDED]
    return _assemble({s.keyword: _empty_column(s) for s in specs}, 0)


def to_frame(datasets: Sequence[Dataset], keys: Sequence[str]) -> pd.DataFrame:
    """C-FIND response identifiers as a typed frame, one row per dataset.

    Columns: ``keys`` in that order (always present), then every other public
    keyword found, in first-seen order.  ``QueryRetrieveLevel``,
    ``SpecificCharacterSet``, group 0x0000/0x0002, private and unknown tags and
    bulk binary values are left out.
    """
    return build_frame(datasets, keys, exclude=_QUERY_EXCLUDED)


def build_frame(
    datasets: Iterable[Dataset],
    keys: Sequence[str] = (),
    *,
    exclude: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """The typed frame of ``datasets``' top-level public elements (see :func:`to_frame`)."""
    specs = {k: column_spec(k) for k in dict.fromkeys(keys) if k not in exclude}
    bad: Counter[str] = Counter()
    tag_specs: dict[int, ColumnSpec | None] = {}
    rows = [_row(ds, specs, tag_specs, exclude, bad) for ds in datasets]
    columns = {
        keyword: _column([row.get(keyword) for row in rows], spec, bad)
        for keyword, spec in specs.items()
    }
    for keyword, count in bad.items():
        logger.debug("column %s: %d malformed value(s) read as NA", keyword, count)
    return _assemble(columns, len(rows))


def _assemble(columns: dict[str, Any], length: int) -> pd.DataFrame:
    """A frame of ready-made column arrays with a RangeIndex."""
    return pd.DataFrame(columns, index=pd.RangeIndex(length), copy=False)


def _empty_column(spec: ColumnSpec) -> Any:
    """A zero-length array of the spec's dtype."""
    return pd.Series([], dtype=_dtype(spec)).array


# --------------------------------------------------------------------------- rows


def _row(
    ds: Dataset,
    specs: dict[str, ColumnSpec],
    tag_specs: dict[int, ColumnSpec | None],
    exclude: frozenset[str],
    bad: Counter[str],
) -> dict[str, Any]:
    """One dataset's cells (plain strings, numbers or lists), keyed by keyword.

    New keywords are appended to ``specs`` in first-seen order; ``tag_specs``
    caches each tag's spec (None for tags that are not columns).
    """
    codec: str | None = None  # the dataset's text codec, looked up at its first text element
    codec_known = False
    row: dict[str, Any] = {}
    for elem in _elements(ds):
        tag = int(elem.tag)
        if tag in tag_specs:
            spec = tag_specs[tag]
        else:
            spec = tag_specs[tag] = _included_spec(tag, exclude)
        if spec is None or spec.keyword in row:
            continue
        if spec.raw == "text" and not codec_known:
            codec, codec_known = _simple_codec(ds), True
        cell = _cell(ds, elem, spec, codec)
        if cell is _SKIP:
            continue
        if cell is _FAILED:
            bad[spec.keyword] += 1
            cell = None
        row[spec.keyword] = cell
        if spec.keyword not in specs:
            specs[spec.keyword] = spec
    return row


def _elements(ds: Dataset) -> Any:
    """The dataset's top-level elements, raw ones left raw.

    ``Dataset.elements()`` does the same but looks every tag up again (a third
    of the conversion time for 20k rows); pydicom keeps them in ``_dict``.
    """
    stored = getattr(ds, "_dict", None)
    if not isinstance(stored, dict):
        return ds.elements()
    return [stored[tag] for tag in sorted(stored)]  # tag order, as elements() gives


def _included_spec(tag: int, exclude: frozenset[str]) -> ColumnSpec | None:
    """The spec of a tag that becomes a column, else None."""
    spec = _tag_spec(tag)
    return None if spec is None or spec.keyword in exclude else spec


def _simple_codec(ds: Dataset) -> str | None:
    """The Python codec for the dataset's text if it is one simple character set."""
    elem = ds.get_item(_CHARSET_TAG)
    if elem is None:
        return _SIMPLE_CHARSETS[""]
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, MultiValue | list | tuple):
        if len(value) != 1:
            return None
        value = value[0]
    if not isinstance(value, str):
        return None
    return _SIMPLE_CHARSETS.get(value.strip(" \x00"))


def _cell(
    ds: Dataset, elem: DataElement | RawDataElement, spec: ColumnSpec, codec: str | None
) -> Any:
    """The cell of one element: a str, number, list, None, _SKIP or _FAILED."""
    if isinstance(elem, RawDataElement):
        if _is_bulk_raw(elem, spec):
            return _SKIP
        raw = elem.value
        if raw is not None and spec.raw and elem.VR in (None, spec.vr):
            if spec.raw == "ascii":
                return _split_text(raw.decode("latin-1"), spec)
            if spec.raw == "text":
                if codec is not None and _ESC not in raw:  # escapes: pydicom's decoder
                    return _split_text(raw.decode(codec, "replace"), spec)
            else:
                return _unpack(raw, elem.is_little_endian, spec)
    try:
        value = elem.value if isinstance(elem, DataElement) else ds[elem.tag].value
        if isinstance(value, bytes | bytearray) and len(value) > BULK_LIMIT:
            return _SKIP
        return _from_value(value, spec)
    except Exception:  # noqa: BLE001 - pydicom may fail on a malformed value from a peer
        return _FAILED


def _is_bulk_raw(elem: RawDataElement, spec: ColumnSpec) -> bool:
    """A raw binary element longer than :data:`BULK_LIMIT`."""
    if elem.length <= BULK_LIMIT:
        return False
    return bool(set((elem.VR or spec.vr).split(" or ")) & _BYTES_VRS)


def _split_text(text: str, spec: ColumnSpec) -> str | list[str | None] | None:
    """A decoded value stripped of padding; split on backslash when multi-valued.

    Person names also lose trailing empty component groups (``A^B=`` is ``A^B``), as
    pydicom reads them.
    """
    if not spec.multi:
        return _strip(text, spec)
    items = [_strip(part, spec) for part in text.split("\\")]
    return items if any(item is not None for item in items) else None


def _strip(text: str, spec: ColumnSpec) -> str | None:
    """One value without its padding (``None`` when empty)."""
    text = text.strip(" \x00")
    if spec.vr == "PN" and text.endswith("="):
        text = text.rstrip("=").strip(" \x00")
    return text or None


def _unpack(raw: bytes, little_endian: bool, spec: ColumnSpec) -> Any:
    """Binary numbers of a raw element: one number, a list, or None/_FAILED."""
    code = spec.raw
    size = struct.calcsize(code)
    count, rest = divmod(len(raw), size)
    if count == 0:
        return None if not raw else _FAILED
    if rest:
        return _FAILED
    values = struct.unpack(f"{'<' if little_endian else '>'}{count}{code}", raw)
    if spec.multi:
        return list(values)
    return values[0] if count == 1 else _FAILED


def _from_value(value: Any, spec: ColumnSpec) -> Any:
    """The cell of a value pydicom converted."""
    if value is None:
        return None
    if spec.kind is Kind.SEQUENCE:
        return _sequence_json(value)
    if isinstance(value, MultiValue | list | tuple):
        items = [_scalar(v, spec.kind) for v in value]
        if spec.multi:
            return items if any(item is not None for item in items) else None
        if spec.kind in (Kind.TEXT, Kind.BYTES):
            return "\\".join(v if isinstance(v, str) else "" for v in items) or None
        return _FAILED if items else None
    item = _scalar(value, spec.kind)
    if spec.multi and item is not None:
        return [item]
    return item


def _scalar(value: Any, kind: Kind) -> Any:
    """One converted value as a str or number (None when empty)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        if kind is Kind.BYTES:
            return base64.b64encode(value).decode("ascii") if value else None
        value = bytes(value).decode("latin-1")
    if kind in (Kind.INT, Kind.FLOAT) and isinstance(value, int | float):
        return value if not isinstance(value, bool) else int(value)
    if isinstance(value, dt.date | dt.time):
        text = getattr(value, "original_string", None) or _format_temporal(value)
    else:
        text = str(value)
    return text.strip(" \x00") or None


def _format_temporal(value: dt.date | dt.time) -> str:
    """A date, datetime or time in DICOM DA, DT or TM form."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d%H%M%S.%f")
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    return value.strftime("%H%M%S.%f")


def _omit_bulk(_elem: DataElement) -> str:
    """Bulk data handler for JSON: the value is left out (empty BulkDataURI)."""
    return ""


def _sequence_json(value: Any) -> str | None:
    """A sequence as DICOM JSON text (a list of items), None if empty."""
    items = [item.to_json_dict(BULK_LIMIT, _omit_bulk) for item in value]
    if not items:
        return None
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------- columns


def _column(cells: list[Any], spec: ColumnSpec, bad: Counter[str]) -> Any:
    """Convert one column's cells to an array of the spec's dtype."""
    if spec.multi and spec.kind is not Kind.SEQUENCE:
        converter: Callable[[list[Any]], tuple[Any, int]] = _LIST_CONVERTERS.get(
            spec.kind, _text_lists
        )
    else:
        converter = _CONVERTERS.get(spec.kind, _texts)
    try:
        array, failed = converter(cells)
    except Exception:  # noqa: BLE001 - never raise on peer data: an all-NA column instead
        bad[spec.keyword] += sum(c is not None for c in cells)
        return pd.Series([None] * len(cells), dtype=_dtype(spec)).array
    if failed:
        bad[spec.keyword] += failed
    return array


def string_array(cells: Sequence[str | None]) -> Any:
    """An Arrow-backed string array (NA for None)."""
    return pd.array(list(cells), dtype=STRING_DTYPE)


def _texts(cells: list[Any]) -> tuple[Any, int]:
    """Strings (sequences as JSON, binary as base64) -> string array."""
    return string_array([c if c is None or isinstance(c, str) else str(c) for c in cells]), 0


def _ints(cells: list[Any]) -> tuple[Any, int]:
    """IS strings or binary integers -> Int64."""
    values = [_to_int(c) for c in cells]
    failed = sum(1 for c, v in zip(cells, values, strict=True) if v is None and c is not None)
    data = np.array([0 if v is None else v for v in values], dtype=np.int64)
    mask = np.array([v is None for v in values], dtype=bool)
    return pd.arrays.IntegerArray(data, mask), failed


def _floats(cells: list[Any]) -> tuple[Any, int]:
    """DS strings or binary floats -> Float64 (NaN counts as NA)."""
    values = [_to_float(c) for c in cells]
    failed = sum(1 for c, v in zip(cells, values, strict=True) if v is None and c is not None)
    data = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.arrays.FloatingArray(data, np.isnan(data)), failed


def _to_int(value: Any) -> int | None:
    """An int within int64 range, or None."""
    if isinstance(value, str):
        return parse_is(value)
    if isinstance(value, float):
        value = int(value) if value.is_integer() else None
    if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        return value
    return None


def _to_float(value: Any) -> float | None:
    """A float: DS text finite only (``nan``, ``1e400`` -> None), binary NaN -> None."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_ds(value)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if math.isnan(number) else number


def _dates(cells: list[Any]) -> tuple[Any, int]:
    """DA strings -> datetime64[ns]; 8 digits vectorised, old forms one by one."""
    texts = [c if isinstance(c, str) else None for c in cells]
    strict = [
        t if t is not None and len(t) == 8 and t.isascii() and t.isdigit() else None for t in texts
    ]
    parsed = pd.to_datetime(pd.Series(strict, dtype=object), format="%Y%m%d", errors="coerce")
    out = _to_ns(parsed.to_numpy(dtype="datetime64[us]"))
    others = [i for i, t in enumerate(texts) if t is not None and strict[i] is None]
    if others:
        out[others] = _to_ns(_us_array([parse_da(texts[i]) for i in others]))
    return out, _count_nat(cells, out)


def _datetimes(cells: list[Any]) -> tuple[Any, int]:
    """DT strings -> naive datetime64[ns] (any UTC offset dropped)."""
    out = _to_ns(_us_array([parse_dt(c) if isinstance(c, str) else None for c in cells]))
    return out, _count_nat(cells, out)


def _us_array(values: list[dt.date | None]) -> np.ndarray[Any, Any]:
    """Dates or datetimes (None -> NaT) as datetime64[us]."""
    return np.array([np.datetime64("NaT") if v is None else v for v in values], dtype="M8[us]")


def _count_nat(cells: list[Any], out: np.ndarray[Any, Any]) -> int:
    """How many non-empty inputs came out NaT."""
    given = np.fromiter((c is not None for c in cells), dtype=bool, count=len(cells))
    return int((given & np.isnat(out)).sum())


def _times(cells: list[Any]) -> tuple[Any, int]:
    """TM strings -> timedelta64[ns] since midnight."""
    values = [_time_ns(c) if isinstance(c, str) else None for c in cells]
    failed = sum(1 for c, v in zip(cells, values, strict=True) if c is not None and v is None)
    data = np.array([_NAT_NS if v is None else v for v in values], dtype=np.int64)
    return data.view("timedelta64[ns]"), failed


def _to_ns(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """datetime64[us] -> datetime64[ns], NaT where out of the ns range."""
    values = values.copy()
    values[(values < _NS_MIN) | (values > _NS_MAX)] = np.datetime64("NaT")
    return values.astype("datetime64[ns]")


def _time_ns(text: str) -> int | None:
    """A TM value (``HH[MM[SS[.F]]]``, ACR-NEMA colons tolerated) as ns since midnight."""
    parts = tm_parts(text)
    if parts is None:
        return None
    h, m, s, micro = parts
    return ((h * 60 + m) * 60 + s) * 1_000_000_000 + micro * 1_000


def _arrow_lists(cells: list[Any], item: Callable[[Any], Any], item_type: pa.DataType) -> Any:
    """Lists (or None) -> an Arrow list array wrapped for pandas."""
    lists = [None if c is None else [item(v) for v in c] for c in cells]
    array = pa.array(lists, type=pa.list_(item_type))
    return pd.arrays.ArrowExtensionArray(array)


def _int_lists(cells: list[Any]) -> tuple[Any, int]:
    """Multi-valued integers -> list<int64>."""
    return _arrow_lists(cells, _to_int, pa.int64()), 0


def _float_lists(cells: list[Any]) -> tuple[Any, int]:
    """Multi-valued decimals -> list<double>."""
    return _arrow_lists(cells, _to_float, pa.float64()), 0


def _text_lists(cells: list[Any]) -> tuple[Any, int]:
    """Multi-valued strings -> list<string>."""
    return _arrow_lists(cells, _item_text, pa.string()), 0


def _item_text(value: Any) -> str | None:
    """One item of a multi-valued text column."""
    return value if value is None or isinstance(value, str) else str(value)


_CONVERTERS: Final[dict[Kind, Callable[[list[Any]], tuple[Any, int]]]] = {
    Kind.DATE: _dates,
    Kind.DATETIME: _datetimes,
    Kind.TIME: _times,
    Kind.INT: _ints,
    Kind.FLOAT: _floats,
}
_LIST_CONVERTERS: Final[dict[Kind, Callable[[list[Any]], tuple[Any, int]]]] = {
    Kind.INT: _int_lists,
    Kind.FLOAT: _float_lists,
}


# --------------------------------------------------------------------------- Parquet


def _register_list_dtype_names() -> None:
    """Let pandas parse the names of our list dtypes back from Parquet metadata.

    pandas stores ``str(dtype)`` (``"list<item: string>[pyarrow]"``) in the
    Parquet pandas metadata but cannot parse it back (pandas-dev/pandas#53011,
    #57411), so ``pd.read_parquet`` of a frame with list columns fails.  This
    registers a lookup for exactly the three list dtypes made here; names that
    pandas already understood are unaffected (lookups are tried in order).
    """
    known = {
        str(dtype): dtype
        for dtype in (pd.ArrowDtype(pa.list_(t)) for t in (pa.string(), pa.int64(), pa.float64()))
    }

    class _ListDtypeNames(ExtensionDtype):
        """Only a name lookup; never instantiated."""

        name = "clarinet-list-dtype-names"
        type = list

        @classmethod
        def construct_array_type(cls) -> Any:
            raise NotImplementedError

        @classmethod
        def construct_from_string(cls, string: str) -> Any:
            if isinstance(string, str) and string in known:
                return known[string]
            raise TypeError(f"cannot construct from {string!r}")

    register_extension_dtype(_ListDtypeNames)


_register_list_dtype_names()
