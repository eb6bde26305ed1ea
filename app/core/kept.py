"""Work that outlives the request that began it.

Some work must not be cut short when its request is cancelled (a client gone, a shutdown): the end
of a counted login attempt, the enqueue of a refresh already handed to others. ``KeptTasks.keep``
runs it as a task held here until it ends (the loop keeps only a weak reference to a task), the
request awaits it through ``asyncio.shield``, and ``close`` gives what is under way, and what starts
meanwhile, a bounded time before the process closes the clients the work needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class KeptTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def keep(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """``work`` as a task held until it ends. Its error is its awaiter's to handle, or the work's
        own to log: once it ends unawaited (its request cancelled) it is not reported again as
        "never retrieved"."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def run(self, work: Awaitable[T]) -> T:
        """``work`` kept, awaited by a caller whose cancellation leaves it running."""
        return await asyncio.shield(self.keep(work))

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, timeout_s: float) -> None:
        """Wait for the work under way, and the work that starts meanwhile, ``timeout_s`` in all."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._tasks and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)
