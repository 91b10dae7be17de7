"""The struct walker of a received dataset's head against pydicom's reader.

``read_identity`` (Storage SCP scope checks, DISK paths of instances no plan locates)
walks Little Endian heads with ``struct``; it must give exactly pydicom's answer, or
pydicom's error, for any bytes a sender can make: well-formed heads in both VR
encodings, sequences of defined and undefined length, private elements, UID values
with padding, lists, other VRs, and arbitrary mutations and truncations.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from clarinet_nb.dicom.handlers import RawInstance, read_identity
from clarinet_nb.dicom.identity import fast_identity, pydicom_identity
from tests.support import outcome

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

PROPERTY = settings(
    max_examples=400,
    deadline=None,  # 2 shared cores: a slow example is not a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SOP, STUDY, SERIES = 0x00080018, 0x0020000D, 0x0020000E
LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
#: tags a head may hold, with their usual VR
POOL: list[tuple[int, str]] = [
    (0x00020010, "UI"),
    (0x00080005, "CS"),
    (0x00080016, "UI"),
    (SOP, "UI"),
    (0x00080020, "DA"),
    (0x00080060, "CS"),
    (0x00081115, "SQ"),
    (0x00090010, "LO"),
    (0x00091001, "OB"),
    (0x00100010, "PN"),
    (0x00100020, "LO"),
    (0x00181000, "LO"),
    (STUDY, "UI"),
    (SERIES, "UI"),
    (0x00200011, "IS"),
    (0x00200013, "IS"),
    (0x00280010, "US"),
    (0x7FE00010, "OW"),
]
ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQ_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def element(tag: int, vr: str, value: bytes, implicit: bool, undefined: bool = False) -> bytes:
    group, elem = tag >> 16, tag & 0xFFFF
    length = 0xFFFFFFFF if undefined else len(value)
    if implicit:
        return struct.pack("<HHL", group, elem, length) + value
    if vr in LONG:
        return struct.pack("<HH2sHL", group, elem, vr.encode(), 0, length) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), length & 0xFFFF) + value


def pad(value: bytes, vr: str) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB", "UN") else b" "
    return value


def uid_text() -> st.SearchStrategy[bytes]:
    plain = st.from_regex(r"\A[12](\.[0-9]{1,6}){1,8}\Z", fullmatch=True).map(str.encode)
    odd = st.sampled_from(
        [b"", b" ", b"\x00", b"1.2.3 ", b" 1.2.3", b"1.2\x00\x00", b"1.2\\3.4", b"\xc3\xa9"]
    )
    return st.one_of(plain, odd, st.binary(max_size=12))


@st.composite
def head(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A dataset head as a sender may encode it: (bytes, implicit)."""
    implicit = draw(st.booleans())
    chosen = draw(st.lists(st.sampled_from(POOL), max_size=12, unique=True))
    if draw(st.booleans()):
        chosen = sorted(chosen)
    parts: list[bytes] = []
    for tag, usual in chosen:
        vr = usual
        if tag in (SOP, STUDY, SERIES):
            vr = draw(st.sampled_from(["UI", "UI", "UI", "LO", "OB", "UN"]))
            value = draw(uid_text())
        elif vr == "SQ":
            inner = element(0x00081155, "UI", pad(draw(uid_text()), "UI"), implicit)
            undefined = draw(st.booleans())
            value = (
                ITEM + inner + ITEM_END + SEQ_END
                if undefined
                else (struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner)
            )
            parts.append(element(tag, vr, value, implicit, undefined))
            continue
        elif tag == 0x00080005 and draw(st.booleans()):
            value = draw(st.sampled_from([b"ISO_IR 100", b"ISO_IR 192", b"\\ISO 2022 IR 87", b""]))
        elif vr in ("US",):
            value = struct.pack("<H", draw(st.integers(0, 0xFFFF)))
        else:
            value = draw(st.binary(max_size=24))
        if draw(st.booleans()):
            value = pad(value, vr)
        parts.append(element(tag, vr, value, implicit))
    return b"".join(parts), implicit


@st.composite
def hostile(draw: st.DrawFn) -> tuple[bytes, bool]:
    data, implicit = draw(head())
    how = draw(st.sampled_from(["truncate", "flip", "insert", "random", "swap"]))
    if how == "truncate" and data:
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    elif how == "insert":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=16)) + data[at:]
    elif how == "random":
        data = draw(st.binary(max_size=80))
    else:
        implicit = not implicit
    return data, implicit


def instance(data: bytes, syntax: str) -> RawInstance:
    return RawInstance("1.2.840.10008.5.1.4.1.1.7", "1.2.3", syntax, "PEER", "127.0.0.1", data)


def assert_same(data: bytes, implicit: bool) -> None:
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    expected = outcome(pydicom_identity, data, implicit, True)
    assert outcome(read_identity, instance(data, syntax)) == expected
    fast = outcome(fast_identity, data, implicit)
    assert fast[0] == "ok"  # the walker never raises: it answers or defers
    if fast[1] is not None:
        assert ("ok", fast[1]) == expected


@PROPERTY
@given(head())
@example((element(STUDY, "UI", b"1.2\x00", True) + element(SERIES, "UI", b"1.3 ", True), True))
@example((b"\x08\x00\x05\x00CS\x02\x00\x00\x01 \x00\x11\x00IS\x00\x00", False))  # charset raises
def test_well_formed_heads_read_as_pydicom_reads_them(case: tuple[bytes, bool]) -> None:
    assert_same(*case)


@PROPERTY
@given(hostile())
@example((b"", True))
@example((b"\x08\x00\x18\x00UI", False))
@example((element(SOP, "UI", b"1\\2", False), False))
def test_hostile_heads_read_as_pydicom_reads_them(case: tuple[bytes, bool]) -> None:
    assert_same(*case)


def test_plain_heads_take_the_struct_path() -> None:
    """The walker answers by itself for ordinary heads (pydicom is the exception)."""
    for implicit in (True, False):
        data = b"".join(
            [
                element(0x00080005, "CS", b"ISO_IR 100", implicit),
                element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\x00", implicit),
                element(SOP, "UI", b"1.2.3.4\x00", implicit),
                element(0x00100010, "PN", b"Doe^John", implicit),
                element(0x00091001, "OB", b"\x01\x02", implicit),
                element(STUDY, "UI", b"1.2.5 ", implicit),
                element(SERIES, "UI", b"1.2.6\x00", implicit),
                element(0x7FE00010, "OW", b"\x00" * 64, implicit),
            ]
        )
        assert fast_identity(data, implicit) == ("1.2.5", "1.2.6", "1.2.3.4")
        assert pydicom_identity(data, implicit, True) == ("1.2.5", "1.2.6", "1.2.3.4")


def test_other_syntaxes_are_read_by_pydicom() -> None:
    from pydicom import Dataset
    from pynetdicom.dsutils import encode

    ds = Dataset()
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.4", "1.2.5"
    big = encode(ds, False, False)
    assert big is not None
    assert read_identity(instance(big, ExplicitVRBigEndian)) == ("1.2.4", "1.2.5", "1.2.3")
    deflated = encode(ds, False, True, True)
    assert deflated is not None
    got = read_identity(instance(deflated, DeflatedExplicitVRLittleEndian))
    assert got == ("1.2.4", "1.2.5", "1.2.3")
