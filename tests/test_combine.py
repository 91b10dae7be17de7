"""Combining the answers of a batch (pure logic): the shortcuts give what the
answer-by-answer way gives."""

from __future__ import annotations

from typing import Any

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset

from clarinet_nb.notebook.frames import to_frame
from clarinet_nb.notebook.pacs import _concat_with_context, _unique_rows, _with_context
from clarinet_nb.notebook.rows import drop_duplicate_rows

KEYS = ("SOPInstanceUID", "InstanceNumber", "Modality")


def _answer(rows: list[tuple[str | None, int, str]], extra: bool = False) -> pd.DataFrame:
    datasets = []
    for uid, number, modality in rows:
        ds = Dataset()
        if uid is not None:
            ds.SOPInstanceUID = uid
        ds.InstanceNumber = number
        ds.Modality = modality
        if extra:
            ds.ImageComments = "x"
        datasets.append(ds)
    return to_frame(datasets, KEYS)


rows = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from(["1.2.1", "1.2.2", "1.2.3"])),
        st.integers(1, 3),
        st.sampled_from(["CT", "MR"]),
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(rows=rows)
def test_unique_key_shortcut_never_skips_a_duplicate(rows: list[Any]) -> None:
    frame = _answer(rows)
    if _unique_rows(frame, "SOPInstanceUID"):
        pd.testing.assert_frame_equal(drop_duplicate_rows(frame), frame)


def _slow(parts: list[tuple[pd.DataFrame, dict[str, Any]]]) -> pd.DataFrame:
    pieces = [_with_context(found, context) for found, context in parts]
    return pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0]


@settings(max_examples=100, deadline=None)
@given(
    answers=st.lists(st.tuples(rows, st.booleans()), min_size=1, max_size=5),
    context=st.fixed_dictionaries(
        {"StudyDate": st.sampled_from(["20200101", None]), "n": st.integers()}
    ),
)
def test_context_columns_built_once_equal_answer_by_answer(
    answers: list[tuple[list[Any], bool]], context: dict[str, Any]
) -> None:
    parts = [(_answer(r, extra), {**context, "row": i}) for i, (r, extra) in enumerate(answers)]
    parts = [p for p in parts if len(p[0])] or parts[:1]
    fast = _concat_with_context(parts)
    slow = _slow(parts)
    pd.testing.assert_frame_equal(fast, slow)
