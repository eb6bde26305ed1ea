"""A report reads the rollups' watermark a fixed number of times, not once per view (migration
20261207030000).

``analytics_watermark()`` is a SQL function that reads ``analytics_rollup_state``. The reports used it
in the filters that tell a view not rolled up yet from one rolled up, and PostgreSQL evaluates a stable
function in a filter once per row: finding a site's pending views, through ``(site_id, ts)`` over the
last 24 hours, read the state table once per view the site received that day (2 s per read at a
million views a day). Each evaluation is one scan of that table, counted in the transaction's own
statistics, which no machine's speed changes.

The reports now pass the watermark to ``analytics_merged_visits`` once as well, and it finds the
visits that pending views touch by a probe per view: a burst of them no longer makes its plan read
every visit of the site. The entry paths' triggers had the same fault: they counted an hour's paths,
and read the watermark, once per path of the statement (migration 20261207030100).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from psycopg import AsyncConnection

from app.db import pageviews as pageview_queries
from app.db import reports as report_queries
from app.db.reports import ReportEntryPagesRow
from app.domains.reports.services import ENTRY_PATHS_OPEN_HOUR, OTHER_VALUE, ReportService
from tests.factories import scalar
from tests.functional.test_reports_visitor_counts import rows_read

ROLLED = 1_500
"""Views received over the last day and rolled up: each one was a read of the watermark."""
PENDING = 20
"""Views received after the rollup: the reports' raw tail, visitors and visits."""
STORED = 30_000
"""Stored visits of the site, one per visitor."""
PENDING_VIEWS = 3_000
"""Views not rolled up yet, one per visitor: every third one a stored visitor's, a minute into its visit."""
OPEN_PATHS = 900
"""Entry paths an open hour holds before the statement: room for ENTRY_PATHS_OPEN_HOUR - 900 more."""
ADDED = 300
"""Paths of the statement among those the hour holds, and new paths, each."""
READS_PER_REPORT = 10
"""At most 6 now (an initplan per place a statement compares the watermark); was one per view."""

Report = Callable[[AsyncConnection[Any], datetime, datetime], Awaitable[object]]
"""A report over [start, end) of the busy day's site, its answer."""


async def watermark_reads(db: AsyncConnection[Any]) -> int:
    """The scans this transaction has made of analytics_rollup_state (its indexes included)."""
    reads = await scalar(
        db,
        "select pg_stat_get_xact_numscans('analytics_rollup_state'::regclass) + coalesce(("
        "    select sum(pg_stat_get_xact_numscans(i.indexrelid)) from pg_index i"
        "    where i.indrelid = 'analytics_rollup_state'::regclass"
        "), 0)",
    )
    return int(reads)


@pytest.fixture
async def busy_day(reports: ReportService, db: AsyncConnection[Any], site_id: int) -> datetime:
    """ROLLED views over the day before the last hour, rolled up, then PENDING views received now;
    returns now."""
    now = datetime.now(UTC)
    await pageview_queries.ensure_partitions(db, from_day=(now - timedelta(days=2)).date(), days=4)
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
        " select %(site)s, t, t, g / 3, '/p' || (g %% 7), 'desktop', 'firefox', 'linux'"
        " from generate_series(0, %(n)s - 1) g, lateral ("
        "     select %(now)s::timestamptz - interval '25 hours' + g * (interval '23 hours' / %(n)s)"
        " ) t (t)",
        {"site": site_id, "n": ROLLED, "now": now},
    )
    await reports.rollup(now=now)
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
        " select %s, %s::timestamptz, %s::timestamptz, 1000000 + g, '/new', 'desktop', 'firefox', 'linux'"
        " from generate_series(1, %s) g",
        (site_id, now, now, PENDING),
    )
    assert (
        await scalar(db, "select count(*) from page_views where received_at >= analytics_watermark()")
        == PENDING
    )
    return now


async def first_entry_pages(
    db: AsyncConnection[Any], site_id: int, start: datetime, end: datetime
) -> list[ReportEntryPagesRow]:
    """The entry pages' first page over [start, end), as the report's statement answers it."""
    return await report_queries.report_entry_pages(
        db,
        after_visits=None,
        after_path=None,
        row_limit=11,
        received_before=None,
        other=OTHER_VALUE,
        range_from=start,
        range_to=end,
        site_id=site_id,
    )


