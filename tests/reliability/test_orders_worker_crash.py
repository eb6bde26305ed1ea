"""Killing the worker process in the middle of reservations (SIGKILL) and starting it again leaves
every order reserved or rejected exactly once; stopping Valkey while orders are placed loses none.

The real worker (``python -m workers``) runs as a subprocess against the test database and a
private Valkey that the test stops and starts.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import open_services
from app.db import orders as order_queries
from app.domains.orders.schemas import OrderCreate, OrderLine
from app.domains.orders.services import OrderService
from app.main import create_app
from tests.factories import COMMERCE, clean_env, create_user, make_product, mint_headers, wait_until
from tests.valkey_control import ControlledValkey

ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 2
CONCURRENCY = 2  # jobs in flight at the kill; the sweeper waits 5 s on each before retrying it


@pytest.fixture
def crash_settings(settings: Settings, controlled_valkey: ControlledValkey) -> Settings:
    return msgspec.structs.replace(
        settings,
        valkey_url=controlled_valkey.url,
        max_open_orders=100_000,
        order_max_units_per_product=1_000_000,
        order_max_units_held=1_000_000,
        rate_limit_default_per_minute=100_000,
    )


@pytest.fixture
async def orders(crash_settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[OrderService]:
    """The order service of the test process (placing orders; the workers reserve them)."""
    async with open_services(crash_settings, COMMERCE) as services:
        yield services[OrderService]


class Workers:
    """Worker subprocesses; every one still running is killed at the end of the test."""

    def __init__(self, directory: Path, database_url: str, valkey_url: str) -> None:
        self.directory = directory
        self.env = clean_env(
            DATABASE_URL=database_url,
            VALKEY_URL=valkey_url,
            APP_ENV="test",
            LOG_LEVEL="WARNING",
            JOB_TIMEOUT_S=str(JOB_TIMEOUT_S),
            WORKER_CONCURRENCY=str(CONCURRENCY),
            OUTBOX_POLL_INTERVAL_S="0.1",
            OUTBOX_BATCH_SIZE="20",
            DATABASE_POOL_MIN="1",
            DATABASE_POOL_MAX="10",
        )
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.directory / f"worker-{len(self.started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "workers"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob("worker-*.log"))
        )

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(10)


@pytest.fixture
def workers(tmp_path: Path, crash_settings: Settings) -> Iterator[Workers]:
    assert crash_settings.database_url and crash_settings.valkey_url
    running = Workers(tmp_path, crash_settings.database_url, crash_settings.valkey_url)
    try:
        yield running
    finally:
        running.close()


async def count(db: AsyncConnection[Any], sql: str, *params: Any) -> int:
    row = await (await db.execute(sql, params)).fetchone()
    assert row is not None
    return int(row[0])


async def assert_settled_exactly_once(
    db: AsyncConnection[Any], order_ids: list[int], initial: dict[int, int]
) -> None:
    """Every order reserved or rejected, left pending exactly once; no unit of stock lost or made."""
    statuses = dict(
        await (
            await db.execute("select id, status::text from orders where id = any(%s)", (order_ids,))
        ).fetchall()
    )
    assert set(statuses.values()) <= {"reserved", "rejected"}, statuses
    assert len(statuses) == len(order_ids)
    left_pending = dict(
        await (
            await db.execute(
                "select order_id, count(*) from order_events"
                " where from_status = 'pending' and order_id = any(%s) group by order_id",
                (order_ids,),
            )
        ).fetchall()
    )
    assert left_pending == dict.fromkeys(order_ids, 1)
    events = await count(db, "select count(*) from order_events where order_id = any(%s)", order_ids)
    assert events == 2 * len(order_ids), "placed + one decision per order, nothing else"
    stock = dict(await (await db.execute("select id, stock from products")).fetchall())
    held = {row.product_id: row.held for row in await order_queries.stock_ledger(db)}
    for pid, units in initial.items():
        assert stock[pid] >= 0
        assert stock[pid] + held.get(pid, 0) == units, (pid, stock[pid], held.get(pid, 0), units)


async def test_a_worker_killed_mid_reservation_is_recovered_by_the_next_one(
    db: AsyncConnection[Any],
    orders: OrderService,
    crash_settings: Settings,
    controlled_valkey: ControlledValkey,
    workers: Workers,
    database_url: str,
) -> None:
    rng = random.Random(7)
    # The first product gets the lowest id, so a reservation touching it takes its row lock first.
    blocked, free = await make_product(db, stock=40), await make_product(db, stock=250)
    initial = {blocked: 40, free: 250}
    buyers = [(await create_user(db)).id for _ in range(5)]

    async def place(lines: dict[int, int]) -> int:
        data = OrderCreate(lines=[OrderLine(product_id=p, quantity=q) for p, q in lines.items()])
        placed = await orders.place(rng.choice(buyers), data, uuid.uuid4().hex)
        assert placed.status_code == 202
        return placed.order_id

    order_ids = [await place({free: rng.randint(1, 3)}) for _ in range(150)]
    order_ids += [await place({blocked: rng.randint(1, 2), free: 1}) for _ in range(50)]

    async with await AsyncConnection.connect(database_url) as locker:
        # Reservations of the last 50 orders wait on this row lock mid-transaction, so the worker
        # is certainly killed with reservations in flight.
        await locker.execute("select id from products where id = %s for no key update", (blocked,))
        first = workers.start()

        async def all_slots_blocked() -> bool:
            assert first.poll() is None, workers.logs()
            waiting = await count(
                db,
                "select count(*) from pg_stat_activity"
                " where wait_event_type = 'Lock' and datname = current_database()"
                " and pid <> pg_backend_pid()",
            )
            return waiting >= CONCURRENCY

        await wait_until(all_slots_blocked, 60, "every job slot of the worker waits on the locked row")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        pending = await count(
            db, "select count(*) from orders where status = 'pending' and id = any(%s)", order_ids
        )
        assert 0 < pending < len(order_ids), "the worker must be killed in the middle of the work"
        assert await controlled_valkey_active(controlled_valkey) > 0, "jobs were in flight at the kill"
        await locker.rollback()

    # SAQ leaves the jobs that were active at the kill to its sweeper, which retries a job once its
    # timeout has passed. The sweeper runs every 30 s across workers (a lock key): drop that lock
    # so the next worker sweeps on start instead of up to 30 s later.
    await asyncio.sleep(JOB_TIMEOUT_S + 0.5)
    client = Valkey.from_url(controlled_valkey.url)
    try:
        await client.delete("saq:orders:sweep")
    finally:
        await client.aclose()
    second = workers.start()

    async def settled() -> bool:
        assert second.poll() is None, workers.logs()
        return (
            await count(
                db, "select count(*) from orders where status = 'pending' and id = any(%s)", order_ids
            )
            == 0
        )

    await wait_until(settled, 60, "no order is pending")
    await assert_settled_exactly_once(db, order_ids, initial)
    rejected = await count(db, "select count(*) from orders where status = 'rejected'")
    assert 0 < rejected < len(order_ids), "demand exceeds stock: both outcomes occur"


async def controlled_valkey_active(server: ControlledValkey) -> int:
    client = Valkey.from_url(server.url)
    try:
        return int(await client.llen("saq:orders:active"))
    finally:
        await client.aclose()


@pytest.fixture
async def shop_client(
    crash_settings: Settings, db: AsyncConnection[Any]
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=create_app(crash_settings)) as client:
        yield client


async def test_orders_placed_while_valkey_is_down_are_all_processed(
    db: AsyncConnection[Any],
    shop_client: AsyncTestClient[Litestar],
    controlled_valkey: ControlledValkey,
    workers: Workers,
) -> None:
    app: Litestar = shop_client.app  # type: ignore[assignment]
    product = await make_product(db, stock=30)
    callers = [mint_headers(app, (await create_user(db)).id) for _ in range(3)]
    worker = workers.start()
    await wait_until(lambda: controlled_valkey_workers(controlled_valkey), 30, "the worker is up")

    controlled_valkey.stop()
    try:
        order_ids = []
        for n in range(24):
            response = await shop_client.post(
                "/api/orders",
                json={"lines": [{"product_id": product, "quantity": 1 + n % 3}]},
                headers=callers[n % 3] | {"Idempotency-Key": uuid.uuid4().hex},
            )
            assert response.status_code == 202, response.text
            order_ids.append(response.json()["id"])
        await wait_until(lambda: relay_failed(workers), 60, "the running worker's relay has tried and failed")
        unpublished = await count(
            db, "select count(*) from outbox where task = 'reserve_order' and published_at is null"
        )
        assert unpublished == len(order_ids)
        assert await count(db, "select count(*) from orders where status <> 'pending'") == 0
        assert worker.poll() is None, "the worker must survive a Valkey outage\n" + workers.logs()
    finally:
        controlled_valkey.start()

    async def settled() -> bool:
        assert worker.poll() is None, workers.logs()
        return await count(db, "select count(*) from orders where status = 'pending'") == 0

    await wait_until(settled, 60, "the worker has reserved every order")

    async def all_published() -> bool:  # the activity rows of the reservations included
        return await count(db, "select count(*) from outbox where published_at is null") == 0

    await wait_until(all_published, 30, "every outbox row is published")
    await assert_settled_exactly_once(db, order_ids, {product: 30})


async def relay_failed(workers: Workers) -> bool:
    """True once a worker has logged a failed relay round (its warning, at most one per 30 s)."""
    return any(
        "outbox_relay_failed" in path.read_text(errors="replace")
        for path in workers.directory.glob("worker-*.log")
    )


async def controlled_valkey_workers(server: ControlledValkey) -> bool:
    """True once the worker's relay has run (it publishes nothing yet, but its queue keys exist)."""
    client = Valkey.from_url(server.url)
    try:
        return bool(await client.keys("saq:*"))
    finally:
        await client.aclose()
