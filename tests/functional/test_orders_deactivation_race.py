"""An order placed by a request authenticated before its account's deactivation committed.

The admin reviewer: the placement waited for the deactivation's row lock, then placed the order all
the same (202, reserved by the worker) after the deactivation had answered 200. The placement now
reads the account's activity under its lock: a 401, and no order."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from psycopg import AsyncConnection

from tests.factories import Client, answer_racing, assert_problem, make_product, make_user, scalar


async def test_a_placement_waiting_for_a_deactivation_places_nothing(
    client: Client, app: Litestar, db: AsyncConnection[Any], database_url: str
) -> None:
    buyer = await make_user(db, app)
    product = await make_product(db, stock=5, price="2.50")

    async def place() -> Any:
        return await client.post(
            "/api/orders",
            json={"lines": [{"product_id": product, "quantity": 1}]},
            headers=buyer.headers | {"Idempotency-Key": "placed-while-deactivated"},
        )

    placed = await answer_racing(
        database_url, "update users set is_active = false where id = %s", buyer.id, place
    )

    assert_problem(placed, 401)
    assert await scalar(db, "select count(*) from orders where user_id = %s", buyer.id) == 0
    assert await scalar(db, "select stock from products where id = %s", product) == 5