def reports_of(site_id: int, tz: str) -> dict[str, Report]:
    span = {"site_id": site_id}

    async def summary(db: AsyncConnection[Any], start: datetime, end: datetime) -> object:
        return await report_queries.report_summary(db, range_from=start, range_to=end, **span)

    async def hourly(db: AsyncConnection[Any], start: datetime, end: datetime) -> object:
        return await report_queries.report_timeseries(
            db, unit="hour", tz=tz, step=timedelta(minutes=15), range_from=start, range_to=end, **span
        )

    async def daily(db: AsyncConnection[Any], start: datetime, end: datetime) -> object:
        return await report_queries.report_timeseries(
            db, unit="day", tz=tz, step=timedelta(hours=1), range_from=start, range_to=end, **span
        )

    async def paths(db: AsyncConnection[Any], start: datetime, end: datetime) -> object:
        return await report_queries.report_breakdown(
            db,
            dimension="path",
            skip_empty=True,
            after_views=None,
            after_value=None,
            row_limit=11,
            received_before=None,
            range_from=start,
            range_to=end,
            **span,
        )

    async def entry_pages(db: AsyncConnection[Any], start: datetime, end: datetime) -> object:
        return await first_entry_pages(db, site_id, start, end)

    return {
        "summary": summary,
        "series by hour": hourly,
        "series by day": daily,
        "paths": paths,
        "entry pages": entry_pages,
    }


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
async def test_a_report_reads_the_watermark_a_fixed_number_of_times_whatever_the_days_views(
    db: AsyncConnection[Any], site_id: int, busy_day: datetime, tz: str
) -> None:
    """Every report over the last three local days of ``tz`` (Kolkata's cut half hours are read raw)
    reads the watermark at most READS_PER_REPORT times and counts every view. Was: once per view of
    the last 24 hours, some 4,500 times for the summary."""
    today = busy_day.astimezone(ZoneInfo(tz)).date()
    start = await scalar(db, "select local_day_start(%s::date, %s)", today - timedelta(days=2), tz)
    end = await scalar(db, "select local_day_start(%s::date, %s)", today + timedelta(days=1), tz)
    reads: dict[str, int] = {}
    for name, report in reports_of(site_id, tz).items():
        async with db.transaction(force_rollback=True):
            before = await watermark_reads(db)
            answer = await report(db, start, end)
            reads[name] = await watermark_reads(db) - before
        assert answer, name
    assert max(reads.values()) <= READS_PER_REPORT, reads
    summary = await report_queries.report_summary(db, site_id=site_id, range_from=start, range_to=end)
    assert summary is not None and summary.pageviews == ROLLED + PENDING


