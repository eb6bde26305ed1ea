"""The web app's lifespan shutdown with in-process SAQ workers (``WORKER_IN_PROCESS``, ``just serve``'s
default outside production): the workers stop taking jobs, a running job gets
``WORKER_SHUTDOWN_GRACE_S`` to finish, and the workers' shutdown hooks (the outbox relay's stop) run,
all before the lifespan returns. granian ends the worker's event loop once it has returned, so
whatever was left running then was cut off (review: a job left ``aborting``, the relay never stopped,
upkeep failing on the closed Valkey client)."""

from __future__ import annotations

import asyncio

from litestar_saq import SAQPlugin
from saq import Queue, Status
from saq.queue.redis import RedisQueue

from app.config import load_settings
from app.main import create_app
from tests.factories import captured_logs

STARTED_WITHIN_S = 30.0


def first_sweep(queue: Queue) -> asyncio.Event:
    """Set once the queue's first sweep has run. A sweep that reads the active list between a job's
    dequeue and its ``active`` status aborts it as ``swept`` (SAQ's own race, met at every start,
    where the first sweep and the first dequeue coincide): the test enqueues after it."""
    done = asyncio.Event()
    sweep = queue.sweep

    async def sweep_and_tell(lock: int = 60, abort: float = 5.0) -> list[str]:
        try:
            return await sweep(lock, abort)
        finally:
            done.set()

    queue.sweep = sweep_and_tell  # type: ignore[method-assign]
    return done


async def test_a_running_job_finishes_and_the_relay_stops_before_the_lifespan_returns(
    database_url: str, valkey_url: str
) -> None:
    settings = load_settings(
        {
            "APP_ENV": "test",
            "DATABASE_URL": database_url,
            "VALKEY_URL": valkey_url,
            "LOG_LEVEL": "INFO",
            "WORKER_IN_PROCESS": "true",
            "WORKER_SHUTDOWN_GRACE_S": "60",
            "MONITORING_CHECK_INTERVAL_S": "3600",
        }
    )
    app = create_app(settings)
    default = app.plugins.get(SAQPlugin).get_workers()["default"]
    running, finished = asyncio.Event(), asyncio.Event()
    swept = first_sweep(default.queue)

    async def finish_once_told_to_stop(_: object) -> None:
        """A job still running when its worker is told to stop, that then completes (in the grace)."""
        running.set()
        await default.event.wait()  # SAQ sets it when the worker's stop begins
        finished.set()

    default.functions["finish_once_told_to_stop"] = finish_once_told_to_stop
    with captured_logs() as logs:
        async with app.lifespan():
            await asyncio.wait_for(swept.wait(), STARTED_WITHIN_S)
            job = await default.queue.enqueue("finish_once_told_to_stop", timeout=120)
            assert job is not None
            await asyncio.wait_for(running.wait(), STARTED_WITHIN_S)
            relay_task = default.context["relay_task"]  # type: ignore[typeddict-item]

    assert finished.is_set(), "the running job was not given its grace before the lifespan returned"
    assert relay_task.done(), "the relay (a worker's shutdown hook) was still running after the lifespan"
    assert relay_task.exception() is None
    assert logs.events("outbox_relay_stopped"), logs.text
    assert not logs.events("worker_upkeep_failed"), logs.text
    queue = RedisQueue.from_url(valkey_url, name="default")
    try:
        stored = await queue.job(job.key)
        assert stored is not None and stored.status == Status.COMPLETE, stored
    finally:
        await queue.disconnect()
