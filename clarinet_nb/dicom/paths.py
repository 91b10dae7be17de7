"""Safe file names for UIDs that come from a peer (never trusted)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["instance_path", "safe_component"]

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def safe_component(uid: str | None) -> str:
    """A path component for ``uid``: the UID itself if it is well formed, else a hash.

    A well-formed UID is digits and dots only, so it can never be ``..``, hold a
    separator or be absolute.  Anything else (from a buggy or hostile peer)
    becomes ``invalid-<sha256 prefix>`` so it still maps to one stable name.
    """
    text = (uid or "").strip().rstrip("\x00")
    if text and len(text) <= 64 and _UID_RE.match(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return f"invalid-{digest}"


def instance_path(root: Path, study_uid: str | None, series_uid: str | None, sop_uid: str) -> Path:
    """``root/{study}/{series}/{sop}.dcm`` with every component made safe."""
    path = root / safe_component(study_uid) / safe_component(series_uid)
    return path / f"{safe_component(sop_uid)}.dcm"