async def test_a_burst_of_pending_views_finds_the_visits_it_touches_by_probes_not_by_reading_the_sites_visits(
    reports: ReportService, db: AsyncConnection[Any], site_id: int
) -> None:
    """STORED visits of the site, then PENDING_VIEWS views, every third a stored visitor's, and
    statistics taken after them (as after a burst): the entry pages read of the visits about one row
    per pending view (its visitor's probe by primary key). Was: the inlined call estimated the pending
    views from those statistics and hashed every visit of the site (31,002 rows read here)."""
    now = datetime.now(UTC)
    await pageview_queries.ensure_partitions(db, from_day=(now - timedelta(days=2)).date(), days=4)
    await db.execute(
        "insert into page_view_visits (site_id, visitor_id, started_at, last_seen_at, pageviews, entry_path)"
        " select %s, g, %s::timestamptz - interval '20 hours' + g * interval '1 second',"
        " %s::timestamptz - interval '20 hours' + g * interval '1 second', 1, '/old'"
        " from generate_series(1, %s) g",
        (site_id, now, now, STORED),
    )
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
        " select %s, t, t, g, '/old', 'desktop', 'firefox', 'linux' from generate_series(1, %s) g,"
        " lateral (select %s::timestamptz - interval '20 hours' + g * interval '1 second') t (t)",
        (site_id, STORED, now),
    )
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
        " select %(site)s, %(now)s::timestamptz - interval '20 hours' + (g + 60) * interval '1 second',"
        " %(now)s, case when g %% 3 = 0 then g else %(stored)s + g end, '/new', 'desktop', 'firefox', 'linux'"
        " from generate_series(1, %(n)s) g",
        {"site": site_id, "now": now, "stored": STORED, "n": PENDING_VIEWS},
    )
    await db.execute("analyze page_view_visits")
    await db.execute("analyze page_views")
    await report_queries.set_watermark(db, rolled_up_to=now - timedelta(minutes=1))
    start, end = now - timedelta(days=1), now + timedelta(hours=1)
    async with db.transaction(force_rollback=True):
        before = await rows_read(db)
        rows = await first_entry_pages(db, site_id, start, end)
        visits_read = (await rows_read(db))["page_view_visits"] - before["page_view_visits"]
    returning = PENDING_VIEWS // 3
    assert {r.path: r.visits for r in rows} == {"/old": STORED, "/new": PENDING_VIEWS - returning}
    assert visits_read <= 3 * PENDING_VIEWS, visits_read


async def test_counting_entry_paths_reads_an_hours_paths_once_per_statement_not_once_per_path(
    db: AsyncConnection[Any], site_id: int
) -> None:
    """An open hour holding OPEN_PATHS entry paths (and 50,000 rows of earlier hours: on a table of
    a few pages the planner reads it whole per probe, which costs nothing there), then one statement
    adding a visit on each of ADDED of them and on ADDED new paths: the statement's triggers read the
    hour's rows once to learn its room and probe each path's row, and read the watermark once
    (migration 20261207030100). Was: the hour's rows counted, and the watermark read, once per path of the
    statement (540,600 rows read here, against 1,500 now)."""
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    await report_queries.set_watermark(db, rolled_up_to=hour)
    await db.execute(  # earlier hours' counts: a table of a real size, read through its index
        "insert into page_view_entry_hourly (site_id, hour, entry_path, visits, bounces)"
        " select %s, %s::timestamptz - h * interval '1 hour', '/x' || p, 1, 0"
        " from generate_series(1, 500) h, generate_series(1, 100) p",
        (site_id, hour),
    )
    await db.execute("analyze page_view_entry_hourly")
    visits = (
        "insert into page_view_visits (site_id, visitor_id, started_at, last_seen_at, pageviews, entry_path)"
        " select %(site)s, %(first)s + row_number() over (), %(hour)s, %(hour)s, 1, k || g"
        " from unnest(%(prefixes)s::text[]) k, generate_series(0, %(count)s - 1) g"
    )
    held = {"site": site_id, "first": 0, "hour": hour, "prefixes": ["/p"], "count": OPEN_PATHS}
    await db.execute(visits, held)

    async def reads() -> tuple[int, int]:
        """Rows of the counts read so far and reads of the watermark, in this transaction."""
        counts = await rows_read(db, ("page_view_entry_hourly",))
        return counts["page_view_entry_hourly"], await watermark_reads(db)

    async with db.transaction(force_rollback=True):
        before = await reads()
        added = {"site": site_id, "first": OPEN_PATHS, "hour": hour, "prefixes": ["/p", "/q"], "count": ADDED}
        await db.execute(visits, added)
        after = await reads()
        rows = dict(
            await (
                await db.execute(
                    "select entry_path, visits from page_view_entry_hourly where site_id = %s and hour = %s",
                    (site_id, hour),
                )
            ).fetchall()
        )
    counts_read, watermarks = after[0] - before[0], after[1] - before[1]
    room = ENTRY_PATHS_OPEN_HOUR - OPEN_PATHS
    assert rows["/p0"] == 2 and rows[OTHER_VALUE] == ADDED - room
    assert sum(1 for path in rows if path.startswith("/q")) == room
    assert watermarks <= 1, watermarks
    assert counts_read <= OPEN_PATHS + 3 * 2 * ADDED, counts_read
