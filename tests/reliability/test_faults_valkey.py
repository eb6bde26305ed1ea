"""Valkey faults against the real server (granian, two workers) and the real worker process.

1. Stopped and restarted under mixed load. Injected: the server's private Valkey is stopped (every
   connection refused) while eight clients send page views, orders and tasks, then started again on
   the same port and data. Asserted: during the outage requests keep being served: page views,
   orders and tasks are acknowledged (the rate limit fails open and counts it in
   ``app_rate_limit_fail_open_total``; the site quota spends its lease, then fails open; bearer
   tokens are checked against PostgreSQL instead), ``/health/ready`` says 200 ``degraded`` naming
   ``valkey`` within its deadline (the instance serves: a load balancer keeps it); no answer is a
   500, a dropped connection or a hang. The outbox holds the outage's orders (none reserved, none
   lost) and once Valkey is back the same worker reserves them all.
   Lost: nothing: every acknowledged page view, order and task is stored, every order reserved once.
2. A Valkey that hangs. Injected: SIGSTOP of the Valkey process (connections are accepted by the
   kernel and never answered). Asserted: ``/health/ready`` answers (200, ``degraded``) naming
   ``valkey`` (its client's socket timeout: ``error``, or the check's deadline) and ``queue``
   (``timeout``); 24 concurrent
   requests (orders, tasks, page views) are each answered, while Valkey is still frozen, with an
   acknowledgement (fail open) or a 503 problem; after SIGCONT every check passes again. (Generous
   deadlines only: 30 s for readiness, 60 s per request.)
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
from psycopg import AsyncConnection

from tests.factories import PROBLEM, wait_until
from tests.faults import (
    GENEROUS,
    MixedLoad,
    Worker,
    open_shop,
    query_holds,
    readiness,
    scalar,
    stored,
)
from tests.served import ServerProcess
from tests.valkey_control import ControlledValkey

VALKEY_TIMEOUT_S = 0.5
HEALTH_TIMEOUT_S = 1.0
FAULT_ENV = {
    **GENEROUS,
    "VALKEY_TIMEOUT_S": str(VALKEY_TIMEOUT_S),
    "HEALTH_TIMEOUT_S": str(HEALTH_TIMEOUT_S),
    "HEALTH_READY_SHARED_S": "0",  # the probe right after the fault checks (sharing: test_health.py)
}


async def metric(base: str, name: str) -> float:
    """The sum of ``name`` over its label sets, from one granian worker (a new connection each call)."""
    async with httpx.AsyncClient() as fresh:
        text = (await fresh.get(f"{base}/metrics", timeout=10)).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


async def metric_above(base: str, name: str, value: float) -> bool:
    return await metric(base, name) > value


async def test_valkey_stopped_under_load_delays_background_work_and_loses_nothing(
    db: AsyncConnection[Any],
    database_url: str,
    controlled_valkey: ControlledValkey,
    http: httpx.AsyncClient,
    processes: list[ServerProcess | Worker],
    tmp_path: Path,
) -> None:
    shop = await open_shop(database_url)
    server = ServerProcess(database_url, controlled_valkey.url, tmp_path, env=FAULT_ENV)
    worker = Worker(tmp_path, database_url, controlled_valkey.url)
    processes += [server, worker]
    server.start()
    worker.start()
    await server.wait_ready(http)

    load = MixedLoad(http, server.base, shop)
    load.start()
    outage: tuple[int, dict[str, bool], float] | None = None
    try:
        await load.until_acked("before")
        load.phase = "outage"
        await asyncio.to_thread(controlled_valkey.stop)
        try:
            await load.until_acked("outage")
            outage = await readiness(http, server.base)
            # Each granian worker spends the tokens it leased before the outage first; then its
            # requests pass unchecked and are counted. Polled over fresh connections (either worker).
            await wait_until(
                lambda: metric_above(server.base, "app_rate_limit_fail_open_total", 0),
                60,
                "the rate limit failed open and counted it",
            )
            orders_in_outage = list(load.acked["order"])
            unreserved = await scalar(
                database_url,
                "select count(*) from orders where status = 'pending' and id = any(%s)",
                orders_in_outage,
            )
        finally:
            load.phase = "after"
            await asyncio.to_thread(controlled_valkey.start)
        await load.until_acked("after")
    finally:
        await load.stop()

    assert load.failures == [], load.failures[:10]
    assert load.count("outage", 503) == 0, dict(load.answers)
    assert outage is not None
    assert outage[0] == 200 and not outage[1]["valkey"], outage
    assert unreserved > 0, "orders placed during the outage wait in the outbox"

    in_database = await stored(database_url, load)
    for kind, acknowledged in load.acked.items():
        assert acknowledged - in_database[kind] == set(), f"acknowledged {kind}s were lost"

    async def all_reserved() -> bool:
        assert worker.alive(), "the worker must survive a Valkey outage\n" + worker.log_tail()
        pending = await scalar(
            database_url,
            "select count(*) from orders where id = any(%s) and status = 'pending'",
            list(load.acked["order"]),
        )
        return int(pending) == 0

    await wait_until(all_reserved, 60, "the worker has reserved every acknowledged order")
    await wait_until(
        query_holds(database_url, "select count(*) = 0 from outbox where published_at is null"),
        30,
        "every outbox row is published",
    )
    decisions = await scalar(
        database_url,
        "select count(*) from order_events where from_status = 'pending' and order_id = any(%s)",
        list(load.acked["order"]),
    )
    assert decisions == len(load.acked["order"]), "every order left pending exactly once"


async def test_a_valkey_that_hangs_gives_timely_answers(
    db: AsyncConnection[Any],
    database_url: str,
    controlled_valkey: ControlledValkey,
    http: httpx.AsyncClient,
    processes: list[ServerProcess | Worker],
    tmp_path: Path,
) -> None:
    shop = await open_shop(database_url)
    server = ServerProcess(database_url, controlled_valkey.url, tmp_path, env=FAULT_ENV)
    processes.append(server)
    server.start()
    await server.wait_ready(http)

    async def request(n: int) -> httpx.Response:
        if n % 3 == 0:
            response = await http.post(
                f"{server.base}/api/orders",
                json={"lines": [{"product_id": shop.product, "quantity": 1}]},
                headers=shop.headers[0] | {"Idempotency-Key": f"hang-{n}"},
                timeout=60,
            )
        elif n % 3 == 1:
            response = await http.post(
                f"{server.base}/api/projects/{shop.project}/tasks",
                json={"title": "hang"},
                headers=shop.headers[1],
                timeout=60,
            )
        else:
            response = await http.post(
                f"{server.base}/api/page-views",
                json={"site_key": shop.site_key, "url": "https://fault.example/hang"},
                timeout=60,
            )
        return response

    with controlled_valkey.paused():
        status, checks, failures = await readiness(http, server.base)
        answers = await asyncio.gather(*(request(n) for n in range(24)))

    assert status == 200 and not checks["valkey"] and not checks["queue"], checks
    assert checks["postgres"], checks
    assert failures["valkey"] in ("timeout", "error") and failures["queue"] == "timeout", failures
    for response in answers:  # each within its 60 s: none waits on the frozen Valkey
        assert response.status_code in (201, 202) or (
            response.status_code == 503 and response.headers["content-type"] == PROBLEM
        ), response.text

    async def ready() -> bool:
        status, checks, _ = await readiness(http, server.base)
        return status == 200 and all(checks.values())

    await wait_until(ready, 60, "every check answers again after SIGCONT")
