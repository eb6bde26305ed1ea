"""The rollups' retention in chunks: a backlog drains chunk by chunk, each committed on its own, a
table that fails leaves the others purged, the rows of the retention stay, and each chunk finds its
rows through an index instead of reading its table.

The purge was one transaction of four unbounded DELETEs, each reading its whole table (no index
starts with ``hour``): once a backlog made one outlast the statement timeout, everything rolled back,
and the next night had more to delete. Progress is shown with a row lock held by someone else (the
purge waits for it; what it committed before is visible meanwhile), failures with a cancellation of
the waiting statement: nothing here depends on the machine's speed."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import psycopg
import pytest
from psycopg import AsyncConnection, AsyncRawCursor

from app.config import Settings
from app.core.services import open_services
from app.db import reports as queries
from app.domains.pageviews.services import retention_first_day
from app.domains.reports.services import ReportService
from app.modules import MODULES
from tests.factories import (
    blocked_by,
    cancelled_once_blocked,
    captured_logs,
    create_user,
    make_site,
    plan_rows_read,
    plan_scans,
)

PER_HOUR = 7
"""Rows of each hour: chunks of 100 end inside an hour, and the next chunk resumes in it."""
BACKLOG = 36 * PER_HOUR
"""Rows past the retention in each table: more than two chunks of 100."""
CHUNK = 100


class Table(NamedTuple):
    name: str
    insert: str
    """Inserts row ``g`` of ``generate_series``: site ``%(sites)s[1 + g % 7]``, its hour
    ``%(first)s + g / 7 hours`` (for visits: started then, last seen 10 minutes later)."""
    expired: str
    """The rows the purge deletes (before ``%(before)s``)."""


TABLES = [
    Table(
        "page_view_hourly",
        "insert into page_view_hourly (site_id, hour, pageviews, bot_pageviews)"
        " select (%(sites)s::bigint[])[1 + g %% 7], %(first)s + (g / 7) * interval '1 hour', 1, 0"
        " from generate_series(%(low)s::integer, %(high)s::integer) g",
        "hour < %(before)s",
    ),
    Table(
        "page_view_dimension_hourly",
        "insert into page_view_dimension_hourly (site_id, dimension, hour, value, views)"
        " select (%(sites)s::bigint[])[1 + g %% 7], 'path', %(first)s + (g / 7) * interval '1 hour',"
        " '/p' || g, 1 from generate_series(%(low)s::integer, %(high)s::integer) g",
        "hour < %(before)s",
    ),
    Table(
        "page_view_hourly_visitors",
        "insert into page_view_hourly_visitors (site_id, hour, visitor_id)"
        " select (%(sites)s::bigint[])[1 + g %% 7], %(first)s + (g / 7) * interval '1 hour', g"
        " from generate_series(%(low)s::integer, %(high)s::integer) g",
        "hour < %(before)s",
    ),
    Table(
        "page_view_visits",
        "insert into page_view_visits (site_id, visitor_id, started_at, last_seen_at, pageviews, entry_path)"
        " select (%(sites)s::bigint[])[1 + g %% 7], g, %(first)s + (g / 7) * interval '1 hour',"
        " %(first)s + (g / 7) * interval '1 hour' + interval '10 minutes', 1, '/'"
        " from generate_series(%(low)s::integer, %(high)s::integer) g",
        "last_seen_at < %(before)s",
    ),
    Table(
        "page_view_daily_visitors",
        "insert into page_view_daily_visitors (site_id, day, visitor_id, first_quarter, last_quarter)"
        " select (%(sites)s::bigint[])[1 + g %% 7], %(first)s + (g / 7) * interval '1 hour', -1 - g, 0, 0"
        " from generate_series(%(low)s::integer, %(high)s::integer) g",
        "day < %(before)s",
    ),
    Table(
        "page_view_quarters",
        "insert into page_view_quarters (site_id, quarter, visits)"
        " select (%(sites)s::bigint[])[1 + g %% 7], %(first)s + (g / 7) * interval '1 hour', 1"
        " from generate_series(%(low)s::integer, %(high)s::integer) g on conflict do nothing",
        "quarter < %(before)s",
    ),
    Table(
        "page_view_entry_hourly",
        "insert into page_view_entry_hourly (site_id, hour, entry_path, visits)"
        " select (%(sites)s::bigint[])[1 + g %% 7], %(first)s + (g / 7) * interval '1 hour', '/entry', 1"
        " from generate_series(%(low)s::integer, %(high)s::integer) g on conflict do nothing",
        "hour < %(before)s",
    ),
]
TIME_COLUMN = {
    "page_view_visits": "started_at",
    "page_view_daily_visitors": "day",
    "page_view_quarters": "quarter",
}
BY_NAME = {table.name: table for table in TABLES}


class Rollups(NamedTuple):
    sites: list[int]
    before: datetime
    """The first hour kept: the retention's first kept UTC day, at midnight."""


