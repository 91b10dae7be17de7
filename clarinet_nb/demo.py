"""Demo: a local Orthanc with a synthetic cohort, queried and retrieved with clarinet_nb.

Run ``python -m clarinet_nb.demo`` (or ``bash scripts/demo.sh``, which installs
Orthanc and DCMTK first).  It starts Orthanc on a free loopback port, loads a
generated cohort (3 patients, 6 studies, CT/MR/CR/SR/KO/PR/SC/PDF, a JPEG and a
Japanese name), runs C-ECHO, C-FIND at every level, C-GET to disk and C-MOVE to
memory, prints what came back, and stops Orthanc.  ``--keep`` leaves it running
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path

from clarinet_nb import (
    DicomClient,
    DicomNode,
    ImageQuery,
    SeriesQuery,
    StorageConfig,
    StorageMode,
    StudyQuery,
)
from clarinet_nb.testing import OrthancServer, free_port, generate_cohort

__all__ = ["main", "run_demo"]


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def run_demo(pacs: DicomNode, scp_port: int, out: Path) -> None:
    """Query and retrieve from ``pacs`` the way a notebook user would."""
    async with DicomClient(scp_port=scp_port) as client:
        _say(f"C-ECHO {pacs}: {await client.echo(pacs)}")

        studies = await client.find_studies(StudyQuery(), peer=pacs)
        _say(f"\nC-FIND STUDY: {len(studies)} studies")
        for s in sorted(studies, key=lambda s: s.study_date or s.study_instance_uid or ""):
            _say(
                f"  {s.study_date}  {s.patient_name:<16} {s.patient_id}  "
                f"{','.join(s.modalities_in_study):<12} {s.study_description}  "
                f"({s.number_of_study_related_instances} instances)"
            )

        ranged = await client.find_studies(
            StudyQuery(study_date=("2020-01-01", "2021-12-31")), peer=pacs
        )
        _say(f"\nC-FIND STUDY with StudyDate 2020-01-01..2021-12-31: {len(ranged)} studies")

        study = max(studies, key=lambda s: len(s.modalities_in_study))
        series = await client.find_series(
            SeriesQuery(study_instance_uid=study.study_instance_uid), peer=pacs
        )
        _say(f"\nC-FIND SERIES in the {study.study_date} study: {len(series)} series")
        for se in series:
            images = await client.find_images(
                ImageQuery(
                    study_instance_uid=study.study_instance_uid,
                    series_instance_uid=se.series_instance_uid,
                ),
                peer=pacs,
            )
            _say(
                f"  #{se.series_number} {se.modality:<3} {se.series_description or '':<28} "
                f"{len(images)} instance(s)"
            )

        assert study.study_instance_uid is not None
        got = await client.get_study(
            study.study_instance_uid, peer=pacs, output_dir=out, progress=True
        )
        _say(f"\nC-GET study to {out}: {got.summary()} in {got.elapsed:.2f} s")
        for path in got.paths[:3]:
            _say(f"  {path.relative_to(out)}")

        first = series[0]
        assert first.series_instance_uid is not None
        moved = await client.move_series(
            first.series_instance_uid,
            study_uid=study.study_instance_uid,
            peer=pacs,
            storage=StorageConfig(mode=StorageMode.MEMORY),
        )
        _say(f"\nC-MOVE series #{first.series_number} to memory: {moved.summary()}")
        for ds in moved.datasets[:3]:
            _say(
                f"  {ds.SOPClassUID.name}: {ds.get('Rows', '-')}x{ds.get('Columns', '-')} "
                f"{ds.file_meta.TransferSyntaxUID.name}"
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m clarinet_nb.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m clarinet_nb.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--keep", action="store_true", help="leave the demo PACS running")
    parser.add_argument("--workdir", type=Path, help="where to keep the PACS and the output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clarinet-demo-"))
    cohort = generate_cohort(workdir / "cohort")
    scp_port = free_port()
    destinations = {"clarinet": ("CLARINET", "127.0.0.1", scp_port)}
    with OrthancServer(workdir / "orthanc", move_destinations=destinations) as orthanc:
        orthanc.load(cohort.paths())
        pacs = DicomNode(aet=orthanc.aet, host=orthanc.host, port=orthanc.port)
        _say(f"demo PACS: Orthanc {pacs} with {len(cohort.instances)} synthetic instances\n")
        asyncio.run(run_demo(pacs, scp_port, workdir / "out"))
        if args.keep:
            _say(
                f"\nOrthanc keeps running at {pacs} (move destination CLARINET@127.0.0.1:"
                f"{scp_port}); Ctrl-C stops it."
            )
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    _say(f"\ndone; files in {workdir / 'out'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
