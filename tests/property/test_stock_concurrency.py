"""Many buyers order the same few products at once: stock is never oversold nor lost.

Afterwards, per product, ``stock + units held by reserved/paid orders == initial``, stock never went
negative, and every order is ``reserved`` or ``rejected`` (rejected ones say what was short).
Placement goes through HTTP concurrently; the reservations run concurrently from several tasks,
each call on its own pooled connection and transaction, and some orders are reserved twice.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.db import accounts as account_queries
from app.db import orders as order_queries
from app.db import products as product_queries
from app.db.models import OrderStatus, UserRole
from app.domains.products.schemas import MAX_STOCK
from app.main import create_app

FAKE_HASH = "$argon2id$v=19$m=65536,t=3,p=4$bm90LWEtcmVhbC1zYWx0$bm90LWEtcmVhbC1oYXNoLW5vdC1hLXJlYWwtaGFzaA"
INITIAL = (5, 7, 3)
RESERVERS = 6


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    """The app in the test's event loop (httpx's ASGI transport): requests really run concurrently."""
    app = create_app(
        msgspec.structs.replace(settings, rate_limit_default_per_minute=100_000, database_pool_max=30)
    )
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    running = asyncio.create_task(lifespan())
    await asyncio.wait_for(started.wait(), 30)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def buyer(app: Litestar, db: AsyncConnection[Any], n: int) -> dict[str, str]:
    user = await account_queries.create_user(
        db,
        email=f"buyer{n}-{uuid.uuid4().hex[:8]}@example.com",
        display_name=f"Buyer {n}",
        password_hash=FAKE_HASH,
        role=UserRole.MEMBER,
    )
    assert user is not None
    token, _ = app.state.accounts.tokens.issue(user.id, "member", uuid.uuid4())
    return {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_buyers_never_oversell(
    served: tuple[Litestar, httpx.AsyncClient], db: AsyncConnection[Any], valkey: Valkey, seed: int
) -> None:
    app, client = served
    rng = random.Random(seed)
    products = []
    for i, stock in enumerate(INITIAL):
        row = await product_queries.create_product(
            db, sku=f"HOT-{i}", name=f"Hot {i}", description="", price=Decimal("1.00"), stock=stock
        )
        assert row is not None
        products.append(row.id)
    initial = dict(zip(products, INITIAL, strict=True))

    buyers = [await buyer(app, db, n) for n in range(rng.randint(30, 50))]
    wanted = [
        {pid: rng.randint(1, 3) for pid in rng.sample(products, rng.randint(1, len(products)))}
        for _ in buyers
    ]
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/orders",
                json={"lines": [{"product_id": p, "quantity": q} for p, q in lines.items()]},
                headers=headers,
            )
            for headers, lines in zip(buyers, wanted, strict=True)
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
            results.setdefault(order_id, set()).add(await app.state.orders.reserve(order_id))

    lowest: list[int] = []
    finished = asyncio.Event()

    async def watch_stock() -> None:
        async with await AsyncConnection.connect(app.state.settings.database_url, autocommit=True) as conn:
            while not finished.is_set():
                row = await (await conn.execute("select min(stock) from products")).fetchone()
                assert row is not None
                lowest.append(row[0])
                await asyncio.sleep(0)

    watcher = asyncio.create_task(watch_stock())
    try:
        await asyncio.wait_for(asyncio.gather(*(reserver() for _ in range(RESERVERS))), 60)
    finally:
        finished.set()
        await asyncio.wait_for(watcher, 10)
    assert lowest and min(lowest) >= 0

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
    assert await product_queries.adjust_stock(db, delta=-3, id=row.id, max_stock=MAX_STOCK) is None
    assert await (await db.execute("select stock from products where id = %s", (row.id,))).fetchone() == (2,)
