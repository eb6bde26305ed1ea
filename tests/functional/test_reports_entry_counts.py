"""The entry pages report reads its visits from counts, not from the visits (migration 20261207010000).

It grouped every visit of its period by entry path: a holder of a site's public ingest key, sending
views with a new user agent each, made it slower without bound. Now triggers on the visits keep, per
site, UTC hour and entry path, the visits that started in it and their bounces, at most
``ENTRY_PATHS_PER_HOUR`` paths a closed hour (its most visited) and the rest in ``OTHER_VALUE``. What a
report read is counted in the transaction's own table statistics (``rows_read``), which no machine's
speed changes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.db import pageviews as pageview_queries
from app.db import reports as report_queries
from app.domains.reports.schemas import ReportRange
from app.domains.reports.services import (
    ENTRY_PATHS_OPEN_HOUR,
    ENTRY_PATHS_PER_HOUR,
    OTHER_VALUE,
    ReportService,
    resolve_range,
)
from tests.factories import migration_up, scalar, sessions_waiting_for_a_lock, wait_until
from tests.functional.test_reports_visitor_counts import rows_read
from tests.functional.test_reports_zones import View, insert_views

PER_DAY = 200
DAYS = 3
PROBES = 5
"""What a report may read of the visits beyond the cut hours: the views not rolled up yet find the
visits they merge by primary key (none here), and an empty range is one probe. Was: every visit."""


def expected_entries(views: list[View], rng: ReportRange) -> dict[str, tuple[int, int]]:
    """Path -> (visits, bounces) of the visits starting in the range, where each visitor makes one
    visit (its views are minutes apart) entered by its first view."""
    by_visitor: dict[int, list[View]] = {}
    for view in sorted(views):
        by_visitor.setdefault(view[1], []).append(view)
    visits: Counter[str] = Counter()
    bounces: Counter[str] = Counter()
    for seen in by_visitor.values():
        if rng.start <= seen[0][0] < rng.end:
            visits[seen[0][2]] += 1
            bounces[seen[0][2]] += len(seen) == 1
    return {path: (visits[path], bounces[path]) for path in visits}


async def entry_pages(
    db: AsyncConnection[Any], site_id: int, rng: ReportRange
) -> tuple[dict[str, tuple[int, int]], int]:
    """The report's rows (path -> visits, bounces) and the rows it read of the tables kept per visitor
    (``rows_read``: the visits among them), in a rolled-back transaction."""
    async with db.transaction(force_rollback=True):
        before = await rows_read(db)
        rows = await report_queries.report_entry_pages(
            db,
            range_from=rng.start,
            range_to=rng.end,
            site_id=site_id,
            received_before=None,
            other=OTHER_VALUE,
            after_visits=None,
            after_path=None,
            row_limit=1000,
        )
        after = await rows_read(db)
    return {row.path: (row.visits, row.bounces) for row in rows}, sum(after.values()) - sum(before.values())


@pytest.fixture
async def rolled_up(reports: ReportService, db: AsyncConnection[Any], site_id: int) -> list[View]:
    """PER_DAY visitors on each of the DAYS UTC days before yesterday, one visit each from one of the
    day's first 90 quarter hours, entering by one of seven paths; the even ones view a second page 20
    minutes later, the odd ones bounce; another id each day (the daily salt). All rolled up."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first_day = today - timedelta(days=DAYS + 1)
    await pageview_queries.ensure_partitions(db, from_day=first_day.date(), days=DAYS + 2)
    views: list[View] = []
    for day in range(DAYS):
        for n in range(PER_DAY):
            entered = first_day + timedelta(days=day, minutes=15 * (n % 90) + 2)
            visitor = day * PER_DAY + n
            views.append((entered, visitor, f"/p{n % 7}"))
            if n % 2 == 0:
                views.append((entered + timedelta(minutes=20), visitor, "/next"))
    await insert_views(db, site_id, views)
    assert await reports.rollup(now=today) == len(views)
    return views


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
async def test_entry_pages_read_no_visits_where_the_period_is_whole_hours(
    db: AsyncConnection[Any], site_id: int, rolled_up: list[View], tz: str
) -> None:
    """Three local days of 600 visits, in a zone whose days are UTC days and one whose days are cut at
    an hour: the report reads none of the visits (at most PROBES) and counts them exactly."""
    first = rolled_up[0][0].date()
    rng = resolve_range("custom", first, first + timedelta(days=DAYS - 1), tz)
    found, read = await entry_pages(db, site_id, rng)
    assert found == expected_entries(rolled_up, rng)
    assert sum(visits for visits, _ in found.values()) > PER_DAY
    assert read <= PROBES


