"""Two API processes and two worker processes on one machine, one database and one Valkey.

Injected: concurrency between processes. Two granian servers and two ``python -m workers`` run side
by side; eight clients spread page views, orders and tasks over both servers, and both workers'
relays and job slots compete for the same outbox rows and jobs (each order's reservation and every
event's feed write). Asserted, "exactly once in effect":
- every outbox row is published, every acknowledged order left ``pending`` exactly once (reserved:
  the stock is ample) and the stock ledger balances (no double reservation);
- every event (the order's placement and reservation, the task's creation) is in the feed once, and
  the feed's groups are consistent: each group's ``event_count`` is the number of its events, and the
  groups of one stream never overlap (no duplicate group built by two writers at once).
- the rate limiter never admits over quota across processes: 90 sign-in attempts from one address,
  split over both servers at once, against an ``auth`` quota of 24 per hour: at most 24 are let
  through (401), the rest are 429.
Lost: nothing: every acknowledged page view, order and task is stored.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection

from app.db import orders as order_queries
from tests.factories import wait_until
from tests.faults import (
    GENEROUS,
    MixedLoad,
    Worker,
    open_shop,
    query_holds,
    scalar,
    stored,
)
from tests.served import ServerProcess
from tests.valkey_control import ControlledValkey

AUTH_PER_HOUR = 24
ENV = {**GENEROUS, "RATE_LIMIT_AUTH_PER_MINUTE": "100000", "RATE_LIMIT_AUTH_PER_HOUR": str(AUTH_PER_HOUR)}
STOCK = 1_000_000


@pytest.fixture
def processes() -> Iterator[list[ServerProcess | Worker]]:
    started: list[ServerProcess | Worker] = []
    yield started
    for process in started:
        if isinstance(process, ServerProcess):
            process.kill(signal.SIGTERM)
        else:
            process.stop(signal.SIGTERM)


class TwoServers(MixedLoad):
    """``MixedLoad`` whose clients alternate between two servers."""

    def __init__(self, http: httpx.AsyncClient, bases: list[str], *args: Any) -> None:
        super().__init__(http, bases[0], *args)
        self.bases = bases

    async def _client(self, n: int) -> None:
        headers = self.shop.headers[n % len(self.shop.headers)]
        turn = n
        while not self._stop.is_set():
            self.base = self.bases[turn % 2]  # the clients share one event loop: set just before sending
            await self._send(("view", "order", "task")[turn % 3], headers)
            turn += 1


async def test_two_servers_and_two_workers_process_every_event_exactly_once(
    db: AsyncConnection[Any],
    database_url: str,
    controlled_valkey: ControlledValkey,
    http: httpx.AsyncClient,
    processes: list[ServerProcess | Worker],
    tmp_path: Path,
) -> None:
    shop = await open_shop(database_url, stock=STOCK)
    servers = [
        ServerProcess(database_url, controlled_valkey.url, tmp_path, workers=1, env=ENV) for _ in range(2)
    ]
    workers = [Worker(tmp_path, database_url, controlled_valkey.url, **ENV) for _ in range(2)]
    processes += [*servers, *workers]
    for server in servers:
        server.start()
    for worker in workers:
        worker.start()
    for server in servers:
        await server.wait_ready(http)

    # The rate limit across processes: one address, both servers at once.
    async def sign_in(n: int) -> int:
        response = await http.post(
            f"{servers[n % 2].base}/api/auth/login",
            json={"email": f"nobody-{secrets.token_hex(8)}@example.com", "password": "not the password"},
        )
        return response.status_code

    into_hour = time.time() % 3600  # the burst stays inside one hour window (the quota is per hour)
    if into_hour >= 3600 - 10:
        await asyncio.sleep(3600 - into_hour + 0.05)
    statuses = await asyncio.gather(*(sign_in(n) for n in range(90)))
    assert set(statuses) <= {401, 429}, statuses
    admitted = statuses.count(401)
    assert 0 < admitted <= AUTH_PER_HOUR, f"{admitted} admitted over a quota of {AUTH_PER_HOUR}"

    load = TwoServers(http, [s.base for s in servers], shop)
    load.start()
    try:
        await load.until_acked("before", 40)
    finally:
        await load.stop()
    assert load.failures == [], load.failures[:10]

    in_database = await stored(database_url, load)
    for kind, acknowledged in load.acked.items():
        assert acknowledged - in_database[kind] == set(), f"acknowledged {kind}s were lost"

    order_ids = sorted(load.acked["order"])
    task_ids = sorted(load.acked["task"])

    async def settled() -> bool:
        assert all(w.alive() for w in workers), "\n".join(w.log_tail() for w in workers)
        return bool(
            await scalar(
                database_url,
                "select (select count(*) = 0 from outbox where published_at is null)"
                " and (select count(*) = 0 from orders where status = 'pending')"
                " and (select count(*) from activity_events where verb = 'order.reserved') = %s"
                " and (select count(*) from activity_events where verb = 'task.created') = %s",
                len(order_ids),
                len(task_ids),
            )
        )

    await wait_until(settled, 90, "both workers have reserved every order and fed every event")

    # Exactly once in effect: orders.
    left_pending = await scalar(
        database_url,
        "select count(*) from order_events where from_status = 'pending' and order_id = any(%s)",
        order_ids,
    )
    assert left_pending == len(order_ids), "an order was decided twice"
    assert await scalar(database_url, "select count(*) from orders where status = 'reserved'") == len(
        order_ids
    )
    held = {row.product_id: row.held for row in await order_queries.stock_ledger(db)}
    stock = await scalar(database_url, "select stock from products where id = %s", shop.product)
    assert stock + held[shop.product] == STOCK
    assert held[shop.product] == len(order_ids), "one unit per order, reserved once"

    # Exactly once in effect: the feed.
    duplicates = await scalar(
        database_url,
        "select count(*) from (select verb, object_type, object_id from activity_events"
        " group by 1, 2, 3 having count(*) > 1) d",
    )
    assert duplicates == 0, "an event is in the feed twice"
    for verb, objects in (
        ("order.placed", order_ids),
        ("order.reserved", order_ids),
        ("task.created", task_ids),
    ):
        fed = await scalar(
            database_url,
            "select count(*) from activity_events where verb = %s and object_id = any(%s)",
            verb,
            objects,
        )
        assert fed == len(objects), (verb, fed, len(objects))
    miscounted = await scalar(
        database_url,
        "select count(*) from activity_groups g"
        " where g.event_count <> (select count(*) from activity_events e where e.group_id = g.id)",
    )
    assert miscounted == 0, "a group's counter counts an event twice (or misses one)"
    overlapping = await scalar(
        database_url,
        "select count(*) from activity_groups a join activity_groups b"
        " on a.stream = b.stream and a.id < b.id"
        " and a.first_seq <= b.last_seq and b.first_seq <= a.last_seq",
    )
    assert overlapping == 0, "two groups of one stream overlap: a duplicate group"
    await wait_until(
        query_holds(database_url, "select count(*) = 0 from outbox where published_at is null"),
        10,
        "all published",
    )
