"""What to retrieve: a study, a series or instances, as C-GET/C-MOVE identifiers."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset

from clarinet_nb.dicom.queries import ImageQuery, QueryLevel
from clarinet_nb.dicom.values import check_uid
from clarinet_nb.errors import InvalidInputError

__all__ = [
    "RetrieveRequest",
    "image_identifier",
    "listed_sop_uids",
    "split_uid_lists",
    "uid_list_keywords",
]


@dataclass(frozen=True)
class RetrieveRequest:
    """A validated retrieve target; UIDs are checked on construction."""

    level: QueryLevel
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.study_uid is not None:
            check_uid(self.study_uid)
        if self.series_uid is not None:
            check_uid(self.series_uid)
        for uid in self.sop_uids:
            check_uid(uid)
        if self.level is QueryLevel.STUDY and not self.study_uid:
            raise InvalidInputError("a study retrieve needs study_uid")
        if self.level is QueryLevel.SERIES and not self.series_uid:
            raise InvalidInputError("a series retrieve needs series_uid")
        if self.level is QueryLevel.IMAGE and not self.sop_uids:
            raise InvalidInputError("an instance retrieve needs at least one sop_uid")
        if self.level is QueryLevel.PATIENT:
            raise InvalidInputError("retrieve a patient's studies one by one (STUDY level)")

    @classmethod
    def study(cls, study_uid: str) -> RetrieveRequest:
        """All instances of one study."""
        return cls(QueryLevel.STUDY, study_uid=study_uid)

    @classmethod
    def series(cls, series_uid: str, study_uid: str | None = None) -> RetrieveRequest:
        """All instances of one series."""
        return cls(QueryLevel.SERIES, study_uid=study_uid, series_uid=series_uid)

    @classmethod
    def instances(
        cls,
        sop_uids: str | Sequence[str],
        series_uid: str | None = None,
        study_uid: str | None = None,
    ) -> RetrieveRequest:
        """One or more instances."""
        uids = (sop_uids,) if isinstance(sop_uids, str) else tuple(sop_uids)
        return cls(QueryLevel.IMAGE, study_uid=study_uid, series_uid=series_uid, sop_uids=uids)

    def pre_query(self) -> ImageQuery:
        """The IMAGE level C-FIND that lists what this request will retrieve."""
        return ImageQuery(
            study_instance_uid=self.study_uid,
            series_instance_uid=self.series_uid,
            sop_instance_uid=list(self.sop_uids) if self.sop_uids else None,
        )

    def identifier(self) -> Dataset:
        """The C-GET/C-MOVE identifier (hierarchical: upper UIDs included when known)."""
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level.value
        if self.study_uid:
            ds.StudyInstanceUID = self.study_uid
        if self.level in (QueryLevel.SERIES, QueryLevel.IMAGE) and self.series_uid:
            ds.SeriesInstanceUID = self.series_uid
        if self.level is QueryLevel.IMAGE:
            ds.SOPInstanceUID = list(self.sop_uids) if len(self.sop_uids) > 1 else self.sop_uids[0]
        return ds


def image_identifier(study_uid: str, series_uid: str, sop_uids: Sequence[str]) -> Dataset:
    """An IMAGE level identifier for instances of one series (UID list matching)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = list(sop_uids) if len(sop_uids) > 1 else sop_uids[0]
    return ds


def uid_list_keywords(identifier: Dataset) -> list[str]:
    """Keywords of the UI attributes of ``identifier`` that carry a list of UIDs."""
    return [elem.keyword for elem in identifier if elem.VR == "UI" and elem.VM > 1]


def listed_sop_uids(identifier: Dataset) -> list[str]:
    """The SOP Instance UIDs an identifier names (none when it names none)."""
    value = identifier.get("SOPInstanceUID")
    if not value:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value if v]


def split_uid_lists(identifier: Dataset) -> list[Dataset]:
    """One identifier per combination of single UIDs: List of UID Matching done by hand,
    for peers that refuse a list.  The answers to the parts are disjoint (each entity
    has one UID per attribute), so together they are exactly the list's answer."""
    keywords = uid_list_keywords(identifier)
    if not keywords:
        return [identifier]
    values = [list(dict.fromkeys(str(v) for v in identifier[kw].value)) for kw in keywords]
    parts: list[Dataset] = []
    for combination in itertools.product(*values):
        part = copy.deepcopy(identifier)
        for keyword, uid in zip(keywords, combination, strict=True):
            setattr(part, keyword, uid)
        parts.append(part)
    return parts
