"""The orders' crons go on past an order that fails, and say which; a database that is down stops them.

Review: ``reserve_stale`` and ``expire_reservations`` looped over their orders with no handling of one
order's failure: the first order that failed ended the run, the same order led the next run (oldest
first), so a failure that repeated stopped every order behind it (stale orders never reserved, lapsed
reservations keeping their stock), and the only log line was a count. Now each order is handled on
its own: a failure is logged with the order's id, the run goes on, and the end-of-run line names the
failed ids and the age of the oldest order left; a failure that says the database is down stops the
run and is raised, as before.

Then: the reconciliation's run was one batch of the oldest stale orders, so a batch's worth of orders
that failed every time still led every run, and no order behind them was reserved. Both crons now page
past each batch's last order, batch after batch, until one comes back short or the run's budget is
spent.

An order is made to fail by the database itself: a trigger, created for the test and dropped after,
refuses the update of those orders' rows (or ends its session, for a database going away).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, sql

from app.config import Settings
from app.core.services import Services, open_services
from app.domains.orders.schemas import OrderCreate, OrderLine
from app.domains.orders.services import OrderService
from tests.factories import COMMERCE, captured_logs, create_user, make_product, scalar
from tests.functional.test_orders_expiry_backlog import reserve_lapsed

REFUSE = "raise exception 'refused for the test: order %', old.id"
"""The trigger's body for an order that fails (a statement the database refuses)."""
GO_AWAY = "perform pg_terminate_backend(pg_backend_pid())"
"""The trigger's body for a database that goes away (the session ends: 57P01, admin shutdown)."""


@pytest.fixture
async def services(db: AsyncConnection[Any], settings: Settings) -> AsyncIterator[Services]:
    async with open_services(settings, COMMERCE) as opened:
        yield opened


@asynccontextmanager
async def failing_update(db: AsyncConnection[Any], order_ids: list[int], body: str) -> AsyncIterator[None]:
    """While inside: an update of the row of an order in ``order_ids`` runs ``body`` (a trigger), any
    other order's as usual."""
    await db.execute(
        sql.SQL(
            "create function fail_order_for_test() returns trigger language plpgsql as $$"
            " begin {}; return new; end $$"
        ).format(sql.SQL(body))
    )
    await db.execute(
        sql.SQL(
            "create trigger fail_order_for_test before update on orders for each row"
            " when (old.id in ({})) execute function fail_order_for_test()"
        ).format(sql.SQL(", ").join(sql.Literal(order_id) for order_id in order_ids))
    )
    try:
        yield
    finally:
        await db.execute("drop trigger fail_order_for_test on orders")
        await db.execute("drop function fail_order_for_test()")


async def stale_orders(db: AsyncConnection[Any], orders: OrderService, product: int, count: int) -> list[int]:
    """``count`` orders placed by as many buyers, pending for two hours (their jobs lost), oldest first."""
    placed = []
    for n in range(count):
        buyer = await create_user(db)
        lines = OrderCreate(lines=[OrderLine(product_id=product, quantity=1)])
        placed.append((await orders.place(buyer.id, lines, f"stale-{n}")).order_id)
    await db.execute(
        "update orders set created_at = now() - interval '2 hours' where id = any(%s)", (placed,)
    )
    return sorted(placed)


async def lapsed_orders(db: AsyncConnection[Any], product: int, count: int) -> list[int]:
    """``count`` reservations of as many buyers whose windows ended 1, 2, ... seconds ago, oldest first
    (the order the expiry lists them in)."""
    await reserve_lapsed(db, [await create_user(db) for _ in range(count)], product, per_buyer=1)
    rows = await (
        await db.execute("select id from orders where status = 'reserved' order by reserved_until, id")
    ).fetchall()
    return [row[0] for row in rows]


async def statuses(db: AsyncConnection[Any], order_ids: list[int]) -> list[str]:
    return [await scalar(db, "select status::text from orders where id = %s", order) for order in order_ids]


async def test_a_stale_order_that_fails_is_logged_and_the_orders_behind_it_are_reserved(
    db: AsyncConnection[Any], services: Services
) -> None:
    orders = services[OrderService]
    product = await make_product(db, stock=10, price="1.00")
    first, *others = await stale_orders(db, orders, product, 3)

    async with failing_update(db, [first], REFUSE):
        with captured_logs(logging.INFO) as logs:
            assert await orders.reserve_stale(older_than_s=3600) == 2

    assert await statuses(db, [first, *others]) == ["pending", "reserved", "reserved"]
    (failure,) = logs.events("stale_order_reservation_failed")
    assert failure["order_id"] == first
    assert "refused for the test" in failure["exception"]
    (run,) = logs.events("stale_pending_orders_reserved")
    assert (run["count"], run["outcomes"], run["failed"], run["failed_ids"]) == (
        2,
        {"reserved": 2},
        1,
        [first],
    )
    assert run["oldest_pending_s"] >= 2 * 3600  # the failed order, placed two hours ago, is left

    # the cause gone, the next run reserves it
    assert await orders.reserve_stale(older_than_s=3600) == 1
    assert await statuses(db, [first]) == ["reserved"]
    assert await scalar(db, "select stock from products where id = %s", product) == 7


