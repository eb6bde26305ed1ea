"""Time series in zones whose offset is not a whole number of hours, from the rollups' quarter hours.

No UTC hour lies inside one local hour of Asia/Kolkata (+05:30) or Asia/Kathmandu (+05:45), and the
UTC hour of each local midnight lies in two local days: those hours' rolled views were all read raw (31
days of hours of a busy site ran into the statement timeout). The hourly rollups now keep their views
and visitors per quarter hour, and every bucket starts on one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.db import pageviews as pageview_queries
from app.domains.reports.schemas import Interval, ReportRange
from app.domains.reports.services import ReportService, resolve_range
from app.modules import MODULES
from tests.factories import create_user, make_site
from tests.functional.test_reports_zones import insert_view

ZONES = ["Asia/Kolkata", "Asia/Kathmandu"]
Point = tuple[datetime, int, int, int]


@pytest.fixture
async def reports(settings: Settings) -> AsyncIterator[ReportService]:
    async with open_services(settings, MODULES) as services:
        yield services[ReportService]


@pytest.fixture
async def site_id(db: AsyncConnection[Any]) -> int:
    owner = await create_user(db)
    return (await make_site(db, owner)).id


async def rolled_up_day(
    reports: ReportService, db: AsyncConnection[Any], site_id: int, tz: str
) -> tuple[ReportRange, list[tuple[datetime, int]]]:
    """A local day two days back, with a view every seven minutes from 50 minutes before it to 50
    after (visitor n for views 3n to 3n+2), all rolled up; the range and the views."""
    day: date = datetime.now(UTC).astimezone(ZoneInfo(tz)).date() - timedelta(days=2)
    await pageview_queries.ensure_partitions(db, from_day=day - timedelta(days=2), days=5)
    rng = resolve_range("custom", day, day, tz)
    first = rng.start - timedelta(minutes=50)
    views = []
    for n in range(((rng.end - rng.start) // timedelta(minutes=7)) + 15):
        views.append((first + timedelta(minutes=7 * n), n // 3))
        await insert_view(db, site_id, *views[-1])
    assert await reports.rollup(now=datetime.now(UTC) + timedelta(hours=1)) == len(views)
    return rng, views


async def series(reports: ReportService, site_id: int, rng: ReportRange, interval: Interval) -> list[Point]:
    await reports.cache.invalidate_all()
    answer = await reports.timeseries(site_id, rng, interval)
    return [(p.start, p.pageviews, p.visitors, p.visits) for p in answer.points]


async def forget_quarters(db: AsyncConnection[Any], site_id: int) -> None:
    """The site's hourly views as an earlier release rolled them up: without quarters."""
    await db.execute(
        "update page_view_hourly set pageviews_00 = null, pageviews_15 = null, pageviews_30 = null,"
        " pageviews_45 = null where site_id = %s",
        (site_id,),
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
    await db.execute(
        "update page_view_hourly_visitors set seen_quarters = null where site_id = %s", (site_id,)
    )
    after = await series(reports, site_id, rng, interval)
    assert after == before
    assert [(p[1], p[2]) for p in after] == counted(after, rng, views)


async def test_a_rollup_that_adds_to_the_hour_alone_is_refused_where_it_has_quarters(
    reports: ReportService, db: AsyncConnection[Any], site_id: int
) -> None:
    """The previous release's rollup adds late views to ``pageviews`` only: on an hour with quarters
    that would leave them stale, so the write fails (and the next run rolls the hour up again); on an
    hour without quarters it goes through."""
    await rolled_up_day(reports, db, site_id, "Asia/Kolkata")
    add_one = "update page_view_hourly set pageviews = pageviews + 1 where site_id = %s"
    with pytest.raises(psycopg.errors.CheckViolation):
        await db.execute(add_one, (site_id,))
    await forget_quarters(db, site_id)
    await db.execute(add_one, (site_id,))
