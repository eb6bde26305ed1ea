"""A failed cron run is retried as a relayed job is: after a delay that grows, not at once.

SAQ's ``CronJob`` carries no ``retry_delay`` or ``retry_backoff``, so a worker enqueued its runs with
SAQ's defaults (none): the five attempts of a daily purge failed within 35 ms of one another, inside
the outage that failed the first, and the day's purge was lost.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from litestar_saq import SAQPlugin, Worker
from saq.queue.redis import RedisQueue
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.queues import build_saq_config
from app.core.relay import RETRY_BACKOFF_MAX_S, RETRY_DELAY_S
from app.core.services import Services
from app.modules import MODULES


@pytest.fixture
async def workers(settings: Settings, valkey: Valkey) -> AsyncIterator[list[Worker]]:
    """Every queue's worker as the project builds it, each on a private queue."""
    assert settings.valkey_url
    config = build_saq_config(Services(settings, MODULES), settings.valkey_url, run_workers_in_process=True)
    client = redis.from_url(settings.valkey_url)
    built = list(SAQPlugin(config).get_workers().values())
    for worker in built:
        worker.queue = RedisQueue(client, name=f"cron-{uuid.uuid4().hex[:8]}")
    try:
        yield built
    finally:
        await client.aclose()
        for queue in (config.queue_instances or {}).values():
            await queue.redis.aclose()  # type: ignore[attr-defined]


async def test_every_cron_run_is_enqueued_with_the_relayed_jobs_retry_delays(workers: list[Worker]) -> None:
    """As each worker enqueues its crons' next runs: SAQ waits ``next_retry_delay()`` (from these two
    fields) before a failed job's next attempt, and with neither queues it again at once."""
    scheduled = 0
    for worker in workers:
        await worker.schedule()
        for cron in worker.cron_jobs:
            job = await worker.queue.job(f"cron:{cron.function.__qualname__}")
            assert job is not None, cron
            assert (job.retry_delay, job.retry_backoff) == (RETRY_DELAY_S, RETRY_BACKOFF_MAX_S), job.function
            scheduled += 1
    assert scheduled >= 10  # every module's crons, the daily purges among them
