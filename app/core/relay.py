"""The outbox relay: committed outbox rows become SAQ jobs.

A batch of unpublished rows is locked (``FOR UPDATE SKIP LOCKED``, so several relays never take the
same row), each row is enqueued with the job key ``outbox:<id>`` and the batch is marked published,
all in one transaction. If Valkey is down the transaction rolls back and the rows wait for the next
round: work is delayed, never lost. A crash between enqueue and commit re-sends the batch; SAQ
ignores a job whose key it holds *incomplete* (queued, active or waiting to retry) and consumers are
idempotent, so delivery is at least once without duplicates in practice.

A finished job is kept only ``FINISHED_JOB_TTL_S`` (see there): its key deduplicates nothing once the
job is finished, and it holds the job's whole payload, which a client's requests chose.

A module may take an outbox task in batches (``Job(batches=...)``): that task's rows claimed in one
round go out as jobs of up to ``batch_size`` rows, keyed ``<function>:<first id>-<last id>:<hash of
the ids>``, so a batch waits at most ``OUTBOX_POLL_INTERVAL_S``. The key names the exact set of rows:
a re-sent round may cut its batches differently, or take a row that committed meanwhile between the
first and last ids, and such a batch must not be dropped as a duplicate of the still-queued one; the
batch function stores each row once by outbox id.

A round is bounded by a client-side deadline (``answered_within``): a connection that goes silent
mid-round (a failover, a partition) is severed and discarded, and the next round borrows a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from prometheus_client import Counter
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from saq import Job as SaqJob
from saq import Queue
from saq.types import Context

from app.config import Settings
from app.core.db import Database, UnitOfWork, lend
from app.core.deadline import answered_within
from app.core.logging import OncePerInterval
from app.core.modules import Cron, Job, Module
from app.core.services import services_of
from app.db import outbox as outbox_queries

log = structlog.get_logger("app.relay")

PUBLISHED = Counter("app_outbox_published", "Outbox rows enqueued as SAQ jobs", ["queue"])
FAILURES = Counter("app_outbox_relay_failures", "Relay rounds that failed and were rolled back")

Row = outbox_queries.ClaimUnpublishedOutboxRow


def job_key(outbox_id: int) -> str:
    return f"outbox:{outbox_id}"


def batch_key(function: str, outbox_ids: Sequence[int]) -> str:
    """Short, the same for the same rows, different for any other set (not only other bounds)."""
    digest = hashlib.blake2b(",".join(map(str, outbox_ids)).encode(), digest_size=8).hexdigest()
    return f"{function}:{outbox_ids[0]}-{outbox_ids[-1]}:{digest}"


@dataclass(frozen=True, slots=True)
class Batching:
    """How the outbox rows of one (queue, task) are published: as ``function`` jobs of ``size`` rows."""

    function: str
    size: int


def timeouts_of(modules: Sequence[Module], settings: Settings) -> dict[tuple[str, str], int]:
    """The timeouts of the modules' jobs that set their own (``Job.timeout_s``), by the (queue, outbox
    task) they take; the others get ``JOB_TIMEOUT_S``."""
    return {
        (job.queue, job.batches or job.function.__name__): job.timeout_s(settings)
        for module in modules
        for job in module.jobs
        if job.timeout_s is not None
    }


def batching_of(modules: Sequence[Module], settings: Settings) -> dict[tuple[str, str], Batching]:
    """The modules' batched jobs, by the (queue, outbox task) they take."""
    batching: dict[tuple[str, str], Batching] = {}
    for module in modules:
        for job in module.jobs:
            if job.batches is not None:
                size = job.batch_size(settings) if job.batch_size is not None else settings.outbox_batch_size
                batching[(job.queue, job.batches)] = Batching(job.function.__name__, size)
    return batching


