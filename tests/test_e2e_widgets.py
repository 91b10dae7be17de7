"""End to end: the query builder in a real JupyterLab, driven by a real browser.

JupyterLab runs on 127.0.0.1 (free port, token) over a copy of ``notebooks/``,
with the ``CLARINET_*`` variables of the session's Orthanc in its environment
(and so in its kernels).  Playwright drives Debian's Chromium
(``/usr/bin/chromium``; Playwright's own browser downloads are never used):
it runs ``04_widgets.ipynb``, types a Patient ID, clicks Search, selects a row,
clicks Retrieve, waits for the status line, re-runs the preview cell, and saves
screenshots of the widget and of the preview to the test's temporary folder, or to
``$CLARINET_SCREENSHOT_DIR`` (``CLARINET_SCREENSHOT_DIR=docs/screenshots`` refreshes
the README's images).

Skipped when Chromium or Playwright is missing, unless ``CI`` is set: then it
fails instead, so CI cannot pass without running it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clarinet_nb.testing import Cohort, OrthancServer
from clarinet_nb.testing.jupyter import JupyterLab
from tests.test_notebooks import kernel_env

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
PATIENT = "CLN-0002"  # Müller: a Latin name, so no CJK font is needed for the screenshot
STUDY = "CT ABDOMEN"
WAIT_MS = 60_000

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _missing() -> list[str]:
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    for module, package in [
        ("playwright", "playwright"),
        ("jupyterlab", "jupyterlab"),
        ("ipykernel", "ipykernel"),
        ("clarinet_nb.widgets", "clarinet_nb.widgets"),
    ]:
        if importlib.util.find_spec(module) is None:
            missing.append(package)
    return missing


@pytest.fixture(scope="module")
def requirements() -> None:
    missing = _missing()
    if not missing:
        return
    reason = "browser test needs " + ", ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so it must run (scripts/bootstrap.sh --tests)")
    pytest.skip(reason)


@pytest.fixture
def lab(
    requirements: None, tmp_path: Path, orthanc_stock: OrthancServer, move_scp_port: int
) -> Iterator[JupyterLab]:
    notebooks = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks, ignore=shutil.ignore_patterns(".*"))
    env = kernel_env(orthanc_stock, move_scp_port)
    with JupyterLab(notebooks, tmp_path / "jupyterlab", env=env, quiet=True) as server:
        yield server


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CLARINET_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_query_builder_in_jupyterlab(
    lab: JupyterLab, screenshots: Path, tmp_path: Path, cohort: Cohort
) -> None:
    from playwright.sync_api import expect, sync_playwright

    studies = [s for s in cohort.studies() if cohort.instances_in(study_uid=s)[0].patient_id
               == PATIENT]  # fmt: skip
    target = next(
        s for s in studies if cohort.instances_in(study_uid=s)[0].study_description == STUDY
    )
    expected = len(cohort.instances_in(study_uid=target))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1700, "height": 1000})
        try:
            _drive(page, lab, expect, studies=len(studies), expected=expected, out=screenshots)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()

    for name in ("widget.png", "preview.png"):
        assert (screenshots / name).stat().st_size > 10_000, name


def _drive(page: Any, lab: JupyterLab, expect: Any, *, studies: int, expected: int,
           out: Path) -> None:  # fmt: skip
    page.goto(lab.url("lab/tree/04_widgets.ipynb"))
    expect(page.locator(".jp-NotebookPanel .jp-Cell").first).to_be_visible(timeout=WAIT_MS)
    # Wait for the kernel: a Run All while the session starts asks which kernel to use.
    kernel = page.locator(".jp-StatusBar-Widget", has_text="Python 3 (ipykernel) | Idle")
    expect(kernel.first).to_be_visible(timeout=WAIT_MS)

    # Run > Run All Cells; the last cell (the preview) shows an image when all have run.
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    expect(page.locator(".cnb-preview .cnb-image")).to_be_visible(timeout=WAIT_MS)
    status = page.locator(".cnb-status")
    expect(status).to_contain_text("Retrieved", timeout=WAIT_MS)

    # Search for one patient.
    page.locator(".cnb-patient-id input").fill(PATIENT)
    page.locator("button.cnb-search").click()
    expect(status).to_contain_text(f"Found {studies} studies", timeout=WAIT_MS)
    rows = page.locator(".cnb-results tbody tr")
    expect(rows).to_have_count(studies, timeout=WAIT_MS)
    expect(page.locator(".cnb-results")).to_contain_text(PATIENT)
    expect(page.locator(".cnb-results")).to_contain_text("Müller^Jürgen")

    # Select the study, retrieve it into memory.
    option = page.locator(".cnb-select option", has_text=STUDY)
    expect(option).to_have_count(1)
    page.locator(".cnb-select select").select_option(value=option.get_attribute("value"))
    page.locator("button.cnb-retrieve").click()
    expect(status).to_contain_text(f"Retrieved {expected} instances into memory", timeout=WAIT_MS)
    expect(page.locator(".cnb-progress")).to_be_visible()
    builder = page.locator(".cnb-query-builder")
    builder.scroll_into_view_if_needed()
    builder.screenshot(path=str(out / "widget.png"))

    # Preview what the widget retrieved: run the last cell again.
    last = page.locator(".jp-Notebook .jp-CodeCell").last
    last.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")
    preview = page.locator(".cnb-preview")
    expect(preview.locator(".cnb-header")).to_contain_text(PATIENT, timeout=WAIT_MS)
    expect(preview.locator(".cnb-image")).to_be_visible()
    preview.scroll_into_view_if_needed()
    preview.screenshot(path=str(out / "preview.png"))
