"""SIGTERM under load: the server and the worker stop gracefully and lose nothing acknowledged.

1. The API. Injected: SIGTERM to granian's main process (as ``docker stop`` sends it) while eight
   clients have page views, orders and tasks in flight (the clients then send no more, as a
   gateway that has taken the instance out of rotation). Asserted: every request in flight at the
   signal gets an answer (an acknowledgement or a 503 problem+json, never a dropped connection);
   granian exits 0. Lost: nothing: every
   acknowledged page view (the ingest sink flushed before the exit), order and task is stored.
2. The worker. Injected: SIGTERM to ``python -m workers`` while every job slot of the orders queue is
   inside a reservation (blocked on a row lock the test holds), with ``WORKER_SHUTDOWN_GRACE_S=1``: the
   running jobs cannot finish within the grace and are cancelled (their transactions roll back).
   Asserted: the worker exits 0 (within a generous 30 s); a second worker then reserves
   every order. Lost: nothing: every order left ``pending`` exactly once, no unit of stock lost or
   made.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.db import orders as order_queries
from app.domains.orders.schemas import OrderCreate, OrderLine
from app.domains.orders.services import OrderService
from tests.factories import COMMERCE, create_user, make_product, wait_until
from tests.faults import (
    GENEROUS,
    MixedLoad,
    Worker,
    holds,
    open_shop,
    query_holds,
    scalar,
    stored,
    stored_unanswered,
)
from tests.served import ServerProcess
from tests.valkey_control import ControlledValkey

CONCURRENCY = 3


async def test_sigterm_of_the_server_under_load_answers_in_flight_requests_and_loses_nothing(
    db: AsyncConnection[Any],
    database_url: str,
    controlled_valkey: ControlledValkey,
    http: httpx.AsyncClient,
    processes: list[ServerProcess | Worker],
    tmp_path: Path,
) -> None:
    shop = await open_shop(database_url)
    server = ServerProcess(database_url, controlled_valkey.url, tmp_path, env=GENEROUS)
    processes.append(server)
    server.start()
    await server.wait_ready(http)
    # Both workers up (readiness needs only one): granian does not stop a worker still starting.
    await wait_until(
        holds(lambda: server.log_path.read_text().count("Started worker-") == 2), 60, "both workers started"
    )

    load = MixedLoad(http, server.base, shop)
    load.start()
    try:
        await load.until_acked("before", 30)
        load.phase = "stopping"
        load.cutoff = time.monotonic()
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)  # as a container stop does: to the main process
        in_flight = asyncio.create_task(load.stop())  # the clients finish their request, send no more
        code = await asyncio.to_thread(server.process.wait, 30)
        await in_flight
    finally:
        await load.stop()

    assert code == 0, server.log_tail()
    assert load.failures == [], load.failures[:10]
    assert load.count("stopping", 500) == 0
    # A request that found its keep-alive connection closed at the signal was never processed (not
    # stored); one that was processed got its answer.
    assert await stored_unanswered(database_url, load) == []
    assert load.answered_across_cutoff > 0, "requests were in flight at the signal"

    in_database = await stored(database_url, load)
    for kind, acknowledged in load.acked.items():
        assert acknowledged - in_database[kind] == set(), f"acknowledged {kind}s were lost"


@pytest.fixture
def worker_settings(settings: Settings, controlled_valkey: ControlledValkey) -> Settings:
    return msgspec.structs.replace(
        settings,
        valkey_url=controlled_valkey.url,
        max_open_orders=100_000,
        order_max_units_per_product=100_000,
        order_max_units_held=100_000,
        rate_limit_default_per_minute=100_000,
    )


@pytest.fixture
async def orders(worker_settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[OrderService]:
    async with open_services(worker_settings, COMMERCE) as services:
        yield services[OrderService]


async def test_sigterm_of_the_worker_mid_reservation_requeues_its_jobs(
    db: AsyncConnection[Any],
    database_url: str,
    orders: OrderService,
    controlled_valkey: ControlledValkey,
    processes: list[ServerProcess | Worker],
    tmp_path: Path,
) -> None:
    product = await make_product(db, stock=1000)
    buyers = [(await create_user(db)).id for _ in range(4)]
    order_ids = []
    for n in range(40):
        data = OrderCreate(lines=[OrderLine(product_id=product, quantity=1 + n % 3)])
        placed = await orders.place(buyers[n % 4], data, uuid.uuid4().hex)
        assert placed.status_code == 202
        order_ids.append(placed.order_id)
    units = await scalar(
        database_url, "select sum(quantity) from order_items where order_id = any(%s)", order_ids
    )

    def worker() -> Worker:
        started = Worker(
            tmp_path,
            database_url,
            controlled_valkey.url,
            WORKER_CONCURRENCY=str(CONCURRENCY),
            WORKER_SHUTDOWN_GRACE_S="1",
        )
        processes.append(started)
        started.start()
        return started

    async with await AsyncConnection.connect(database_url) as locker:
        await locker.execute("select id from products where id = %s for no key update", (product,))
        first = worker()

        async def every_slot_blocked() -> bool:
            assert first.alive(), first.log_tail()
            waiting = await scalar(
                database_url,
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                " and datname = current_database() and pid <> pg_backend_pid()",
            )
            return int(waiting) >= CONCURRENCY

        await wait_until(every_slot_blocked, 60, "every job slot of the worker waits on the locked row")
        code = await asyncio.to_thread(first.stop, signal.SIGTERM, 30)  # None: not stopped within 30 s
        pending = await scalar(
            database_url, "select count(*) from orders where status = 'pending' and id = any(%s)", order_ids
        )
        await locker.rollback()

    assert code == 0, first.log_tail()
    assert pending == len(order_ids), "nothing was reserved: the jobs were cut off mid-transaction"

    second = worker()

    async def settled() -> bool:
        assert second.alive(), second.log_tail()
        return bool(
            await scalar(
                database_url,
                "select count(*) = 0 from orders where status = 'pending' and id = any(%s)",
                order_ids,
            )
        )

    await wait_until(settled, 60, "the second worker has reserved every order")
    left_pending = await scalar(
        database_url,
        "select count(*) from order_events where from_status = 'pending' and order_id = any(%s)",
        order_ids,
    )
    assert left_pending == len(order_ids), "every order left pending exactly once"
    stock = await scalar(database_url, "select stock from products where id = %s", product)
    held = {row.product_id: row.held for row in await order_queries.stock_ledger(db)}
    assert stock + held.get(product, 0) == 1000
    assert held.get(product, 0) == units
    await wait_until(
        query_holds(database_url, "select count(*) = 0 from outbox where published_at is null"),
        30,
        "every outbox row is published",
    )
