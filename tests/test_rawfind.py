"""The C-FIND identifier walker against pydicom's reader: the same dataset, byte for byte.

``identifier_dataset`` must return exactly what ``pynetdicom.dsutils.decode`` returns (the
same raw elements, the same original encoding and state), so that the result models and
the typed frames cannot tell the two apart.  Examples are the well-formed and hostile
identifiers of tests/test_decode_hypothesis.py plus arbitrary bytes.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from typing import Any

import pandas as pd
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydicom import Dataset
from pynetdicom.dsutils import decode

from clarinet_nb.dicom.rawfind import identifier_dataset, walk
from clarinet_nb.notebook.frames import to_frame
from tests.support import outcome
from tests.test_decode_hypothesis import (
    PROPERTY,
    SYNTAXES,
    Charset,
    Syntax,
    Value,
    dataset_of,
    encode_pydicom,
    hostile,
    hostile_bytes,
    well_formed,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

KEYS = ["PatientName", "StudyDate", "StudyInstanceUID", "ModalitiesInStudy"]


def _state(ds: Dataset) -> dict[str, Any]:
    return {k: v for k, v in vars(ds).items() if k != "_dict"}


def assert_same(data: bytes, syntax: Syntax) -> None:
    kind, expected = outcome(decode, BytesIO(data), syntax.implicit, syntax.little, syntax.deflated)
    got_kind, got = outcome(
        identifier_dataset, data, syntax.implicit, syntax.little, syntax.deflated
    )
    assert got_kind == kind
    if kind == "error":
        return
    assert got._dict == expected._dict
    assert [type(t) for t in got._dict] == [type(t) for t in expected._dict]
    assert _state(got) == _state(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pd.testing.assert_frame_equal(to_frame([got], KEYS), to_frame([expected], KEYS))


@PROPERTY
@given(well_formed())
def test_well_formed_identifiers_read_the_same(
    case: tuple[Charset, Syntax, dict[str, Value]],
) -> None:
    charset, syntax, values = case
    data = encode_pydicom(dataset_of(charset, values), syntax)
    assert_same(data, syntax)
    if syntax.little and not syntax.deflated:
        assert walk(data, syntax.implicit) is not None  # the fast path, not the fallback


@PROPERTY
@given(hostile())
def test_hostile_identifiers_read_the_same(
    case: tuple[Syntax, bytes | None, dict[str, bytes]],
) -> None:
    syntax, term, values = case
    assert_same(hostile_bytes(syntax, term, values), syntax)


@PROPERTY
@given(st.binary(max_size=200), st.sampled_from(SYNTAXES[:2]))
@example(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100\x10\x00\x10\x00PN\x04\x00A^B ", SYNTAXES[1])
@example(b"\x08\x00\x05\x00\xff\xff\xff\xff", SYNTAXES[0])  # undefined length
@example(b"\x08\x00\x05\x00\x0a\x00\x00\x00ISO", SYNTAXES[0])  # truncated value
@example(b"\x08\x00\x05\x00CS\x00\x00\xfe\xff\x0d\xe0\x00\x00\x00\x00", SYNTAXES[1])
def test_arbitrary_bytes_read_the_same(data: bytes, syntax: Syntax) -> None:
    assert_same(data, syntax)


def test_datasets_are_built_without_the_slow_constructor() -> None:
    """With this pydicom the walker's datasets skip ``Dataset.__init__`` (same state)."""
    from clarinet_nb.dicom import rawfind

    assert rawfind._FAST_STATE
