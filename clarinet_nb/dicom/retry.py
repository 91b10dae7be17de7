"""Retrying transient network faults: which errors, how long to wait, a small async helper.

A PACS that restarts, refuses connections for a moment, resets one or rejects an
association as *transient* (busy, limit reached) is asked again after a short,
growing, randomised pause; an error that will not go away by itself (our AE title
unknown, a wrong called AE title, bad criteria, nothing found, the disk) is not.

The pause before retry *n* (1-based) is ``min(cap, base * factor**(n-1))``
shortened by up to ``jitter`` of itself at random, so with the defaults
(``base=0.5``, ``factor=2``, ``cap=8``) the pauses are at most 0.5, 1, 2, 4, 8,
8... seconds: 3.5 s in all for the default 3 retries, 55.5 s for the maximum
of 10.  Each attempt is itself bounded by the configured timeouts.  Pauses are
``asyncio.sleep``: an interrupt during one ends the call at once and is never
retried.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from clarinet_nb.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    DicomTimeoutError,
    InvalidInputError,
    PeerUnreachableError,
    RetrieveError,
)

__all__ = [
    "MAX_RETRIES",
    "RetryPolicy",
    "attempts_of",
    "backoff",
    "call_with_retries",
    "is_transient",
    "set_attempts",
]

logger = logging.getLogger("clarinet_nb")

T = TypeVar("T")

MAX_RETRIES = 10

#: errors that never go away by retrying, matched by class name so that classes other
#: modules define (or may not define) are covered without importing them
PERMANENT_NAMES = frozenset(
    {
        "InvalidInputError",
        "NotFoundError",
        "MoveDestinationUnknownError",
        "LocalStorageError",
        "LocalPortError",
        "MemoryLimitError",
        "QueryError",
    }
)

# A-ASSOCIATE-RJ: result 2 is "rejected-transient"; source 3 (service provider,
# presentation) reasons 1 "temporary congestion" and 2 "local limit exceeded".
_REJECTED_TRANSIENT = 2
_CONGESTION = {(3, 1), (3, 2)}

_random = random.SystemRandom()


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried.

    ``retries`` extra attempts (0 disables retrying, at most 10); pause before
    retry *n*: ``min(cap, base * factor**(n-1))`` seconds, shortened by up to
    ``jitter`` (a fraction) of itself at random.
    """

    retries: int = 3
    base: float = 0.5
    factor: float = 2.0
    cap: float = 8.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise InvalidInputError("retries must be an integer from 0 to 10")
        if not 0 <= self.retries <= MAX_RETRIES:
            raise InvalidInputError(f"retries must be from 0 to {MAX_RETRIES}")
        for name in ("base", "factor", "cap", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInputError(f"RetryPolicy.{name} must be a number")
            if not math.isfinite(value) or value < 0:
                raise InvalidInputError(f"RetryPolicy.{name} must be a finite number >= 0")
        if self.factor < 1:
            raise InvalidInputError("RetryPolicy.factor must be >= 1")
        if self.jitter > 1:
            raise InvalidInputError("RetryPolicy.jitter must be from 0 to 1")
        if self.cap < self.base:
            raise InvalidInputError("RetryPolicy.cap must be >= base")

    @classmethod
    def of(cls, value: int | RetryPolicy | None, default: int = 3) -> RetryPolicy:
        """A policy from ``retries=`` (a count, a policy, or None for ``default``)."""
        if isinstance(value, RetryPolicy):
            return value
        return cls(retries=default if value is None else value)

    def nominal(self, retry: int) -> float:
        """The longest pause before retry ``retry`` (1-based)."""
        return float(min(self.cap, self.base * self.factor ** max(retry - 1, 0)))

    def delay(self, retry: int) -> float:
        """The pause before retry ``retry`` (1-based), with jitter."""
        nominal = self.nominal(retry)
        return nominal * (1.0 - self.jitter * _random.random())

    @property
    def max_wait(self) -> float:
        """The most all pauses of one query or retrieve unit add up to."""
        return sum(self.nominal(n) for n in range(1, self.retries + 1))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _unknown_host(exc: BaseException) -> bool:
    """A name that does not resolve (not a DNS server that is merely slow or down)."""
    return any(
        isinstance(e, socket.gaierror) and e.errno not in (socket.EAI_AGAIN, errno.EAGAIN)
        for e in _chain(exc)
    )


def is_transient(exc: BaseException) -> bool:
    """True for failures a later attempt may not meet (the peer busy, restarting, a reset).

    Never for interrupts (``CancelledError``, ``KeyboardInterrupt``), bad input,
    nothing found, an unknown move destination, local storage or port faults,
    a peer's failure status, or a permanent association rejection (our AE title
    or the called AE title unknown).  An exception may decide for itself with a
    boolean ``transient`` attribute.
    """
    if not isinstance(exc, Exception):
        return False
    flag = getattr(exc, "transient", None)
    if isinstance(flag, bool):
        return flag
    if any(type(e).__name__ in PERMANENT_NAMES for e in type(exc).__mro__ if e is not object):
        return False
    if isinstance(exc, InvalidInputError):
        return False
    if isinstance(exc, AssociationRejectedError):
        return exc.result == _REJECTED_TRANSIENT or (exc.source, exc.reason) in _CONGESTION
    if isinstance(exc, PeerUnreachableError):
        return not _unknown_host(exc)
    if isinstance(exc, AssociationAbortedError):
        return True
    if isinstance(exc, DicomTimeoutError):
        # the TCP connect only: a peer that accepted and then stays silent (ACSE, DIMSE)
        # is frozen, and waiting for it again would multiply a long timeout
        return str(exc).startswith("could not connect")
    if isinstance(exc, RetrieveError):
        # a retrieve that broke off: transient when the network cause is
        cause = exc.__cause__
        return cause is not None and cause is not exc and is_transient(cause)
    # a refused or reset connection outside our translation
    return isinstance(exc, ConnectionError)


def attempts_of(exc: BaseException, default: int = 1) -> int:
    """How many attempts ended with ``exc`` (recorded by :func:`set_attempts`)."""
    value = getattr(exc, "attempts", default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def set_attempts(exc: BaseException, attempts: int) -> None:
    """Record on ``exc`` how many attempts were made before giving up."""
    try:
        exc.attempts = attempts  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        logger.debug("cannot record attempts on %s", type(exc).__name__)


async def backoff(policy: RetryPolicy, retry: int, what: str, exc: BaseException) -> None:
    """Log retry ``retry`` of ``what`` after ``exc`` and sleep (cancellably) before it."""
    pause = policy.delay(retry)
    logger.info(
        "%s failed (%s: %s); transient, retry %d of %d in %.2f s",
        what,
        type(exc).__name__,
        exc,
        retry,
        policy.retries,
        pause,
    )
    await asyncio.sleep(pause)


def give_up(policy: RetryPolicy, attempts: int, what: str, exc: BaseException) -> None:
    """Log that ``what`` is not retried (any more) after ``exc``."""
    if attempts > 1 or (is_transient(exc) and policy.retries):
        logger.warning(
            "%s failed after %d attempt(s): %s: %s", what, attempts, type(exc).__name__, exc
        )


async def call_with_retries(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str
) -> tuple[T, int]:
    """Await ``call()``, again after transient failures; ``(value, attempts)``.

    The exception that ends the attempts carries ``attempts`` (see :func:`attempts_of`).
    ``CancelledError`` is never retried, and interrupts a pause at once.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call(), attempt
        except Exception as exc:
            if attempt > policy.retries or not is_transient(exc):
                give_up(policy, attempt, what, exc)
                set_attempts(exc, attempt)
                raise
            await backoff(policy, attempt, what, exc)
