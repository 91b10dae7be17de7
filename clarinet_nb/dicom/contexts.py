"""Presentation contexts: which SOP classes and transfer syntaxes we negotiate.

C-GET receives its instances on the association we propose, so we must
propose a storage context (with the SCP role) for every SOP class in what is
retrieved, in the transfer syntaxes it may be stored in.  An association holds
at most 128 presentation contexts; larger sets are split into chunks, one
association each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import build_context, build_role
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    StoragePresentationContexts,
)
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

__all__ = [
    "COMPRESSED_SYNTAXES",
    "UNCOMPRESSED_SYNTAXES",
    "GetChunk",
    "default_storage_classes",
    "is_image_class",
    "plan_get_chunks",
    "scp_storage_contexts",
]

MAX_CONTEXTS = 128

UNCOMPRESSED_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
COMPRESSED_SYNTAXES: tuple[str, ...] = (
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
ALL_SYNTAXES: tuple[str, ...] = (
    *UNCOMPRESSED_SYNTAXES,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    *COMPRESSED_SYNTAXES,
)

_NON_IMAGE_WORDS = ("SR Storage", "Document", "Presentation State", "Waveform", "Raw Data",
                    "Encapsulated", "RT Plan", "RT Structure", "RT Beams", "Spectroscopy",
                    "Registration", "Segmentation Storage", "Surface", "Measurements")


def is_image_class(sop_class_uid: str) -> bool:
    """True when instances of this SOP class may carry compressed pixel data.

    Unknown (private) classes count as images, so we propose more, not less.
    """
    name = UID(sop_class_uid).name
    if name == sop_class_uid:  # not in pydicom's dictionary
        return True
    return not any(word in name for word in _NON_IMAGE_WORDS)


def contexts_for_class(sop_class_uid: str) -> list[PresentationContext]:
    """Storage contexts for one SOP class: uncompressed, then one per compressed syntax.

    One context per compressed syntax lets the peer send each instance in the
    syntax it is stored in, without transcoding.
    """
    contexts = [build_context(sop_class_uid, list(UNCOMPRESSED_SYNTAXES))]
    if is_image_class(sop_class_uid):
        contexts += [build_context(sop_class_uid, [ts]) for ts in COMPRESSED_SYNTAXES]
    return contexts


@dataclass(frozen=True)
class GetChunk:
    """SOP classes negotiated together on one C-GET association."""

    sop_classes: tuple[str, ...]
    contexts: tuple[PresentationContext, ...]

    def roles(self) -> list[object]:
        """SCP/SCU role selection items: we act as Storage SCP for each class."""
        return [build_role(uid, scp_role=True) for uid in self.sop_classes]


def plan_get_chunks(sop_classes: Iterable[str]) -> list[GetChunk]:
    """Split the SOP classes into chunks whose contexts fit one association each."""
    budget = MAX_CONTEXTS - 1  # one context is the Query/Retrieve GET model
    chunks: list[GetChunk] = []
    classes: list[str] = []
    contexts: list[PresentationContext] = []
    for uid in dict.fromkeys(sop_classes):
        own = contexts_for_class(uid)
        if contexts and len(contexts) + len(own) > budget:
            chunks.append(_chunk(classes, contexts))
            classes, contexts = [], []
        classes.append(uid)
        contexts += own[:budget]
    if classes:
        chunks.append(_chunk(classes, contexts))
    return chunks


def _chunk(classes: Sequence[str], contexts: Sequence[PresentationContext]) -> GetChunk:
    qr = build_context(StudyRootQueryRetrieveInformationModelGet)
    return GetChunk(sop_classes=tuple(classes), contexts=(qr, *contexts))


def default_storage_classes() -> list[str]:
    """Common storage classes, for peers that do not tell us which are present."""
    return [str(cx.abstract_syntax) for cx in StoragePresentationContexts]


def scp_storage_contexts(extra_classes: Iterable[str] = ()) -> list[PresentationContext]:
    """Contexts our Storage SCP accepts: every storage class in every syntax we know."""
    known = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    classes = list(dict.fromkeys([*known, *extra_classes]))
    return [build_context(uid, list(ALL_SYNTAXES)) for uid in classes]
