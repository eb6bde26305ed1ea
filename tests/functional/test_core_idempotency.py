"""An optional ``Idempotency-Key`` on every creating route (``app/core/idempotency.py``): a retry after a
lost answer creates one project, task, comment or site, and replays the first answer.

Each test runs for the four routes. ``Route`` says how to reach each one, how to hold a creation
after it has claimed its key (a lock the creation takes, as ``test_orders_http`` holds the buyer's
row), how to make the service refuse it (and then allow it), and where its rows are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.idempotency import Idempotency, IdempotencyClaim, StoredAnswer
from app.core.types import whole
from app.db import idempotency as idempotency_queries
from app.db.models import ProjectRole
from tests.factories import (
    Actor,
    assert_problem,
    make_project,
    make_site,
    make_task,
    make_user,
    scalar,
    serve_in_loop,
    wait_until,
)

Client = httpx.AsyncClient
LIMIT = 2
"""PROJECTS_PER_USER_MAX and SITES_PER_USER_MAX here: a creation past it is refused (409)."""


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[tuple[Litestar, Client]]:
    """The app in the test's own event loop, so that requests really run concurrently."""
    async with serve_in_loop(
        settings,
        rate_limit_default_per_minute=100_000,
        projects_per_user_max=LIMIT,
        sites_per_user_max=LIMIT,
    ) as running:
        yield running.app, running.client


@pytest.fixture
async def app_client(
    served: tuple[Litestar, Client], db: AsyncConnection[Any], valkey: Valkey
) -> tuple[Litestar, Client]:
    """The module's app on a clean database and Valkey."""
    return served


@dataclass
class Setup:
    """One route, ready for ``caller``: where to post, and what the route's state hooks need."""

    caller: Actor
    path: str
    project_id: int
    task_id: int


@dataclass(frozen=True)
class Route:
    name: str
    table: str
    body: dict[str, Any]
    other_body: dict[str, Any]
    path: Callable[[Setup], str]
    hold: str
    """SQL (one parameter, ``hold_id``'s) a creation of this route waits for once it has claimed."""
    hold_id: Callable[[Setup], int]
    refuse: Callable[[AsyncConnection[Any], Setup], Awaitable[str]]
    """Make the service refuse the next creation; returns the problem's slug."""
    allow: Callable[[AsyncConnection[Any], Setup], Awaitable[None]]
    """Undo ``refuse``: the same request is accepted."""


async def _set_role(db: AsyncConnection[Any], setup: Setup, role: ProjectRole) -> None:
    await db.execute(
        "update project_members set role = %s where project_id = %s and user_id = %s",
        (role, setup.project_id, setup.caller.id),
    )


async def _viewer(db: AsyncConnection[Any], setup: Setup) -> str:
    await _set_role(db, setup, ProjectRole.VIEWER)
    return "forbidden"


async def _editor(db: AsyncConnection[Any], setup: Setup) -> None:
    await _set_role(db, setup, ProjectRole.EDITOR)


async def _projects_at_limit(db: AsyncConnection[Any], setup: Setup) -> str:
    while await scalar(db, "select count(*) from projects where owner_id = %s", setup.caller.id) < LIMIT:
        await make_project(db, setup.caller, name="Filler")
    return "project-limit"


async def _one_project_less(db: AsyncConnection[Any], setup: Setup) -> None:
    await db.execute(
        "delete from projects where id = (select max(id) from projects where owner_id = %s)",
        (setup.caller.id,),
    )


async def _sites_at_limit(db: AsyncConnection[Any], setup: Setup) -> str:
    while await scalar(db, "select count(*) from sites where owner_id = %s", setup.caller.id) < LIMIT:
        await make_site(db, setup.caller, domain="filler.example")
    return "site-limit"


async def _one_site_less(db: AsyncConnection[Any], setup: Setup) -> None:
    await db.execute(
        "delete from sites where id = (select max(id) from sites where owner_id = %s)", (setup.caller.id,)
    )