FINISHED_JOB_TTL_S = 300
"""How long SAQ keeps a relayed job once it has finished (completed, or failed for good), with its
payload. Five minutes are enough because deduplication never needs a finished job: SAQ's enqueue
skips a key only while it is in the queue's incomplete set (queued, active, waiting to retry), and a
job leaves that set when it finishes. A re-sent round (the next round after a rollback: within the
poll interval, a backoff of at most ``RELAY_BACKOFF_MAX_S`` and a round's deadline) finds the job
still incomplete and is dropped; if the job has finished meanwhile, it is enqueued again however
long the finished job is kept, and the idempotent consumer stores its rows once. A finished job is
kept only to be inspected (the SAQ dashboard's recent results and failures; the rows stay in the
outbox, in PostgreSQL, for ``OUTBOX_RETENTION_DAYS``). A day, as before, let one account keep ~1.8
GB of payloads in Valkey, which runs with ``noeviction`` and holds the rate limits, the login
throttle and the queues."""


RETRY_DELAY_S = 1.0
"""A failed job's first retry waits about this long (SAQ's jitter), each next one twice as long..."""
RETRY_BACKOFF_MAX_S = 60.0
"""... up to this: the retries outlast a restart of PostgreSQL or Valkey instead of failing within it."""


def _job(
    function: str,
    kwargs: dict[str, Any],
    key: str,
    settings: Settings,
    timeout_s: int | None,
    request_id: str | None = None,
) -> SaqJob:
    """``request_id``: the request that wrote the row, in the job's ``meta`` (never its arguments: the
    task does not take it), for its log lines."""
    return SaqJob(
        function=function,
        kwargs=kwargs,
        key=key,
        timeout=settings.job_timeout_s if timeout_s is None else timeout_s,
        retries=settings.job_retries,
        retry_delay=RETRY_DELAY_S,
        retry_backoff=RETRY_BACKOFF_MAX_S,
        ttl=FINISHED_JOB_TTL_S,
        meta={"request_id": request_id} if request_id else {},
    )


def _payload(row: Row) -> dict[str, Any]:
    return {**(row.payload or {}), "outbox_id": row.id}


def jobs_of(
    rows: Sequence[Row],
    settings: Settings,
    batching: Mapping[tuple[str, str], Batching],
    timeouts: Mapping[tuple[str, str], int] | None = None,
) -> list[tuple[str, SaqJob]]:
    """(queue, job) for a claimed round: one job per row, batched tasks in batches; ``timeouts``: the
    tasks whose jobs do not take ``JOB_TIMEOUT_S`` (``timeouts_of``)."""
    timeouts = timeouts or {}
    jobs: list[tuple[str, SaqJob]] = []
    batched: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if (row.queue, row.task) in batching:
            batched.setdefault((row.queue, row.task), []).append(row)
        else:
            timeout = timeouts.get((row.queue, row.task))
            job = _job(row.task, _payload(row), job_key(row.id), settings, timeout, row.request_id)
            jobs.append((row.queue, job))
    for (queue, task), group in batched.items():
        plan = batching[(queue, task)]
        for start in range(0, len(group), plan.size):
            batch = group[start : start + plan.size]
            key = batch_key(plan.function, [row.id for row in batch])
            events = [_payload(row) for row in batch]
            timeout = timeouts.get((queue, task))
            jobs.append((queue, _job(plan.function, {"events": events}, key, settings, timeout)))
    return jobs


async def relay_once(
    pool: AsyncConnectionPool[AsyncConnection[Any]],
    queues: Mapping[str, Queue],
    settings: Settings,
    batching: Mapping[tuple[str, str], Batching] | None = None,
    timeouts: Mapping[tuple[str, str], int] | None = None,
) -> int:
    """Publish one batch; returns how many rows were published. Raises if enqueueing fails, or
    (``psycopg.OperationalError``) if the round does not end within ``round_timeout_s(settings)``:
    its connection is then severed, and the pool discards it."""
    async with lend(pool) as conn:
        rows = await answered_within(
            conn,
            _publish(conn, queues, settings, batching or {}, timeouts or {}),
            round_timeout_s(settings),
            "the relay's connection",
        )
    for row in rows:
        PUBLISHED.labels(queue=row.queue).inc()
    return len(rows)


def round_timeout_s(settings: Settings) -> float:
    """A relay round's deadline: its statements are short and never wait on a lock (``SKIP LOCKED``,
    then its own rows), so a round past the statement timeout plus a margin talks to a silent server."""
    return settings.statement_timeout_ms / 1000 + settings.database_timeout_s