async def test_entry_pages_read_only_the_cut_hours_visits_in_a_zone_with_a_fractional_offset(
    db: AsyncConnection[Any], site_id: int, rolled_up: list[View]
) -> None:
    """Asia/Kolkata (UTC+5:30) cuts the UTC hours at each end of its days: those two half hours are
    read per visit, the rest from the counts, and the answer is exact."""
    first = rolled_up[0][0].date() + timedelta(days=1)
    rng = resolve_range("custom", first, first + timedelta(days=1), "Asia/Kolkata")
    found, read = await entry_pages(db, site_id, rng)
    assert found == expected_entries(rolled_up, rng)
    head_end = rng.start.replace(minute=0) + timedelta(hours=1)
    tail_start = rng.end.replace(minute=0)
    in_cut_hours = sum(
        1
        for ts, _, path in rolled_up
        if path != "/next" and (rng.start <= ts < head_end or tail_start <= ts < rng.end)
    )
    assert 0 < in_cut_hours < sum(visits for visits, _ in found.values())
    assert read <= in_cut_hours + PROBES


async def test_a_closed_hour_keeps_its_most_visited_paths_and_the_rest_in_other_also_when_they_change(
    reports: ReportService, db: AsyncConnection[Any], site_id: int
) -> None:
    """ENTRY_PATHS_PER_HOUR + 4 paths enter a visit each early in an hour, and ``/hot`` three visits
    later in it: while the hour is open it keeps them all; the rollup step that closes it keeps a row
    for the ENTRY_PATHS_PER_HOUR most visited (then by path), ``/hot`` among them, and counts the other
    five in OTHER_VALUE (first come, ``/hot`` found the hour full: the review's top path in OTHER_VALUE).
    A view not rolled up yet that extends a folded path's visit shows that visit under its path and
    takes it from OTHER_VALUE; rolled up, its change (no longer a bounce) lands in OTHER_VALUE, as does
    a path new to the full, closed hour, which never holds more than ENTRY_PATHS_PER_HOUR + 1 rows.

    The hour is a few hours back, not at a fixed time of yesterday: a view received now is at most
    24 hours old (the ingest clamps its ``ts``), and the rollup reads no older one; the late views
    of an hour 14 hours before midnight were too old from 11:00 UTC on, and the test failed then."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    await pageview_queries.ensure_partitions(db, from_day=hour.date(), days=2)
    paths = [f"/p{n:03}" for n in range(ENTRY_PATHS_PER_HOUR + 4)]
    await insert_views(db, site_id, [(hour + timedelta(minutes=2), n, path) for n, path in enumerate(paths)])
    await reports.rollup(now=hour + timedelta(minutes=30))
    rng = resolve_range("custom", hour.date(), hour.date(), "UTC")

    async def report() -> dict[str, tuple[int, int]]:
        return (await entry_pages(db, site_id, rng))[0]

    async def rows() -> int:
        return int(
            await scalar(
                db,
                "select count(*) from page_view_entry_hourly where site_id = %s and hour = %s",
                site_id,
                hour,
            )
        )

    assert await rows() == len(paths)
    assert await report() == {path: (1, 1) for path in paths}, "an open hour keeps every path"

    await insert_views(db, site_id, [(hour + timedelta(minutes=40), 1000 + n, "/hot") for n in range(3)])
    await reports.rollup(now=hour + timedelta(hours=2))
    kept = paths[: ENTRY_PATHS_PER_HOUR - 1]
    folded = paths[ENTRY_PATHS_PER_HOUR - 1 :]
    assert await rows() == ENTRY_PATHS_PER_HOUR + 1
    assert await report() == {"/hot": (3, 3)} | {path: (1, 1) for path in kept} | {OTHER_VALUE: (5, 5)}

    extended = (hour + timedelta(minutes=12), paths.index(folded[-1]), "/more")
    await insert_views(db, site_id, [extended], received_at=datetime.now(UTC))
    pending = await report()
    assert pending[folded[-1]] == (1, 0) and pending[OTHER_VALUE] == (4, 4)

    await insert_views(
        db, site_id, [(hour + timedelta(minutes=30), 5000, "/late")], received_at=datetime.now(UTC)
    )
    await reports.rollup(now=datetime.now(UTC) + timedelta(hours=1))
    assert await rows() == ENTRY_PATHS_PER_HOUR + 1
    assert await report() == {"/hot": (3, 3)} | {path: (1, 1) for path in kept} | {OTHER_VALUE: (6, 5)}


async def test_the_fill_counts_the_visits_the_previous_release_stored(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, rolled_up: list[View], database_url: str
) -> None:
    """The counts emptied, as before the upgrade: the report drops to nothing; the fill
    (20261207010100), run twice, brings back the same answers in three kinds of zone."""
    first = rolled_up[0][0].date()
    ranges = [
        resolve_range("custom", first, first + timedelta(days=DAYS - 1), tz)
        for tz in ("UTC", "Europe/Berlin", "Asia/Kolkata")
    ]
    before = [(await entry_pages(db, site_id, rng))[0] for rng in ranges]
    assert all(before)

    await db.execute("delete from page_view_entry_hourly where site_id = %s", (site_id,))
    assert (await entry_pages(db, site_id, ranges[0]))[0] == {}

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_up("analytics_entry_counts_filled"))
        conn.execute(migration_up("analytics_entry_counts_filled"))
    assert [(await entry_pages(db, site_id, rng))[0] for rng in ranges] == before


async def test_the_fill_keeps_a_full_hours_rows_as_the_rollups_fold_kept_them(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, database_url: str
) -> None:
    """An hour over the bound, with a path too long for a row: the fill (the triggers' rule, one
    statement per day) gives the closed hour the rows the rollup's fold gave it."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=20)
    await pageview_queries.ensure_partitions(db, from_day=hour.date(), days=2)
    views = [(hour + timedelta(minutes=2), n, f"/p{n:03}") for n in range(ENTRY_PATHS_PER_HOUR + 4)]
    views += [(hour + timedelta(minutes=40), 1000 + n, "/hot") for n in range(3)]
    views += [(hour + timedelta(minutes=41), 2000, "/" + "x" * 2100)]
    await insert_views(db, site_id, views)
    await reports.rollup(now=hour + timedelta(hours=3))
    stored = "select entry_path, visits, bounces from page_view_entry_hourly where site_id = %s order by 1"
    folded = await (await db.execute(stored, (site_id,))).fetchall()
    assert len(folded) == ENTRY_PATHS_PER_HOUR + 1

    await db.execute("delete from page_view_entry_hourly where site_id = %s", (site_id,))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_up("analytics_entry_counts_filled"))
    assert await (await db.execute(stored, (site_id,))).fetchall() == folded