ROUTES = [
    Route(
        name="project",
        table="projects",
        body={"name": "Apollo", "description": "to the moon"},
        other_body={"name": "Gemini"},
        path=lambda setup: "/api/projects",
        hold="select pg_advisory_xact_lock(hashtextextended(concat('projects-creator:', %s::bigint), 0))",
        hold_id=lambda setup: setup.caller.id,
        refuse=_projects_at_limit,
        allow=_one_project_less,
    ),
    Route(
        name="task",
        table="tasks",
        body={"title": "Write the launch plan", "priority": "high"},
        other_body={"title": "Write the launch plan", "priority": "low"},
        path=lambda setup: f"/api/projects/{setup.project_id}/tasks",
        hold="select pg_advisory_xact_lock(hashtextextended(concat('task-positions:', %s::bigint), 0))",
        hold_id=lambda setup: setup.project_id,
        refuse=_viewer,
        allow=_editor,
    ),
    Route(
        name="comment",
        table="comments",
        body={"body": "Looks good to me."},
        other_body={"body": "Looks good to me!"},
        path=lambda setup: f"/api/tasks/{setup.task_id}/comments",
        hold="select id from tasks where id = %s for no key update",
        hold_id=lambda setup: setup.task_id,
        refuse=_viewer,
        allow=_editor,
    ),
    Route(
        name="site",
        table="sites",
        body={"domain": "example.com", "timezone": "Europe/Berlin"},
        other_body={"domain": "example.org", "timezone": "Europe/Berlin"},
        path=lambda setup: "/api/sites",
        hold="select pg_advisory_xact_lock(hashtextextended(concat('sites-owner:', %s::bigint), 0))",
        hold_id=lambda setup: setup.caller.id,
        refuse=_sites_at_limit,
        allow=_one_site_less,
    ),
]
BY_NAME = {route.name: route for route in ROUTES}
each_route = pytest.mark.parametrize("route", ROUTES, ids=[route.name for route in ROUTES])


async def setup_for(app: Litestar, db: AsyncConnection[Any], route: Route) -> Setup:
    """A caller who may create on ``route`` (an editor of a project with a task, owned by another)."""
    caller, owner = await make_user(db, app), await make_user(db, app)
    project_id = await make_project(db, owner, {caller.id: ProjectRole.EDITOR})
    task_id = await make_task(db, project_id, owner)
    setup = Setup(caller=caller, path="", project_id=project_id, task_id=task_id)
    setup.path = route.path(setup)
    return setup


async def rows_of(db: AsyncConnection[Any], route: Route, setup: Setup) -> int:
    """The route's rows that ``setup``'s caller created."""
    creator = {"projects": "owner_id", "tasks": "created_by", "comments": "author_id", "sites": "owner_id"}
    sql = f"select count(*) from {route.table} where {creator[route.table]} = %s"
    return int(await scalar(db, sql, setup.caller.id))


async def post(
    client: Client, setup: Setup, body: dict[str, Any], key: str | None, who: Actor | None = None
) -> httpx.Response:
    headers = (who or setup.caller).headers | ({"Idempotency-Key": key} if key is not None else {})
    return await client.post(setup.path, json=body, headers=headers)


@each_route
async def test_a_retry_creates_once_and_replays_the_first_answer(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], route: Route
) -> None:
    app, client = app_client
    setup = await setup_for(app, db, route)
    first = await post(client, setup, route.body, "retry-1")
    assert first.status_code == 201, first.text
    assert first.headers["idempotent-replayed"] == "false"
    again = await post(client, setup, route.body, "retry-1")
    assert again.status_code == 201, again.text
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == "application/json"
    assert await rows_of(db, route, setup) == 1
    stored = await (
        await db.execute(
            "select response_status, resource_id from idempotency_keys"
            " where user_id = %s and key = 'retry-1'",
            (setup.caller.id,),
        )
    ).fetchone()
    assert stored == (201, first.json()["id"])


