"""A backlog of lapsed reservations: drained by one expiry run, and never counted against a buyer.

The expiry cron (once a minute) used to release one batch of 100 per run: past 100 lapsed
reservations a minute (a sales peak of abandoned carts) the backlog grew without bound, each lapsed
order kept its stock, and the open-order and held-units limits kept counting them, so buyers whose
reservations had all lapsed were refused new orders (429, 422) for holdings past their window.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from psycopg import AsyncConnection
from saq.types import Context

from app.config import Settings
from app.core.errors import TooManyRequestsError
from app.core.services import Services, open_services
from app.db.models import User
from app.domains.orders import jobs
from app.domains.orders.schemas import OrderCreate, OrderLine
from app.domains.orders.services import HoldingLimitError, OrderService
from tests.factories import COMMERCE, create_user, make_product, scalar


@pytest.fixture
async def services(db: AsyncConnection[Any], settings: Settings) -> AsyncIterator[Services]:
    async with open_services(settings, COMMERCE) as opened:
        yield opened


async def reserve_lapsed(
    db: AsyncConnection[Any], buyers: list[User], product_id: int, *, per_buyer: int, quantity: int = 1
) -> None:
    """``per_buyer`` reservations of ``quantity`` units for each buyer, their windows ended 1, 2, …
    seconds ago (the expiry cron has not run since), their stock taken as reserving takes it."""
    count = len(buyers) * per_buyer
    await db.execute(
        """
        with placed as (
            insert into orders (user_id, total, currency, status, reserved_until)
            select (%(buyers)s::bigint[])[1 + (g - 1) / %(per_buyer)s], %(quantity)s, 'EUR', 'reserved',
                   now() - make_interval(secs => g)
            from generate_series(1, %(count)s) g
            returning id
        )
        insert into order_items (order_id, product_id, quantity, unit_price)
        select id, %(product)s, %(quantity)s, 1.00 from placed
        """,
        {
            "buyers": [b.id for b in buyers],
            "per_buyer": per_buyer,
            "quantity": quantity,
            "count": count,
            "product": product_id,
        },
    )
    await db.execute("update products set stock = stock - %s where id = %s", (count * quantity, product_id))


async def test_one_expiry_run_releases_a_backlog_larger_than_a_batch(
    db: AsyncConnection[Any], services: Services
) -> None:
    lapsed = 250
    product = await make_product(db, stock=1000, price="1.00")
    buyers = [await create_user(db) for _ in range(lapsed // 5)]
    await reserve_lapsed(db, buyers, product, per_buyer=5)

    expired = await jobs.expire_reservations(cast("Context", {"services": services}))

    assert expired == lapsed
    still_lapsed = "select count(*) from orders where status = 'reserved' and reserved_until < now()"
    assert await scalar(db, still_lapsed) == 0
    assert await scalar(db, "select count(*) from orders where status = 'expired'") == lapsed
    assert await scalar(db, "select stock from products where id = %s", product) == 1000
    assert await jobs.expire_reservations(cast("Context", {"services": services})) == 0


async def test_a_buyer_whose_reservations_lapsed_can_order_before_the_cron_expires_them(
    db: AsyncConnection[Any], services: Services, settings: Settings
) -> None:
    """Lapsed reservations (the cron not run yet) count neither as open orders (MAX_OPEN_ORDERS) nor
    as held units (ORDER_MAX_UNITS_PER_PRODUCT); reservations still in their window do."""
    orders = services[OrderService]
    product = await make_product(db, stock=1000, price="1.00")
    many_orders, many_units = await create_user(db), await create_user(db)
    await reserve_lapsed(db, [many_orders], product, per_buyer=settings.max_open_orders)
    await reserve_lapsed(
        db, [many_units], product, per_buyer=1, quantity=settings.order_max_units_per_product
    )
    one_more = OrderCreate(lines=[OrderLine(product_id=product, quantity=1)])

    for buyer in (many_orders, many_units):
        assert (await orders.place(buyer.id, one_more, "after-the-window")).status_code == 202

    back_in_window = "update orders set reserved_until = now() + interval '10 minutes' where user_id = %s"
    for buyer, refusal in ((many_orders, TooManyRequestsError), (many_units, HoldingLimitError)):
        await db.execute(back_in_window, (buyer.id,))
        with pytest.raises(refusal):
            await orders.place(buyer.id, one_more, "within-the-window")
