"""Background work that must stop when its holder says so: a lock's renewal, a job's heartbeat, a gauge.

Such a loop is stopped by an event its stopper sets before it cancels the task, never by cancellation
alone: in Python 3.11 a cancellation can be lost inside a library call (``asyncio.wait_for`` and
timeouts return normally, or raise ``TimeoutError``, when the awaited work completes as the cancel
arrives), and a loop stopped only by being cancelled then ran on while its stopper waited for it
forever (a worker's shutdown hung so under load).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable


async def stopped_within(stop: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``stop``; whether it is set (the loop's pause between rounds)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)
    return stop.is_set()


@contextlib.asynccontextmanager
async def repeating(work: Callable[[], Awaitable[object]], every_s: float) -> AsyncIterator[None]:
    """Run ``work`` every ``every_s`` seconds (the first one interval in) while the block runs. A
    failure of ``work`` ends the repetition (``work`` catches what it may outlive); the block's end
    sets the stop, cancels a round in flight and waits for it."""
    stop = asyncio.Event()

    async def rounds() -> None:
        while not await stopped_within(stop, every_s):
            await work()

    task = asyncio.create_task(rounds())
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
