"""A deleted site's rollups are purged in chunks by the reports' daily purge, not by its deletion.

``DELETE /api/sites/{id}`` cascaded to the four rollup tables in one statement: 1.6 M rows took
1.25 s, so a busy site's 90 days (tens of millions of visitor-hours) outlasted the 15 s statement
timeout, rolled back, and the site could never be deleted. Now the deletion leaves them, reports
answer 404 at once, and ``ReportService.purge_deleted_sites`` deletes them chunk by chunk; the site's
tombstone (``deleted_sites``) stays until none is left."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.db import pageviews as pageview_queries
from app.domains.reports.services import ReportService
from app.modules import MODULES
from tests.factories import (
    ANALYTICS_ROLLUP_TABLES,
    Client,
    assert_problem,
    create_user,
    make_site,
    make_user,
    scalar,
)

HOURS = 30


@pytest.fixture
async def reports(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[ReportService]:
    async with open_services(settings, MODULES) as services:
        yield services[ReportService]


async def add_rollups(db: AsyncConnection[Any], site_id: int) -> None:
    """HOURS hours of each rollup, several rows an hour (two dimensions, three visitors), ending with
    the hour of 14:00 UTC today (the same hours for every site of a test, whenever it runs); the
    visitors' days, the quarter hours' and the entry paths' counts follow them (their triggers)."""
    hours = (
        "generate_series(date_trunc('day', now(), 'UTC') + interval '14 hours' - interval '29 hours',"
        " date_trunc('day', now(), 'UTC') + interval '14 hours', '1 hour')"
    )
    await db.execute(
        "insert into page_view_hourly (site_id, hour, pageviews, bot_pageviews)"
        f" select %s, h, 3, 0 from {hours} h",
        (site_id,),
    )
    await db.execute(
        "insert into page_view_dimension_hourly (site_id, dimension, hour, value, views)"
        f" select %s, d, h, '/', 1 from {hours} h, unnest(array['path', 'device']) d",
        (site_id,),
    )
    await db.execute(
        "insert into page_view_hourly_visitors (site_id, hour, visitor_id)"
        f" select %s, h, v from {hours} h, generate_series(-1, 1) v",
        (site_id,),
    )
    await db.execute(
        "insert into page_view_visits (site_id, visitor_id, started_at, last_seen_at, pageviews, entry_path)"
        f" select %s, v, h, h, 1, '/' from {hours} h, generate_series(-1, 1) v",
        (site_id,),
    )


async def counts(db: AsyncConnection[Any], site_id: int) -> dict[str, int]:
    return {
        table: await scalar(db, f"select count(*) from {table} where site_id = %s", site_id)
        for table in ANALYTICS_ROLLUP_TABLES
    }


async def test_a_deletion_leaves_the_rollups_to_the_purge_which_deletes_them_in_chunks(
    client: Client, app: Litestar, db: AsyncConnection[Any], reports: ReportService
) -> None:
    owner = await make_user(db, app)
    gone, kept = await make_site(db, owner), await make_site(db, owner)
    for site in (gone, kept):
        await add_rollups(db, site.id)
    before = await counts(db, kept.id)
    assert before == {
        "page_view_hourly": HOURS,
        "page_view_dimension_hourly": 2 * HOURS,
        "page_view_hourly_visitors": 3 * HOURS,
        "page_view_visits": 3 * HOURS,
        "page_view_daily_visitors": 3
        * await scalar(
            db,
            "select count(distinct date_trunc('day', hour, 'UTC')) from page_view_hourly where site_id = %s",
            kept.id,
        ),
        "page_view_quarters": before["page_view_quarters"],
        "page_view_entry_hourly": HOURS,
    }
    assert before["page_view_quarters"] >= HOURS

    assert (await client.delete(f"/api/sites/{gone.id}", headers=owner.headers)).status_code == 204
    assert await counts(db, gone.id) == before, "left to the purge"
    assert_problem(await client.get(f"/api/sites/{gone.id}/summary", headers=owner.headers), 404)

    assert await reports.purge_deleted_sites(chunk_size=7) == sum(before.values())
    assert await counts(db, gone.id) == dict.fromkeys(ANALYTICS_ROLLUP_TABLES, 0)
    assert await counts(db, kept.id) == before, "another site's rollups are kept"
    assert await reports.purge_deleted_sites(chunk_size=7) == 0


async def test_the_tombstone_stays_while_rollups_of_the_site_are_left(
    db: AsyncConnection[Any], reports: ReportService
) -> None:
    site = await make_site(db, await create_user(db))
    await add_rollups(db, site.id)
    await db.execute("delete from sites where id = %s", (site.id,))
    later = datetime.now(UTC) + timedelta(days=30)
    forget = {"site_ids": [site.id], "before": later}
    assert await pageview_queries.forget_deleted_sites(db, **forget) == 0, "rollups left"
    await reports.purge_deleted_sites()
    assert await pageview_queries.forget_deleted_sites(db, **forget) == 1


@pytest.mark.parametrize(
    "table", ["page_view_daily_visitors", "page_view_quarters", "page_view_entry_hourly"]
)
async def test_the_tombstone_stays_while_only_the_visitor_counts_are_left(
    db: AsyncConnection[Any], reports: ReportService, table: str
) -> None:
    """A purge that failed on the counts' tables after the others were done: the tombstone is how the
    next purge finds those rows (was: forgotten, and the visitor ids kept until the retention)."""
    site = await make_site(db, await create_user(db))
    await add_rollups(db, site.id)
    await db.execute("delete from sites where id = %s", (site.id,))
    for other in ANALYTICS_ROLLUP_TABLES:
        if other != table:
            await db.execute(f"delete from {other} where site_id = %s", (site.id,))
    forget = {"site_ids": [site.id], "before": datetime.now(UTC) + timedelta(days=30)}
    assert await pageview_queries.forget_deleted_sites(db, **forget) == 0, f"{table} left"
    assert await reports.purge_deleted_sites() > 0
    assert await pageview_queries.forget_deleted_sites(db, **forget) == 1
