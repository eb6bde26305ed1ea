"""Cron runs keep a SAQ heartbeat: a run whose worker died is swept (retried) within the heartbeat,
not after its timeout, and a run that is alive is never swept however long it takes."""

from __future__ import annotations

import asyncio
from typing import Any

from saq.job import Status
from saq.types import Context
from saq.utils import now

from app.config import Settings
from app.core.modules import Cron, Module
from app.core.queues import CRON_HEARTBEAT_S, build_saq_config
from app.core.services import open_services
from app.modules import MODULES
from tests.factories import saq_queues, wait_until

RELEASED = asyncio.Event()


async def waits_for_the_test(ctx: Context) -> str:
    await RELEASED.wait()
    return "done"


async def test_a_cron_run_beats_while_alive_and_a_dead_workers_run_is_swept_within_its_heartbeat(
    settings: Settings, valkey: Any
) -> None:
    RELEASED.clear()
    module = Module(
        name="beating", cron=[Cron(function=waits_for_the_test, schedule="0 3 * * *", timeout_s=1800)]
    )
    assert settings.valkey_url is not None
    async with open_services(settings, [module]) as services, saq_queues(settings.valkey_url) as queues:
        config = build_saq_config(services, settings.valkey_url, run_workers_in_process=True)
        [default] = [c for c in config.queue_configs if c.name == "default"]
        [cron] = [
            c for c in default.scheduled_tasks if c.function.__qualname__ == waits_for_the_test.__qualname__
        ]
        assert (cron.timeout, cron.heartbeat) == (1800, CRON_HEARTBEAT_S)
        queue = queues["default"]

        async def started(heartbeat: int) -> Any:
            """A run as a worker takes it: enqueued as ``Worker.schedule`` does, dequeued, active."""
            await queue.enqueue(
                cron.function.__qualname__, timeout=cron.timeout, heartbeat=heartbeat, retries=2
            )
            job = await queue.dequeue(timeout=5)
            assert job is not None
            job.started = now()
            job.attempts += 1
            await job.update(status=Status.ACTIVE)
            return job

        alive = await started(heartbeat=1)  # a second, so the test waits for beats, not a minute
        running = asyncio.create_task(cron.function({"job": alive, "services": services}))

        async def beaten_twice() -> bool:
            current = await queue.job(alive.key)
            return current is not None and current.touched - alive.started >= 2000

        try:
            await wait_until(
                beaten_twice, 30, "the running cron job touched its heartbeat twice past its start"
            )
            assert await queue.sweep() == []
            current = await queue.job(alive.key)
            assert current is not None and current.status == Status.ACTIVE
        finally:
            RELEASED.set()
        assert await running == "done"
        await alive.finish(Status.COMPLETE, result="done")

        dead = await started(heartbeat=cron.heartbeat)
        await dead.update(touched=now() - (cron.heartbeat + 1) * 1000)  # its worker died a heartbeat ago
        await queue.redis.delete(queue._sweep)  # type: ignore[attr-defined]  # the first sweep's lock (60 s)
        swept = await queue.sweep(abort=0.1)  # nobody runs it: no need to wait for the abort
        assert dead.id in swept, "swept within its heartbeat, not after its 30-minute timeout"


async def test_every_job_keeps_its_heartbeat_and_each_name_is_one_function(
    settings: Settings, valkey: Any
) -> None:
    """SAQ keeps one function per name: a function that is a job and a cron job (the outbox purge, the
    alert delivery) registered as two objects, one without the beat, left which one ran to chance."""
    assert settings.valkey_url is not None
    async with open_services(settings, MODULES) as services:
        config = build_saq_config(services, settings.valkey_url, run_workers_in_process=True)
    shared = 0
    for queue_config in config.queue_configs:
        functions = [*queue_config.tasks, *(cron.function for cron in queue_config.scheduled_tasks)]
        by_name: dict[str, set[int]] = {}
        for function in functions:
            assert callable(function) and hasattr(function, "__wrapped__"), function
            by_name.setdefault(function.__qualname__, set()).add(id(function))
        assert {name: len(ids) for name, ids in by_name.items() if len(ids) > 1} == {}
        shared += len(functions) - len(by_name)
    assert shared > 0, "some function is both a job and a cron job (else this test shows nothing)"
