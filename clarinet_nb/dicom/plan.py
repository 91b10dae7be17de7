"""Retrieval plans: what a pre-query says a retrieve will bring.

A *listed* plan (:meth:`RetrievePlan.from_datasets`) names every instance, from an
IMAGE level C-FIND.  A *lean* plan (:meth:`RetrievePlan.from_counts`) holds only the
series of the request and how many instances each has, with the study's SOP
classes, from one STUDY and one SERIES level C-FIND (one row per study / series);
it is listed after the transfer, only for the series that came up short
(:meth:`RetrievePlan.settled`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydicom import Dataset

__all__ = ["PlannedInstance", "PlannedSeries", "RetrievePlan"]


@dataclass(frozen=True)
class PlannedInstance:
    """One instance the peer said it holds."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class PlannedSeries:
    """One series the peer said it holds, and how many instances it has."""

    study_uid: str
    series_uid: str
    count: int

    @property
    def key(self) -> tuple[str, str]:
        """(study, series): a series UID is looked up within its study."""
        return (self.study_uid, self.series_uid)


@dataclass
class RetrievePlan:
    """The instances a retrieve should bring, from the pre-query."""

    instances: list[PlannedInstance] = field(default_factory=list)
    declared_classes: tuple[str, ...] = ()
    """SOP classes the peer declared for the study (SOPClassesInStudy), if asked."""
    series: list[PlannedSeries] = field(default_factory=list)
    """Series and their instance counts (lean plans; empty for a listed plan)."""
    listed: bool = True
    """True: ``instances`` names every expected instance.  False (a lean plan): only
    ``series`` and their counts are known; ``instances`` is empty."""

    @classmethod
    def from_datasets(
        cls, rows: Iterable[Dataset], declared_classes: Iterable[str] = ()
    ) -> RetrievePlan:
        """Build from IMAGE level C-FIND responses (duplicates dropped)."""
        seen: dict[str, PlannedInstance] = {}
        for ds in rows:
            sop = str(ds.get("SOPInstanceUID", "") or "").strip()
            if not sop or sop in seen:
                continue
            seen[sop] = PlannedInstance(
                study_uid=str(ds.get("StudyInstanceUID", "") or "").strip(),
                series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
                sop_uid=sop,
                sop_class_uid=str(ds.get("SOPClassUID", "") or "").strip(),
            )
        return cls(list(seen.values()), tuple(dict.fromkeys(declared_classes)))

    @classmethod
    def from_counts(
        cls, series: Iterable[PlannedSeries], declared_classes: Iterable[str]
    ) -> RetrievePlan:
        """A lean plan: series and their counts (duplicates dropped), no instance list."""
        unique = {s.key: s for s in series}
        return cls([], tuple(dict.fromkeys(declared_classes)), list(unique.values()), False)

    def __len__(self) -> int:
        """How many instances are expected."""
        if self.listed:
            return len(self.instances)
        return sum(s.count for s in self.series)

    @property
    def study_uids(self) -> list[str]:
        """The studies the plan covers."""
        found = [i.study_uid for i in self.instances] + [s.study_uid for s in self.series]
        return list(dict.fromkeys(found))

    @property
    def series_uids(self) -> list[str]:
        """The series the plan covers (what a split by series needs, with ``series``)."""
        found = [i.series_uid for i in self.instances] + [s.series_uid for s in self.series]
        return list(dict.fromkeys(found))

    @property
    def sop_uids(self) -> list[str]:
        """Expected SOP Instance UIDs, in query order (none for a lean plan)."""
        return [i.sop_uid for i in self.instances]

    @property
    def sop_classes(self) -> list[str]:
        """SOP classes present (declared for the study, or of each instance)."""
        found = [i.sop_class_uid for i in self.instances if i.sop_class_uid]
        return list(dict.fromkeys([*self.declared_classes, *found]))

    @property
    def classes_known(self) -> bool:
        """True when the peer told us which SOP classes are present."""
        if not self.listed:
            return bool(self.declared_classes)
        return bool(self.declared_classes) or all(i.sop_class_uid for i in self.instances)

    @property
    def classes_per_instance(self) -> bool:
        """True when every instance's own SOP class is known (a listed plan asking it)."""
        return self.listed and all(i.sop_class_uid for i in self.instances)

    def classes_of(self, instances: Iterable[PlannedInstance]) -> list[str]:
        """SOP classes to offer for ``instances`` (all declared ones when unknown)."""
        classes = [i.sop_class_uid for i in instances if i.sop_class_uid]
        return list(dict.fromkeys(classes)) if classes else list(self.declared_classes)

    def locate(self, sop_uid: str) -> tuple[str, str] | None:
        """(study, series) of an expected instance, for file paths."""
        found = self._index.get(sop_uid)
        return (found.study_uid, found.series_uid) if found else None

    @functools.cached_property
    def _index(self) -> dict[str, PlannedInstance]:
        return {i.sop_uid: i for i in self.instances}

    def of_classes(self, classes: Iterable[str]) -> list[PlannedInstance]:
        """The planned instances whose class is in ``classes``."""
        wanted = set(classes)
        return [i for i in self.instances if i.sop_class_uid in wanted]

    def short_series(self, arrived: Mapping[tuple[str, str], int]) -> list[PlannedSeries]:
        """The series of a lean plan of which fewer instances ``arrived`` than counted."""
        return [s for s in self.series if arrived.get(s.key, 0) < s.count]

    def settled(
        self,
        arrived: Mapping[str, tuple[str, str]],
        listing: Iterable[PlannedInstance],
        listed_series: Iterable[tuple[str, str]],
    ) -> RetrievePlan:
        """The listed plan of a lean plan after its transfer.

        ``listing``: the IMAGE level answers for ``listed_series`` (those that came up
        short); every other series is represented by what ``arrived`` in it
        (SOP UID -> (study, series)), which accounted for its count."""
        listed = set(listed_series)
        instances = [
            PlannedInstance(study, series, sop, "")
            for sop, (study, series) in arrived.items()
            if (study, series) not in listed
        ]
        seen = {i.sop_uid for i in instances}
        for inst in listing:
            if inst.sop_uid not in seen:
                seen.add(inst.sop_uid)
                instances.append(inst)
        return RetrievePlan(instances, self.declared_classes)
