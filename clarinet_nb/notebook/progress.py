"""Progress bars shared by the several retrieves or queries of one call."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from tqdm.auto import tqdm

__all__ = ["ProgressLike", "SharedProgress"]


class ProgressLike(Protocol):
    """Anything with tqdm's ``update(n)`` (a tqdm bar, an ipywidgets adapter...)."""

    def update(self, n: float = 1) -> Any:
        """Advance by ``n``."""


class SharedProgress:
    """A progress sink fed by several retrieves at once (thread-safe).

    ``progress=True`` draws a ``tqdm.auto`` bar, ``False`` nothing, and any
    object with ``update(n)`` (and optionally ``total``) is fed instead.
    Retrieves set ``total`` to their own planned count; a shared bar keeps the
    total of the whole call, so those assignments are ignored.
    """

    def __init__(
        self, total: int | None, desc: str, progress: bool | ProgressLike, unit: str = "inst"
    ) -> None:
        self._lock = threading.Lock()
        self._own = isinstance(progress, bool)
        self._sink: Any = (
            tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not progress)
            if isinstance(progress, bool)
            else progress
        )
        self.count = 0
        self.set_total(total)

    @property
    def total(self) -> float | None:
        """The whole call's total (assignments by retrieves are ignored)."""
        return getattr(self._sink, "total", None)

    @total.setter
    def total(self, value: float | None) -> None:
        return None

    def set_total(self, value: int | None) -> None:
        """Set the total of the whole call."""
        if value is None or not hasattr(self._sink, "total"):
            return
        with self._lock:
            self._sink.total = value
            if hasattr(self._sink, "refresh"):
                self._sink.refresh()

    def update(self, n: float = 1) -> None:
        """Advance by ``n``."""
        with self._lock:
            self.count += int(n)
        self._sink.update(n)

    def refresh(self) -> None:
        """Redraw."""
        if hasattr(self._sink, "refresh"):
            self._sink.refresh()

    def close(self) -> None:
        """Remove our own bar (a caller's object is left alone)."""
        if self._own:
            self._sink.close()