async def test_stale_orders_that_fail_past_a_batch_do_not_hold_back_the_orders_behind_them(
    db: AsyncConnection[Any], services: Services
) -> None:
    """Batches of two, three orders that fail every time ahead of a good one: the run pages past
    them. A run was one batch, oldest first: the failing orders filled it in every run, and the good
    order behind them stayed pending however long the cron ran."""
    orders = services[OrderService]
    product = await make_product(db, stock=10, price="1.00")
    *failing, good = await stale_orders(db, orders, product, 4)

    async with failing_update(db, failing, REFUSE):
        with captured_logs(logging.INFO) as logs:
            assert await orders.reserve_stale(older_than_s=3600, batch_size=2) == 1

    assert await statuses(db, [*failing, good]) == ["pending", "pending", "pending", "reserved"]
    assert [failure["order_id"] for failure in logs.events("stale_order_reservation_failed")] == failing
    (run,) = logs.events("stale_pending_orders_reserved")
    assert (run["count"], run["outcomes"], run["failed"], run["failed_ids"], run["batches"]) == (
        1,
        {"reserved": 1},
        3,
        failing,
        3,  # two full ones, then an empty one
    )
    assert run["oldest_pending_s"] >= 2 * 3600
    assert logs.events("stale_pending_orders_backlog_left") == []


async def test_a_stale_run_stops_at_its_budget_and_leaves_the_rest_to_the_next(
    db: AsyncConnection[Any], services: Services
) -> None:
    """A budget of nothing: one batch, then the run ends and says what it left; the next runs take
    the rest, oldest first."""
    orders = services[OrderService]
    product = await make_product(db, stock=10, price="1.00")
    placed = await stale_orders(db, orders, product, 5)

    with captured_logs(logging.INFO) as logs:
        assert await orders.reserve_stale(older_than_s=3600, budget_s=0, batch_size=2) == 2

    assert await statuses(db, placed) == ["reserved", "reserved", "pending", "pending", "pending"]
    (left,) = logs.events("stale_pending_orders_backlog_left")
    assert (left["count"], left["batches"]) == (2, 1)
    (run,) = logs.events("stale_pending_orders_reserved")
    assert (run["count"], run["batches"], run["failed"]) == (2, 1, 0)
    assert run["oldest_pending_s"] >= 2 * 3600  # the orders left

    assert await orders.reserve_stale(older_than_s=3600, budget_s=0, batch_size=2) == 2
    assert await orders.reserve_stale(older_than_s=3600, budget_s=0, batch_size=2) == 1
    assert await statuses(db, placed) == ["reserved"] * 5


async def test_a_lapsed_reservation_that_fails_is_logged_and_passed_over(
    db: AsyncConnection[Any], services: Services
) -> None:
    """Batches of one: the failed order, still lapsed, is not listed first again in the same run."""
    orders = services[OrderService]
    product = await make_product(db, stock=10, price="1.00")
    first, *others = await lapsed_orders(db, product, 3)

    async with failing_update(db, [first], REFUSE):
        with captured_logs(logging.INFO) as logs:
            assert await orders.expire_reservations(batch_size=1) == 2

    assert await statuses(db, [first, *others]) == ["reserved", "expired", "expired"]
    assert await scalar(db, "select stock from products where id = %s", product) == 9  # the failed one's
    (failure,) = logs.events("reservation_expiry_failed")
    assert failure["order_id"] == first
    assert "refused for the test" in failure["exception"]
    (run,) = logs.events("reservations_expired")
    assert (run["count"], run["failed"], run["failed_ids"], run["batches"]) == (2, 1, [first], 4)
    assert run["oldest_lapsed_s"] is not None  # the failed order is left, past its window

    assert await orders.expire_reservations() == 1
    assert await statuses(db, [first]) == ["expired"]
    assert await scalar(db, "select stock from products where id = %s", product) == 10


async def test_a_database_that_goes_away_stops_either_run_and_fails_it(
    db: AsyncConnection[Any], services: Services
) -> None:
    """No point trying every order against a database that is gone: the first such failure is
    raised (the job fails, and is seen failing), and no order after it is tried."""
    orders = services[OrderService]
    product = await make_product(db, stock=10, price="1.00")
    first, *others = await stale_orders(db, orders, product, 3)
    with captured_logs(logging.INFO) as logs:
        async with failing_update(db, [first], GO_AWAY):
            with pytest.raises(psycopg.OperationalError):
                await orders.reserve_stale(older_than_s=3600)
    assert await statuses(db, [first, *others]) == ["pending", "pending", "pending"]
    assert logs.events("stale_order_reservation_failed") == []

    lapsed_first, *lapsed_others = await lapsed_orders(db, product, 3)
    with captured_logs(logging.INFO) as logs:
        async with failing_update(db, [lapsed_first], GO_AWAY):
            with pytest.raises(psycopg.OperationalError):
                await orders.expire_reservations()
    assert await statuses(db, [lapsed_first, *lapsed_others]) == ["reserved", "reserved", "reserved"]
    assert logs.events("reservation_expiry_failed") == []
