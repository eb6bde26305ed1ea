"""The monitoring admin API and the capture of real 500s through the application."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from litestar import Litestar, get
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.config import Settings
from app.db.models import UserRole
from app.domains.monitoring.services import MonitoringService
from app.main import create_app
from tests.factories import Client, answer_racing, assert_problem, make_user
from tests.unit.test_monitoring_fingerprint import raise_bug

ADMIN = "/api/admin/monitoring"


async def wait_for(db: AsyncConnection[Any], sql: str, expected: Any, timeout: float = 30.0) -> None:
    """Poll until ``sql`` yields ``expected`` (the app's background task writes groups)."""
    deadline = time.monotonic() + timeout
    while True:
        row = await (await db.execute(sql)).fetchone()
        if row is not None and row[0] == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{sql!r} gave {row!r}, not {expected!r}, within {timeout} s")
        await asyncio.sleep(0.05)


async def test_test_error_answers_the_usual_500_and_is_captured(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN)
    response = await client.post(
        f"{ADMIN}/test-error", headers={**admin.headers, "X-Request-ID": "req-test-1"}
    )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "/problems/internal",
        "title": "Internal server error",
        "status": 500,
        "instance": f"{ADMIN}/test-error",
        "request_id": "req-test-1",
    }
    await wait_for(db, "select sum(events) from monitoring_groups where kind = 'error'", 1)
    listing = await client.get(f"{ADMIN}/errors?kind=error", headers=admin.headers)
    assert listing.status_code == 200, listing.text
    [group] = listing.json()["items"]
    assert (group["kind"], group["count"], group["users"], group["status"]) == ("error", 1, 1, "unresolved")
    assert group["title"].startswith("MonitoringTestError: Test error raised on purpose")
    assert group["culprit"] == "app.domains.monitoring.controllers in MonitoringController.test_error"
    detail = (await client.get(f"{ADMIN}/errors/{group['id']}", headers=admin.headers)).json()
    context = detail["latest_event"]["context"]
    assert context == {
        "source": "request",
        "route": f"{ADMIN}/test-error",
        "method": "POST",
        "request_id": "req-test-1",
        "user_id": admin.id,
    }
    assert detail["latest_event"]["release"] and detail["latest_event"]["environment"] == "test"
    alerts = (await client.get(f"{ADMIN}/alerts?group_id={group['id']}", headers=admin.headers)).json()[
        "items"
    ]
    assert [a["rule"] for a in alerts] == ["new-group"]
    assert alerts[0]["deliveries"] == [], "no Telegram token in the tests' settings: recorded, not sent"


async def test_client_errors_and_admin_refusals_are_not_captured(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    member = await make_user(db, app)
    admin = await make_user(db, app, UserRole.ADMIN)
    assert_problem(await client.post(f"{ADMIN}/test-error", headers=member.headers), 403, "forbidden")
    assert_problem(await client.get("/api/no-such-route"), 404)
    assert_problem(await client.get(f"{ADMIN}/errors", headers={"Authorization": "Bearer nope"}), 401)
    assert_problem(await client.post(f"{ADMIN}/errors/1/resolve", json={"x": 1}, headers=admin.headers), 400)
    assert_problem(
        await client.post(f"{ADMIN}/errors/1/resolve", json={"mode": "now"}, headers=admin.headers), 404
    )
    # Then one real 500: once it is written, it is the only event captured.
    assert_problem(await client.post(f"{ADMIN}/test-error", headers=admin.headers), 500, "internal")
    await wait_for(
        db,
        "select count(*) from monitoring_events e"
        " join monitoring_groups g on g.id = e.group_id where g.kind = 'error'",
        1,
    )
    title = await (await db.execute("select title from monitoring_groups where kind = 'error'")).fetchone()
    assert title is not None and title[0].startswith("MonitoringTestError")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/errors"),
        ("GET", "/errors/1"),
        ("GET", "/errors/1/events"),
        ("GET", "/errors/1/grouping"),
        ("POST", "/errors/1/resolve"),
        ("POST", "/errors/1/ignore"),
        ("POST", "/errors/1/unresolve"),
        ("POST", "/errors/1/merge"),
        ("POST", "/errors/1/unmerge"),
        ("GET", "/slow-routes"),
        ("GET", "/crons"),
        ("GET", "/jobs"),
        ("GET", "/alerts"),
        ("POST", "/test-error"),
    ],
)
async def test_admins_only(
    client: Client, app: Litestar, db: AsyncConnection[Any], method: str, path: str
) -> None:
    member = await make_user(db, app)
    body = (
        {"source_ids": [2]} if path.endswith("merge") else {"mode": "now"} if path.endswith("resolve") else {}
    )
    assert_problem(await client.request(method, ADMIN + path, json=body), 401, "unauthorized")
    assert_problem(
        await client.request(method, ADMIN + path, json=body, headers=member.headers), 403, "forbidden"
    )


@pytest.fixture
async def monitoring(app: Litestar) -> MonitoringService:
    return app.state.services[MonitoringService]  # type: ignore[no-any-return]


