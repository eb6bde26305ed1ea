"""Every administrator's write decides by the actor's row, not the token's role claim
(CONVENTIONS.md: "the token's role is a claim; the row decides"): a token issued before its user was
demoted or deactivated (issued here for a row that is not an active administrator's) writes nothing
and answers 403, and a demotion committed while the write waits for the row is seen by it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.db.models import UserRole
from app.domains.monitoring.services import MonitoringService
from tests.factories import Client, answer_racing, assert_problem, create_user, make_product, mint_headers
from tests.functional.test_monitoring_http import write
from tests.unit.test_monitoring_fingerprint import raise_bug

MONITORING = "/api/admin/monitoring/errors"


class Scene(msgspec.Struct, frozen=True):
    """What each write acts on: a product, a paid order, a refund due, two error groups (``merged``
    merged into ``target``, ``loose`` a root of its own)."""

    product: int
    paid_order: int
    pending_order: int
    refund_event: str
    target: int
    merged: int
    loose: int


Request = tuple[str, str, dict[str, Any] | None]
ROUTES: dict[str, Callable[[Scene], Request]] = {
    "create product": lambda s: ("POST", "/api/products", {"sku": "NEW-1", "name": "New", "price": "1.00"}),
    "update product": lambda s: ("PATCH", f"/api/products/{s.product}", {"name": "Renamed"}),
    "adjust stock": lambda s: (
        "POST",
        f"/api/products/{s.product}/stock-adjustments",
        {"delta": 5, "reason": "restock"},
    ),
    "fulfil order": lambda s: ("POST", f"/api/orders/{s.paid_order}/fulfil", None),
    "mark refunded": lambda s: ("POST", "/api/admin/payments/refunded", {"event_id": s.refund_event}),
    "resolve": lambda s: ("POST", f"{MONITORING}/{s.loose}/resolve", {"mode": "now"}),
    "ignore": lambda s: ("POST", f"{MONITORING}/{s.loose}/ignore", {"mode": "forever"}),
    "unresolve": lambda s: ("POST", f"{MONITORING}/{s.target}/unresolve", None),
    "merge": lambda s: ("POST", f"{MONITORING}/{s.target}/merge", {"source_ids": [s.loose]}),
    "unmerge": lambda s: ("POST", f"{MONITORING}/{s.merged}/unmerge", None),
    "test error": lambda s: ("POST", "/api/admin/monitoring/test-error", None),
}

# What the writes above change. Of the monitoring groups, the scene's only (the app is shared by the
# session: an error another test made it capture, the test-error route's 500 above all, is written by
# its background flush whenever it runs), and only what an administrator's action sets (status, tree,
# ignore): their counters and times are the capture's.
STATE = (
    "select (select coalesce(jsonb_agg(to_jsonb(p) order by p.id), '[]') from products p),"
    " (select count(*) from stock_adjustments),"
    " (select coalesce(jsonb_agg(to_jsonb(o) order by o.id), '[]') from orders o),"
    " (select count(*) from order_events),"
    " (select coalesce(jsonb_agg(to_jsonb(e) order by e.event_id), '[]') from payment_events e),"
    " (select coalesce(jsonb_agg(jsonb_build_array(g.id, g.status, g.root_id, g.parent_id, g.resolved_at,"
    "   g.ignore_mode, g.ignore_until, g.ignore_until_events) order by g.id), '[]')"
    "   from monitoring_groups g where g.id = any(%(groups)s)),"
    " (select count(*) from monitoring_group_activity where group_id = any(%(groups)s))"
)


async def state(db: AsyncConnection[Any], scene: Scene) -> Any:
    groups = [scene.target, scene.merged, scene.loose]
    return await (await db.execute(STATE, {"groups": groups})).fetchone()


@pytest.fixture
async def scene(client: Client, app: Litestar, db: AsyncConnection[Any]) -> Scene:
    buyer = await create_user(db)
    product = await make_product(db)
    orders = await (
        await db.execute(
            "insert into orders (user_id, status, total, currency)"
            " values (%s, 'paid', 2.50, 'EUR'), (%s, 'pending', 2.50, 'EUR') returning id",
            (buyer.id, buyer.id),
        )
    ).fetchall()
    await db.execute(
        "insert into payment_events (event_id, outcome, payment_id, amount, currency)"
        " values ('evt-due', 'refund-due', 'pay-due', 4.00, 'EUR')"
    )
    target = await write(client, app, raise_bug(0, source="def handler(v):\n    raise KeyError(v)\n"))
    merged = await write(client, app, raise_bug(0, source="def handler(v):\n    raise LookupError(v)\n"))
    loose = await write(client, app, raise_bug(0, source="def handler(v):\n    raise ValueError(v)\n"))
    service: MonitoringService = app.state.services[MonitoringService]
    portal = client.blocking_portal
    assert portal is not None
    await asyncio.wrap_future(portal.start_task_soon(service.merge, target, [merged], None))
    return Scene(product, orders[0][0], orders[1][0], "evt-due", target, merged, loose)


async def send(client: Client, headers: dict[str, str], request: Request) -> Any:
    method, path, body = request
    return await client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("row", ["member", "deactivated admin"])
async def test_a_token_claiming_admin_for_a_row_that_is_not_an_active_admin_writes_nothing(
    client: Client, app: Litestar, db: AsyncConnection[Any], scene: Scene, route: str, row: str
) -> None:
    """As a token issued just before its user's demotion or deactivation committed."""
    user = await (
        create_user(db, role=UserRole.MEMBER)
        if row == "member"
        else create_user(db, role=UserRole.ADMIN, is_active=False)
    )
    before = await state(db, scene)
    answer = await send(client, mint_headers(app, user.id, UserRole.ADMIN), ROUTES[route](scene))
    assert_problem(answer, 403, "forbidden")
    assert await state(db, scene) == before


