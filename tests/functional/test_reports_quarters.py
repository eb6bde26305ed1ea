"""Time series in zones whose offset is not a whole number of hours, from the rollups' quarter hours.

No UTC hour lies inside one local hour of Asia/Kolkata (+05:30) or Asia/Kathmandu (+05:45), and the
UTC hour of each local midnight lies in two local days: those hours' rolled views were all read raw (31
days of hours of a busy site ran into the statement timeout). The hourly rollups now keep their views
and visitors per quarter hour, and every bucket starts on one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from psycopg import AsyncConnection, AsyncRawCursor

from app.db import pageviews as pageview_queries
from app.db import reports as report_queries
from app.domains.reports.schemas import Interval, ReportRange
from app.domains.reports.services import ReportService, resolve_range
from tests.functional.test_reports_zones import insert_view

ZONES = ["Asia/Kolkata", "Asia/Kathmandu"]
Point = tuple[datetime, int, int, int]


async def rolled_up_day(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, tz: str
) -> tuple[ReportRange, list[tuple[datetime, int]]]:
    """A local day two days back, with a view every seven minutes from 50 minutes before it to 50
    after (visitor n for views 3n to 3n+2, another id on each UTC day, as the daily salt makes them),
    all rolled up by a run three hours after the day; the range and the views."""
    day: date = datetime.now(UTC).astimezone(ZoneInfo(tz)).date() - timedelta(days=2)
    await pageview_queries.ensure_partitions(db, from_day=day - timedelta(days=2), days=5)
    rng = resolve_range("custom", day, day, tz)
    first = rng.start - timedelta(minutes=50)
    views = []
    for n in range(((rng.end - rng.start) // timedelta(minutes=7)) + 15):
        ts = first + timedelta(minutes=7 * n)
        views.append((ts, (n // 3) * 10 + ts.astimezone(UTC).toordinal() % 10))
        await insert_view(db, site_id, *views[-1])
    assert await reports.rollup(now=rng.end + timedelta(hours=3)) == len(views)
    return rng, views


async def series(reports: ReportService, site_id: int, rng: ReportRange, interval: Interval) -> list[Point]:
    await reports.cache.invalidate_all()
    answer = await reports.timeseries(site_id, rng, interval)
    return [(p.start, p.pageviews, p.visitors, p.visits) for p in answer.points]


async def forget_quarters(db: AsyncConnection[Any], site_id: int) -> None:
    """The site's hourly views and visitors as an earlier release rolled them up: without quarters."""
    await db.execute(
        "update page_view_hourly set pageviews_00 = null, pageviews_15 = null, pageviews_30 = null,"
        " pageviews_45 = null where site_id = %s",
        (site_id,),
    )
    await db.execute(
        "update page_view_hourly_visitors set seen_quarters = null where site_id = %s", (site_id,)
    )


def counted(
    points: list[Point], rng: ReportRange, views: list[tuple[datetime, int]]
) -> list[tuple[int, int]]:
    """The views and distinct visitors from each point's start to the next one's (the range's end)."""
    ends = [p[0] for p in points[1:]] + [rng.end]
    return [
        (len(inside), len({visitor for _, visitor in inside}))
        for inside in ([v for v in views if p[0] <= v[0] < end] for p, end in zip(points, ends, strict=True))
    ]


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("interval", ["hour", "day"])
async def test_a_series_in_a_fractional_zone_is_read_from_the_rollups(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, tz: str, interval: Interval
) -> None:
    """The rolled views are counted without their raw rows: deleting those changes no point."""
    rng, views = await rolled_up_day(reports, db, site_id, tz)
    before = await series(reports, site_id, rng, interval)
    assert [(p[1], p[2]) for p in before] == counted(before, rng, views)

    await db.execute("delete from page_views where site_id = %s", (site_id,))
    assert await series(reports, site_id, rng, interval) == before


@pytest.mark.parametrize("interval", ["hour", "day"])
async def test_hours_rolled_up_without_quarters_are_read_raw(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, interval: Interval
) -> None:
    """Hours rolled up before this release (or by the previous one, during the deploy) have no
    quarters: where no bucket holds them whole, their rows are read raw, as before."""
    rng, views = await rolled_up_day(reports, db, site_id, "Asia/Kolkata")
    before = await series(reports, site_id, rng, interval)
    await forget_quarters(db, site_id)
    after = await series(reports, site_id, rng, interval)
    assert after == before
    assert [(p[1], p[2]) for p in after] == counted(after, rng, views)


# The previous release's rollup of the views and visitors (a5a5360^), as it runs during the deploy or
# after a rollback of the code alone: it adds late views to pageviews only.
PREVIOUS_ROLLUP_HOURLY = """\
with counted as (
    select p.site_id, date_trunc('hour', p.ts, 'UTC') as hour,
        count(*) filter (where not p.is_bot) as pageviews, count(*) filter (where p.is_bot) as bot_pageviews
    from page_views p
    join sites s on s.id = p.site_id
    where p.received_at >= $1 and p.received_at < $2
        and p.ts >= ($1::timestamptz) - interval '24 hours'
    group by p.site_id, date_trunc('hour', p.ts, 'UTC')
),
stored as (
    insert into page_view_hourly (site_id, hour, pageviews, bot_pageviews)
    select site_id, hour, pageviews, bot_pageviews from counted
    on conflict (site_id, hour) do update
    set pageviews = page_view_hourly.pageviews + excluded.pageviews,
        bot_pageviews = page_view_hourly.bot_pageviews + excluded.bot_pageviews
)
select coalesce(sum(pageviews + bot_pageviews), 0)::bigint as rows from counted"""
PREVIOUS_ROLLUP_VISITORS = """\
insert into page_view_hourly_visitors (site_id, hour, visitor_id)
select distinct p.site_id, date_trunc('hour', p.ts, 'UTC'), p.visitor_id
from page_views p
join sites s on s.id = p.site_id
where p.received_at >= $1 and p.received_at < $2 and not p.is_bot
    and p.ts >= ($1::timestamptz) - interval '24 hours'
on conflict do nothing"""


@pytest.mark.parametrize("interval", ["hour", "day"])
async def test_late_views_the_previous_release_rolls_up_leave_their_hour_read_raw(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, interval: Interval
) -> None:
    """Its write to an hour that has quarters makes the hour forget them (read raw from then on):
    neither stale quarters nor a refusal, which would fail that window on every run and stop the
    watermark."""
    rng, views = await rolled_up_day(reports, db, site_id, "Asia/Kolkata")
    watermark = await report_queries.get_watermark(db)
    assert watermark is not None
    late = [(rng.end - timedelta(hours=3, minutes=minutes), 1000 + minutes) for minutes in (1, 2)]
    for ts, visitor in late:
        await insert_view(db, site_id, ts, visitor, received_at=watermark + timedelta(minutes=1))
    window = (watermark, watermark + timedelta(hours=1))
    async with db.transaction(), AsyncRawCursor(db) as cursor:
        await cursor.execute(PREVIOUS_ROLLUP_HOURLY, window)
        await cursor.execute(PREVIOUS_ROLLUP_VISITORS, window)
        await report_queries.set_watermark(db, rolled_up_to=window[1])

    row = await (
        await db.execute(
            "select pageviews_00, pageviews_15, pageviews_30, pageviews_45 from page_view_hourly"
            " where site_id = %s and hour = date_trunc('hour', %s::timestamptz, 'UTC')",
            (site_id, late[0][0]),
        )
    ).fetchone()
    assert row == (None, None, None, None)
    points = await series(reports, site_id, rng, interval)
    assert [(p[1], p[2]) for p in points] == counted(points, rng, views + late)
