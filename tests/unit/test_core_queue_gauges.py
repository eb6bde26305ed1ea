"""The queue-gauge poller of the default worker stops when the worker stops, even when a read loses
the cancellation meant for it.

Seen in the whole suite under load: the worker's ``stop()`` waited forever in the gauges' shutdown
hook, the poller ``cancelling`` but asleep in its next interval: the cancellation had been lost inside
a Valkey read (Python 3.11's ``asyncio.wait_for`` and timeouts can return normally when the awaited
work completes as the cancellation arrives), and the poller only ever stopped by being cancelled."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from saq import Queue

from app.core.queues import _queue_gauge_hooks
from app.core.services import Services


class LosesOneCancellation:
    """A queue whose first count waits until cancelled and then returns as if it had finished: a
    library call completing just as its task is cancelled. Every later count answers at once."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.lost = False

    async def count(self, kind: str) -> int:
        if self.lost:
            return 0
        self.reading.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.lost = True
        return 0


async def test_the_gauges_stop_when_a_read_loses_the_cancellation() -> None:
    queue = LosesOneCancellation()
    # No services: the worker's own gauges fail their read (skipped, as with a database away); the
    # queue read is what this test is about.
    no_services = cast("Services", SimpleNamespace())
    start, stop = _queue_gauge_hooks(
        no_services, cast("dict[str, Queue]", {"default": queue}), interval_s=0.001
    )
    ctx: dict[str, Any] = {"worker": SimpleNamespace(event=asyncio.Event())}
    await start(ctx)  # type: ignore[arg-type]
    await queue.reading.wait()

    await asyncio.wait_for(stop(ctx), 30)  # type: ignore[arg-type]  # a failure bound, not a timing

    assert queue.lost
    assert ctx["queue_gauges_task"].done()
