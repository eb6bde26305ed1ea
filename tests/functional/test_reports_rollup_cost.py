"""The hourly rollup costs in proportion to the window's rows, whatever the statistics say (the
window is always the newest received_at, past the statistics' histogram). Rows handled are counted
with EXPLAIN ANALYZE, never timed.

- Merging the pending views into the stored visits (``analytics_merged_visits``: the visits rollup
  and every report through ``analytics_visits``) found the visits a pending view touches per stored
  visit, each checked with ``exists`` over the pending views, a CTE without an index, scanned whole
  once per visit.
- The dimensions' rollup read the stored counts of the window's (site, dimension, hour) groups by a
  join the planner could make a scan of the whole table (every hour of the retention, every site).
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, AsyncRawCursor

from app.db import reports as queries
from app.domains.pageviews.schemas import MAX_DIMENSION_BYTES
from app.domains.reports.services import DIMENSION_VALUES_OPEN_HOUR, DIMENSION_VALUES_PER_HOUR, OTHER_VALUE
from tests.factories import create_user, make_site, plan_nodes, plan_rows_read, plan_scans

KEEP = (DIMENSION_VALUES_OPEN_HOUR, DIMENSION_VALUES_PER_HOUR)
VISITORS = 1_000
"""Returning visitors, each with 3 stored visits and 3 views pending in the window."""


async def test_merging_pending_views_into_stored_visits_is_linear_under_stale_statistics(
    db: AsyncConnection[Any],
) -> None:
    """Statistics taken with 200 views and visits, then 1,000 returning visitors with 3 stored visits
    and 3 pending views each: merging handles a few times the 6,000 rows. Was: 9,000,000 rows removed
    by the join filter (every pending view compared with every stored visit)."""
    site = await make_site(db, await create_user(db))
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    window = "date_trunc('hour', now()) - interval '2 hours'"
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
        f" select %s, {window} - interval '1 hour' + g * interval '1 second',"
        f" {window} - interval '1 hour' + g * interval '1 second', g, '/', 'desktop', 'x', 'y'"
        " from generate_series(1, 200) g",
        (site.id,),
    )
    await db.execute(
        "insert into page_view_visits select %s, g, now() - interval '3 hours' + g * interval '1 second',"
        " now() - interval '3 hours' + g * interval '1 second', 1, '/' from generate_series(1, 200) g",
        (site.id,),
    )
    await db.execute("analyze page_view_visits")
    await db.execute("analyze page_views")
    async with db.transaction(force_rollback=True):
        await db.execute(
            "insert into page_view_visits select %s, 1000 + v,"
            f" {window} - interval '20 hours' + d * interval '6 hours',"
            f" {window} - interval '20 hours' + d * interval '6 hours' + interval '5 minutes', 2, '/'"
            " from generate_series(1, %s) v, generate_series(0, 2) d",
            (site.id, VISITORS),
        )
        await db.execute(
            "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
            f" select %s, {window} + (v %% 3600) * interval '1 second' + k * interval '5 minutes',"
            f" {window} + (v %% 3600) * interval '1 second' + k * interval '5 minutes', 1000 + v, '/p',"
            " 'desktop', 'x', 'y' from generate_series(1, %s) v, generate_series(0, 2) k",
            (site.id, VISITORS),
        )
        row = await (
            await db.execute(
                "explain (analyze, format json) select * from analytics_merged_visits("
                f"%s, {window}, {window} + interval '1 hour')",
                (site.id,),
            )
        ).fetchone()
        assert row is not None
        merged = await (
            await db.execute(
                f"select count(*) from analytics_merged_visits(%s, {window}, {window} + interval '1 hour')",
                (site.id,),
            )
        ).fetchone()
    assert merged is not None and merged[0] == VISITORS, "one visit per visitor: its 3 views, 5 min apart"
    plan = row[0][0]["Plan"]
    handled = sum(plan_rows_read(node) for node in plan_nodes(plan))
    assert handled <= 30 * 6 * VISITORS, f"{handled} rows handled: {plan}"


async def test_the_dimensions_rollup_reads_the_stored_counts_of_its_window_only(
    db: AsyncConnection[Any],
) -> None:
    """Statistics taken with a few stored counts, then 30 days of them (18,000 rows) and one hour of
    pending views: the rollup reads the stored counts of that hour's (dimension) groups only. Was: the
    whole table, on every rollup."""
    site = await make_site(db, await create_user(db))
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    hour = "date_trunc('hour', now()) - interval '2 hours'"
    stored = (
        "insert into page_view_dimension_hourly (site_id, dimension, hour, value, views)"
        f" select %s, d, {hour} - h * interval '1 hour', 'v' || v, 1"
        " from unnest(array['path', 'referrer_source', 'utm_campaign', 'device', 'browser']) d,"
        " generate_series(%s::integer, %s::integer) h, generate_series(1, 5) v"
    )
    await db.execute(stored, (site.id, 1000, 1001))
    await db.execute("analyze page_view_dimension_hourly")
    async with db.transaction(force_rollback=True):
        await db.execute(stored, (site.id, 0, 30 * 24 - 1))
        await db.execute(
            "insert into page_views (site_id, ts, received_at, visitor_id, path, device, browser, os)"
            f" select %s, {hour} + g * interval '1 second', {hour} + g * interval '1 second', g,"
            " '/p' || (g %% 7), 'desktop', 'x', 'y' from generate_series(1, 600) g",
            (site.id,),
        )
        window = await (await db.execute(f"select {hour}, {hour} + interval '1 hour'")).fetchone()
        assert window is not None
        async with AsyncRawCursor(db) as cur:
            await cur.execute(
                "explain (analyze, format json) " + queries.ROLLUP_DIMENSIONS,
                # other, longest, received_from, received_to, closed_from, keep_open, keep
                (OTHER_VALUE, MAX_DIMENSION_BYTES, *window, window[0], *KEEP),
            )
            row = await cur.fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    read = sum(plan_rows_read(scan) for scan in plan_scans(plan, "page_view_dimension_hourly"))
    assert read <= 5 * 5 * 2, f"read {read} stored counts for one hour's 25: {plan}"
