"""Retrieval plans: what an IMAGE level pre-query says a retrieve will bring."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom import Dataset

__all__ = ["PlannedInstance", "RetrievePlan"]


@dataclass(frozen=True)
class PlannedInstance:
    """One instance the peer said it holds."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


@dataclass
class RetrievePlan:
    """The instances a retrieve should bring, from the pre-query."""

    instances: list[PlannedInstance] = field(default_factory=list)
    declared_classes: tuple[str, ...] = ()
    """SOP classes the peer declared for the study (SOPClassesInStudy), if asked."""

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

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def sop_uids(self) -> list[str]:
        """Expected SOP Instance UIDs, in query order."""
        return [i.sop_uid for i in self.instances]

    @property
    def sop_classes(self) -> list[str]:
        """SOP classes present (declared for the study, or of each instance)."""
        found = [i.sop_class_uid for i in self.instances if i.sop_class_uid]
        return list(dict.fromkeys([*self.declared_classes, *found]))

    @property
    def classes_known(self) -> bool:
        """True when the peer told us which SOP classes are present."""
        return bool(self.declared_classes) or all(i.sop_class_uid for i in self.instances)

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