@each_route
async def test_the_created_row_and_its_stored_answer_commit_together(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], route: Route
) -> None:
    """One transaction wrote the resource and completed its key (their xmin is one transaction's)."""
    app, client = app_client
    setup = await setup_for(app, db, route)
    created = await post(client, setup, route.body, "atomic")
    assert created.status_code == 201, created.text
    sql = (
        f"select (select xmin::text from {route.table} where id = %(id)s),"
        " (select xmin::text from idempotency_keys where user_id = %(user)s and key = 'atomic')"
    )
    xmins = await (await db.execute(sql, {"id": created.json()["id"], "user": setup.caller.id})).fetchone()
    assert xmins is not None and None not in xmins and len(set(xmins)) == 1, xmins


@each_route
async def test_without_a_key_every_request_creates(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], route: Route
) -> None:
    app, client = app_client
    setup = await setup_for(app, db, route)
    first = await post(client, setup, route.body, None)
    second = await post(client, setup, route.body, None)
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert first.json()["id"] != second.json()["id"]
    assert "idempotent-replayed" not in first.headers
    assert await rows_of(db, route, setup) == 2
    assert await scalar(db, "select count(*) from idempotency_keys") == 0


@each_route
async def test_the_same_key_with_another_body_is_422(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], route: Route
) -> None:
    app, client = app_client
    setup = await setup_for(app, db, route)
    assert (await post(client, setup, route.body, "k")).status_code == 201
    assert_problem(await post(client, setup, route.other_body, "k"), 422, "idempotency-key-reused")
    assert await rows_of(db, route, setup) == 1


@each_route
async def test_the_same_key_on_another_route_is_422(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], route: Route
) -> None:
    """Whichever route used the key first, another route (or the same route on another project or
    task) refuses it, even with a body the other route would take."""
    app, client = app_client
    setup = await setup_for(app, db, route)
    assert (await post(client, setup, route.body, "shared")).status_code == 201
    for other in ROUTES:
        if other is not route:
            elsewhere = Setup(setup.caller, other.path(setup), setup.project_id, setup.task_id)
            answer = await post(client, elsewhere, other.body, "shared")
            assert_problem(answer, 422, "idempotency-key-reused")
    if route.name in ("task", "comment"):
        project_id = await make_project(db, setup.caller)
        task_id = await make_task(db, project_id, setup.caller)
        elsewhere = Setup(setup.caller, "", project_id, task_id)
        elsewhere.path = route.path(elsewhere)
        assert_problem(await post(client, elsewhere, route.body, "shared"), 422, "idempotency-key-reused")
    assert await scalar(db, "select count(*) from idempotency_keys") == 1


@each_route
async def test_another_users_same_key_is_another_key(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], route: Route
) -> None:
    app, client = app_client
    setup = await setup_for(app, db, route)
    other = await setup_for(app, db, route)
    mine = await post(client, setup, route.body, "same")
    theirs = await post(client, other, route.body, "same")
    assert mine.status_code == theirs.status_code == 201, (mine.text, theirs.text)
    assert theirs.headers["idempotent-replayed"] == "false"
    assert theirs.json()["id"] != mine.json()["id"]
    assert await rows_of(db, route, setup) == await rows_of(db, route, other) == 1