async def test_the_bound_is_the_databases_and_the_entry_pages_route_documents_it(
    app: Litestar, db: AsyncConnection[Any]
) -> None:
    assert await scalar(db, "select analytics_entry_paths_per_hour()") == ENTRY_PATHS_PER_HOUR
    assert await scalar(db, "select analytics_entry_paths_open_hour()") == ENTRY_PATHS_OPEN_HOUR
    description = app.openapi_schema.to_schema()["paths"]["/api/sites/{site_id}/entry-pages"]["get"][
        "description"
    ]
    assert (
        f"`{OTHER_VALUE}`" in description
        and f"{ENTRY_PATHS_PER_HOUR} most visited entry paths" in description
    )
    assert f"up to {ENTRY_PATHS_OPEN_HOUR:,} paths until it has ended" in description


async def test_a_visit_the_purge_deletes_while_the_fill_counts_its_day_is_not_counted(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, database_url: str
) -> None:
    """The purges delete visits without the rollup's lock. One deleting a visit of the day the fill is
    counting lowered the row the fill was replacing, after which the fill's new count still held the
    visit (diffreview40: a negative row, or a count one too high). The fill now holds the visits for
    the length of a site-day: the purge waits, then lowers the new count. Here the fill is held at its
    delete by a lock on the day's row, until the purge waits too."""
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    await pageview_queries.ensure_partitions(db, from_day=start.date(), days=2)
    await insert_views(db, site_id, [(start + timedelta(hours=5), visitor, "/a") for visitor in (1, 2)])
    await reports.rollup(now=start + timedelta(days=1))

    async def visits_of_a() -> int:
        return int(
            await scalar(
                db,
                "select visits from page_view_entry_hourly where site_id = %s and entry_path = '/a'",
                site_id,
            )
        )

    assert await visits_of_a() == 2
    async with (
        await AsyncConnection.connect(database_url) as holder,
        await AsyncConnection.connect(database_url, autocommit=True) as filler,
        await AsyncConnection.connect(database_url, autocommit=True) as purger,
    ):
        await holder.execute("select 1 from page_view_entry_hourly where site_id = %s for update", (site_id,))
        fill = asyncio.create_task(filler.execute(migration_up("analytics_entry_counts_filled")))
        await wait_until(lambda: waiting(db, 1), 30, "the fill waits for the day's row")
        purge = asyncio.create_task(
            purger.execute("delete from page_view_visits where site_id = %s and visitor_id = 1", (site_id,))
        )
        await wait_until(lambda: waiting(db, 2), 30, "the purge waits too")
        await holder.rollback()
        await fill
        await purge
    assert await visits_of_a() == 1


async def waiting(db: AsyncConnection[Any], sessions: int) -> bool:
    return await sessions_waiting_for_a_lock(db) >= sessions
