"""The outbox relay: committed outbox rows become SAQ jobs.

A batch of unpublished rows is locked (``FOR UPDATE SKIP LOCKED``, so several relays never take the
same row), each row is enqueued with the job key ``outbox:<id>`` and the batch is marked published,
all in one transaction. If Valkey is down the transaction rolls back and the rows wait for the next
round: work is delayed, never lost. A crash between enqueue and commit re-sends the batch; SAQ
ignores a job whose key it already holds and consumers are idempotent, so delivery is at least once
without duplicates in practice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import structlog
from prometheus_client import Counter
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from saq import Job, Queue

from app.config import Settings
from app.core.db import transaction
from app.db import outbox as outbox_queries

log = structlog.get_logger("workers.relay")

PUBLISHED = Counter("app_outbox_published", "Outbox rows enqueued as SAQ jobs", ["queue"])
FAILURES = Counter("app_outbox_relay_failures", "Relay rounds that failed and were rolled back")


def job_key(outbox_id: int) -> str:
    return f"outbox:{outbox_id}"


async def relay_once(
    pool: AsyncConnectionPool[AsyncConnection[Any]], queues: Mapping[str, Queue], settings: Settings
) -> int:
    """Publish one batch; returns how many rows were published. Raises if enqueueing fails."""
    async with transaction(pool) as uow:
        rows = await outbox_queries.claim_unpublished_outbox(uow.conn, batch_size=settings.outbox_batch_size)
        if not rows:
            return 0
        jobs = [
            queues[row.queue].enqueue(
                Job(
                    function=row.task,
                    kwargs={**(row.payload or {}), "outbox_id": row.id},
                    key=job_key(row.id),
                    timeout=settings.job_timeout_s,
                    retries=settings.job_retries,
                    retry_delay=1.0,
                    retry_backoff=60.0,
                    ttl=24 * 3600,
                )
            )
            for row in rows
        ]
        await asyncio.gather(*jobs)
        await outbox_queries.mark_outbox_published(uow.conn, ids=[row.id for row in rows])
    for row in rows:
        PUBLISHED.labels(queue=row.queue).inc()
    return len(rows)


class OutboxRelay:
    """Runs ``relay_once`` until stopped: back to back while batches are full, else every poll
    interval; after a failure, backs off (up to 30 s) and logs at most one warning per 30 s."""

    def __init__(
        self, pool: AsyncConnectionPool[AsyncConnection[Any]], queues: Mapping[str, Queue], settings: Settings
    ) -> None:
        self.pool = pool
        self.queues = queues
        self.settings = settings
        self._stop = asyncio.Event()
        self._last_warning = 0.0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        interval = self.settings.outbox_poll_interval_s
        delay = interval
        log.info("outbox_relay_started", poll_interval_s=interval)
        while not self._stop.is_set():
            try:
                published = await relay_once(self.pool, self.queues, self.settings)
                delay = 0.0 if published >= self.settings.outbox_batch_size else interval
            except Exception as exc:
                FAILURES.inc()
                delay = min(max(delay, interval) * 2, 30.0)
                now = time.monotonic()
                if now - self._last_warning >= 30.0:
                    self._last_warning = now
                    log.warning("outbox_relay_failed", error=type(exc).__name__, detail=str(exc)[:200])
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
            else:
                await asyncio.sleep(0)
        log.info("outbox_relay_stopped")