@each_route
async def test_a_concurrent_duplicate_is_409_and_the_first_completes(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], database_url: str, route: Route
) -> None:
    app, client = app_client
    setup = await setup_for(app, db, route)
    async with await AsyncConnection.connect(database_url) as locker:
        # The creation takes this lock after claiming the key: the request that claims it waits
        # there, so the other one meets an unfinished claim.
        await locker.execute(route.hold, (route.hold_id(setup),))
        requests = [asyncio.create_task(post(client, setup, route.body, "race")) for _ in "ab"]
        done, waiting = await asyncio.wait(requests, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(waiting) == 1, "one request must be held by the lock"
        refused = done.pop().result()
        assert_problem(refused, 409, "idempotency-key-in-flight")
        assert refused.headers["retry-after"] == "1"
        await locker.rollback()
    accepted = await asyncio.wait_for(waiting.pop(), 30)
    assert accepted.status_code == 201, accepted.text
    assert await rows_of(db, route, setup) == 1
    replay = await post(client, setup, route.body, "race")
    assert replay.headers["idempotent-replayed"] == "true" and replay.content == accepted.content


@each_route
async def test_a_claim_is_released_when_the_service_refuses(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], route: Route
) -> None:
    """A problem answer stores nothing: the same request, once the service would take it, creates."""
    app, client = app_client
    setup = await setup_for(app, db, route)
    before = await rows_of(db, route, setup)
    slug = await route.refuse(db, setup)
    refused = await post(client, setup, route.body, "fix-and-retry")
    assert refused.status_code in (403, 409), refused.text
    assert_problem(refused, refused.status_code, slug)
    assert await scalar(db, "select count(*) from idempotency_keys") == 0
    await route.allow(db, setup)
    after = await post(client, setup, route.body, "fix-and-retry")
    assert after.status_code == 201, after.text
    assert after.headers["idempotent-replayed"] == "false"
    created = await rows_of(db, route, setup)
    assert created == (before + 1 if route.name in ("task", "comment") else LIMIT)


async def test_a_request_that_outlived_its_claim_is_rolled_back(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], database_url: str
) -> None:
    """Its lease ended and a retry claimed the key meanwhile: the first creation is not committed."""
    app, client = app_client
    route = BY_NAME["task"]
    setup = await setup_for(app, db, route)
    async with await AsyncConnection.connect(database_url) as locker:
        await locker.execute(route.hold, (route.hold_id(setup),))
        request = asyncio.create_task(post(client, setup, route.body, "outlived"))

        async def claimed() -> bool:
            return bool(await scalar(db, "select count(*) from idempotency_keys where key = 'outlived'"))

        await wait_until(claimed, 30, "the request claimed its key")
        await db.execute(  # what a retry does after the lease: its own claim in place of this one
            "update idempotency_keys set expires_at = now() + interval '60 seconds' where key = 'outlived'"
        )
        await locker.rollback()
    assert_problem(await asyncio.wait_for(request, 30), 409, "idempotency-key-in-flight")
    assert await rows_of(db, route, setup) == 0
    assert await scalar(db, "select count(*) from idempotency_keys where key = 'outlived'") == 1


async def test_keys_are_printable_ascii_of_at_most_255_characters(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = app_client
    setup = await setup_for(app, db, BY_NAME["project"])
    for key in ("", "x" * 256, "tab\there"):
        answer = await post(client, setup, BY_NAME["project"].body, key)
        assert_problem(answer, 400, "validation", {"header.Idempotency-Key"})
    assert (await post(client, setup, BY_NAME["project"].body, "x" * 255)).status_code == 201


async def test_the_daily_purge_deletes_every_routes_expired_keys(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any]
) -> None:
    app, client = app_client
    for route in ROUTES:
        setup = await setup_for(app, db, route)
        assert (await post(client, setup, route.body, f"old-{route.name}")).status_code == 201
        assert (await post(client, setup, route.body, f"new-{route.name}")).status_code == 201
    await db.execute(
        "update idempotency_keys set expires_at = now() - interval '1 second' where key like 'old-%'"
    )
    assert await app.state.services[Idempotency].purge_expired(chunk_size=3) == len(ROUTES)
    keys = await (await db.execute("select key from idempotency_keys order by key")).fetchall()
    assert [key for (key,) in keys] == sorted(f"new-{route.name}" for route in ROUTES)


