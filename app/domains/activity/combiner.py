"""Group commit for the feed writer: concurrent batches in one process share a transaction.

The writer is serialised (one advisory lock, so that event ids follow commit order). A worker runs
several ``feed`` jobs at once; left alone, each would take a connection and wait for the lock, and
each would pay for its own transaction. Instead, a job hands its events to the process's combiner
and waits: whichever batches are waiting when the previous transaction ends are written together,
up to ``max_events`` per transaction, and every job gets the count of its own events that were new
(an event two of them carry counts for the first only)
once the transaction that holds them has committed (so a finished job still means stored events).

If a combined transaction fails, each batch in it is retried alone, so one bad batch fails only its
own job (which SAQ retries), never the others. State is kept per event loop: the futures a job
awaits belong to its loop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.domains.activity.writer import Recorded

Events = Sequence[Mapping[str, Any]]
Write = Callable[[list[Mapping[str, Any]]], Awaitable[Recorded]]


@dataclass
class _Waiting:
    events: Events
    done: asyncio.Future[int]


@dataclass
class _LoopState:
    waiting: list[_Waiting] = field(default_factory=list)
    drainer: asyncio.Task[None] | None = None


class Combiner:
    def __init__(self, write: Write, max_events: int) -> None:
        self._write = write
        self._max_events = max_events
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, events: Events) -> int:
        """Store ``events`` (with whatever else is waiting); how many of them were new."""
        loop = asyncio.get_running_loop()
        state = self._loops.setdefault(loop, _LoopState())
        waiting = _Waiting(events, loop.create_future())
        state.waiting.append(waiting)
        if state.drainer is None or state.drainer.done():
            state.drainer = loop.create_task(self._drain(state), name="activity-combiner")
        return await asyncio.shield(waiting.done)

    async def _drain(self, state: _LoopState) -> None:
        taken: list[_Waiting] = []
        try:
            while state.waiting:
                taken, size = [], 0
                while state.waiting and (
                    not taken or size + len(state.waiting[0].events) <= self._max_events
                ):
                    taken.append(state.waiting.pop(0))
                    size += len(taken[-1].events)
                await self._write_together(taken)
        except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
            for batch in [*taken, *state.waiting]:
                _fail(batch, exc if isinstance(exc, Exception) else RuntimeError("the feed writer stopped"))
            state.waiting.clear()
            raise

    async def _write_together(self, taken: list[_Waiting]) -> None:
        try:
            recorded = await self._write([event for batch in taken for event in batch.events])
        except Exception as exc:
            if len(taken) == 1:
                _fail(taken[0], exc)
                return
            for batch in taken:  # find the bad batch: each alone
                await self._write_together([batch])
            return
        credited: set[Any] = set()  # an event two batches carry is new to the first of them only
        for batch in taken:
            new = {event.get("outbox_id") for event in batch.events} & recorded.outbox_ids
            new -= credited  # not ``ids & (recorded - credited)``: a copy of every id per batch
            credited |= new
            if not batch.done.done():
                batch.done.set_result(len(new))


def _fail(batch: _Waiting, exc: BaseException) -> None:
    if not batch.done.done():
        batch.done.set_exception(exc)
