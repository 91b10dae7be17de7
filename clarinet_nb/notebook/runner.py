"""The sync face: coroutines run on a private event loop in a background thread.

Jupyter kernels already run an event loop in the main thread, so
``asyncio.run`` fails there.  Instead of patching the kernel's loop (what
nest_asyncio does), we keep one private loop in a daemon thread and block the
caller until the coroutine finishes.  This works in a plain script, inside a
running loop (a notebook cell), and where the user has applied nest_asyncio.

A KeyboardInterrupt while waiting (the kernel's "interrupt" button) cancels the
coroutine on the private loop; the DICOM layer then sends C-CANCEL and releases
its associations, and we wait for that before re-raising the interrupt.
Warnings issued on the private loop are issued again in the calling thread,
pointing at the user's line (see :mod:`clarinet_nb.notebook.warn`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from clarinet_nb.notebook.warn import deferring, reissue

__all__ = ["run_sync"]

logger = logging.getLogger("clarinet_nb")

T = TypeVar("T")

#: How long an interrupted operation may take to wind down before we give up waiting.
CLEANUP_LIMIT = 60.0


class _LoopThread:
    """One event loop, running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="clarinet-nb-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()


_lock = threading.Lock()
_runner: _LoopThread | None = None


def _loop() -> asyncio.AbstractEventLoop:
    global _runner  # noqa: PLW0603 - one private loop per process, made on first use
    with _lock:
        if _runner is None or not _runner.thread.is_alive():
            _runner = _LoopThread()
        return _runner.loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the private loop and return its result (blocking).

    Safe to call from a thread with a running event loop (a notebook cell).
    Must not be called from the private loop itself.
    """
    loop = _loop()
    if _running_loop() is loop:
        coro.close()
        raise RuntimeError("run_sync() called from clarinet_nb's own loop; await instead")
    done = threading.Event()
    box: dict[str, asyncio.Task[T]] = {}
    deferred: list[str] = []

    async def collecting() -> T:
        with deferring(deferred):
            return await coro

    def start() -> None:
        task = loop.create_task(collecting())
        task.add_done_callback(lambda _: done.set())
        box["task"] = task

    loop.call_soon_threadsafe(start)
    try:
        done.wait()
    except KeyboardInterrupt:
        logger.info("interrupted: cancelling the running DICOM operation")
        # FIFO: runs after start(), so the task exists by then
        loop.call_soon_threadsafe(lambda: box["task"].cancel())  # noqa: PLW0108
        if not done.wait(CLEANUP_LIMIT):
            logger.warning("the interrupted operation did not stop within %.0f s", CLEANUP_LIMIT)
        reissue(deferred, stacklevel=3)  # at the caller's caller: the user's line
        raise
    reissue(deferred, stacklevel=3)
    return box["task"].result()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
