"""A revocation listener closes even when its read of the notifications loses the cancellation meant
for it.

The listener ran until cancelled and ``close`` awaited it without a bound: a cancellation lost in the
driver (Python 3.11's ``asyncio.wait_for`` and the drivers' timeouts can return normally, or raise an
ordinary error taken for a lost connection, when the read completes as the cancellation arrives) left
it following notifications, or reconnecting, for ever, and the process's shutdown waited on it (the
queue-gauge poller's hang, ``tests/unit/test_core_queue_gauges.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from app.core import revocations
from app.core.revocations import Revocations


class LosesOneCancellation:
    """A connection whose first wait for notifications lasts until cancelled and then ends as if
    its timeout had passed, or fails with its timeout's error (``raises``): a driver read completing
    just as its task is cancelled. Later waits get no notification (a quiet channel)."""

    reading = asyncio.Event()
    lost = False
    raises = False

    @classmethod
    async def connect(cls, conninfo: str, **kwargs: Any) -> LosesOneCancellation:
        return cls()

    async def __aenter__(self) -> LosesOneCancellation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def notifies(self, timeout: float | None = None) -> AsyncIterator[Any]:
        if LosesOneCancellation.lost:
            await asyncio.Event().wait()
        LosesOneCancellation.reading.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            LosesOneCancellation.lost = True
            if LosesOneCancellation.raises:
                raise TimeoutError from None
        return
        yield

    async def execute(self, query: str) -> None:
        return None


async def ends(work: Coroutine[Any, Any, None]) -> bool:
    """Whether ``work`` ends within the failure bound (not ``asyncio.wait_for``: ``close`` suppresses
    the cancellation it would send at the bound, and it would then return normally)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=30)  # a failure bound, not a timing
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    await task  # its own failure, if any
    return True


@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises-timeout"])
async def test_the_listener_closes_when_a_read_loses_the_cancellation(
    monkeypatch: pytest.MonkeyPatch, raises: bool
) -> None:
    monkeypatch.setattr(revocations, "AsyncConnection", LosesOneCancellation)
    monkeypatch.setattr(LosesOneCancellation, "reading", asyncio.Event())
    monkeypatch.setattr(LosesOneCancellation, "lost", False)
    monkeypatch.setattr(LosesOneCancellation, "raises", raises)

    async def listen(conn: Any) -> None:
        return None

    async def load(conn: Any) -> list[int]:
        return []

    listener: Revocations[int] = Revocations(
        "postgresql://fake", listen=listen, load=load, parse=int, keep_s=60
    )
    await listener.start()
    await LosesOneCancellation.reading.wait()

    assert await ends(listener.close()), "close still waits for the listener"

    assert LosesOneCancellation.lost
