"""Many buyers order the same few products at once: stock is never oversold nor lost.

Per product, ``stock + units held by reserved/paid orders == initial`` in every snapshot taken while
the reservations run and afterwards, and every order is ``reserved`` or ``rejected`` (rejected ones say
what was short); negative stock is refused by the database itself.
Placement goes through HTTP concurrently; the reservations run concurrently from several tasks,
each call on its own pooled connection and transaction, and some orders are reserved twice.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from litestar import Litestar
from psycopg import AsyncConnection, IsolationLevel
from valkey.asyncio import Valkey

from app.config import Settings
from app.db import orders as order_queries
from app.db import products as product_queries
from app.db.models import OrderStatus
from app.domains.orders.services import OrderService
from app.domains.products.schemas import MAX_STOCK
from tests.factories import make_product, make_user, serve_in_loop

INITIAL = (5, 7, 3)
RESERVERS = 6


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    """The app in the test's event loop: requests really run concurrently."""
    async with serve_in_loop(settings, rate_limit_default_per_minute=100_000, database_pool_max=30) as app:
        yield app.app, app.client


async def ledger(conn: AsyncConnection[Any]) -> tuple[dict[int, int], dict[int, int]]:
    """Stock and units held per product, read in one snapshot."""
    async with conn.transaction():
        stock = dict(await (await conn.execute("select id, stock from products")).fetchall())
        held = {row.product_id: row.held for row in await order_queries.stock_ledger(conn)}
    return stock, held


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_buyers_never_oversell(
    served: tuple[Litestar, httpx.AsyncClient], db: AsyncConnection[Any], valkey: Valkey, seed: int
) -> None:
    app, client = served
    rng = random.Random(seed)
    products = [
        await make_product(db, sku=f"HOT-{i}", name=f"Hot {i}", price="1.00", stock=stock)
        for i, stock in enumerate(INITIAL)
    ]
    initial = dict(zip(products, INITIAL, strict=True))

    buyers = [(await make_user(db, app, name=f"Buyer {n}")).headers for n in range(rng.randint(30, 50))]
    wanted = [
        {pid: rng.randint(1, 3) for pid in rng.sample(products, rng.randint(1, len(products)))}
        for _ in buyers
    ]
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/orders",
                json={"lines": [{"product_id": p, "quantity": q} for p, q in lines.items()]},
                headers=headers | {"Idempotency-Key": f"order-{n}"},
            )
            for n, (headers, lines) in enumerate(zip(buyers, wanted, strict=True))
        )
    )
    assert [r.status_code for r in responses] == [202] * len(buyers), [
        r.text for r in responses if r.is_error
    ]
    order_ids = [r.json()["id"] for r in responses]
    lines_of = dict(zip(order_ids, wanted, strict=True))

    # Reserve everything from several tasks at once; a third of the orders are delivered twice.
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for order_id in order_ids + rng.sample(order_ids, len(order_ids) // 3):
        jobs.put_nowait(order_id)
    results: dict[int, set[OrderStatus | None]] = {}

    async def reserver() -> None:
        while not jobs.empty():
            order_id = jobs.get_nowait()
            results.setdefault(order_id, set()).add(await app.state.services[OrderService].reserve(order_id))

    # Meanwhile, every committed state conserves stock: a snapshot never sees units taken from stock
    # without an order holding them (or the other way round).
    samples: list[tuple[dict[int, int], dict[int, int]]] = []
    finished = asyncio.Event()

    async def watch_ledger() -> None:
        async with await AsyncConnection.connect(app.state.settings.database_url) as conn:
            await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
            await conn.set_autocommit(True)
            while not finished.is_set():
                samples.append(await ledger(conn))
                await asyncio.sleep(0.005)  # pacing only: leave the cores to the reservations

    watcher = asyncio.create_task(watch_ledger())
    try:
        await asyncio.wait_for(asyncio.gather(*(reserver() for _ in range(RESERVERS))), 60)
    finally:
        finished.set()
        await asyncio.wait_for(watcher, 10)
    assert samples
    for stock_then, held_then in samples:
        assert {pid: stock_then[pid] + held_then.get(pid, 0) for pid in products} == initial, (
            stock_then,
            held_then,
        )

    rows = await (
        await db.execute("select id, status::text, shortfall from orders where id = any(%s)", (order_ids,))
    ).fetchall()
    status = {row[0]: row[1] for row in rows}
    shortfall = {row[0]: row[2] for row in rows}
    assert set(status.values()) <= {"reserved", "rejected"}, status
    for order_id, seen in results.items():
        # a redelivery reports the status the first delivery decided
        assert seen == {OrderStatus(status[order_id])}, (order_id, seen)

    stock = dict(await (await db.execute("select id, stock from products")).fetchall())
    held = {row.product_id: row.held for row in await order_queries.stock_ledger(db)}
    for pid in products:
        assert stock[pid] >= 0
        assert stock[pid] + held.get(pid, 0) == initial[pid], (pid, stock[pid], held.get(pid, 0))
        reserved_units = sum(lines_of[o].get(pid, 0) for o in order_ids if status[o] == "reserved")
        assert reserved_units == held.get(pid, 0) <= initial[pid]

    for order_id in order_ids:
        if status[order_id] == "rejected":
            short = shortfall[order_id]
            assert short, f"rejected order {order_id} without a shortfall"
            for line in short:
                assert line["requested"] == lines_of[order_id][line["product_id"]]
                assert line["available"] < line["requested"]
                # stock only shrinks while reserving, so what was missing then is missing now
                assert stock[line["product_id"]] <= line["available"]
        else:
            assert shortfall[order_id] is None
    # Stock runs out under this much demand: both outcomes must occur for the test to mean anything.
    assert {"reserved", "rejected"} <= set(status.values())
    # Every order left pending exactly once, whatever the number of deliveries.
    transitions = await (
        await db.execute(
            "select order_id, count(*) from order_events where from_status = 'pending' group by order_id"
        )
    ).fetchall()
    assert dict(transitions) == dict.fromkeys(order_ids, 1)


async def test_the_database_refuses_negative_stock(db: AsyncConnection[Any]) -> None:
    row = await product_queries.create_product(
        db, sku="GUARD-1", name="Guarded", description="", price=Decimal("1.00"), stock=2
    )
    assert row is not None
    with pytest.raises(psycopg.errors.CheckViolation):
        await db.execute("update products set stock = stock - 3 where id = %s", (row.id,))
    assert await product_queries.reserve_stock(db, quantity=3, id=row.id) is None
    assert (
        await product_queries.adjust_stock(db, delta=-3, id=row.id, max_stock=MAX_STOCK, expected_stock=None)
        is None
    )
    assert await (await db.execute("select stock from products where id = %s", (row.id,))).fetchone() == (2,)