@pytest.fixture
async def rollups(settings: Settings, db: AsyncConnection[Any]) -> Rollups:
    owner = await create_user(db)
    sites = [(await make_site(db, owner, domain=f"s{n}.example")).id for n in range(PER_HOUR)]
    first_kept = retention_first_day(datetime.now(UTC).date(), settings.analytics_retention_days)
    return Rollups(sites, datetime(first_kept.year, first_kept.month, first_kept.day, tzinfo=UTC))


async def fill(db: AsyncConnection[Any], rollups: Rollups, table: Table, first: datetime, rows: int) -> None:
    params = {"sites": rollups.sites, "first": first, "low": 0, "high": rows - 1}
    await db.execute(table.insert, params)


async def fill_all(db: AsyncConnection[Any], rollups: Rollups, table: Table) -> None:
    """BACKLOG rows past the retention, the newest in the hour before its boundary; a day of rows from
    the boundary on (kept); for visits, also one that started before the boundary and was seen at it
    (kept: its last view is within the retention)."""
    await fill(db, rollups, table, rollups.before - timedelta(hours=BACKLOG // PER_HOUR), BACKLOG)
    await fill(db, rollups, table, rollups.before, 24 * PER_HOUR)
    if table.name == "page_view_visits":
        await db.execute(
            "insert into page_view_visits (site_id, visitor_id, started_at, last_seen_at, pageviews,"
            " entry_path) values (%s, -1, %s, %s, 100, '/')",
            (rollups.sites[0], rollups.before - timedelta(hours=2), rollups.before),
        )


async def count(db: AsyncConnection[Any], table: Table, rollups: Rollups, *, expired: bool) -> int:
    condition = table.expired if expired else f"not ({table.expired})"
    row = await (
        await db.execute(f"select count(*) from {table.name} where {condition}", {"before": rollups.before})
    ).fetchone()
    assert row is not None
    return int(row[0])


@asynccontextmanager
async def reports(settings: Settings) -> AsyncIterator[ReportService]:
    async with open_services(settings, MODULES) as services:
        yield services[ReportService]


@asynccontextmanager
async def holding(database_url: str, table: Table, rollups: Rollups) -> AsyncIterator[int]:
    """A transaction of someone else locking one expired row of ``table``, of its newest hour (the
    last chunk's); yields the holder's backend pid. Released when the block ends."""
    async with await AsyncConnection.connect(database_url) as holder:
        column = TIME_COLUMN.get(table.name, "hour")
        locked = await (
            await holder.execute(
                f"select 1 from {table.name} where {column} = %(newest)s limit 1 for update",
                {"newest": rollups.before - timedelta(hours=1)},
            )
        ).fetchall()
        assert locked == [(1,)]
        try:
            yield holder.info.backend_pid
        finally:
            await holder.rollback()


@pytest.mark.parametrize("name", [table.name for table in TABLES])
async def test_a_backlog_is_purged_chunk_by_chunk_each_committed_on_its_own(
    settings: Settings, db: AsyncConnection[Any], rollups: Rollups, database_url: str, name: str
) -> None:
    """252 rows past the retention, purged by chunks of 100, the newest locked by someone else: while
    the purge waits for that row (its last chunk), the chunks before it are committed (at most one
    chunk left); once the lock is gone the same run finishes the table, and the rows of the retention
    stay. Was: one transaction, nothing committed until every table was done."""
    table = BY_NAME[name]
    await fill_all(db, rollups, table)
    kept = await count(db, table, rollups, expired=False)
    assert await count(db, table, rollups, expired=True) == BACKLOG
    derived = [other for other in TABLES if other is not table]  # the visitors' days and counts
    expired = BACKLOG + sum([await count(db, other, rollups, expired=True) for other in derived])
    async with reports(settings) as service:
        async with holding(database_url, table, rollups) as holder:
            purge = asyncio.ensure_future(service.purge_rollups(chunk_size=CHUNK))
            try:
                await blocked_by(db, holder, purge)
                left = await count(db, table, rollups, expired=True)
            except BaseException:
                purge.cancel()
                raise
        assert await purge == expired
    assert 1 <= left <= CHUNK, f"{left} of {BACKLOG} left while the last chunk waits"
    assert await count(db, table, rollups, expired=True) == 0
    assert await count(db, table, rollups, expired=False) == kept


async def test_a_table_that_fails_leaves_the_others_purged(
    settings: Settings, db: AsyncConnection[Any], rollups: Rollups, database_url: str
) -> None:
    """The dimension rollups' purge fails (its statement, waiting for a row someone else locked, is
    cancelled): the failure is logged and raised, the tables before and after it are purged all the
    same, and its chunks before the locked row stay deleted. The next purge finishes the job. Was:
    one transaction, the failure rolled back every table's purge."""
    for table in TABLES:
        await fill_all(db, rollups, table)
    dimensions = BY_NAME["page_view_dimension_hourly"]
    async with reports(settings) as service:
        with captured_logs() as logs:
            async with holding(database_url, dimensions, rollups) as holder:
                with pytest.raises(psycopg.errors.QueryCanceled):
                    await cancelled_once_blocked(db, holder, service.purge_rollups(chunk_size=CHUNK))
        left = {table.name: await count(db, table, rollups, expired=True) for table in TABLES}
        assert left == {
            "page_view_hourly": 0,
            "page_view_dimension_hourly": left["page_view_dimension_hourly"],
            "page_view_hourly_visitors": 0,
            "page_view_visits": 0,
            "page_view_daily_visitors": 0,
            "page_view_quarters": 0,
            "page_view_entry_hourly": 0,
        }
        assert 1 <= left["page_view_dimension_hourly"] <= CHUNK
        failed = logs.events("rollups_purge_failed")
        assert [entry["table"] for entry in failed] == ["page_view_dimension_hourly"]

        assert await service.purge_rollups(chunk_size=CHUNK) == left["page_view_dimension_hourly"]
    for table in TABLES:
        assert await count(db, table, rollups, expired=True) == 0
        assert await count(db, table, rollups, expired=False) >= 24 * PER_HOUR


CHUNK_QUERIES: list[tuple[str, Callable[..., Awaitable[Any]], str, str]] = [
    (
        "page_view_hourly",
        queries.purge_hourly_rollups,
        queries.PURGE_HOURLY_ROLLUPS,
        "page_view_hourly_hour_idx",
    ),
    (
        "page_view_dimension_hourly",
        queries.purge_dimension_rollups,
        queries.PURGE_DIMENSION_ROLLUPS,
        "page_view_dimension_hourly_hour_idx",
    ),
    (
        "page_view_hourly_visitors",
        queries.purge_hourly_visitors,
        queries.PURGE_HOURLY_VISITORS,
        "page_view_hourly_visitors_hour_idx",
    ),
    ("page_view_visits", queries.purge_visits, queries.PURGE_VISITS, "page_view_visits_started_at_idx"),
    (
        "page_view_daily_visitors",
        queries.purge_daily_visitors,
        queries.PURGE_DAILY_VISITORS,
        "page_view_daily_visitors_day_idx",
    ),
    ("page_view_quarters", queries.purge_quarters, queries.PURGE_QUARTERS, "page_view_quarters_quarter_idx"),
    (
        "page_view_entry_hourly",
        queries.purge_entry_hourly,
        queries.PURGE_ENTRY_HOURLY,
        "page_view_entry_hourly_hour_idx",
    ),
]


@pytest.mark.parametrize("name", [name for name, *_ in CHUNK_QUERIES])
async def test_a_chunk_reads_its_rows_through_an_index_not_the_table(
    db: AsyncConnection[Any], rollups: Rollups, name: str
) -> None:
    """Ninety-one days of rollups (15,288 rows, the oldest day past the retention): one chunk of 100
    (EXPLAIN ANALYZE, rolled back) reads about 100 rows of the table, through the index on its hour
    (for visits, on started_at), never the whole table. Was: a sequential scan of every row."""
    _, query, statement, index = next(entry for entry in CHUNK_QUERIES if entry[0] == name)
    table = BY_NAME[name]
    days = 91
    await fill(db, rollups, table, rollups.before - timedelta(days=1), days * 24 * PER_HOUR)
    await db.execute(f"analyze {name}")
    arguments = {"resume_from": datetime(1, 1, 1, tzinfo=UTC), "before": rollups.before, "chunk_size": CHUNK}
    # the generated function's keyword parameters are its SQL's $n in order
    values = tuple(arguments[key] for key in inspect.signature(query).parameters if key != "conn")
    async with db.transaction(force_rollback=True), AsyncRawCursor(db) as cur:
        await cur.execute("explain (analyze, format json) " + statement, values)
        row = await cur.fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    read = plan_scans(plan, name)
    assert all(scan["Node Type"] != "Seq Scan" for scan in read), read
    assert any(scan.get("Index Name") == index for scan in read), read
    total = sum(plan_rows_read(scan) for scan in read)  # the chunk's rows picked, then deleted by ctid
    assert CHUNK <= total <= 2 * CHUNK + PER_HOUR, (
        f"{name}: one chunk read {total} rows of {days * 24 * PER_HOUR}"
    )
