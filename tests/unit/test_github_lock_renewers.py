"""The GitHub lock renewers and the job heartbeat stop when their holder ends, even when a Valkey call
loses the cancellation meant for them.

Each ran until cancelled and its holder then awaited it without a bound: a cancellation lost inside
a Valkey call (Python 3.11's ``asyncio.wait_for`` and the clients' timeouts can return normally, or
raise an ordinary error, when the call completes as the cancellation arrives) left it renewing or
beating for ever, and the request or job that held it never ended (the queue-gauge poller's hang,
``tests/unit/test_core_queue_gauges.py``)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from saq import Job
from saq.queue.redis import RedisQueue
from valkey.asyncio import Valkey

from app.core.heartbeat import beating
from app.domains.github.governor import Priority, RateLimitGovernor
from tests.unit.test_core_revocations_stop import ends


class LosesOneCancellation:
    """The first call armed by ``arm`` waits until cancelled and then returns as if it had finished:
    a client call completing just as its task is cancelled. Every other call answers at once."""

    def __init__(self) -> None:
        self.armed = False
        self.waiting = asyncio.Event()
        self.lost = False

    async def call(self, answer: Any) -> Any:
        if self.armed and not self.lost:
            self.waiting.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.lost = True
        return answer


class FakeValkey:
    """What the governor asks of Valkey: a free token and lock, and scripts."""

    def __init__(self, calls: LosesOneCancellation) -> None:
        self.calls = calls

    def register_script(self, source: str) -> Any:
        async def script(keys: list[str], args: list[Any]) -> Any:
            return await self.calls.call(1)

        return script

    def pipeline(self, transaction: bool = True) -> Any:
        return _Pipeline(self.calls)

    async def set(self, *args: Any, **kwargs: Any) -> bool:
        return True


class _Pipeline:
    def __init__(self, calls: LosesOneCancellation) -> None:
        self.calls = calls
        self.results: list[Any] = []

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def get(self, key: str) -> None:
        self.results.append(None)

    def hmget(self, key: str, fields: list[str]) -> None:
        self.results.append([None] * len(fields))

    async def execute(self) -> list[Any]:
        return self.results


async def test_a_turn_ends_when_its_lock_renewal_loses_the_cancellation() -> None:
    calls = LosesOneCancellation()
    governor = RateLimitGovernor(
        cast("Valkey", FakeValkey(calls)),
        "token",
        reserve_fraction=0.1,
        interactive_wait_s=5,
        background_wait_s=5,
        secondary_backoff_s=1,
        secondary_backoff_max_s=1,
        lock_ttl_s=1,  # a renewal every third of a second
    )

    async def take_a_turn() -> None:
        async with governor.turn(Priority.INTERACTIVE):
            calls.armed = True
            await calls.waiting.wait()  # the renewal is in flight when the turn ends

    assert await ends(take_a_turn()), "the turn's end still waits for its lock renewer"

    assert calls.lost


class FakeRedis:
    """What SAQ's queue and a heartbeat ask of Redis: a pub/sub, and a transaction whose WATCH is
    the call that loses the cancellation (the job then reads as gone)."""

    def __init__(self, calls: LosesOneCancellation) -> None:
        self.calls = calls

    def pubsub(self) -> object:
        return object()

    def pipeline(self, transaction: bool = True) -> Any:
        return _Transaction(self.calls)


class _Transaction:
    def __init__(self, calls: LosesOneCancellation) -> None:
        self.calls = calls

    async def __aenter__(self) -> _Transaction:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def watch(self, key: str) -> None:
        await self.calls.call(None)

    async def get(self, key: str) -> None:
        return None


async def test_a_job_ends_when_its_heartbeat_loses_the_cancellation() -> None:
    calls = LosesOneCancellation()
    calls.armed = True
    queue = RedisQueue(cast("Any", FakeRedis(calls)))
    job = Job(function="refresh", queue=queue, heartbeat=1)  # a beat every third of a second

    async def run_the_job() -> None:
        async with beating(job):
            await calls.waiting.wait()  # a beat is in flight when the job ends

    assert await ends(run_the_job()), "the job's end still waits for its heartbeat"

    assert calls.lost
