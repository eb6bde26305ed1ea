"""The monitoring retention in chunks: a backlog drains under the statement timeout, a table that
fails leaves the others purged, and the users a group has not seen for the retention go; and the
checks cron's end of timed ignores reads only the groups concerned."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, AsyncRawCursor, sql
from valkey.asyncio import Valkey

from app.config import Settings
from app.db import monitoring
from tests.factories import (
    analyzed_plan,
    blocked_by,
    cancelled_once_blocked,
    insert_root_group,
    plan_rows_read,
    plan_scans,
)
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.unit.test_monitoring_fingerprint import raise_bug

OLD = "now() - interval '90 days'"
"""Past the default retention (MONITORING_RETENTION_DAYS, 30)."""


async def counts(db: AsyncConnection[Any], *tables: tuple[str, str]) -> list[int]:
    """The rows of each ``(table, condition)``: this test's own (the session's apps write these tables
    too, route latency as they serve requests)."""
    found = []
    for table, condition in tables:
        query = sql.SQL("select count(*) from {} where ").format(sql.Identifier(table)) + sql.SQL(condition)
        row = await (await db.execute(query)).fetchone()
        assert row is not None
        found.append(int(row[0]))
    return found


async def test_a_backlog_is_purged_chunk_by_chunk_each_committed_on_its_own(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, database_url: str
) -> None:
    """60,000 latency rows past the retention (a lowered MONITORING_RETENTION_DAYS, or purges that
    could not run), the newest of them locked by someone else, and the purge's statement cancelled
    once it waits for that row (what the statement timeout does): one DELETE of them all rolled back
    everything, every hour again (on a large backlog the timeout alone does it). Chunk by chunk,
    every chunk before the locked row is committed; once the lock is gone the next purge finishes,
    and the rows within the retention stay. A lock and a cancel, not a clock. (In CI the first chunk
    once outlasted even the 15 s statement timeout: its plan, sized from statistics that had not seen
    the backlog, read the backlog once per row of the chunk; ``test_core_chunked_deletes``.)"""
    await db.execute(
        "insert into monitoring_route_latency (route, method, minute, bucket, requests)"
        f" select '/r' || (g % 20), 'GET', date_trunc('minute', {OLD}) + (g / 20) * interval '1 minute',"
        " 1, 1 from generate_series(0, 59999) g"
    )
    await db.execute(
        "insert into monitoring_route_latency (route, method, minute, bucket, requests)"
        " values ('/recent', 'GET', date_trunc('minute', now()), 1, 1)"
    )
    await db.execute(
        "insert into monitoring_alerts (key, kind, rule, summary, text_html, text_plain, created_at)"
        f" values ('old', 'alert', 't', 's', 'h', 'p', {OLD}), ('new', 'alert', 't', 's', 'h', 'p', now())"
    )
    old = ("monitoring_route_latency", "route ~ '^/r[0-9]+$'")
    async with await AsyncConnection.connect(database_url) as holder:
        await holder.execute(
            "select 1 from monitoring_route_latency where route = '/r19'"
            " and minute = (select max(minute) from monitoring_route_latency where route ~ '^/r[0-9]+$')"
            " for update"
        )
        async with open_monitoring(settings) as service:
            with pytest.raises(psycopg.errors.QueryCanceled):
                await cancelled_once_blocked(
                    db, holder.info.backend_pid, service.purge(time.time(), chunk_size=10_000)
                )
        await holder.rollback()
    (left,) = await counts(db, old)
    assert 1 <= left <= 10_000, "every chunk before the locked row stays deleted"
    assert await counts(db, ("monitoring_alerts", "key in ('old', 'new')")) == [1]  # purged all the same
    async with open_monitoring(settings) as service:
        assert await service.purge(time.time(), chunk_size=10_000) >= left
    assert await counts(db, old, ("monitoring_route_latency", "route = '/recent'")) == [0, 1]
    assert await counts(db, ("monitoring_alerts", "key = 'new'")) == [1]


async def test_a_purge_stops_after_its_chunk_once_the_process_stops(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, database_url: str
) -> None:
    """A process that stops (``stopping``, or ``close``) while its hourly purge drains a backlog: the
    chunk under way is committed and no further one is deleted; the next run goes on. The stop
    waited for the whole backlog, past granian's kill timeout (the buffered errors and latency that
    ``close`` writes last were lost with it). A lock holds the purge in its second chunk, not a clock."""
    await db.execute(
        "insert into monitoring_route_latency (route, method, minute, bucket, requests)"
        f" select '/s', 'GET', date_trunc('minute', {OLD}) + g * interval '1 minute', 1, 1"
        " from generate_series(0, 49) g"
    )
    backlog = ("monitoring_route_latency", "route = '/s'")
    async with await AsyncConnection.connect(database_url) as holder:
        await holder.execute(  # the 15th row alone (an OFFSET would lock the rows it skips too)
            "select 1 from monitoring_route_latency where route = '/s' and minute ="
            " (select min(minute) + interval '14 minutes' from monitoring_route_latency) for update"
        )
        async with open_monitoring(settings) as service:
            purge = asyncio.ensure_future(service.purge(time.time(), chunk_size=10))
            await blocked_by(db, holder.info.backend_pid, purge)
            service.stopping()
            await holder.rollback()
            assert await purge == 20, "the chunk under way, and no other"
    assert await counts(db, backlog) == [30]
    async with open_monitoring(settings) as service:
        assert await service.purge(time.time(), chunk_size=10) == 30
    assert await counts(db, backlog) == [0]


async def test_a_table_that_fails_leaves_the_others_purged(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, database_url: str
) -> None:
    """A job-run row locked by someone else, the purge's statement cancelled while it waits for it
    (what the statement timeout does): that table's purge fails (the purge says so), the tables
    before and after it are purged all the same; the next purge finishes the job."""
    await db.execute(
        "insert into monitoring_job_runs (job, minute, outcome, runs, total_ms, max_ms, max_attempts)"
        f" values ('j', {OLD}, 'complete', 1, 1, 1, 1)"
    )
    await db.execute(
        "insert into monitoring_route_latency (route, method, minute, bucket, requests)"
        f" values ('/old', 'GET', {OLD}, 1, 1)"
    )
    await db.execute(
        "insert into monitoring_cron_checkins (name, status, at) values ('c', 'ok', " + OLD + ")"
    )
    async with await AsyncConnection.connect(database_url) as holder:
        await holder.execute("select * from monitoring_job_runs for update")
        async with open_monitoring(settings) as service:
            with pytest.raises(psycopg.errors.QueryCanceled):
                await cancelled_once_blocked(db, holder.info.backend_pid, service.purge(time.time()))
        await holder.rollback()
    tables = (
        ("monitoring_route_latency", "route = '/old'"),
        ("monitoring_job_runs", "job = 'j'"),
        ("monitoring_cron_checkins", "name = 'c'"),
    )
    assert await counts(db, *tables) == [0, 1, 0]
    async with open_monitoring(settings) as service:
        assert await service.purge(time.time()) >= 1
    assert await counts(db, *tables) == [0, 0, 0]


async def test_users_a_group_has_not_seen_for_the_retention_are_purged(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Affected users are personal data kept with the group: the rows of users a group has not seen
    for MONITORING_RETENTION_DAYS go with the hourly purge, chunk after chunk across the groups; the
    users seen within it stay."""
    async with open_monitoring(settings, monitoring_retention_days=30) as service:
        groups = []
        for number in range(3):
            bug = raise_bug(0, module=f"app.h_mon.users{number}")
            written = await service.write_now([error_event(bug, user_id=user) for user in range(1, 6)])
            groups.append(written[0].group_id)
        assert len(set(groups)) == 3
        # users 1-3 of each group last seen 400 days ago, users 4 and 5 now
        await db.execute(
            "update monitoring_group_users set first_seen_at = now() - interval '400 days',"
            " last_seen_at = now() - interval '400 days' where user_id <= 3 and group_id = any(%s)",
            (groups,),
        )
        assert await service.purge(time.time(), chunk_size=2) >= 9
        # the users counts follow the rows: user 1, seen again, counts once in the list and the detail
        bug = raise_bug(0, module="app.h_mon.users0")
        await service.write_now([error_event(bug, user_id=1)])
        listed = {
            row.id: row.users
            for row in await service.list_groups(
                status=None, kind=None, release=None, before_id=2**62, limit=50
            )
        }
        assert [listed[group] for group in groups] == [3, 2, 2]
        assert [(await service.detail(group)).users for group in groups] == [3, 2, 2]
    left = await (
        await db.execute(
            "select group_id, user_id from monitoring_group_users where group_id = any(%s)"
            " order by group_id, user_id",
            (groups,),
        )
    ).fetchall()
    assert left == [
        (group, user) for group in sorted(groups) for user in ((1, 4, 5) if group == groups[0] else (4, 5))
    ]


