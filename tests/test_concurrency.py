"""run_bounded: a cancellation or an error waits for every job to wind down."""

from __future__ import annotations

import asyncio
import functools

import pytest

from clarinet_nb.notebook.concurrency import run_bounded


async def _job(name: str, unwind_steps: int, log: list[str], started: asyncio.Event) -> str:
    try:
        started.set()
        await asyncio.Event().wait()  # forever, until cancelled
    except asyncio.CancelledError:
        for _ in range(unwind_steps):  # hand over what arrived, send C-CANCEL, ...
            await asyncio.sleep(0)
        log.append(name)
        raise
    return name


def test_cancellation_waits_for_every_job_to_unwind() -> None:
    log: list[str] = []

    async def main() -> None:
        started = [asyncio.Event(), asyncio.Event()]
        jobs = [
            functools.partial(_job, "quick", 0, log, started[0]),
            functools.partial(_job, "slow", 20, log, started[1]),
        ]
        task = asyncio.ensure_future(run_bounded(4, jobs))
        for event in started:
            await event.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # plain asyncio.gather raises as soon as "quick" ends, before "slow" has unwound
        assert log == ["quick", "slow"]

    asyncio.run(main())


def test_an_error_cancels_the_others_and_waits_for_them() -> None:
    log: list[str] = []

    async def boom(started: asyncio.Event) -> str:
        await started.wait()
        raise ValueError("boom")

    async def main() -> None:
        started = asyncio.Event()
        jobs = [functools.partial(_job, "slow", 20, log, started), functools.partial(boom, started)]
        with pytest.raises(ValueError, match="boom"):
            await run_bounded(4, jobs)
        assert log == ["slow"]

    asyncio.run(main())


def test_results_keep_job_order_under_the_limit() -> None:
    running = 0
    peak = 0

    async def job(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        return i

    results = asyncio.run(run_bounded(2, [functools.partial(job, i) for i in range(7)]))
    assert results == list(range(7))
    assert peak == 2
