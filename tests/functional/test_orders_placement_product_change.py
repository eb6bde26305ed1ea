"""An order is placed at the price and on the `active` its product has when the order commits.

The placement read its products without a lock, and an administrator's change locks the product
``FOR NO KEY UPDATE``, which an order item's foreign-key check (``FOR KEY SHARE``) does not wait for:
a change committed while a placement that had read the product was still open, and the order
committed after it at the old price, on a product now inactive, and was reserved (the races
reviewer). The placement now share-locks its products: the change waits for it.

The placement is held open after its read by a lock on the outbox, which it writes later in the same
transaction: the window a placement's last milliseconds leave, made wide enough to act in.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from tests.factories import Served, make_product, make_user, serve_in_loop, wait_until


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serve_in_loop(settings) as s:
        yield s


async def lock_waits(probe: AsyncConnection[Any]) -> int:
    cursor = await probe.execute(
        "select count(*) from pg_stat_activity "
        "where wait_event_type = 'Lock' and datname = current_database()"
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def test_a_price_change_waits_for_a_placement_that_read_the_old_price(
    served: Served, db: AsyncConnection[Any], settings: Settings
) -> None:
    assert settings.database_url
    client = served.client
    admin = await make_user(db, served.app, "admin")
    buyer = await make_user(db, served.app)
    product_id = await make_product(db, price="10.00", stock=5)
    async with (
        await AsyncConnection.connect(settings.database_url) as holder,
        await AsyncConnection.connect(settings.database_url, autocommit=True) as probe,
    ):
        await holder.execute("lock table outbox in share mode")
        placing = asyncio.ensure_future(
            client.post(
                "/api/orders",
                json={"lines": [{"product_id": product_id, "quantity": 1}]},
                headers=buyer.headers | {"Idempotency-Key": uuid.uuid4().hex},
            )
        )

        async def placement_waits() -> bool:
            return await lock_waits(probe) >= 1

        await wait_until(placement_waits, 10, "the placement, past its read, waits for the outbox")
        changing = asyncio.ensure_future(
            client.patch(
                f"/api/products/{product_id}", json={"price": "99.00", "active": False}, headers=admin.headers
            )
        )

        async def change_answered_or_waiting() -> bool:
            return changing.done() or await lock_waits(probe) >= 2

        await wait_until(change_answered_or_waiting, 10, "the change is answered or waits for a lock")
        answered_while_placing = changing.done()
        await holder.rollback()
        placed, changed = await placing, await changing

    assert not answered_while_placing, "the change committed under a placement that read the product"
    assert placed.status_code == 202, placed.text
    assert changed.status_code == 200, changed.text
    assert (changed.json()["price"], changed.json()["active"]) == ("99.00", False)
    assert placed.json()["items"][0]["unit_price"] == "10.00"  # the price when the order committed
