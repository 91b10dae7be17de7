"""ClarinetWarnings that point at the user's code, from either face.

Awaited directly (``await pacs.afind_studies(...)``), a warning is issued where
it arises, with a ``stacklevel`` that reaches the caller.  Under the sync face
the coroutine runs on the private loop thread, where no frame of the user's is
on the stack; :func:`deferring` collects the warnings there and
:func:`reissue` issues them again in the calling thread, pointing at the line
that called ``pacs.get(...)``.
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from clarinet_nb.errors import ClarinetWarning

__all__ = ["deferring", "reissue", "warn"]

_deferred: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "clarinet_deferred_warnings", default=None
)


def warn(message: str, *, stacklevel: int = 1) -> None:
    """Issue a ClarinetWarning (``stacklevel`` counted from the caller of ``warn``)."""
    deferred = _deferred.get()
    if deferred is not None:
        deferred.append(message)
    else:
        warnings.warn(message, ClarinetWarning, stacklevel=stacklevel + 1)


@contextmanager
def deferring(into: list[str]) -> Iterator[None]:
    """Collect the warnings issued in this context (and tasks it starts) into ``into``."""
    token = _deferred.set(into)
    try:
        yield
    finally:
        _deferred.reset(token)


def reissue(messages: list[str], *, stacklevel: int = 1) -> None:
    """Issue collected warnings here (``stacklevel`` counted from the caller of ``reissue``)."""
    for message in messages:
        warnings.warn(message, ClarinetWarning, stacklevel=stacklevel + 1)
