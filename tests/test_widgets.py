"""The notebook widgets against a real Orthanc: the query builder and the series preview."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import html
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import (
    BasicTextSRStorage,
    EncapsulatedPDFStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEGBaseline8Bit,
    KeyObjectSelectionDocumentStorage,
)

import clarinet_nb as cnb
from clarinet_nb.testing import Cohort, CohortInstance, free_port
from clarinet_nb.widgets import Preview, QueryBuilder, encode_png, preview
from clarinet_nb.widgets.preview import render_frame
from clarinet_nb.widgets.query_builder import FINDERS, MODALITIES, _row_label, _table_html
from tests.notebook_support import pacs, pacs_for

__all__ = ["pacs"]

WAIT = 60
CONTRACT = {
    "cnb-level": "Dropdown",
    "cnb-patient-id": "Text",
    "cnb-patient-name": "Text",
    "cnb-accession": "Text",
    "cnb-description": "Text",
    "cnb-date-from": "DatePicker",
    "cnb-date-to": "DatePicker",
    "cnb-modality": "SelectMultiple",
    "cnb-search": "Button",
    "cnb-results": "HTML",
    "cnb-select": "SelectMultiple",
    "cnb-destination": "ToggleButtons",
    "cnb-folder": "Text",
    "cnb-method": "Dropdown",
    "cnb-retrieve": "Button",
    "cnb-progress": "IntProgress",
    "cnb-status": "HTML",
}


def descendants(widget: Any) -> Iterator[Any]:
    yield widget
    for child in getattr(widget, "children", ()):
        yield from descendants(child)


def by_class(root: Any, css: str) -> Any:
    found = [w for w in descendants(root) if css in getattr(w, "_dom_classes", ())]
    assert len(found) == 1, f"{css}: {len(found)} widgets"
    return found[0]


def run(builder: QueryBuilder, button: str) -> None:
    """Press a button (by CSS class) and wait for the operation it starts."""
    by_class(builder, button).click()
    builder.wait(timeout=WAIT)
    assert not builder.busy


def status(builder: QueryBuilder) -> str:
    """The status line as a reader sees it (and the same as builder.message)."""
    text = html.unescape(re.sub(r"<[^>]*>", "", by_class(builder, "cnb-status").value))
    assert text == builder.message
    return text


def has_error(builder: QueryBuilder) -> bool:
    return "cnb-error" in by_class(builder, "cnb-status")._dom_classes


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.attrs = {}
    return out


@pytest.fixture
def dead_pacs() -> Iterator[cnb.Pacs]:
    """A PACS on a closed loopback port: any network use fails with PeerUnreachableError."""
    p = cnb.connect(f"X@127.0.0.1:{free_port()}")
    yield p
    p.close()


# -- the query builder --------------------------------------------------------------------


def test_css_contract_and_defaults(dead_pacs: cnb.Pacs) -> None:
    builder = QueryBuilder(dead_pacs)
    for css, kind in CONTRACT.items():
        assert type(by_class(builder, css)).__name__ == kind, css
    assert by_class(builder, "cnb-level").value == "STUDY"
    assert list(by_class(builder, "cnb-level").options) == ["PATIENT", "STUDY", "SERIES", "IMAGE"]
    assert list(by_class(builder, "cnb-modality").options) == list(MODALITIES)
    assert by_class(builder, "cnb-folder").value == "data/"
    assert set(by_class(builder, "cnb-method").options) == {"get", "move"}
    assert [v for _, v in by_class(builder, "cnb-destination").options] == ["memory", "folder"]
    assert builder.result is None and builder.selection.empty and not builder.busy
    assert builder.code() == "pacs.find_studies()"


def test_search_by_patient_id(pacs: cnb.Pacs, cohort: Cohort) -> None:
    patient = cohort.patients()[1]  # Müller^Jürgen: two studies
    builder = QueryBuilder(pacs)
    by_class(builder, "cnb-patient-id").value = patient
    run(builder, "cnb-search")
    assert builder.result is not None
    assert sorted(builder.result["StudyInstanceUID"]) == sorted(cohort.studies(patient))
    table = by_class(builder, "cnb-results").value
    for uid in cohort.studies(patient):
        inst = cohort.instances_in(uid)[0]
        assert html.escape(inst.accession_number) in table
        assert html.escape(inst.study_description) in table
        assert inst.study_date.isoformat() in table
    assert html.escape("Müller^Jürgen") in table
    assert status(builder) == f"Found {len(cohort.studies(patient))} studies."
    assert not has_error(builder)
    labels = [label for label, _ in by_class(builder, "cnb-select").options]
    assert len(labels) == len(builder.result)
    assert all(label.startswith(f"{i}: ") for i, label in enumerate(labels))
    assert builder.selection.empty
    by_class(builder, "cnb-select").value = (1,)
    assert list(builder.selection["StudyInstanceUID"]) == [builder.result["StudyInstanceUID"][1]]
    assert builder.code() == f"pacs.find_studies(PatientID={patient!r})"


def test_study_row_label() -> None:
    row = {
        "StudyDate": pd.Timestamp("2019-03-14"),
        "ModalitiesInStudy": ["SR", "CT", "PR", "KO"],
        "StudyDescription": "CT CHEST",
        "NumberOfStudyRelatedInstances": 8,
    }
    assert _row_label("STUDY", 0, row) == "0: 2019-03-14 CT,KO,PR,SR CT CHEST (8)"


def test_table_escapes_peer_values() -> None:
    hostile = "<script>alert('x')</script>&"
    frame = pd.DataFrame(
        {"PatientID": ["P1"], "PatientName": [hostile], "StudyDate": [pd.Timestamp("2020-01-02")]}
    )
    table = _table_html(frame, "STUDY", 10)
    assert "<script>" not in table
    assert html.escape(hostile) in table
    assert "2020-01-02" in table


def test_date_range_and_modality(pacs: cnb.Pacs, cohort: Cohort) -> None:
    builder = QueryBuilder(pacs)
    by_class(builder, "cnb-date-from").value = dt.date(2019, 1, 1)
    by_class(builder, "cnb-date-to").value = dt.date(2021, 12, 31)
    by_class(builder, "cnb-modality").value = ("CT", "CR")
    run(builder, "cnb-search")
    expected = {
        s
        for s in cohort.studies()
        if dt.date(2019, 1, 1) <= cohort.instances_in(s)[0].study_date <= dt.date(2021, 12, 31)
        and cohort.modalities_in_study(s) & {"CT", "CR"}
    }
    assert builder.result is not None
    assert set(builder.result["StudyInstanceUID"]) == expected
    assert len(expected) == 3  # s1 CT, s3 CR, s6 CT: excluded s2 (MR) and s4/s5 (out of range)
    assert status(builder) == "Found 3 studies."
    assert builder.query_kwargs() == {
        "StudyDate": ("2019-01-01", "2021-12-31"),
        "ModalitiesInStudy": ["CT", "CR"],
    }


def test_series_level(pacs: cnb.Pacs, cohort: Cohort) -> None:
    patient = cohort.patients()[0]
    builder = QueryBuilder(pacs)
    by_class(builder, "cnb-level").value = "SERIES"
    by_class(builder, "cnb-patient-id").value = patient
    by_class(builder, "cnb-modality").value = ("CT",)
    run(builder, "cnb-search")
    expected = {
        i.series_uid for i in cohort.instances if i.patient_id == patient and i.modality == "CT"
    }
    assert builder.result is not None
    assert set(builder.result["SeriesInstanceUID"]) == expected
    assert status(builder) == f"Found {len(expected)} series."
    assert builder.code() == f"pacs.find_series(PatientID={patient!r}, Modality=['CT'])"
    assert "Axial 2.5mm" in by_class(builder, "cnb-results").value


@pytest.mark.parametrize(
    ("level", "fields"),
    [
        ("STUDY", {"cnb-patient-id": "CLN-000*", "cnb-date-from": dt.date(2020, 1, 1),
                   "cnb-modality": ("CT", "MR")}),
        ("STUDY", {"cnb-patient-name": "Doe*", "cnb-date-to": dt.date(2020, 1, 1)}),
        ("STUDY", {"cnb-accession": "ACC2*", "cnb-description": "*CHEST*"}),
        ("SERIES", {"cnb-patient-id": "CLN-0002", "cnb-date-from": dt.date(2019, 1, 1),
                    "cnb-date-to": dt.date(2030, 1, 1), "cnb-modality": ("CT", "OT")}),
        ("IMAGE", {"cnb-patient-id": "CLN-0001", "cnb-modality": ("CT",)}),
        ("PATIENT", {"cnb-patient-id": "CLN*", "cnb-accession": "ignored at PATIENT level"}),
    ],
)  # fmt: skip
def test_code_reproduces_the_frame(pacs: cnb.Pacs, level: str, fields: dict[str, Any]) -> None:
    builder = QueryBuilder(pacs)
    by_class(builder, "cnb-level").value = level
    for css, value in fields.items():
        by_class(builder, css).value = value
    run(builder, "cnb-search")
    assert builder.result is not None and len(builder.result) > 0
    code = builder.code()
    assert code.startswith(f"pacs.{FINDERS[level]}(")
    again = eval(code, {"pacs": pacs})  # the point of .code()
    pd.testing.assert_frame_equal(plain(again), plain(builder.result))
    if level == "PATIENT":
        assert "AccessionNumber" not in builder.query_kwargs()
        assert by_class(builder, "cnb-accession").disabled


def test_retrieve_into_memory(pacs: cnb.Pacs, cohort: Cohort) -> None:
    builder = QueryBuilder(pacs)
    by_class(builder, "cnb-patient-id").value = cohort.patients()[0]
    run(builder, "cnb-search")
    assert builder.result is not None
    uid = cohort.studies(cohort.patients()[0])[0]  # s1: CT, SR, KO, PR: 8 instances
    row = list(builder.result["StudyInstanceUID"]).index(uid)
    by_class(builder, "cnb-select").value = (row,)
    run(builder, "cnb-retrieve")
    expected = cohort.instances_in(uid)
    assert builder.datasets is not None
    assert sorted(ds.SOPInstanceUID for ds in builder.datasets) == sorted(
        i.sop_uid for i in expected
    )
    bar = by_class(builder, "cnb-progress")
    assert bar.max == len(expected) and bar.value == bar.max
    assert status(builder) == f"Retrieved {len(expected)} instances into memory (builder.datasets)."
    assert not has_error(builder)


def test_retrieve_to_folder_by_move_then_preview(
    pacs: cnb.Pacs, cohort: Cohort, tmp_path: Path
) -> None:
    builder = QueryBuilder(pacs)
    by_class(builder, "cnb-level").value = "SERIES"
    by_class(builder, "cnb-modality").value = ("MR",)
    by_class(builder, "cnb-patient-id").value = cohort.patients()[0]
    run(builder, "cnb-search")
    assert builder.result is not None and len(builder.result) == 2  # T1 AX (4), T2 AX (3)
    by_class(builder, "cnb-select").value = (0, 1)
    by_class(builder, "cnb-destination").value = "folder"
    by_class(builder, "cnb-folder").value = str(tmp_path / "data")
    by_class(builder, "cnb-method").value = "move"
    run(builder, "cnb-retrieve")
    manifest = builder.manifest
    assert manifest is not None
    expected = {
        i.sop_uid
        for s in builder.result["SeriesInstanceUID"]
        for i in cohort.instances_in(series_uid=s)
    }
    assert set(manifest["SOPInstanceUID"]) == expected
    assert set(manifest["status"]) == {"retrieved"}
    assert all(Path(p).is_file() for p in manifest["path"])
    assert status(builder) == f"Retrieved {len(expected)} instances to {tmp_path / 'data'}."
    assert by_class(builder, "cnb-progress").value == len(expected)

    run(builder, "cnb-retrieve")  # again: everything is there already
    again = builder.manifest
    assert again is not None and again is not manifest
    assert set(again["status"]) == {"present"}
    assert f"({len(expected)} were already there)" in status(builder)

    view = preview(again)
    assert view.images == len(expected)
    assert len(view.series) == 2 and by_class(view, "cnb-series").layout.display != "none"
    for uid in reversed(view.series):
        by_class(view, "cnb-series").value = uid
        assert len(view.frames) == len(cohort.instances_in(series_uid=uid))
        assert by_class(view, "cnb-slider").max == len(view.frames) - 1


def test_patient_level_retrieves_the_patients_studies(pacs: cnb.Pacs, cohort: Cohort) -> None:
    builder = QueryBuilder(pacs, level="PATIENT")
    by_class(builder, "cnb-patient-id").value = "CLN*"
    run(builder, "cnb-search")
    assert builder.result is not None
    assert sorted(builder.result["PatientID"]) == sorted(cohort.patients())
    assert status(builder) == "Found 3 patients."
    row = list(builder.result["PatientID"]).index(cohort.patients()[2])
    by_class(builder, "cnb-select").value = (row,)
    run(builder, "cnb-retrieve")
    mine = [i.sop_uid for i in cohort.instances if i.patient_id == cohort.patients()[2]]
    assert builder.datasets is not None
    assert sorted(ds.SOPInstanceUID for ds in builder.datasets) == sorted(mine)


def test_unreachable_pacs_is_a_plain_message(dead_pacs: cnb.Pacs) -> None:
    builder = QueryBuilder(dead_pacs)
    by_class(builder, "cnb-patient-id").value = "CLN-0001"
    run(builder, "cnb-search")  # no exception escapes
    text = status(builder)
    assert text == f"Cannot reach the PACS at {dead_pacs.node} — is it running?"
    assert "Traceback" not in text
    assert has_error(builder)
    assert isinstance(builder.error, cnb.PeerUnreachableError)
    assert builder.result is None
    assert not by_class(builder, "cnb-search").disabled
    assert not by_class(builder, "cnb-retrieve").disabled


def test_a_blank_form_asks_for_a_criterion_and_sends_nothing(dead_pacs: cnb.Pacs) -> None:
    """A blank form would list the whole PACS: it is refused in plain words, no query."""
    builder = QueryBuilder(dead_pacs)
    by_class(builder, "cnb-patient-id").value = "   "
    by_class(builder, "cnb-search").click()
    assert not builder.busy and builder.result is None  # nothing was started
    assert status(builder) == (
        "Fill in at least one field (for example Patient ID), or type * in Patient ID "
        "to list everything."
    )
    assert has_error(builder)
    by_class(builder, "cnb-patient-id").value = "*"
    assert builder.code() == "pacs.find_studies(PatientID='*')"


def test_invalid_input_never_reaches_the_network(dead_pacs: cnb.Pacs) -> None:
    builder = QueryBuilder(dead_pacs)
    by_class(builder, "cnb-date-from").value = dt.date(2021, 1, 1)
    by_class(builder, "cnb-date-to").value = dt.date(2020, 1, 1)
    by_class(builder, "cnb-search").click()
    assert not builder.busy  # refused in the click handler: nothing was started
    assert status(builder).startswith("Invalid input: ")
    assert "impossible date range" in status(builder)
    assert has_error(builder) and isinstance(builder.error, cnb.InvalidInputError)
    by_class(builder, "cnb-patient-id").value = "back\\slash"
    by_class(builder, "cnb-date-from").value = None
    by_class(builder, "cnb-search").click()
    assert not builder.busy and status(builder).startswith("Invalid input: PatientID")
    by_class(builder, "cnb-retrieve").click()  # nothing selected
    assert not builder.busy and status(builder).startswith("Invalid input: select")


def test_success_clears_the_error_class(pacs: cnb.Pacs, cohort: Cohort) -> None:
    builder = QueryBuilder(pacs)
    by_class(builder, "cnb-date-from").value = dt.date(2021, 1, 1)
    by_class(builder, "cnb-date-to").value = dt.date(2020, 1, 1)
    builder.search()
    assert has_error(builder)
    by_class(builder, "cnb-date-to").value = None
    run(builder, "cnb-search")
    assert not has_error(builder)
    assert status(builder).startswith("Found ")


def test_truncated_answer_is_reported(orthanc_stock: Any, move_scp_port: int) -> None:
    capped = pacs_for(orthanc_stock, move_scp_port, result_cap=2)
    try:
        builder = QueryBuilder(capped)
        by_class(builder, "cnb-patient-id").value = "*"
        with pytest.warns(cnb.ClarinetWarning):
            run(builder, "cnb-search")
        assert "The PACS cut the answer short; narrow the query" in status(builder)
        assert "cnb-warning" in by_class(builder, "cnb-status")._dom_classes
        assert not has_error(builder)
    finally:
        capped.close()


async def test_inside_a_running_loop_the_kernel_is_not_blocked(
    pacs: cnb.Pacs, cohort: Cohort
) -> None:
    builder = QueryBuilder(pacs)
    by_class(builder, "cnb-level").value = "IMAGE"
    by_class(builder, "cnb-patient-id").value = "*"
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    beat = asyncio.ensure_future(ticker())
    by_class(builder, "cnb-search").click()
    assert builder.busy and builder._task is not None  # scheduled on this loop, not run
    assert by_class(builder, "cnb-search").disabled and by_class(builder, "cnb-retrieve").disabled
    with pytest.raises(RuntimeError, match="await_idle"):
        builder.wait(timeout=1)
    await asyncio.wait_for(builder.await_idle(), WAIT)
    stop.set()
    await beat
    assert ticks > 1  # the loop kept running while the C-FIND was in flight
    assert builder.result is not None and len(builder.result) == len(cohort.instances)
    assert not by_class(builder, "cnb-search").disabled
    builder.wait(timeout=1)  # idle: returns at once


# -- PNG ------------------------------------------------------------------------------------


def test_png_encoder_round_trips() -> None:
    rng = np.random.default_rng(7)
    gray = rng.integers(0, 256, (17, 31), dtype=np.uint8)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    for array, mode in ((gray, "L"), (rgb, "RGB")):
        png = encode_png(array)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(png)) as img:
            assert img.mode == mode
            np.testing.assert_array_equal(np.asarray(img), array)
    with pytest.raises(ValueError):
        encode_png(gray.astype(np.uint16))


# -- preview ----------------------------------------------------------------------------------


def read(instances: list[CohortInstance]) -> list[Dataset]:
    return [dcmread(i.path) for i in instances]


def pick(cohort: Cohort, **match: Any) -> list[CohortInstance]:
    found = [i for i in cohort.instances if all(getattr(i, k) == v for k, v in match.items())]
    assert found, match
    return found


def test_preview_of_a_retrieved_ct_series(pacs: cnb.Pacs, cohort: Cohort) -> None:
    series = pacs.find_series(PatientID=cohort.patients()[0], Modality="CT")
    datasets = pacs.get(series)
    assert len(datasets) == 5
    view = preview(list(reversed(datasets)))  # sorted by InstanceNumber whatever the order
    assert isinstance(view, Preview)
    slider = by_class(view, "cnb-slider")
    assert slider.min == 0 and slider.max == 4
    assert [int(ds.InstanceNumber) for ds in view.instances] == [1, 2, 3, 4, 5]
    first = view.current_png()
    assert first is not None and first.startswith(b"\x89PNG")
    assert by_class(view, "cnb-image").value == first
    header = by_class(view, "cnb-header").value
    assert "InstanceNumber" in header and "<td>1</td>" in header
    assert "64 x 64" in header and "40 / 400" in header
    slider.value = 3
    assert view.current_png() != first
    assert by_class(view, "cnb-image").value == view.current_png()
    assert by_class(view, "cnb-frame-label").value == "instance 4/5, frame 1/1"
    assert "<td>4</td>" in by_class(view, "cnb-header").value
    assert by_class(view, "cnb-series").layout.display == "none"  # one series: no picker


def test_windowing_rescale_and_monochrome1(cohort: Cohort) -> None:
    ct = read(pick(cohort, modality="CT"))[0]
    raw = ct.pixel_array
    hu = raw.astype(float) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    expected = np.clip(np.rint((hu - (40 - 200)) * 255 / 400), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(render_frame(ct, raw), expected)
    mono1 = copy.deepcopy(ct)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(render_frame(mono1, raw), 255 - expected)
    del mono1.WindowCenter, mono1.WindowWidth
    full = render_frame(mono1, raw)  # default window: min..max, inverted
    assert full[hu == hu.min()].min() == 255 and full[hu == hu.max()].max() == 0


def test_preview_pages_through_a_multiframe_instance(cohort: Cohort) -> None:
    multi = pick(cohort, number_of_frames=3)
    view = preview([p.path for p in multi])  # a list of paths
    assert len(view.frames) == 3 and by_class(view, "cnb-slider").max == 2
    pngs = []
    for index in range(3):
        view.show(index)
        assert by_class(view, "cnb-frame-label").value == f"instance 1/1, frame {index + 1}/3"
        pngs.append(view.current_png())
    assert all(p is not None for p in pngs) and len(set(pngs)) == 3


def test_non_images_are_listed_not_rendered(cohort: Cohort) -> None:
    classes = [
        BasicTextSRStorage,
        KeyObjectSelectionDocumentStorage,
        GrayscaleSoftcopyPresentationStateStorage,
        EncapsulatedPDFStorage,
    ]
    others = [i for c in classes for i in pick(cohort, sop_class_uid=c)]
    ct = pick(cohort, modality="CT")[:2]
    view = preview(read(others + ct))
    listing = by_class(view, "cnb-non-images").value
    for inst in others:
        assert inst.sop_uid in listing
    for name in ("Basic Text SR Storage", "Key Object Selection", "Presentation State", "PDF"):
        assert name in listing
    assert view.images == 2 and len(view.non_images) == len(others)
    assert view.current_png() is not None

    only = preview(read(others))  # nothing to show: a message, no crash
    assert only.current_png() is None and only.images == 0
    assert "No images" in only.message
    assert by_class(only, "cnb-slider").disabled


def test_jpeg_and_rgb_instances(cohort: Cohort) -> None:
    jpeg = pick(cohort, transfer_syntax_uid=JPEGBaseline8Bit)
    view = preview(read(jpeg))
    png = view.current_png()
    if png is None:
        assert view.message.startswith("Cannot display this image (JPEG Baseline")
    else:
        assert png.startswith(b"\x89PNG") and view.message == ""
    rgb = [i for i in pick(cohort, modality="OT") if dcmread(i.path).SamplesPerPixel == 3]
    shown = preview(read(rgb)).current_png()
    assert shown is not None and shown[25] == 2  # IHDR colour type 2: RGB as is


def test_undecodable_pixels_show_a_message(cohort: Cohort) -> None:
    good, bad = read(pick(cohort, modality="CT")[:2])
    bad.PixelData = bad.PixelData[:100]  # truncated on the wire, say
    bad.InstanceNumber = 1
    good.InstanceNumber = 2
    view = preview([good, bad])
    assert view.current_png() is None
    assert view.message.startswith("Cannot display this image")
    assert "Cannot display" in html.unescape(by_class(view, "cnb-image-message").value)
    assert by_class(view, "cnb-image").layout.display == "none"
    view.show(1)  # the next instance still renders
    assert view.current_png() is not None and view.message == ""
    assert by_class(view, "cnb-image").layout.display != "none"


def test_preview_of_a_folder(cohort: Cohort, cohort_dir: Path) -> None:
    view = preview(cohort_dir)
    with_pixels = [i for i in cohort.instances if "PixelData" in dcmread(i.path)]
    assert view.images == len(with_pixels)
    assert len(view.non_images) == len(cohort.instances) - len(with_pixels)
    assert len(view.series) == len({i.series_uid for i in with_pixels})
    assert view.current_png() is not None or view.message
