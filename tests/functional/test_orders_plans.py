"""The orders' statements that run on a schedule or on every placement read what they answer about,
not the shop's whole history (nothing deletes orders), under a custom plan and under the generic
plan a prepared statement may keep. Rows read are counted with EXPLAIN ANALYZE, never timed.

- The daily monitoring report (``OrderService.totals_between``: ``CountOrdersPlacedBetween``,
  ``RevenueBetween``, ``RefundedAfterPaymentBetween``) filtered on ``orders.created_at`` and
  ``order_events.created_at``, neither indexed: every run read every order and every order event
  ever recorded (review: 136, 322 and 186 ms at 600,000 orders and 2.4 million events, growing with
  the history, in one transaction under the statement timeout).
- A buyer's list of one status (``ListUserOrders`` with an optional status) read the buyer's whole
  history under the generic plan, the status a filter (100,000 rows for an empty page of a busy
  account), and a custom plan of a busy buyer's list could walk every order of the shop backwards on
  orders_pkey (299 ms at 660,000 orders for a buyer whose 100,000 orders are the oldest).
- ``CountOpenOrders`` and ``UnitsHeldByUser`` (every placement, under the buyer's row lock) read all
  of a busy buyer's orders, or every open order of the shop (12-20 ms at 60,000 open orders), and a
  custom plan of ``UnitsHeldByUser`` could hash every order item of the shop.
- The reconciliation cron (``OrderService.reserve_stale``, every 10 s) pages through the stale pending
  orders (``ListStalePendingOrders`` after the previous batch's last order): with the cursor written
  ``status = 'pending' and id > @after_id``, orders_pkey served it and the order, and a batch walked
  every settled order after the cursor (4,000 rows for 200 under the generic plan).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection

from app.db import orders as queries
from tests.factories import make_product, plan_scans, scalar
from tests.functional.test_core_generic_plans import make_crowd, rows_read, run_custom, run_generic

HISTORY_DAYS = 60
PER_DAY = 400
"""Orders placed a day (one every 216 s), each with its history of events."""

PATHS = """(values
    (array[0, 1, 2, 3, 4, 5, 6, 7], null, 'pending', interval '0'),
    (array[0, 1, 2, 3, 4, 5, 6, 7], 'pending', 'reserved', interval '1 minute'),
    (array[0, 1, 2, 4, 5, 6], 'reserved', 'paid', interval '5 minutes'),
    (array[0], 'paid', 'cancelled', interval '1 hour'),
    (array[3], 'reserved', 'cancelled', interval '3 minutes'),
    (array[7], 'reserved', 'expired', interval '16 minutes')
) e(paths, from_status, to_status, after)"""
"""The events of an order by its number modulo 8: paid (one in eight of those cancelled by an
administrator an hour later), cancelled by its buyer while reserved, or expired."""


async def place_orders(
    db: AsyncConnection[Any], buyers: list[int], first: datetime, count: int, step: timedelta
) -> None:
    """``count`` orders placed ``step`` apart from ``first``, one in ten in USD, with their events
    (``PATHS``), in one statement."""
    await db.execute(
        f"""
        with s as materialized (
            select nextval(pg_get_serial_sequence('orders', 'id')) as id, n, %(first)s + n * %(step)s as at
            from generate_series(0, %(count)s - 1) n
        ), placed as (
            insert into orders (id, user_id, status, total, currency, created_at, updated_at)
            overriding system value
            select id, (%(buyers)s::bigint[])[1 + n %% cardinality(%(buyers)s::bigint[])],
                   (case n %% 8 when 0 then 'cancelled' when 3 then 'cancelled' when 7 then 'expired'
                    else 'paid' end)::order_status,
                   10.00 + n %% 5, case when n %% 10 = 0 then 'USD' else 'EUR' end, at, at
            from s
        )
        insert into order_events (order_id, from_status, to_status, reason, created_at)
        select s.id, e.from_status::order_status, e.to_status::order_status, 'plan test', s.at + e.after
        from s join {PATHS} on s.n %% 8 = any(e.paths)
        """,
        {"first": first, "step": step, "count": count, "buyers": buyers},
    )


async def run_nested_loops_priced_out(
    db: AsyncConnection[Any], statement: str, arguments: tuple[Any, ...]
) -> dict[str, Any]:
    """``statement`` under a custom plan made with nested loops priced out (``enable_nestloop``): as
    the planner priced them at 600,000 orders, where it hashed every order for a day's 1,728
    payments (review data); a test cannot afford that many orders to make it do so by itself."""
    await db.execute("set enable_nestloop = off")
    try:
        return await run_custom(db, statement, arguments)
    finally:
        await db.execute("reset enable_nestloop")


def scanned_whole(plan: dict[str, Any], *tables: str) -> list[str]:
    """The sequential scans of ``tables`` in ``plan``."""
    return [
        f"{node['Node Type']} on {table}"
        for table in tables
        for node in plan_scans(plan, table)
        if "Seq Scan" in node["Node Type"]
    ]


async def test_the_daily_reports_figures_read_the_periods_orders_and_events_whatever_the_plan(
    db: AsyncConnection[Any],
) -> None:
    """60 days of orders (24,000, 78,000 events) analyzed, then the reported day's 400 and today's
    first: each statement of the report reads that day's orders and its paid or cancelled events,
    under either plan, and whatever a join of the orders is estimated to cost (the money is summed
    over the period's orders found by their key, not joined). Was: a sequential scan of every order
    and every event (24,500 and 80,000); with the indexes alone, at 600,000 orders a hash join of
    every order for the period's payments."""
    buyers = await make_crowd(db, 200)
    until: datetime = await scalar(db, "select date_trunc('day', now())")
    since = until - timedelta(days=1)
    step = timedelta(days=1) / PER_DAY
    await place_orders(db, buyers, since - timedelta(days=HISTORY_DAYS), HISTORY_DAYS * PER_DAY, step)
    # statistics as autovacuum leaves them: taken before the reported day arrived
    await db.execute("analyze orders, order_events")
    await place_orders(db, buyers, since, PER_DAY, step)
    await place_orders(db, buyers, until, PER_DAY // 4, step)  # today's, so far

    def in_period(condition: str) -> str:
        return f"select count(*) from order_events where {condition} and created_at >= %s and created_at < %s"

    paid = await scalar(db, in_period("to_status = 'paid'"), since, until)
    refunded = await scalar(db, in_period("from_status = 'paid' and to_status = 'cancelled'"), since, until)
    settled = await scalar(db, in_period("to_status in ('paid', 'cancelled')"), since, until)
    assert paid > PER_DAY // 2 and refunded > PER_DAY // 20

    problems = []
    for name, statement, table, most in (
        ("CountOrdersPlacedBetween", queries.COUNT_ORDERS_PLACED_BETWEEN, "orders", PER_DAY),
        ("RevenueBetween", queries.REVENUE_BETWEEN, "orders", paid),
        ("RevenueBetween", queries.REVENUE_BETWEEN, "order_events", settled),
        ("RefundedAfterPaymentBetween", queries.REFUNDED_AFTER_PAYMENT_BETWEEN, "orders", refunded),
        ("RefundedAfterPaymentBetween", queries.REFUNDED_AFTER_PAYMENT_BETWEEN, "order_events", settled),
    ):
        for label, run in (
            ("custom", run_custom),
            ("generic", run_generic),
            ("nested loops priced out", run_nested_loops_priced_out),
        ):
            measured = await run(db, statement, (since, until))
            whole = scanned_whole(measured, "orders", "order_events")
            read = rows_read(measured, table)
            if whole or read > most:
                problems.append(f"{name}, {label}: {read} rows of {table} read (at most {most}); {whole}")
    assert problems == []

    # and the figures are the period's
    assert await queries.count_orders_placed_between(db, since=since, until=until) == PER_DAY
    expected = await (
        await db.execute(
            "select o.currency, sum(o.total) filter (where e.to_status = 'paid'),"
            " coalesce(sum(o.total) filter (where e.to_status = 'cancelled'), 0)"
            " from order_events e join orders o on o.id = e.order_id"
            " where e.created_at >= %s and e.created_at < %s"
            "  and (e.to_status = 'paid' or (e.from_status = 'paid' and e.to_status = 'cancelled'))"
            " group by 1 order by 1",
            (since, until),
        )
    ).fetchall()
    assert [currency for currency, _, _ in expected] == ["EUR", "USD"]
    revenue = await queries.revenue_between(db, since=since, until=until)
    assert [(row.currency, row.revenue) for row in revenue] == [(c, r) for c, r, _ in expected]
    given_back = await queries.refunded_after_payment_between(db, since=since, until=until)
    assert [(row.currency, row.refunded) for row in given_back] == [
        (c, r) for c, _, r in expected if r != Decimal(0)
    ]


BUSY_ORDERS = 20_000
"""A busy buyer's orders: paid, fulfilled, cancelled or expired (none rejected), and five open."""
CROWD = 400
CROWD_OPEN = 20
"""The crowd's open orders each (8,000 in the shop), and as many closed."""


async def test_a_buyers_status_page_and_open_orders_read_only_the_buyers_own_rows_whatever_the_plan(
    db: AsyncConnection[Any],
) -> None:
    """A busy buyer (20,000 orders: 3 pending, 1 reserved, 1 reserved past its window) among 400
    buyers with 20 open and 20 closed orders each: a page of one status reads that status's orders
    of the buyer (none for a status the buyer has none of), and the open-order statements read the
    buyer's 5 open orders and their items, under either plan. Was: the buyer's 20,000 orders (the
    generic plan of the list and of both open-order statements), or the shop's 8,000 open orders.
    The buyer's orders are the oldest: a custom plan of the buyer's unfiltered list walked orders_pkey
    backwards through every newer order of the shop (16,051 rows read for a page of 51)."""
    busy, *crowd = await make_crowd(db, CROWD + 1)
    products = [await make_product(db) for _ in range(10)]
    await db.execute(
        "insert into orders (user_id, status, total, currency, reserved_until)"
        " select %(busy)s, (array['paid', 'fulfilled', 'cancelled', 'expired'])[1 + n %% 4]::order_status,"
        "  10, 'EUR', null::timestamptz"
        " from generate_series(1, %(count)s) n"
        " union all select %(busy)s, 'pending', 10, 'EUR', null from generate_series(1, 3)"
        " union all values (%(busy)s, 'reserved'::order_status, 10, 'EUR', now() + interval '10 minutes'),"
        "  (%(busy)s, 'reserved', 10, 'EUR', now() - interval '1 minute')",
        {"busy": busy, "count": BUSY_ORDERS},
    )
    await db.execute(
        "insert into orders (user_id, status, total, currency, reserved_until)"
        " select u, case when n > %(open)s then 'paid' when n %% 2 = 0 then 'pending' else 'reserved' end"
        "  ::order_status, 10, 'EUR',"
        "  case when n <= %(open)s and n %% 2 = 1 then now() + interval '10 minutes' end"
        " from unnest(%(crowd)s::bigint[]) u, generate_series(1, 2 * %(open)s) n",
        {"crowd": crowd, "open": CROWD_OPEN},
    )
    await db.execute(
        "insert into order_items (order_id, product_id, quantity, unit_price)"
        " select id, (%s::bigint[])[1 + id %% 10], 1, 10 from orders",
        (products,),
    )
    await db.execute("analyze orders, order_items")
    first_page = 2**63 - 1

    problems = []
    for label, run in (("custom", run_custom), ("generic", run_generic)):
        for status, found in (("pending", 3), ("reserved", 2), ("rejected", 0), ("paid", 51)):
            measured = await run(db, queries.LIST_USER_ORDERS_WITH_STATUS, (busy, status, first_page, 51))
            read = rows_read(measured, "orders")
            if measured["Actual Rows"] != found or read > found:
                problems.append(f"ListUserOrdersWithStatus {status}, {label}: {read} read for {found}")
        measured = await run(db, queries.LIST_USER_ORDERS, (busy, first_page, 51))
        read = rows_read(measured, "orders")
        if measured["Actual Rows"] != 51 or read > 51:
            problems.append(f"ListUserOrders, {label}: {read} read for 51")
        for name, statement, who, held in (
            ("CountOpenOrders", queries.COUNT_OPEN_ORDERS, busy, 5),
            ("UnitsHeldByUser", queries.UNITS_HELD_BY_USER, busy, 5),
            ("UnitsHeldByUser (crowd)", queries.UNITS_HELD_BY_USER, crowd[0], CROWD_OPEN),
        ):
            measured = await run(db, statement, (who,))
            read = {table: rows_read(measured, table) for table in ("orders", "order_items")}
            whole = scanned_whole(measured, "orders", "order_items")
            if whole or read["orders"] > held or read["order_items"] > held:
                problems.append(f"{name}, {label}: {read} read for {held} open orders; {whole}")
    assert problems == []

    # and the answers are the buyer's (the lapsed reservation holds nothing)
    assert await queries.count_open_orders(db, user_id=busy) == 4
    units = await queries.units_held_by_user(db, user_id=busy)
    assert sum(row.held for row in units) == 4
    assert await queries.count_open_orders(db, user_id=crowd[0]) == CROWD_OPEN


STALE_HISTORY = 20_000
"""Orders placed from 3 hours back to 6 weeks back, one in 20 still pending (1,000 stale: the
reconciliation is behind, or a batch of them fails every run); then the last half hour's 2,000, one in
60 pending (33, too fresh to reconcile)."""


async def test_the_stale_order_batches_read_their_batch_of_the_pending_range_whatever_the_plan(
    db: AsyncConnection[Any],
) -> None:
    """Each batch of 200 (the first, one mid-way, the last but one of 100 and the empty last) reads
    its stale orders on orders_status_idx, and the last ones the fresh pending orders after them,
    under either plan. With ``status = 'pending' and id > @after_id ... order by id``: orders_pkey
    from the cursor, the status a filter, 4,000 rows for a batch of 200 under the generic plan, and
    every order after the cursor for the last batches under a custom plan too (4,000 and 2,000)."""
    buyers = await make_crowd(db, 100)
    await db.execute(
        "insert into orders (user_id, status, total, currency, created_at, updated_at)"
        " select (%(buyers)s::bigint[])[1 + n %% 100],"
        "  (case when n %% 20 = 0 then 'pending' else 'paid' end)::order_status, 10, 'EUR', at, at"
        " from generate_series(1, %(count)s) n,"
        "  lateral (select now() - interval '3 hours' - (%(count)s - n) * interval '3 minutes' as at) t",
        {"buyers": buyers, "count": STALE_HISTORY},
    )
    await db.execute(
        "insert into orders (user_id, status, total, currency, created_at, updated_at)"
        " select (%(buyers)s::bigint[])[1 + n %% 100],"
        "  (case when n %% 60 = 0 then 'pending' else 'paid' end)::order_status, 10, 'EUR', at, at"
        " from generate_series(1, 2000) n, lateral (select now() - (2000 - n) * interval '1 second' as at) t",
        {"buyers": buyers},
    )
    await db.execute("analyze orders")
    cutoff: datetime = await scalar(db, "select now() - interval '1 hour'")
    rows = await (
        await db.execute(
            "select id from orders where status = 'pending' and created_at < %s order by id", (cutoff,)
        )
    ).fetchall()
    stale = [row[0] for row in rows]
    fresh = await scalar(
        db, "select count(*) from orders where status = 'pending' and created_at >= %s", cutoff
    )
    assert (len(stale), fresh) == (STALE_HISTORY // 20, 33)

    problems = []
    for after_id, found, most in (
        (0, 200, 200),
        (stale[499], 200, 200),
        (stale[-101], 100, 100 + fresh),
        (stale[-1], 0, fresh),
    ):
        for label, run in (("custom", run_custom), ("generic", run_generic)):
            measured = await run(db, queries.LIST_STALE_PENDING_ORDERS, (after_id, cutoff, 200))
            read = rows_read(measured, "orders")
            indexes = {node.get("Index Name") for node in plan_scans(measured, "orders")}
            if measured["Actual Rows"] != found or read > most or indexes != {"orders_status_idx"}:
                problems.append(
                    f"after {after_id}, {label}: {read} read for {found} (at most {most}); {indexes}"
                )
    assert problems == []

    # and the batches, each after the last one's last order, are the stale orders in id order
    listed: list[int] = []
    while batch := await queries.list_stale_pending_orders(
        db, after_id=listed[-1] if listed else 0, created_before=cutoff, batch_size=200
    ):
        listed += batch
    assert listed == stale