async def test_ending_timed_ignores_reads_only_the_groups_ignored_until_a_time(
    db: AsyncConnection[Any],
) -> None:
    """5,000 groups of which one is ignored until a time now passed: the checks cron's statement
    (every minute) reads that one group. Was: every group, every minute (no index)."""
    async with db.transaction(force_rollback=True):
        await db.execute(
            "insert into monitoring_groups (id, root_id, kind, title, status_changed_at, first_seen_at,"
            " last_seen_at)"
            " select 900000 + g, 900000 + g, 'error', 'g', now(), now(), now()"
            " from generate_series(1, 5000) g"
        )
        await db.execute(
            "update monitoring_groups set status = 'ignored', ignore_mode = 'until_time',"
            " ignore_until = now() - interval '1 minute' where id = 900001"
        )
        await db.execute("analyze monitoring_groups")
        async with AsyncRawCursor(db) as cur:
            await cur.execute(
                "explain (analyze, format json) " + monitoring.TIMED_IGNORES_DUE, (datetime.now(UTC),)
            )
            row = await cur.fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    read = sum(plan_rows_read(scan) for scan in plan_scans(plan, "monitoring_groups"))
    assert read <= 2, f"read {read} groups: {plan}"


async def test_the_events_purge_reads_no_event_when_none_is_due(db: AsyncConnection[Any]) -> None:
    """20,000 events within the retention: the purge's chunk that finds nothing due (the last of every
    hourly run) reads none of them. Was: every event, every hour (no index on ``occurred_at``)."""
    async with db.transaction(force_rollback=True):
        await insert_root_group(db, 910000)
        await db.execute(
            "insert into monitoring_events (group_id, occurred_at, hash, release, environment, message,"
            " exception, context, grouping)"
            " select 910000, now() - g * interval '1 second', 'h', 'r', 'e', 'm', '{}', '{}', '{}'"
            " from generate_series(1, 20000) g"
        )
        await db.execute("analyze monitoring_events")
        before = datetime.fromtimestamp(time.time() - 30 * 86400, UTC)
        plan = await analyzed_plan(db, monitoring.PURGE_EVENTS_BEFORE, (before, 1000))
    read = sum(plan_rows_read(scan) for scan in plan_scans(plan, "monitoring_events"))
    assert read == 0, plan