async def test_the_purge_keeps_an_answer_completed_while_it_waits_and_a_claim_still_in_its_grace(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], database_url: str
) -> None:
    """Review: the purge deleted by key among rows it had selected as expired, never checking again
    the row it had waited for: an answer completed meanwhile (now 24 hours ahead) was deleted, and
    the retry created the resource a second time. A claim just past its lease (its request may still
    complete it) is kept for ``CLAIM_PURGE_GRACE_S``."""
    app, _ = app_client
    user = await make_user(db, app)
    for key, lapsed in (("completing", "2 hours"), ("in-grace", "1 minute"), ("gone", "2 hours")):
        await db.execute(
            "insert into idempotency_keys (user_id, key, request_hash, expires_at)"
            " values (%s, %s, '\\x00', now() - %s::interval)",
            (user.id, key, lapsed),
        )
    async with (
        await AsyncConnection.connect(database_url) as creating,
        await AsyncConnection.connect(database_url, autocommit=True) as probe,
    ):
        await creating.execute(  # what CompleteIdempotencyKey does in the creating transaction
            "update idempotency_keys set response_status = 201, response_body = '{}', resource_id = 1,"
            " expires_at = now() + interval '24 hours' where user_id = %s and key = 'completing'",
            (user.id,),
        )
        purge = asyncio.ensure_future(app.state.services[Idempotency].purge_expired())

        async def purge_waits() -> bool:
            cursor = await probe.execute(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                " and datname = current_database()"
            )
            row = await cursor.fetchone()
            return row is not None and row[0] >= 1

        await wait_until(purge_waits, 10, "the purge waits for the row being completed")
        await creating.commit()
        assert await purge == 1
    rows = await (
        await db.execute(
            "select key, response_status from idempotency_keys where user_id = %s order by key", (user.id,)
        )
    ).fetchall()
    assert rows == [("completing", 201), ("in-grace", None)]


async def test_the_schema_documents_the_key_and_its_answers(app_client: tuple[Litestar, Client]) -> None:
    _, client = app_client
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    for path in (
        "/api/projects",
        "/api/projects/{project_id}/tasks",
        "/api/tasks/{task_id}/comments",
        "/api/sites",
    ):
        operation = paths[path]["post"]
        (header,) = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
        assert header["in"] == "header" and not header.get("required")
        assert header["schema"]["maxLength"] == 255 and header["schema"]["pattern"] == whole(r"[\x20-\x7e]+")
        assert {"201", "409", "422"} <= set(operation["responses"]), path
        assert "Idempotent-Replayed" in operation["responses"]["201"]["headers"], path
        assert "`Idempotency-Key`" in operation["description"], path


async def test_a_claim_released_between_the_insert_and_the_read_is_claimed_again(
    app_client: tuple[Litestar, Client], db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request's claim is met, then released (its creation failed) before the duplicate
    reads it: the key is free, so the duplicate claims it instead of answering 409 for nothing."""
    app, _ = app_client
    user = await make_user(db, app)
    idempotency: Idempotency = app.state.services[Idempotency]
    first = await idempotency.claim(user.id, "released", b"same", status_code=201, encode=bytes)
    assert not isinstance(first, StoredAnswer)
    read_claim = idempotency_queries.get_idempotency_key

    async def released_before_read(conn: AsyncConnection[Any], *, user_id: int, key: str) -> Any:
        async with db.transaction():
            await idempotency_queries.release_idempotency_key(
                db, user_id=user_id, key=key, claimed_until=first.claimed_until
            )
        return await read_claim(conn, user_id=user_id, key=key)

    monkeypatch.setattr(idempotency_queries, "get_idempotency_key", released_before_read)
    second = await idempotency.claim(user.id, "released", b"same", status_code=201, encode=bytes)

    assert isinstance(second, IdempotencyClaim)
    assert await scalar(db, "select count(*) from idempotency_keys where key = 'released'") == 1
