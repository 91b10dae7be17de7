"""Parquet files written atomically: a temporary name in the same folder, then rename."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd

__all__ = ["write_parquet"]


def write_parquet(frame: pd.DataFrame, path: str | Path, *, index: bool = False) -> Path:
    """Write ``frame`` to ``path`` so that readers see the old file or the new, never half."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        frame.to_parquet(tmp, index=index)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
