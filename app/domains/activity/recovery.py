"""Recovery of feed events whose jobs were lost.

The relay marks an outbox row published once its job is in Valkey; the job is then retried
``JOB_RETRIES`` times over a few minutes. An outage longer than that (PostgreSQL restarting, a
failover), or Valkey losing its queues, would lose the event for good: nothing else sends it again.
So a cron walks the feed's outbox rows in id order behind a mark (``activity_recovery``): each row
published more than ``GRACE`` ago whose event is not stored is recorded again (recording is
idempotent by outbox id; an event whose project or user is gone is dropped there, as always), and
the mark moves past it. The walk stops at the first row not yet published or published within
``GRACE``: what is still on its way is never sent twice, and nothing behind the mark is skipped.
An event that cannot be recorded for what it holds (not because the database is unreachable) is
logged and passed over: it must not hold the mark, and with it every later event, back for ever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import takewhile
from typing import Any

import psycopg
import psycopg_pool
import structlog

from app.core.db import Database
from app.db import activity as queries
from app.domains.activity.events import RECORD_ACTIVITY_TASK

log = structlog.get_logger("app.activity.recovery")

GRACE = timedelta(minutes=15)
"""Longer than a job's life in the queue: JOB_RETRIES x (JOB_TIMEOUT_S + up to 60 s of backoff) is
7.5 minutes by default. A row checked sooner is only recorded twice, which stores nothing new."""

BATCH = 1000
"""Outbox rows read per step; the mark moves after each step."""

UNAVAILABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout, TimeoutError)
"""Failures that say nothing about the events: the run fails and the next one tries again."""

Record = Callable[[Sequence[Mapping[str, Any]]], Awaitable[int]]


async def recover_lost_events(
    db: Database,
    record: Record,
    *,
    now: datetime | None = None,
    batch: int = BATCH,
) -> int:
    """Record the feed's events published before ``now - GRACE`` and never stored; returns how many
    were stored. ``record`` is ``ActivityService.record_batch``."""
    settled_before = (now or datetime.now(UTC)) - GRACE
    stored = 0
    while True:
        async with db.read() as uow:
            after = await queries.activity_recovery_mark(uow.conn) or 0
            rows = await queries.feed_outbox_after(
                uow.conn, after_id=after, task=RECORD_ACTIVITY_TASK, row_limit=batch
            )
        settled = list(
            takewhile(lambda row: row.published_at is not None and row.published_at < settled_before, rows)
        )
        if not settled:
            return stored
        lost = [{**row.payload, "outbox_id": row.id} for row in settled if not row.stored]
        if lost:
            recorded = await _record_isolating(record, lost)
            stored += recorded
            log.warning(
                "feed_events_recovered",
                lost=len(lost),
                stored=recorded,
                first_outbox_id=lost[0]["outbox_id"],
                last_outbox_id=lost[-1]["outbox_id"],
            )
        async with db.transaction() as uow:
            await queries.set_activity_recovery_mark(uow.conn, checked_through=settled[-1].id)
        if len(settled) < batch:
            return stored


async def _record_isolating(record: Record, events: list[dict[str, Any]]) -> int:
    """``record(events)``; if that fails for what the events hold, each one alone, and one that
    still fails is logged (with its outbox id) and passed over."""
    try:
        return await record(events)
    except UNAVAILABLE:
        raise
    except Exception:
        if len(events) == 1:
            log.exception("feed_event_unrecoverable", outbox_id=events[0]["outbox_id"])
            return 0
    return sum([await _record_isolating(record, [event]) for event in events])
