"""No patient data where it does not belong: logs above DEBUG, exceptions, warnings, cache paths.

A whole working session runs against a real Orthanc holding the synthetic cohort and a
planted marker patient (distinctive PatientID, name, birth date and accession number that
can only come from the data): a batch with a failing row, drill-down, cached queries, a
pull to disk with headers, a pull to memory, C-MOVE, failed pulls, bad input.  Logging is
at INFO for the root and ``clarinet_nb`` loggers (DEBUG off), and everything is captured:
every log record of every logger (pynetdicom's and pydicom's too), every ``warnings.warn``
(ClarinetWarnings and others), every exception message (with its causes), every failure
message in ``attrs["failures"]`` / ``.failures`` / the manifest, and every path in the
query cache.  None of them may contain a patient name, ID, birth date or accession number.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

import clarinet_nb as cnb
from clarinet_nb.errors import DicomError, InvalidInputError
from clarinet_nb.testing import Cohort, OrthancServer, free_port
from tests.support import TEST_TIMEOUTS

pytestmark = pytest.mark.timeout(300)

MARKER_ID = "PHIMRK-ZQ7X4"
MARKER_NAME = "Qwxzmarker^Vlkjsecret"
MARKER_BIRTH = "19030917"
MARKER_ACCESSION = "ACQZX9173"
FAILING_ID = "PHIFAIL-KX82"  # the PACS refuses a query for it (a failed batch row)
BAD_ID = "PHIBAD-JJ31\x01"  # a control character: InvalidInputError before any traffic

REFUSE_FAILING = f"""
function IncomingFindRequestFilter(query, origin)
  if query['0010,0020'] == '{FAILING_ID}' then
    error('this PACS refuses that query')
  end
  return query
end
"""


def secrets(cohort: Cohort) -> set[str]:
    """Every patient name, ID, birth date and accession number of the cohort, and markers."""
    found = {MARKER_ID, MARKER_BIRTH, "1903-09-17", MARKER_ACCESSION, FAILING_ID, "PHIBAD-JJ31"}
    found |= set(MARKER_NAME.split("^")) | {MARKER_NAME}
    for inst in cohort.instances:
        found |= {inst.patient_id, inst.patient_name, inst.accession_number}
        found |= {inst.patient_birth_date.strftime("%Y%m%d"), inst.patient_birth_date.isoformat()}
        found |= {
            part
            for part in inst.patient_name.replace("=", "^").split("^")
            if len(part) >= 4 or not part.isascii()  # "Doe" would match "Does"
        }
    return {s for s in found if s}


def plant_marker(cohort: Cohort, root: Path) -> list[Path]:
    """Two instances of one series of a marker patient, made from a cohort CT slice."""
    ct = [i for i in cohort.instances if i.modality == "CT"][:2]
    study, series = generate_uid(), generate_uid()
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, inst in enumerate(ct):
        ds = dcmread(inst.path)
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = MARKER_ID, MARKER_NAME, MARKER_BIRTH
        ds.AccessionNumber = MARKER_ACCESSION
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(root / f"marker{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def phi_orthanc(
    tmp_path_factory: pytest.TempPathFactory,
    cohort: Cohort,
    move_destinations: dict[str, tuple[str, str, int]],
) -> Iterator[OrthancServer]:
    work = tmp_path_factory.mktemp("orthanc-phi")
    server = OrthancServer(
        work / "orthanc", tuned=True, move_destinations=move_destinations, lua=REFUSE_FAILING
    )
    with server:
        paths = cohort.paths() + plant_marker(cohort, work / "marker")
        assert server.load(paths) == len(paths)
        yield server


# --------------------------------------------------------------------------- capture


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Evidence:
    """Every text the session produced that a user, a log file or a disk sees."""

    records: list[logging.LogRecord] = field(default_factory=list)
    caught: list[warnings.WarningMessage] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [str(w.message) for w in self.caught]

    def expect_error(self, error: type[BaseException], call: Callable[[], Any]) -> None:
        """Run ``call``, which must raise ``error``; keep its message and its causes'."""
        with pytest.raises(error) as info:
            call()
        exc: BaseException | None = info.value
        while exc is not None:
            self.exceptions += [str(exc), *map(str, exc.args)]
            exc = exc.__cause__ or exc.__context__

    def keep_failures(self, result: Any) -> None:
        """The failure messages of a batch frame, a DatasetList or a manifest."""
        failures = getattr(result, "failures", None)
        if isinstance(result, pd.DataFrame):
            failures = result.attrs.get("failures", [])
            if "error" in result.columns:
                self.failures += [str(e) for e in result["error"].dropna()]
        for failure in failures or []:
            self.failures += [str(failure.get("message", "")), str(failure.get("error", ""))]


@pytest.fixture
def evidence() -> Iterator[Evidence]:
    """Capture logs at INFO (DEBUG off) from every logger, and every warning."""
    root, ours = logging.getLogger(), logging.getLogger("clarinet_nb")
    levels = (root.level, ours.level)
    handler = _Records()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    ours.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield Evidence(records=handler.records, caught=caught)
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])


def leaks(texts: list[str], phi: set[str]) -> list[tuple[str, str]]:
    return [(s, t) for t in texts for s in phi if s in t]


