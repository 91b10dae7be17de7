"""Run coroutines side by side, a bounded number at a time, and never leave one behind.

``asyncio.gather`` raises as soon as the first child ends cancelled, while its
siblings may still be winding down (sending C-CANCEL, handing over what
arrived).  A pull that reported what arrived at that point would miss what the
siblings were still bringing, and their worker threads would outlive the call.
:func:`run_bounded` waits for every child before anything propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ["run_bounded"]

T = TypeVar("T")


async def run_bounded(limit: int, jobs: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Await ``job()`` for every job, at most ``limit`` at once; results in order.

    On cancellation or an error every job is cancelled and awaited to its end
    before the exception propagates.
    """
    semaphore = asyncio.Semaphore(max(1, limit))

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await job()

    tasks = [asyncio.ensure_future(one(job)) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        current = asyncio.current_task()
        if current is None or not current.cancelling():
            for task in tasks:  # an error: stop the others (a cancellation reached them already)
                task.cancel()
        pending = {task for task in tasks if not task.done()}
        if pending:
            await asyncio.wait(pending)
        raise