@pytest.mark.parametrize("route", ROUTES)
async def test_an_active_administrator_still_writes(
    client: Client, app: Litestar, db: AsyncConnection[Any], scene: Scene, route: str
) -> None:
    admin = await create_user(db, role=UserRole.ADMIN)
    before = await state(db, scene)
    answer = await send(client, mint_headers(app, admin.id, UserRole.ADMIN), ROUTES[route](scene))
    if route == "test error":  # its write is the captured 500 itself
        assert_problem(answer, 500, "internal")
        return
    assert 200 <= answer.status_code < 300, answer.text
    assert await state(db, scene) != before


@pytest.mark.parametrize("route", ["adjust stock", "fulfil order", "mark refunded", "merge"])
async def test_a_demotion_committed_while_the_write_waits_for_the_actor_is_seen(
    client: Client, app: Litestar, db: AsyncConnection[Any], database_url: str, scene: Scene, route: str
) -> None:
    """The write takes the actor's row before anything else: a demotion holding it (as
    ``admin_update`` does) is waited for, then seen."""
    admin = await create_user(db, role=UserRole.ADMIN)
    headers = mint_headers(app, admin.id, UserRole.ADMIN)
    before = await state(db, scene)
    answer = await answer_racing(
        database_url,
        "update users set role = 'member' where id = %s",
        admin.id,
        lambda: send(client, headers, ROUTES[route](scene)),
    )
    assert_problem(answer, 403, "forbidden")
    assert await state(db, scene) == before


async def test_cancelling_anothers_order_takes_the_administrators_row_not_the_claim(
    client: Client, app: Litestar, db: AsyncConnection[Any], scene: Scene
) -> None:
    """Cancelling someone else's order is an administrator's write too (the buyer's own needs no
    role): a claim the row does not back is answered as for any other caller, 404."""
    demoted = await create_user(db, role=UserRole.MEMBER)
    cancel = ("POST", f"/api/orders/{scene.pending_order}/cancel", None)
    before = await state(db, scene)
    assert_problem(
        await send(client, mint_headers(app, demoted.id, UserRole.ADMIN), cancel), 404, "not-found"
    )
    assert await state(db, scene) == before
    admin = await create_user(db, role=UserRole.ADMIN)
    answer = await send(client, mint_headers(app, admin.id, UserRole.ADMIN), cancel)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
