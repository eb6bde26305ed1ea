"""Recovery of feed events whose jobs were lost.

The relay marks an outbox row published once its job is in Valkey; the job is then retried
``JOB_RETRIES`` times over a few minutes. An outage longer than that (PostgreSQL restarting, a
failover), or Valkey losing its queues, would lose the event for good: nothing else sends it again.
So a cron walks the feed's outbox rows in id order behind a mark (``activity_recovery``): each row
published more than ``GRACE`` ago whose event is not stored is recorded again (recording is
idempotent by outbox id; an event whose project or user is gone is dropped there, as always), and
the mark moves past it. The walk stops at the first row not published before its horizon
(``SettledFeedOutbox``: ``GRACE`` ago, or earlier while an older transaction that may still commit a
row is open): what is still on its way is never sent twice, and nothing behind the mark is skipped.
A walk held back that way while the next row has waited more than twice ``GRACE`` says so
(``feed_recovery_held_back``, once per ``HELD_BACK_LOG_S``): lost events wait for that transaction.
Every run ends by setting ``app_feed_recovery_waiting_seconds`` (the worker's metrics): how long the
row after the mark has been published, unchecked. It stays under ``GRACE`` plus the cron's minute
while the walk keeps up; above that, lost events wait (the log says why).

An event the writer refuses for what it holds (``REFUSED``: a payload it cannot read, a value
PostgreSQL refuses) is found by halving its batch, logged and passed over, so that it cannot hold
the mark back for ever; any other failure (the database unreachable, a bug that fails every event)
fails the run and leaves the mark where it was, for the next run once that is mended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import msgspec
import psycopg
import structlog
from prometheus_client import Gauge

from app.core.db import Database
from app.core.logging import OncePerInterval
from app.db import activity as queries

log = structlog.get_logger("app.activity.recovery")

GRACE = timedelta(minutes=15)
"""Longer than a job's life in the queue: JOB_RETRIES x (JOB_TIMEOUT_S + up to 60 s of backoff) is
7.5 minutes by default. A row checked sooner is only recorded twice, which stores nothing new."""

BATCH = 1000
"""Outbox rows read per step; the mark moves after each step."""

HELD_BACK_LOG_S = 600.0
"""How often a walk held back by an open transaction is logged again."""
_held_back_warnings = OncePerInterval(HELD_BACK_LOG_S)

WAITING = Gauge(
    "app_feed_recovery_waiting_seconds",
    "How long the feed's first outbox row after the recovery's mark has been published without being "
    "checked (0 when none is), as of the last run: past the grace (15 minutes), lost events wait",
    multiprocess_mode="mostrecent",
)

REFUSED = (msgspec.ValidationError, psycopg.DataError, psycopg.IntegrityError)
"""What an event's own content causes: it would fail every time."""

Record = Callable[[Sequence[Mapping[str, Any]]], Awaitable[int]]


async def recover_lost_events(
    db: Database, record: Record, *, grace: timedelta = GRACE, batch: int = BATCH
) -> int:
    """Record the feed's events published before the horizon and never stored; returns how many
    were stored. ``record`` is ``ActivityService.record_batch``."""
    stored = 0
    while True:
        async with db.read() as uow:
            mark = await queries.activity_recovery_mark(uow.conn) or 0
            rows = await queries.settled_feed_outbox(
                uow.conn,
                grace_s=grace.total_seconds(),
                after_id=mark,
                row_limit=batch,
            )
        if not rows:
            break
        *lost_rows, through = rows
        lost = [{**row.payload, "outbox_id": row.id} for row in lost_rows]  # objects: the outbox checks
        if lost:
            recorded = await _record_isolating(record, lost)
            stored += recorded
            if recorded:
                log.warning(
                    "feed_events_recovered",
                    stored=recorded,
                    first_outbox_id=lost[0]["outbox_id"],
                    last_outbox_id=lost[-1]["outbox_id"],
                )
        async with db.transaction() as uow:
            await queries.set_activity_recovery_mark(uow.conn, checked_through=through.id)
        mark = through.id
        if through.settled < batch:
            break
    await _report_waiting(db, mark, grace)
    return stored


async def _report_waiting(db: Database, mark: int, grace: timedelta) -> None:
    """Set ``WAITING`` from the row after the mark, and log (once per ``HELD_BACK_LOG_S``) a walk that
    stopped at that row though it was published more than twice ``grace`` ago: a transaction open
    that long holds it back (an operator's session, a migration; or, for an app role without
    pg_read_all_stats, any other role's session writing: deploy/README.md), and events lost meanwhile
    are not recorded again until it ends."""
    async with db.read() as uow:
        first = await queries.first_feed_outbox_after(uow.conn, after_id=mark)
    if first is None or first.published_at is None:
        WAITING.set(0)  # nothing after the mark, or its row is still on its way (the relay's to publish)
        return
    waited = first.checked_at - first.published_at
    WAITING.set(max(0.0, waited.total_seconds()))
    if waited > 2 * grace and _held_back_warnings.due():
        log.warning(
            "feed_recovery_held_back",
            outbox_id=first.id,
            published_s_ago=round(waited.total_seconds()),
            hint="an open transaction holds the walk back: see pg_stat_activity (xact_start)",
        )


async def _record_isolating(record: Record, events: list[dict[str, Any]]) -> int:
    """``record(events)``; if that is refused for what an event holds, each half in order, the same
    way, down to the event refused alone, which is logged (with its outbox id) and passed over. One
    refused event in a step of ``BATCH`` costs about twenty writes, where one write per event cost a
    thousand."""
    try:
        return await record(events)
    except REFUSED:
        if len(events) == 1:
            log.exception("feed_event_unrecoverable", outbox_id=events[0]["outbox_id"])
            return 0
    half = len(events) // 2
    return await _record_isolating(record, events[:half]) + await _record_isolating(record, events[half:])
