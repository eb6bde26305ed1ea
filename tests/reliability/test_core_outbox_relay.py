"""The outbox relay: committed rows become SAQ jobs once, and a Valkey outage loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import redis.exceptions
from litestar_saq import SAQPlugin
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from saq import Queue
from saq.job import Job, Status

from app.config import Settings
from app.core.db import create_pool
from app.core.queues import build_queues, build_saq_config
from app.core.relay import OutboxRelay, job_key, relay_once
from app.core.services import Services
from app.db import outbox as outbox_queries
from app.modules import MODULES
from tests.factories import wait_until
from tests.valkey_control import ControlledValkey


def relay_failures() -> float:
    return REGISTRY.get_sample_value("app_outbox_relay_failures_total") or 0.0


@pytest.fixture
def relay_settings(settings: Settings, controlled_valkey: ControlledValkey) -> Settings:
    return msgspec.structs.replace(
        settings, valkey_url=controlled_valkey.url, outbox_poll_interval_s=0.05, outbox_batch_size=50
    )


@pytest.fixture
async def pool(relay_settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[AsyncConnectionPool[Any]]:
    assert relay_settings.database_url
    pool = create_pool(relay_settings, relay_settings.database_url)
    await pool.open()
    yield pool
    await pool.close()


@pytest.fixture
async def queues(relay_settings: Settings) -> AsyncIterator[dict[str, Queue]]:
    assert relay_settings.valkey_url
    queues = build_queues(relay_settings.valkey_url)
    yield queues
    with contextlib.suppress(Exception):
        await queues["default"].redis.aclose()  # type: ignore[attr-defined]


async def add_outbox(db: AsyncConnection[Any], count: int, queue: str = "default") -> list[int]:
    """``count`` runnable jobs (purge_outbox takes no arguments)."""
    ids = [
        await outbox_queries.insert_outbox(db, queue=queue, task="purge_outbox", payload={})
        for _ in range(count)
    ]
    assert all(isinstance(i, int) for i in ids)
    return ids  # type: ignore[return-value]


async def unpublished(db: AsyncConnection[Any]) -> int:
    row = await outbox_queries.count_unpublished_outbox(db)
    assert row is not None
    return row.pending


async def test_rows_become_jobs_keyed_by_outbox_id(
    db: AsyncConnection[Any], pool: Any, queues: dict[str, Queue], relay_settings: Settings
) -> None:
    ids = await add_outbox(db, 3) + await add_outbox(db, 2, queue="orders")
    assert await relay_once(pool, queues, relay_settings) == 5
    assert await unpublished(db) == 0
    for outbox_id in ids[:3]:
        job = await queues["default"].job(job_key(outbox_id))
        assert job is not None and job.function == "purge_outbox" and job.status == Status.QUEUED
        assert job.retries == relay_settings.job_retries and job.timeout == relay_settings.job_timeout_s
    assert await queues["orders"].count("queued") == 2
    assert await relay_once(pool, queues, relay_settings) == 0


async def test_a_resent_batch_is_not_enqueued_twice(
    db: AsyncConnection[Any], pool: Any, queues: dict[str, Queue], relay_settings: Settings
) -> None:
    """A relay that crashed after enqueueing but before committing re-sends the same keys."""
    (outbox_id,) = await add_outbox(db, 1)
    assert await relay_once(pool, queues, relay_settings) == 1
    await db.execute("update outbox set published_at = null where id = %s", (outbox_id,))
    assert await relay_once(pool, queues, relay_settings) == 1
    assert await queues["default"].count("queued") == 1


async def test_rows_written_while_valkey_is_down_are_delivered_when_it_returns(
    db: AsyncConnection[Any],
    pool: Any,
    queues: dict[str, Queue],
    relay_settings: Settings,
    controlled_valkey: ControlledValkey,
) -> None:
    controlled_valkey.stop()
    ids = await add_outbox(db, 4)
    with pytest.raises(redis.exceptions.ConnectionError):
        await relay_once(pool, queues, relay_settings)
    assert await unpublished(db) == 4, "a failed round must roll back"

    failures = relay_failures()
    relay = OutboxRelay(pool, queues, relay_settings)
    running = asyncio.create_task(relay.run())

    async def failed_twice() -> bool:  # two rounds: the relay keeps trying after a failure
        return relay_failures() >= failures + 2

    await wait_until(failed_twice, 30, "the relay has failed two rounds with Valkey down")
    assert await unpublished(db) == 4
    controlled_valkey.start()

    async def all_published() -> bool:
        return await unpublished(db) == 0

    await wait_until(all_published, 60, "the relay has published every row")
    relay.stop()
    await asyncio.wait_for(running, 5)
    jobs = await queues["default"].jobs([job_key(i) for i in ids])
    assert all(job is not None for job in jobs)
    assert await queues["default"].count("queued") == 4


async def test_worker_runs_the_job_end_to_end(
    db: AsyncConnection[Any], relay_settings: Settings, queues: dict[str, Queue]
) -> None:
    """Outbox row → relay (started by the default worker) → SAQ → task function → result."""
    assert relay_settings.valkey_url
    config = build_saq_config(
        Services(relay_settings, MODULES), relay_settings.valkey_url, run_workers_in_process=True
    )
    worker = SAQPlugin(config).get_workers()["default"]
    worker.SIGNALS = []
    running = asyncio.create_task(worker.start())
    try:
        (outbox_id,) = await add_outbox(db, 1)
        job: Job | None = None

        async def completed() -> bool:
            nonlocal job
            job = await queues["default"].job(job_key(outbox_id))
            return job is not None and job.status == Status.COMPLETE

        await wait_until(completed, 30, "the job has run")
        assert job is not None and job.result == 0
    finally:
        await worker.stop()
        await asyncio.wait_for(running, 10)
