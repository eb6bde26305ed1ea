"""An order is placed at the price and on the `active` its product has when the order commits.

The placement read its products without a lock, and an administrator's change locks the product
``FOR NO KEY UPDATE``, which an order item's foreign-key check (``FOR KEY SHARE``) does not wait for:
a change committed while a placement that had read the product was still open, and the order
committed after it at the old price, on a product now inactive, and was reserved (the races
reviewer). The placement now holds its products' terms (an advisory lock shared with other
placements): a change waits for the placements under way, and a placement that comes after a waiting
change waits for it. Not a row lock: ``FOR SHARE`` (the first fix) made the stock's updates wait for
placements too, and PostgreSQL grants a row's share lock past a waiting updater, so overlapping
placements held a change off for as long as they overlapped (the diff reviewer).

A placement is held open after its read by a lock on the outbox, which it writes later in the same
transaction: the window a placement's last milliseconds leave, made wide enough to act in.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from tests.factories import (
    Actor,
    Served,
    make_product,
    make_user,
    serve_in_loop,
    sessions_waiting_for_a_lock,
    wait_until,
)


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serve_in_loop(settings) as s:
        yield s


@asynccontextmanager
async def outbox_held(settings: Settings) -> AsyncIterator[tuple[AsyncConnection[Any], AsyncConnection[Any]]]:
    """(holder, probe): the holder keeps the outbox locked until it rolls back (or the block ends)."""
    assert settings.database_url
    async with (
        await AsyncConnection.connect(settings.database_url) as holder,
        await AsyncConnection.connect(settings.database_url, autocommit=True) as probe,
    ):
        await holder.execute("lock table outbox in share mode")
        yield holder, probe


def place(client: httpx.AsyncClient, buyer: Actor, product_id: int) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(
        client.post(
            "/api/orders",
            json={"lines": [{"product_id": product_id, "quantity": 1}]},
            headers=buyer.headers | {"Idempotency-Key": uuid.uuid4().hex},
        )
    )


def waits(probe: AsyncConnection[Any], at_least: int) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        return await sessions_waiting_for_a_lock(probe) >= at_least

    return condition


async def placing_held(
    client: httpx.AsyncClient, probe: AsyncConnection[Any], buyer: Actor, product_id: int
) -> asyncio.Future[httpx.Response]:
    """A placement of one unit, once it has read its product and waits for the held outbox (the
    first session waiting for a lock)."""
    placing = place(client, buyer, product_id)
    await wait_until(waits(probe, 1), 10, "the placement, past its read, waits for the outbox")
    return placing


async def answered_before_waiting(
    probe: AsyncConnection[Any], request: asyncio.Future[httpx.Response], waiting: int
) -> bool:
    """Whether ``request`` was answered before it, the ``waiting``-th session, waited for a lock."""

    async def answered_or_waiting() -> bool:
        return request.done() or await sessions_waiting_for_a_lock(probe) >= waiting

    await wait_until(answered_or_waiting, 10, "the request is answered or waits for a lock")
    return request.done()


async def test_a_price_change_waits_for_a_placement_that_read_the_old_price(
    served: Served, db: AsyncConnection[Any], settings: Settings
) -> None:
    client = served.client
    admin = await make_user(db, served.app, "admin")
    buyer = await make_user(db, served.app)
    product_id = await make_product(db, price="10.00", stock=5)
    async with outbox_held(settings) as (holder, probe):
        placing = await placing_held(client, probe, buyer, product_id)
        changing = asyncio.ensure_future(
            client.patch(
                f"/api/products/{product_id}", json={"price": "99.00", "active": False}, headers=admin.headers
            )
        )
        answered_while_placing = await answered_before_waiting(probe, changing, 2)
        await holder.rollback()
        placed, changed = await placing, await changing

    assert not answered_while_placing, "the change committed under a placement that read the product"
    assert placed.status_code == 202, placed.text
    assert changed.status_code == 200, changed.text
    assert (changed.json()["price"], changed.json()["active"]) == ("99.00", False)
    assert placed.json()["items"][0]["unit_price"] == "10.00"  # the price when the order committed


async def test_a_placement_after_a_waiting_change_waits_for_it_and_takes_the_new_price(
    served: Served, db: AsyncConnection[Any], settings: Settings
) -> None:
    """Placements that keep arriving while a change waits do not hold it off: the second placement
    queues behind the change, which goes as soon as the first placement commits."""
    client = served.client
    admin = await make_user(db, served.app, "admin")
    first_buyer, second_buyer = await make_user(db, served.app), await make_user(db, served.app)
    product_id = await make_product(db, price="10.00", stock=5)
    async with outbox_held(settings) as (holder, probe):
        first = await placing_held(client, probe, first_buyer, product_id)
        changing = asyncio.ensure_future(
            client.patch(f"/api/products/{product_id}", json={"price": "99.00"}, headers=admin.headers)
        )
        await wait_until(waits(probe, 2), 10, "the change waits for the first placement")
        second = place(client, second_buyer, product_id)
        await wait_until(waits(probe, 3), 10, "the second placement waits too")
        await holder.rollback()
        answers = await asyncio.gather(first, changing, second)

    assert [answer.status_code for answer in answers] == [202, 200, 202], [a.text for a in answers]
    assert answers[0].json()["items"][0]["unit_price"] == "10.00"
    assert answers[2].json()["items"][0]["unit_price"] == "99.00"  # it read the product after the change


async def test_stock_moves_while_a_placement_is_under_way(
    served: Served, db: AsyncConnection[Any], settings: Settings
) -> None:
    """The placement holds its products' terms, not their rows: a stock adjustment (like a
    reservation or a release) does not wait for it."""
    client = served.client
    admin = await make_user(db, served.app, "admin")
    buyer = await make_user(db, served.app)
    product_id = await make_product(db, price="10.00", stock=5)
    async with outbox_held(settings) as (_, probe):
        placing = await placing_held(client, probe, buyer, product_id)
        adjusting = asyncio.ensure_future(
            client.post(
                f"/api/products/{product_id}/stock-adjustments",
                json={"delta": 3, "reason": "restock"},
                headers=admin.headers | {"Idempotency-Key": uuid.uuid4().hex},
            )
        )
        assert await answered_before_waiting(probe, adjusting, 2), (
            "the stock adjustment waited for a placement"
        )
    adjusted, placed = await adjusting, await placing
    assert adjusted.status_code == 201, adjusted.text
    assert placed.status_code == 202, placed.text
