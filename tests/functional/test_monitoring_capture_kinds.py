"""Which database errors of a request are an outage and which are a bug of the site that raised them.

Every ``psycopg.OperationalError`` is answered 503 with ``Retry-After`` by ``app.core.errors``
(retrying is right for the client: a deadlock victim or a cancelled statement changed nothing).
Monitoring records only a connection or server going away as an ``unavailable`` group; a deadlock, a
serialization failure, our statement timeout or a lock not available is an ``error`` grouped by its
stack, one group per site.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg.errors
from litestar import Request, get
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import Services
from app.main import create_app
from tests.factories import scalar
from tests.functional.test_monitoring_groups import open_monitoring
from tests.functional.test_monitoring_http import wait_for
from tests.unit.test_monitoring_fingerprint import raise_bug

DEADLOCK = """
import psycopg.errors
def handler(value):
    raise psycopg.errors.DeadlockDetected("deadlock detected: process 4242 waits for ShareLock")
"""


def request_scope(route: str) -> dict[str, Any]:
    return {
        "type": "http",
        "path_template": route,
        "method": "POST",
        "state": {"request_id": uuid.uuid4().hex},
    }


async def test_deadlocks_at_two_sites_are_two_error_groups_and_each_alerts(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    orders = raise_bug(0, module="app.domains.orders.services", source=DEADLOCK)
    tasks = raise_bug(0, module="app.domains.tasks.services", source=DEADLOCK)
    async with open_monitoring(settings) as service:
        service.capture_exception(orders, request_scope("/api/orders"))  # type: ignore[arg-type]
        service.capture_exception(orders, request_scope("/api/orders"))  # type: ignore[arg-type]
        service.capture_exception(tasks, request_scope("/api/projects/{project_id:int}/tasks"))  # type: ignore[arg-type]
        await service.flush(force=True)
    rows = await (
        await db.execute("select kind::text, culprit, events from monitoring_groups order by culprit")
    ).fetchall()
    assert rows == [
        ("error", "app.domains.orders.services in handler", 2),
        ("error", "app.domains.tasks.services in handler", 1),
    ]
    assert await scalar(db, "select count(*) from monitoring_alerts where rule = 'new-group'") == 2


@get("/bench/deadlock-in-orders", sync_to_thread=False)
def deadlock_in_orders() -> None:
    raise psycopg.errors.DeadlockDetected("deadlock detected")


@get("/bench/deadlock-in-tasks", sync_to_thread=False)
def deadlock_in_tasks() -> None:
    raise psycopg.errors.DeadlockDetected("deadlock detected")


@get("/bench/statement-timeout")
async def statement_timeout(request: Request[Any, Any, Any]) -> None:
    services: Services = request.app.state["services"]
    async with services.db.transaction() as uow:
        await uow.conn.execute("set local statement_timeout = '20ms'")
        await uow.conn.execute("select pg_sleep(5)")


@get("/bench/server-shutting-down", sync_to_thread=False)
def server_shutting_down() -> None:
    raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")


async def test_the_answer_stays_a_503_and_only_an_outage_is_recorded_as_one(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    app = create_app(settings)
    for route in (deadlock_in_orders, deadlock_in_tasks, statement_timeout, server_shutting_down):
        app.register(route)
    async with AsyncTestClient(app=app) as client:
        for path, retry_after in (
            ("deadlock-in-orders", "1"),
            ("deadlock-in-tasks", "1"),
            ("statement-timeout", "5"),
            ("server-shutting-down", "5"),
        ):
            response = await client.get(f"/bench/{path}")
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == retry_after
            assert response.json()["type"] == "/problems/service-unavailable"
        await wait_for(db, "select count(*) from monitoring_groups", 4)
    rows = await (
        await db.execute("select kind::text, title, culprit from monitoring_groups order by title, culprit")
    ).fetchall()
    assert [(kind, title) for kind, title, _ in rows] == [
        ("error", "DeadlockDetected: deadlock detected"),
        ("error", "DeadlockDetected: deadlock detected"),
        ("unavailable", "Dependency unavailable: AdminShutdown"),
        ("error", "QueryCanceled: canceling statement due to statement timeout"),
    ]
    assert {culprit for _, title, culprit in rows if title.startswith("Deadlock")} == {
        f"{__name__} in deadlock_in_orders",
        f"{__name__} in deadlock_in_tasks",
    }