# --------------------------------------------------------------------------- the session


def test_no_patient_data_in_logs_exceptions_warnings_or_cache_paths(
    phi_orthanc: OrthancServer,
    cohort: Cohort,
    move_scp_port: int,
    tmp_path: Path,
    evidence: Evidence,
) -> None:
    phi = secrets(cohort)
    target = f"{phi_orthanc.aet}@{phi_orthanc.host}:{phi_orthanc.port}"
    cache = tmp_path / "cache"
    pacs = cnb.connect(target, scp_port=move_scp_port, timeouts=TEST_TIMEOUTS, cache=cache)
    unreachable = cnb.connect(f"NOBODY@127.0.0.1:{free_port()}", timeouts=TEST_TIMEOUTS)
    try:
        # a batch over every patient, the marker and a row the PACS refuses
        ids = [*cohort.patients(), MARKER_ID, FAILING_ID]
        studies = pacs.find_studies(pd.DataFrame({"PatientID": ids}), progress=False)
        evidence.keep_failures(studies)
        assert [f["row"] for f in studies.attrs["failures"]] == [len(ids) - 1]
        assert MARKER_ACCESSION in set(studies["AccessionNumber"])
        again = pacs.find_studies(pd.DataFrame({"PatientID": ids[:-1]}), progress=False)
        assert again.attrs["cached"], "the second batch should come from the cache"
        pacs.find_patients(PatientName="*", return_keys=["PatientBirthDate"])
        pacs.find_studies(PatientName=MARKER_NAME, PatientBirthDate=MARKER_BIRTH)
        pacs.find_studies(AccessionNumber=MARKER_ACCESSION)
        series = pacs.find_series(studies, progress=False)
        instances = pacs.find_instances(series, progress=False)
        assert len(instances) == len(cohort.instances) + 2

        # a whole pull to disk with headers, a pull to memory, a C-MOVE
        manifest = pacs.get(
            studies, output_dir=tmp_path / "data", metadata=tmp_path / "h.parquet", progress=False
        )
        evidence.keep_failures(manifest)
        assert set(manifest["status"]) == {"retrieved"}
        marker = studies[studies["PatientID"] == MARKER_ID]
        evidence.keep_failures(pacs.get(marker, progress=False))
        evidence.keep_failures(pacs.get(marker, method="move", progress=False))

        # failures: a study the PACS does not hold, an unreachable PACS, bad input
        unknown = marker.assign(StudyInstanceUID="1.2.826.0.1.3680043.99.404")
        evidence.keep_failures(pacs.get(unknown, progress=False))
        evidence.keep_failures(pacs.get(unknown, output_dir=tmp_path / "none", progress=False))
        evidence.keep_failures(unreachable.get(marker, progress=False))
        evidence.keep_failures(unreachable.get(marker, output_dir=tmp_path / "u", progress=False))
        evidence.expect_error(DicomError, lambda: unreachable.find_studies(PatientID=MARKER_ID))
        evidence.expect_error(InvalidInputError, lambda: pacs.find_studies(PatientID=BAD_ID))
        # a bad cell fails its row (InvalidInputError in attrs["failures"]), never a query
        mixed = pacs.find_studies(pd.DataFrame({"PatientID": [MARKER_ID, BAD_ID]}))
        evidence.keep_failures(mixed)
        assert [(f["row"], f["error"]) for f in mixed.attrs["failures"]] == [
            (1, "InvalidInputError")
        ]
        evidence.expect_error(
            InvalidInputError, lambda: pacs.find_studies(PatientBirthDate=f"{MARKER_BIRTH}x")
        )
        evidence.expect_error(
            InvalidInputError, lambda: pacs.find_studies(PatientID={"id": MARKER_ID})
        )
        evidence.expect_error(
            InvalidInputError,
            lambda: pacs.find_studies(pd.DataFrame({"PatientBirthDate": [f"{MARKER_BIRTH}99"]})),
        )
        evidence.expect_error(  # 18 characters: SH holds 16
            InvalidInputError, lambda: pacs.find_studies(AccessionNumber=MARKER_ACCESSION * 2)
        )
    finally:
        pacs.close()
        unreachable.close()
    evidence.paths = [str(p.relative_to(cache)) for p in cache.rglob("*")]

    # the capture works: it saw the session's records, warnings, errors and cache files
    loud = [r for r in evidence.records if r.levelno > logging.DEBUG]
    assert any(r.name == "clarinet_nb" and r.levelno == logging.INFO for r in loud)
    assert any(r.name.startswith("pynetdicom") for r in loud)
    assert evidence.warnings, "the failed row and the failed pulls warn"
    assert len(evidence.exceptions) >= 6
    assert any(p.endswith(".parquet") for p in evidence.paths)
    assert evidence.failures

    found = {
        "log record": leaks([r.getMessage() for r in loud], phi),
        "exception message": leaks(evidence.exceptions, phi),
        "warning": leaks(evidence.warnings, phi),
        "failure message": leaks(evidence.failures, phi),
        "cache file name": leaks(evidence.paths, phi),
    }
    assert not any(found.values()), "patient data in: " + "; ".join(
        f"{where}: {sorted({text for _, text in hits})}" for where, hits in found.items() if hits
    )