async def write(client: Client, app: Litestar, exc: BaseException, count: int = 1) -> int:
    """Write ``count`` events of ``exc`` through the app's own service (in the app's loop)."""
    from tests.functional.test_monitoring_groups import error_event

    service: MonitoringService = app.state.services[MonitoringService]
    portal = client.blocking_portal
    assert portal is not None
    results = await asyncio.wrap_future(
        portal.start_task_soon(service.write_now, [error_event(exc) for _ in range(count)])
    )
    return results[0].root_id  # type: ignore[no-any-return]


# What a concurrent unmerge of the group does first: lock its root, then make the group a root.
UNMERGED_MEANWHILE = """
with target as (select %s::bigint as id),
root as (
    select r.id from monitoring_groups r join monitoring_groups g on r.id = g.root_id
    join target on g.id = target.id
    for update of r
)
update monitoring_groups m set parent_id = null, root_id = m.id
from target where m.id = target.id and exists (select 1 from root)"""


async def test_an_unmerge_racing_another_is_a_409_and_records_nothing(
    client: Client, app: Litestar, db: AsyncConnection[Any], database_url: str
) -> None:
    """The second of two concurrent unmerges read the group while it was still merged and waited for
    its root's lock; it then found the group a root of its own and still answered 200, recording an
    "unmerged" activity from the group itself."""
    admin = await make_user(db, app, UserRole.ADMIN)
    first = await write(client, app, raise_bug(0, source="def handler(v):\n    raise KeyError(v)\n"))
    second = await write(client, app, raise_bug(0, source="def handler(v):\n    raise LookupError(v)\n"))
    merged = await client.post(
        f"{ADMIN}/errors/{first}/merge", json={"source_ids": [second]}, headers=admin.headers
    )
    assert merged.status_code == 200, merged.text
    answer = await answer_racing(
        database_url,
        UNMERGED_MEANWHILE,
        second,
        lambda: client.post(f"{ADMIN}/errors/{second}/unmerge", headers=admin.headers),
    )
    assert_problem(answer, 409, "conflict")
    unmerged = await db.execute("select count(*) from monitoring_group_activity where action = 'unmerged'")
    assert await unmerged.fetchone() == (0,)


async def test_resolve_ignore_merge_unmerge_over_http(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN)
    h = admin.headers
    first_bug = raise_bug(0, source="def handler(v):\n    raise KeyError(v)\n")
    first = await write(client, app, first_bug, 3)
    second = await write(client, app, raise_bug(0, source="def handler(v):\n    raise LookupError(v)\n"), 2)

    running = app.state.services[MonitoringService].release  # a release that has run: this one
    in_release = {"mode": "in_release", "release": running}
    resolved = await client.post(f"{ADMIN}/errors/{first}/resolve", json=in_release, headers=h)
    assert resolved.status_code == 200, resolved.text
    assert (resolved.json()["status"], resolved.json()["resolved_in_release"]) == ("resolved", running)
    both = {"mode": "in_next_release", "release": "1"}
    assert_problem(
        await client.post(f"{ADMIN}/errors/{first}/resolve", json=both, headers=h), 400, "validation"
    )
    assert_problem(
        await client.post(f"{ADMIN}/errors/{first}/resolve", json={}, headers=h), 400, "validation"
    )

    ignored = await client.post(
        f"{ADMIN}/errors/{second}/ignore", json={"mode": "until_count", "count": 10}, headers=h
    )
    assert (ignored.json()["status"], ignored.json()["ignore_until_events"]) == ("ignored", 12)
    no_time = {"mode": "until_time"}
    assert_problem(
        await client.post(f"{ADMIN}/errors/{second}/ignore", json=no_time, headers=h), 400, "validation"
    )
    naive = {"mode": "until_time", "until": "2030-01-01T00:00:00"}
    assert_problem(
        await client.post(f"{ADMIN}/errors/{second}/ignore", json=naive, headers=h), 400, "validation"
    )

    merged = await client.post(f"{ADMIN}/errors/{first}/merge", json={"source_ids": [second]}, headers=h)
    assert merged.status_code == 200, merged.text
    assert (merged.json()["count"], sorted(merged.json()["members"])) == (5, sorted([first, second]))
    listing = (await client.get(f"{ADMIN}/errors?kind=error", headers=h)).json()["items"]
    assert [(g["id"], g["count"], g["merged_groups"]) for g in listing] == [(first, 5, 1)]
    now = {"mode": "now"}
    assert_problem(
        await client.post(f"{ADMIN}/errors/{second}/resolve", json=now, headers=h), 409, "conflict"
    )
    itself = {"source_ids": [first]}
    assert_problem(
        await client.post(f"{ADMIN}/errors/{first}/merge", json=itself, headers=h), 409, "conflict"
    )
    assert_problem(await client.post(f"{ADMIN}/errors/{first}/unmerge", headers=h), 409, "conflict")
    events = (await client.get(f"{ADMIN}/errors/{first}/events?limit=2", headers=h)).json()
    assert len(events["items"]) == 2 and events["next_cursor"]
    rest = (
        await client.get(f"{ADMIN}/errors/{first}/events?cursor={events['next_cursor']}", headers=h)
    ).json()
    assert len(rest["items"]) == 3 and rest["next_cursor"] is None

    unmerged = await client.post(f"{ADMIN}/errors/{second}/unmerge", headers=h)
    assert (unmerged.json()["count"], unmerged.json()["merged_into"], unmerged.json()["status"]) == (
        2,
        None,
        "ignored",
    )
    listing = (await client.get(f"{ADMIN}/errors?status=resolved&kind=error", headers=h)).json()["items"]
    assert [(g["id"], g["count"]) for g in listing] == [(first, 3)]
    page = (await client.get(f"{ADMIN}/errors?limit=1&kind=error", headers=h)).json()
    assert [g["id"] for g in page["items"]] == [second] and page["next_cursor"] == str(second)
    assert_problem(await client.get(f"{ADMIN}/errors/999999", headers=h), 404)
    assert_problem(await client.get(f"{ADMIN}/errors?cursor=abc", headers=h), 400)
    assert_problem(await client.get(f"{ADMIN}/errors?status=bogus", headers=h), 400, "validation")

    created = (await client.get(f"{ADMIN}/errors/{first}/grouping", headers=h)).json()["latest_event"]
    assert (created["matched_variant"], created["reason"]) == (
        None,
        "no group held any of the event's hashes: a new group",
    )
    assert await write(client, app, first_bug) == first
    grouping = (await client.get(f"{ADMIN}/errors/{first}/grouping", headers=h)).json()
    assert {row["variant"] for row in grouping["hashes"]} == {"in_app", "all_frames"}
    latest = grouping["latest_event"]
    assert latest["matched_variant"] == "in_app"
    assert latest["reason"].startswith("the in_app hash matched group")
    assert [v["name"] for v in latest["variants"]] == ["in_app", "all_frames"]
    assert all(v["held_by_group"] for v in latest["variants"])
    assert latest["variants"][0]["components"][0] == "type KeyError"

    for path in ("/slow-routes?window=5m", "/crons", "/jobs?window=7d", f"/alerts?group_id={first}"):
        response = await client.get(ADMIN + path, headers=h)
        assert response.status_code == 200, (path, response.text)
    service: MonitoringService = app.state.services[MonitoringService]
    assert client.blocking_portal is not None
    await asyncio.wrap_future(
        client.blocking_portal.start_task_soon(service.register_monitors)
    )  # as at start
    crons = {item["name"] for item in (await client.get(f"{ADMIN}/crons", headers=h)).json()["items"]}
    assert {"purge_outbox", "rollup_page_views", "deliver_alerts", "run_monitoring_checks"} <= crons