async def _publish(
    conn: AsyncConnection[Any],
    queues: Mapping[str, Queue],
    settings: Settings,
    batching: Mapping[tuple[str, str], Batching],
    timeouts: Mapping[tuple[str, str], int],
) -> list[Row]:
    async with conn.transaction():
        rows = await outbox_queries.claim_unpublished_outbox(conn, batch_size=settings.outbox_batch_size)
        if not rows:
            return []
        jobs = jobs_of(rows, settings, batching, timeouts)
        await asyncio.gather(*(queues[queue].enqueue(job) for queue, job in jobs))
        await outbox_queries.mark_outbox_published(conn, ids=[row.id for row in rows])
    return rows


RELAY_BACKOFF_MAX_S = 5.0
"""The longest the relay waits after a failed round. A failed round is cheap (while PostgreSQL is
away, the pool refuses at once: ``app.core.pool.FailFastPool``), and the relay resumed up to this long
after PostgreSQL was back: at 30 s, the orders of a minute-long outage stayed pending for 56 s
after it (fault review). A poll interval longer than this is the longest instead: a failing relay
polls no faster than a healthy one."""


def backoff_after_failure(delay: float, interval: float) -> float:
    """The relay's wait after a failed round, given its last wait (0 after a full batch): twice that,
    from the poll interval up, to at most ``RELAY_BACKOFF_MAX_S`` (or the interval, if longer)."""
    return min(max(delay, interval) * 2, max(RELAY_BACKOFF_MAX_S, interval))


class OutboxRelay:
    """Runs ``relay_once`` until stopped: back to back while batches are full, else every poll
    interval; after a failure, backs off (up to ``RELAY_BACKOFF_MAX_S``) and logs at most one warning
    per 30 s."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        queues: Mapping[str, Queue],
        settings: Settings,
        batching: Mapping[tuple[str, str], Batching] | None = None,
        timeouts: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        self.pool = pool
        self.queues = queues
        self.settings = settings
        self.batching = batching or {}
        self.timeouts = timeouts or {}
        self._stop = asyncio.Event()
        self._warnings = OncePerInterval(30.0)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        interval = self.settings.outbox_poll_interval_s
        delay = interval
        log.info("outbox_relay_started", poll_interval_s=interval)
        while not self._stop.is_set():
            try:
                published = await relay_once(
                    self.pool, self.queues, self.settings, self.batching, self.timeouts
                )
                delay = 0.0 if published >= self.settings.outbox_batch_size else interval
            except Exception as exc:
                FAILURES.inc()
                delay = backoff_after_failure(delay, interval)
                if self._warnings.due():
                    log.warning("outbox_relay_failed", error=type(exc).__name__, detail=str(exc)[:200])
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
            else:
                await asyncio.sleep(0)
        log.info("outbox_relay_stopped")


PURGE_CHUNK = 10_000
"""Rows deleted per statement (and transaction) by the purge: each stays far below the statement
timeout, however many rows a backlog holds."""


async def purge_outbox(ctx: Context, outbox_id: int | None = None) -> int:
    """Delete outbox rows published longer ago than ``OUTBOX_RETENTION_DAYS``."""
    services = services_of(ctx)
    cutoff = datetime.now(UTC) - timedelta(days=services.settings.outbox_retention_days)
    return await purge_published(services.db, cutoff)


async def purge_published(db: Database, published_before: datetime, chunk_size: int = PURGE_CHUNK) -> int:
    """Delete the rows published before ``published_before``, ``chunk_size`` rows per transaction,
    until a chunk comes back short; returns how many were deleted."""

    async def chunk(uow: UnitOfWork) -> int:
        return await outbox_queries.purge_published_outbox(
            uow.conn, published_before=published_before, chunk_size=chunk_size
        )

    return await db.delete_in_chunks(chunk)


outbox = Module(
    name="outbox",
    jobs=[Job(function=purge_outbox)],
    cron=[Cron(function=purge_outbox, schedule="17 3 * * *", timeout_s=300)],
)
"""The platform's own module: the outbox's housekeeping, scheduled like any domain's cron job."""
