"""``cnb.preview(datasets)``: page through the images of a series in a notebook.

Accepts pydicom datasets (``pacs.get(...)``), a manifest frame with a ``path``
column (``pacs.get(..., output_dir=...)``), a folder, or a list of paths.
Image instances are shown one frame at a time, windowed and rendered to PNG by
:mod:`clarinet_nb.widgets.png`; objects without pixel data (SR, KO, PR, PDF...)
are listed, never rendered.  Pixel data that cannot be decoded shows a message
in place of the image instead of raising.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import pandas as pd
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from clarinet_nb.widgets.png import encode_png

__all__ = ["FrameRef", "Preview", "load_datasets", "preview", "render_frame"]

logger = logging.getLogger("clarinet_nb")

Source = (
    Dataset | pd.DataFrame | str | os.PathLike[str] | Iterable[Dataset | str | os.PathLike[str]]
)

#: Values larger than this stay in the file until needed (pixel data of a folder).
DEFER_SIZE = 64 * 1024
#: Small images are scaled up to at least this many pixels wide on screen.
MIN_DISPLAY_WIDTH = 256
HEADER_FIELDS = (
    "PatientID",
    "StudyDate",
    "Modality",
    "SeriesDescription",
    "InstanceNumber",
    "Rows x Columns",
    "NumberOfFrames",
    "PixelSpacing",
    "SliceThickness",
    "WindowCenter/Width",
)


@dataclass(frozen=True)
class FrameRef:
    """One page of the preview: frame ``frame`` (0-based) of instance ``instance``."""

    instance: int
    frame: int
    frames: int


# -- loading ------------------------------------------------------------------------------


def load_datasets(source: Source) -> tuple[list[Dataset], list[str]]:
    """Datasets from ``source``, and a note for each file that could not be read."""
    skipped: list[str] = []
    if isinstance(source, Dataset):
        return [source], skipped
    if isinstance(source, pd.DataFrame):
        if "path" not in source.columns:
            raise ValueError("a frame to preview needs a 'path' column (a manifest)")
        rows = source
        if "status" in source.columns:
            rows = source[source["status"].isin(["present", "retrieved"])]
        paths: list[Path] = [Path(str(p)) for p in rows["path"] if not pd.isna(p)]
    elif isinstance(source, str | os.PathLike):
        paths = _files(Path(source))
    else:
        datasets: list[Dataset] = []
        paths = []
        for item in source:
            if isinstance(item, Dataset):
                datasets.append(item)
            elif isinstance(item, str | os.PathLike):
                paths.extend(_files(Path(item)))
            else:
                raise TypeError(f"cannot preview a {type(item).__name__}")
        read, skipped = _read(paths)
        return datasets + read, skipped
    return _read(paths)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _read(paths: Sequence[Path]) -> tuple[list[Dataset], list[str]]:
    datasets: list[Dataset] = []
    skipped: list[str] = []
    for path in paths:
        try:
            datasets.append(dcmread(path, defer_size=DEFER_SIZE))
        except InvalidDicomError:
            logger.debug("preview: %s is not a DICOM file", path)
            skipped.append(f"{path.name}: not a DICOM file")
        except (OSError, ValueError, EOFError) as exc:
            logger.debug("preview: cannot read %s: %s", path, exc)
            skipped.append(f"{path.name}: {type(exc).__name__}: {exc}")
    return datasets, skipped


# -- rendering ----------------------------------------------------------------------------


def has_pixels(ds: Dataset) -> bool:
    """True for objects with pixel data (images)."""
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames (1 when absent or malformed)."""
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _to_uint8(values: npt.NDArray[Any], lower: float, upper: float) -> npt.NDArray[np.uint8]:
    if upper <= lower:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - lower) * (255.0 / (upper - lower))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def render_frame(ds: Dataset, pixels: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """One decoded frame as 8-bit grayscale or RGB, ready for PNG.

    Grayscale: RescaleSlope/Intercept, then the first WindowCenter/WindowWidth
    (or the frame's min..max), MONOCHROME1 inverted.  RGB is shown as is
    (16-bit RGB scaled to its range); PALETTE COLOR goes through its LUT.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR" and pixels.ndim == 2:
        from pydicom.pixels.processing import apply_color_lut

        pixels = np.asarray(apply_color_lut(pixels, ds))
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        if pixels.dtype == np.uint8:
            return pixels
        return _to_uint8(pixels, float(pixels.min()), float(pixels.max()))
    if pixels.ndim != 2:
        raise ValueError(f"cannot show pixel data of shape {pixels.shape}")
    slope = _first_float(ds.get("RescaleSlope"))
    intercept = _first_float(ds.get("RescaleIntercept"))
    values = pixels.astype(np.float64) * (1.0 if slope is None else slope) + (intercept or 0.0)
    centre = _first_float(ds.get("WindowCenter"))
    width = _first_float(ds.get("WindowWidth"))
    if centre is not None and width is not None and width > 0:
        lower, upper = centre - width / 2.0, centre + width / 2.0
    else:
        lower, upper = float(values.min()), float(values.max())
    out = _to_uint8(values, lower, upper)
    if photometric == "MONOCHROME1":
        out = np.subtract(255, out, dtype=np.uint8)
    return out


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return ", ".join(_fmt(v) for v in value)  # e.g. PixelSpacing "0.7, 0.7"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def header_rows(ds: Dataset) -> list[tuple[str, str]]:
    """The key header fields shown next to the image."""
    rows: list[tuple[str, str]] = []
    for name in HEADER_FIELDS:
        if name == "Rows x Columns":
            value = f"{_fmt(ds.get('Rows'))} x {_fmt(ds.get('Columns'))}"
        elif name == "WindowCenter/Width":
            centre, width = _fmt(ds.get("WindowCenter")), _fmt(ds.get("WindowWidth"))
            value = f"{centre} / {width}" if centre or width else ""
        elif name == "StudyDate":
            raw = _fmt(ds.get(name))
            value = f"{raw[:4]}-{raw[4:6]}-{raw[6:8]}" if len(raw) == 8 and raw.isdigit() else raw
        elif name == "NumberOfFrames" and name not in ds:
            continue
        else:
            value = _fmt(ds.get(name))
        rows.append((name, value))
    return rows


def _header_html(ds: Dataset) -> str:
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td>{html.escape(v)}</td></tr>"
        for k, v in header_rows(ds)
    )
    return f"<table>{cells}</table>"


def sop_class_name(ds: Dataset) -> str:
    """The SOP class's name (or its UID when unknown)."""
    uid = str(ds.get("SOPClassUID", "") or "")
    if not uid:
        return "unknown SOP class"
    name = UID(uid).name
    return name or uid


def _non_images_html(datasets: Sequence[Dataset], skipped: Sequence[str]) -> str:
    if not datasets and not skipped:
        return ""
    items = [
        f"<li>{html.escape(sop_class_name(ds))}: "
        f"<code>{html.escape(str(ds.get('SOPInstanceUID', '')))}</code></li>"
        for ds in datasets
    ]
    items += [f"<li>skipped {html.escape(note)}</li>" for note in skipped]
    return f"<b>Not images ({len(datasets)})</b><ul>{''.join(items)}</ul>"


# -- the widget ---------------------------------------------------------------------------


def _number(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


class Preview(widgets.VBox):  # type: ignore[misc]
    """A series viewer: slider over every frame of every instance, image, header, list.

    ``.frames`` lists the pages of the current series, ``.instances`` its image
    datasets in InstanceNumber order, ``.non_images`` what cannot be shown,
    ``.current_png()`` the PNG on screen (None when it could not be decoded;
    ``.message`` then says why).
    """

    def __init__(self, datasets: Sequence[Dataset], skipped: Sequence[str] = ()) -> None:
        images = [ds for ds in datasets if has_pixels(ds)]
        self.non_images: list[Dataset] = [ds for ds in datasets if not has_pixels(ds)]
        self.series: dict[str, list[Dataset]] = {}
        order = {id(ds): i for i, ds in enumerate(images)}
        for ds in sorted(
            images,
            key=lambda d: (_number(d, "SeriesNumber"), str(d.get("SeriesInstanceUID", ""))),
        ):
            self.series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
        for uid, members in self.series.items():
            self.series[uid] = sorted(
                members, key=lambda d: (_number(d, "InstanceNumber"), order[id(d)])
            )
        self.images = len(images)
        """How many image instances (all series)."""
        self.instances: list[Dataset] = []
        self.frames: list[FrameRef] = []
        self.message = ""
        self._png: bytes | None = None
        self._decoded: tuple[Dataset, npt.NDArray[Any]] | None = None

        self.series_picker = widgets.Dropdown(
            options=[(self._series_label(uid, m), uid) for uid, m in self.series.items()],
            description="Series",
            layout=widgets.Layout(width="auto"),
        )
        self.series_picker.add_class("cnb-series")
        if len(self.series) <= 1:
            self.series_picker.layout.display = "none"
        self.slider = widgets.IntSlider(
            min=0, max=0, value=0, description="Image", readout=False, continuous_update=True
        )
        self.slider.add_class("cnb-slider")
        self.label = widgets.Label()
        self.label.add_class("cnb-frame-label")
        self.image = widgets.Image(format="png", value=b"")
        self.image.add_class("cnb-image")
        self.image_message = widgets.HTML()
        self.image_message.add_class("cnb-image-message")
        self.header = widgets.HTML()
        self.header.add_class("cnb-header")
        self.non_image_list = widgets.HTML(_non_images_html(self.non_images, skipped))
        self.non_image_list.add_class("cnb-non-images")

        self.series_picker.observe(self._on_series, names="value")
        self.slider.observe(self._on_slider, names="value")
        super().__init__(
            [
                self.series_picker,
                widgets.HBox([self.slider, self.label]),
                widgets.HBox([widgets.VBox([self.image, self.image_message]), self.header]),
                self.non_image_list,
            ]
        )
        self.add_class("cnb-preview")
        if self.series:
            self._select_series(next(iter(self.series)))
        else:
            self.slider.disabled = True
            self.image.layout.display = "none"
            self._set_message(
                "No images to show" + (" (objects listed below)." if datasets else ".")
            )
            self.label.value = "no images"

    @staticmethod
    def _series_label(uid: str, members: Sequence[Dataset]) -> str:
        first = members[0]
        return (
            f"{_fmt(first.get('Modality'))} #{_fmt(first.get('SeriesNumber'))} "
            f"{_fmt(first.get('SeriesDescription'))} ({len(members)} instances)"
        ).strip()

    def _select_series(self, uid: str) -> None:
        self.instances = self.series[uid]
        self.frames = [
            FrameRef(i, f, frame_count(ds))
            for i, ds in enumerate(self.instances)
            for f in range(frame_count(ds))
        ]
        self._decoded = None
        with self.hold_trait_notifications():
            self.slider.value = 0
            self.slider.max = max(len(self.frames) - 1, 0)
            self.slider.disabled = len(self.frames) <= 1
        self._show(0)

    def _on_series(self, change: dict[str, Any]) -> None:
        self._select_series(str(change["new"]))

    def _on_slider(self, change: dict[str, Any]) -> None:
        self._show(int(change["new"]))

    def show(self, index: int) -> None:
        """Go to page ``index`` of the current series (as moving the slider does)."""
        self.slider.value = index
        self._show(index)

    def current_png(self) -> bytes | None:
        """The PNG shown now, or None (no images, or the frame could not be decoded)."""
        return self._png

    def _pixels(self, ds: Dataset) -> npt.NDArray[Any]:
        if self._decoded is not None and self._decoded[0] is ds:
            return self._decoded[1]
        array = np.asarray(ds.pixel_array)
        self._decoded = (ds, array)
        return array

    def _show(self, index: int) -> None:
        if not self.frames:
            return
        ref = self.frames[min(max(index, 0), len(self.frames) - 1)]
        ds = self.instances[ref.instance]
        self.label.value = (
            f"instance {ref.instance + 1}/{len(self.instances)}, frame {ref.frame + 1}/{ref.frames}"
        )
        self.header.value = _header_html(ds)
        try:
            array = self._pixels(ds)
            pixels = array[ref.frame] if ref.frames > 1 else array
            png = encode_png(render_frame(ds, pixels))
        except Exception as exc:  # any decoder failure becomes a message
            logger.debug("preview: cannot decode an instance", exc_info=True)
            self._png = None
            self.image.layout.display = "none"
            self._set_message(_decode_message(ds, exc))
            return
        self._png = png
        self.image.value = png
        columns = pixels.shape[1]
        scale = -(-MIN_DISPLAY_WIDTH // columns) if columns < MIN_DISPLAY_WIDTH else 1
        self.image.width = str(columns * scale)
        self.image.layout.display = None
        self._set_message("")

    def _set_message(self, text: str) -> None:
        self.message = text
        self.image_message.value = (
            f"<div style='padding:1em;border:1px solid #c66;color:#933'>{html.escape(text)}</div>"
            if text
            else ""
        )
        self.image_message.layout.display = None if text else "none"


def _decode_message(ds: Dataset, exc: Exception) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    name = UID(syntax).name if syntax else "unknown transfer syntax"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"Cannot display this image ({name}): {detail}. "
        "A decoder may be missing (pip install pylibjpeg pylibjpeg-libjpeg, or Pillow)."
    )


def preview(source: Source) -> Preview:
    """A widget paging through the images of ``source``.

    ``source``: pydicom datasets (``pacs.get(...)``), a manifest frame with a
    ``path`` column, a folder, or a list of paths.  Multi-frame instances are
    paged frame by frame; non-image objects are listed below the image.
    """
    datasets, skipped = load_datasets(source)
    return Preview(datasets, skipped)
