"""Background work that must stop when its holder says so: a lock's renewal, a job's heartbeat, a gauge.

Such a loop is stopped by an event its stopper sets before it cancels the task, never by cancellation
alone: in Python 3.11 a cancellation can be lost inside a library call (``asyncio.wait_for`` and
timeouts return normally, or raise ``TimeoutError``, when the awaited work completes as the cancel
arrives), and a loop stopped only by being cancelled then ran on while its stopper waited for it
forever (a worker's shutdown hung so under load).

A round that fails is logged (``repeating_work_failed``, at most once a minute per loop) and the next
one comes as planned: a loop that ended at its first failure stopped renewing its lock for good, with
no line said, on one Valkey error (the GitHub fetch lock, the governor's turn), and the lock lapsed
under a holder still working.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from app.core.logging import OncePerInterval, error_message

log = structlog.get_logger("app.repeating")

FAILURE_LOG_INTERVAL_S = 60.0


async def stopped_within(stop: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``stop``; whether it is set (the loop's pause between rounds)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)
    return stop.is_set()


@contextlib.asynccontextmanager
async def repeating(
    work: Callable[[], Awaitable[object]], every_s: float, *, name: str | None = None
) -> AsyncIterator[None]:
    """Run ``work`` every ``every_s`` seconds (the first one interval in) while the block runs; a
    round that fails is logged (as ``name``, else ``work``'s own name) and the next comes all the
    same. The block's end sets the stop, cancels a round in flight and waits for it."""
    named = name or _name_of(work)
    stop = asyncio.Event()
    failures = OncePerInterval(FAILURE_LOG_INTERVAL_S)

    async def rounds() -> None:
        while not await stopped_within(stop, every_s):
            try:
                await work()
            except Exception as exc:
                if failures.due():
                    log.warning(
                        "repeating_work_failed",
                        work=named,
                        error=type(exc).__name__,
                        detail=error_message(exc),
                    )

    task = asyncio.create_task(rounds())
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _name_of(work: Callable[..., object]) -> str:
    while isinstance(work, functools.partial):
        work = work.func
    return str(getattr(work, "__qualname__", None) or repr(work))
