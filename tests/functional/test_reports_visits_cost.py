"""Merging the pending views into the stored visits (``analytics_merged_visits``: the visits rollup and
every report through ``analytics_visits``) costs in proportion to its rows, whatever the statistics.

The visits a pending view touches were found per stored visit, each checked with ``exists`` over the
pending views, a CTE without an index: with statistics that had not seen the newest views (the usual
case: the rollup's window is always past the histogram) it was scanned whole once per visit. Rows
handled are counted with EXPLAIN ANALYZE, never timed.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from tests.factories import create_user, make_site

VISITORS = 1_000
"""Returning visitors, each with 3 stored visits and 3 views pending in the window."""


def rows_handled(node: dict[str, Any]) -> int:
    """Rows every node of the plan produced or threw away (filters, join filters), over its loops."""
    per_loop = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
    per_loop += node.get("Rows Removed by Join Filter", 0)
    own = round(per_loop * node.get("Actual Loops", 1))
    return own + sum(rows_handled(child) for child in node.get("Plans", ()))


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
    handled = rows_handled(plan)
    assert handled <= 30 * 6 * VISITORS, f"{handled} rows handled: {plan}"