@get("/bench/monitoring-boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("boom")


async def problem_of(settings: Settings) -> tuple[int, dict[str, str], bytes]:
    app = create_app(settings)
    app.register(boom)
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/bench/monitoring-boom", headers={"X-Request-ID": "same-id"})
        return response.status_code, {"content-type": response.headers["content-type"]}, response.content


async def test_a_500_answers_the_same_bytes_with_and_without_monitoring(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    enabled = await problem_of(settings)
    disabled = await problem_of(msgspec.structs.replace(settings, monitoring_enabled=False))
    assert enabled == disabled
    assert enabled[0] == 500
    assert msgspec.json.decode(enabled[2]) == {
        "type": "/problems/internal",
        "title": "Internal server error",
        "status": 500,
        "instance": "/bench/monitoring-boom",
        "request_id": "same-id",
    }


async def test_union_bodies_are_decoded_strictly(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN)
    group = await write(client, app, raise_bug(0))
    # each refusal names its field, as for a Struct body (they were all "body")
    for body, field in (
        ({"mode": "until_time", "until": 0}, "until"),  # a number is not a date-time
        ({"mode": "until_count", "count": "5"}, "count"),
        ({"mode": "until_count", "count": 0}, "count"),
        ({"mode": "forever", "extra": 1}, "extra"),
        ({"mode": "bogus"}, "mode"),
        ({"mode": ["forever"]}, "mode"),
        ({"count": 5}, "mode"),
    ):
        response = await client.post(f"{ADMIN}/errors/{group}/ignore", json=body, headers=admin.headers)
        problem = assert_problem(response, 400, "validation", {field})
        assert [error["field"] for error in problem["errors"]] == [field], (body, problem)
    refused = await client.post(
        f"{ADMIN}/errors/{group}/resolve",
        json={"mode": "in_release", "release": "\u0000"},
        headers=admin.headers,
    )
    assert [error["field"] for error in assert_problem(refused, 400, "validation")["errors"]] == ["release"]
    ok = await client.post(
        f"{ADMIN}/errors/{group}/ignore", json={"mode": "until_count", "count": 5.0}, headers=admin.headers
    )
    assert ok.status_code == 200, ok.text
    assert_problem(
        await client.post(f"{ADMIN}/errors/{group}/merge", json={"source_ids": [0]}, headers=admin.headers),
        400,
    )
