"""Parquet caches of query results, laid out as a hive-partitioned Parquet dataset.

``root/level=STUDY/peer=ORTHANC_127.0.0.1_4242/<key>.parquet``: one file per
distinct (peer, level, normalised criteria).  DuckDB, Dask, Spark or
``pyarrow.dataset`` read the whole folder without clarinet_nb
(``duckdb.sql("select * from read_parquet('root/**/*.parquet', hive_partitioning=1)")``).
Each file also carries the query, the peer and the time it was fetched in its
Parquet metadata and in ``frame.attrs``.  Files are written to a temporary name
and renamed, so a cache is never half written.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pandas as pd

from clarinet_nb.notebook.criteria import KeywordQuery
from clarinet_nb.notebook.parquet import write_parquet

__all__ = ["QueryCache"]

logger = logging.getLogger("clarinet_nb")

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class QueryCache:
    """Query results keyed by peer, level and normalised criteria."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, peer: str, query: KeywordQuery) -> Path:
        """Where the result of ``query`` on ``peer`` is kept."""
        digest = hashlib.sha256(f"{peer}\n{query.cache_key()}".encode()).hexdigest()[:32]
        peer_dir = _SAFE.sub("_", peer.replace("@", "_").replace(":", "_"))
        return self.root / f"level={query.level.value}" / f"peer={peer_dir}" / f"{digest}.parquet"

    def get(self, peer: str, query: KeywordQuery) -> pd.DataFrame | None:
        """The cached frame, or None when this query was never stored."""
        path = self.path_for(peer, query)
        if not path.is_file():
            return None
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # a corrupt entry is a miss, not an error
            logger.warning("ignoring unreadable cache entry %s: %s", path.name, exc)
            return None
        frame.attrs["cached"] = True
        logger.debug("cache hit %s", path)
        return frame

    def put(self, peer: str, query: KeywordQuery, frame: pd.DataFrame) -> Path:
        """Store ``frame`` as the result of ``query`` on ``peer``."""
        path = self.path_for(peer, query)
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = frame.copy()
        stored.attrs = {**frame.attrs, "cached": False, "cache_key": query.cache_key()}
        write_parquet(stored, path)
        return path
