"""Presentation contexts: which SOP classes and transfer syntaxes we negotiate.

C-GET receives its instances on the association we propose, so we must
propose a storage context (with the SCP role) for every SOP class in what is
retrieved, in the transfer syntaxes it may be stored in.  An association holds
at most 128 presentation contexts; larger sets are split into chunks, one
association each.

Instances arrive as stored only when their stored syntax is offered in a
context of its own: offered several syntaxes in one context, the peer picks one
(Orthanc, pynetdicom peers) and converts.  So every context we propose for
C-GET carries exactly one transfer syntax, for every syntax a PACS may hold,
Deflated Explicit VR Little Endian and Explicit VR Big Endian included.  A peer
that sends on the first context accepted for a class (DCMTK dcmqrscp) gets
Explicit VR Little Endian first; dcmqrscp then converts any uncompressed
instance (Implicit VR, Big Endian) to it: that conversion is dcmqrscp's own.
"""

from __future__ import annotations

import functools
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
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

__all__ = [
    "COMPRESSED_SYNTAXES",
    "UNCOMPRESSED_SYNTAXES",
    "GetChunk",
    "default_storage_classes",
    "first_get_chunk",
    "is_image_class",
    "plan_get_chunks",
    "plan_syntax_chunks",
    "REPAIR_PASSES",
    "scp_storage_contexts",
]

MAX_CONTEXTS = 128

#: Syntaxes a peer can convert between without a codec; Explicit VR Little Endian
#: first (peers that send on the first accepted context then lose nothing).
UNCOMPRESSED_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
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
ALL_SYNTAXES: tuple[str, ...] = (*UNCOMPRESSED_SYNTAXES, *COMPRESSED_SYNTAXES)

_NON_IMAGE_WORDS = (
    "SR Storage",
    "Document",
    "Presentation State",
    "Waveform",
    "Raw Data",
    "Encapsulated",
    "RT Plan",
    "RT Structure",
    "RT Beams",
    "Spectroscopy",
    "Registration",
    "Surface",
    "Measurements",
)


def is_image_class(sop_class_uid: str) -> bool:
    """True when instances of this SOP class may carry compressed pixel data.

    Unknown (private) classes count as images, so we propose more, not less.
    Segmentations carry pixel data and are often stored RLE Lossless: images.
    """
    name = UID(sop_class_uid).name
    if name == sop_class_uid:  # not in pydicom's dictionary
        return True
    return not any(word in name for word in _NON_IMAGE_WORDS)


def contexts_for_class(sop_class_uid: str) -> list[PresentationContext]:
    """Storage contexts for one SOP class: one per transfer syntax.

    One context per syntax lets the peer send each instance in the syntax it
    is stored in, without transcoding (not even Implicit to Explicit VR).
    """
    contexts = [build_context(sop_class_uid, [ts]) for ts in UNCOMPRESSED_SYNTAXES]
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


def first_get_chunk(sop_classes: Iterable[str]) -> GetChunk:
    """The first chunk :func:`plan_get_chunks` would make, without building the others."""
    most = (MAX_CONTEXTS - 1) // len(UNCOMPRESSED_SYNTAXES) + 1  # more than a chunk can hold
    return plan_get_chunks(list(dict.fromkeys(sop_classes))[:most])[0]


#: Transfer syntaxes offered, pass after pass, for instances that did not arrive
#: on a first pass; each syntax of a pass in a context of its own.  Some peers
#: (dcmqrscp) send each instance on the first context accepted for its SOP class
#: and fail when they cannot convert to that context's syntax (a compressed one):
#: a pass offering only that compressed syntax lets them succeed.  The first
#: pass offers every uncompressed syntax, separately, so that a peer that picks
#: the context matching the stored syntax (pynetdicom) keeps it.
REPAIR_PASSES: tuple[tuple[str, ...], ...] = (
    UNCOMPRESSED_SYNTAXES,
    *((ts,) for ts in COMPRESSED_SYNTAXES),
)


def plan_syntax_chunks(sop_classes: Iterable[str], syntaxes: Sequence[str]) -> list[GetChunk]:
    """One context per SOP class and syntax in ``syntaxes``, chunked per association
    (a class's contexts stay together).  Compressed syntaxes only for image classes:
    a pass of compressed syntaxes skips the others (none when no class is left)."""
    budget = MAX_CONTEXTS - 1
    per_class = max(1, min(len(syntaxes), budget))
    classes = list(dict.fromkeys(sop_classes))
    if all(UID(ts).is_compressed for ts in syntaxes):
        classes = [uid for uid in classes if is_image_class(uid)]
    step = max(1, budget // per_class)
    return [
        _chunk(part, [build_context(uid, [ts]) for uid in part for ts in syntaxes[:per_class]])
        for part in (classes[i : i + step] for i in range(0, len(classes), step))
    ]


def _chunk(classes: Sequence[str], contexts: Sequence[PresentationContext]) -> GetChunk:
    qr = build_context(StudyRootQueryRetrieveInformationModelGet)
    return GetChunk(sop_classes=tuple(classes), contexts=(qr, *contexts))


#: Classes tried first when a peer does not say which SOP classes it holds:
#: documents and presentation states (four contexts each), then common images
#: (thirteen each) and segmentations, which AI work brings in.
_PRIORITY: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG for presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.20",  # NM
)


def default_storage_classes() -> list[str]:
    """Storage classes to try, most common first, when a peer does not list them."""
    known = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return list(dict.fromkeys([*_PRIORITY, *known]))


def scp_storage_contexts(extra_classes: Iterable[str] = ()) -> list[PresentationContext]:
    """Contexts our Storage SCP accepts: every storage class in every syntax we know."""
    extra = [uid for uid in dict.fromkeys(extra_classes) if uid not in _known_storage_classes()]
    return [*_known_scp_contexts(), *(build_context(uid, list(ALL_SYNTAXES)) for uid in extra)]


@functools.cache
def _known_storage_classes() -> frozenset[str]:
    return frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


@functools.cache
def _known_scp_contexts() -> tuple[PresentationContext, ...]:
    # built once: ~170 classes x 15 syntaxes take ~0.1 s, which every C-MOVE paid
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return tuple(build_context(uid, list(ALL_SYNTAXES)) for uid in classes)
