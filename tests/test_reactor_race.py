"""Regression: pynetdicom's requestor reactor must never steal a response from us.

Before the reactor was parked, about one C-FIND in a few dozen on a reused
association lost a match (the reactor thread took it off the DIMSE queue and
logged "Received unexpected C-FIND service message")."""

from __future__ import annotations

from clarinet_nb import DicomOperations, ImageQuery, StudyQuery
from clarinet_nb.testing import Cohort, Peer
from tests.support import TEST_TIMEOUTS, node

ROUNDS = 300


def test_many_finds_on_one_association_lose_nothing(dcmqrscp_tuned: Peer, cohort: Cohort) -> None:
    ops = DicomOperations(timeouts=TEST_TIMEOUTS)
    study = cohort.studies()[0]
    series = cohort.series(study)[0]
    expected = len(cohort.instances_in(study, series))
    query = ImageQuery(study_instance_uid=study, series_instance_uid=series)
    counts = []
    with ops._find_association(node(dcmqrscp_tuned)) as assoc:
        for _ in range(ROUNDS):
            outcome = ops._find_on(assoc, query, query.to_dataset(), node(dcmqrscp_tuned), None)
            counts.append(len(outcome.datasets))
    assert counts == [expected] * ROUNDS


def test_many_short_associations_lose_nothing(orthanc_tuned: Peer, cohort: Cohort) -> None:
    ops = DicomOperations(timeouts=TEST_TIMEOUTS)
    counts = [len(ops.find(StudyQuery(), node(orthanc_tuned)).datasets) for _ in range(60)]
    assert counts == [len(cohort.studies())] * 60
