"""The permission matrix of the work domain: every route for owner, editor, viewer, non-member, anonymous.

``EXPECTED`` is the documented status of each route (and of each variant of a route whose answer
depends on its target or body) for each role. ``test_the_table_covers_every_route`` compares it with
the app's own route table, so a new route under /api/projects, /api/tasks or /api/me/tasks fails
the suite until its permissions are written down here (file routes are tested elsewhere).

Each case runs on a fresh project: an owner, an editor, a viewer and a bystander (viewer) as
members, one task, one comment by the editor, and a non-member user. Tokens are minted directly.
Worlds never share a row, so the cases skip the per-test truncation (the matrix has 100+ cases).
A refused call is a problem+json and leaves every row of its world as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.db import comments as comment_queries
from app.db import projects as project_queries
from app.db.models import ProjectRole, TaskPriority, register_types
from app.domains.projects.services import new_invitation_token
from tests.factories import assert_problem, create_user, make_project, make_task, mint_headers

ROLES = ("owner", "editor", "viewer", "non_member", "anonymous")
PREFIXES = ("/api/projects", "/api/tasks", "/api/me/tasks")


class World(msgspec.Struct):
    """One project's cast and content, and a token per caller."""

    owner: int
    editor: int
    viewer: int
    bystander: int
    non_member: int
    candidate: int
    project: int
    task: int
    comment: int
    invitation: int
    headers: dict[str, dict[str, str]]

    def caller_id(self, role: str) -> int:
        # anonymous has no id; routes that target "yourself" then target the owner
        return int(getattr(self, role)) if role != "anonymous" else self.owner


class Case(msgspec.Struct, frozen=True):
    method: str
    path: str
    variant: str
    statuses: dict[str, int]
    body: Callable[[World, str], Any] | None = None
    # values of path parameters the default filling does not give
    params: Callable[[World, str], dict[str, int]] | None = None


def _all(member: int, non_member: int = 404) -> dict[str, int]:
    return {"owner": member, "editor": member, "viewer": member, "non_member": non_member, "anonymous": 401}


def _ranked(owner: int, editor: int, viewer: int) -> dict[str, int]:
    return {"owner": owner, "editor": editor, "viewer": viewer, "non_member": 404, "anonymous": 401}


P = "/api/projects/{project_id}"
T = "/api/tasks/{task_id}"

CASES: list[Case] = [
    # -- projects: any logged-in user lists their own and creates; members read; editors edit
    Case("GET", "/api/projects", "list", _all(200, non_member=200)),
    Case("POST", "/api/projects", "create", _all(201, non_member=201), body=lambda w, r: {"name": "New"}),
    Case("GET", P, "read", _all(200)),
    Case("PATCH", P, "rename", _ranked(200, 200, 403), body=lambda w, r: {"name": "Renamed"}),
    Case("PATCH", P, "archive (owners only)", _ranked(200, 403, 403), body=lambda w, r: {"archived": True}),
    Case("DELETE", P, "delete (owners only)", _ranked(204, 403, 403)),
    # -- members: owners manage; any member may leave; the last owner may not
    Case("GET", P + "/members", "list", _all(200)),
    # -- invitations: owners invite by email, list and withdraw (members join by accepting)
    Case(
        "POST",
        P + "/invitations",
        "invite (owners only)",
        _ranked(201, 403, 403),
        body=lambda w, r: {"email": f"candidate-{w.candidate}@example.com", "role": "viewer"},
    ),
    Case("GET", P + "/invitations", "list (owners only)", _ranked(200, 403, 403)),
    Case(
        "DELETE",
        P + "/invitations/{invitation_id}",
        "withdraw (owners only)",
        _ranked(204, 403, 403),
        params=lambda w, r: {"invitation_id": w.invitation},
    ),
    Case(
        "PATCH",
        P + "/members/{user_id}",
        "change another's role (owners only)",
        _ranked(200, 403, 403),
        body=lambda w, r: {"role": "editor"},
        params=lambda w, r: {"user_id": w.bystander},
    ),
    Case(
        "DELETE",
        P + "/members/{user_id}",
        "remove another (owners only)",
        _ranked(204, 403, 403),
        params=lambda w, r: {"user_id": w.bystander},
    ),
    Case(
        "DELETE",
        P + "/members/{user_id}",
        "leave: remove yourself (any member; the last owner 409)",
        _ranked(409, 204, 204),
        params=lambda w, r: {"user_id": w.caller_id(r)},
    ),
    # -- tasks: members read; editors change
    Case("GET", P + "/tasks", "list", _all(200)),
    Case("POST", P + "/tasks", "create", _ranked(201, 201, 403), body=lambda w, r: {"title": "Another"}),
    Case("GET", T, "read", _all(200)),
    Case("PATCH", T, "change", _ranked(200, 200, 403), body=lambda w, r: {"title": "Changed"}),
    Case("DELETE", T, "delete", _ranked(204, 204, 403)),
    Case("GET", "/api/me/tasks", "any logged-in user", _all(200, non_member=200)),
    # -- the project's activity feed: members read it
    Case("GET", P + "/feed", "read", _all(200)),
    # -- comments: members read; editors write; the author edits; the author or an owner deletes
    Case("GET", T + "/comments", "list", _all(200)),
    Case("POST", T + "/comments", "add", _ranked(201, 201, 403), body=lambda w, r: {"body": "Me too"}),
    Case(
        "PATCH",
        T + "/comments/{comment_id}",
        "edit (author only: the editor)",
        _ranked(403, 200, 403),
        body=lambda w, r: {"body": "Edited"},
    ),
    Case("DELETE", T + "/comments/{comment_id}", "delete (author or owner)", _ranked(204, 204, 403)),
]

EXPECTED: dict[tuple[str, str], list[Case]] = {}
for _case in CASES:
    EXPECTED.setdefault((_case.method, _case.path), []).append(_case)


def app_routes(app: Litestar) -> set[tuple[str, str]]:
    """(method, path template) of the app's work routes, file routes aside."""
    found = set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path_format.startswith(PREFIXES):
            continue
        if "/files" in route.path_format:
            continue
        found |= {
            (method, route.path_format) for method in route.methods if method not in {"OPTIONS", "HEAD"}
        }
    return found


def test_the_table_covers_every_route(app: Litestar) -> None:
    routes = app_routes(app)
    assert len(routes) >= 17, routes
    missing = sorted(routes - EXPECTED.keys())
    stale = sorted(EXPECTED.keys() - routes)
    assert not missing, f"routes without documented permissions (add them to CASES): {missing}"
    assert not stale, f"CASES lists routes the app does not have: {stale}"


def test_every_case_documents_every_role() -> None:
    for case in CASES:
        assert set(case.statuses) == set(ROLES), (case.method, case.path, case.variant)
        assert case.statuses["anonymous"] == 401


async def build_world(app: Litestar, db: AsyncConnection[Any]) -> World:
    names = ("owner", "editor", "viewer", "bystander", "non_member", "candidate")
    ids = {name: (await create_user(db, display_name=name.title())).id for name in names}
    project = await make_project(
        db,
        ids["owner"],
        {
            ids["editor"]: ProjectRole.EDITOR,
            ids["viewer"]: ProjectRole.VIEWER,
            ids["bystander"]: ProjectRole.VIEWER,
        },
    )
    task = await make_task(
        db, project, ids["owner"], title="Launch", priority=TaskPriority.HIGH, assignee=ids["editor"]
    )
    comment = await comment_queries.create_comment(db, task_id=task, author_id=ids["editor"], body="First")
    assert comment is not None
    invitation = await project_queries.upsert_invitation(
        db,
        project_id=project,
        email=f"invited-{project}@example.com",
        role=ProjectRole.EDITOR,
        invited_by=None,
        token_sha256=new_invitation_token()[1],
    )
    assert invitation is not None
    headers = {name: mint_headers(app, ids[name]) for name in ("owner", "editor", "viewer", "non_member")}
    return World(
        **ids, project=project, task=task, comment=comment.id, invitation=invitation.id, headers=headers
    )


async def world_rows(conn: AsyncConnection[Any], world: World) -> list[tuple[Any, ...]]:
    """Every row of the world's project, members, tasks and comments (and the projects its users own)."""
    queries = [
        ("select * from projects where id = %(p)s or owner_id = any(%(users)s) order by id", "projects"),
        ("select * from project_members where project_id = %(p)s order by user_id", "members"),
        ("select * from project_invitations where project_id = %(p)s order by id", "invitations"),
        ("select * from tasks where project_id = %(p)s order by id", "tasks"),
        (
            "select c.* from comments c join tasks t on t.id = c.task_id"
            " where t.project_id = %(p)s order by c.id",
            "comments",
        ),
    ]
    users = [world.owner, world.editor, world.viewer, world.bystander, world.non_member, world.candidate]
    rows: list[tuple[Any, ...]] = []
    for sql, table in queries:
        cursor = await conn.execute(sql, {"p": world.project, "users": users})
        rows += [(table, *row) for row in await cursor.fetchall()]
    return rows


@pytest.fixture
async def conn(database_url: str, tables: list[str]) -> AsyncIterator[AsyncConnection[Any]]:
    """An autocommit connection on the session's database, without the truncation of ``db``."""
    async with await AsyncConnection.connect(database_url, autocommit=True) as connection:
        await register_types(connection)
        yield connection


@pytest.fixture
def api(session_client: AsyncTestClient[Litestar]) -> AsyncTestClient[Litestar]:
    session_client.headers.clear()
    session_client.cookies.clear()
    return session_client


def _url(case: Case, world: World, role: str) -> str:
    params = {"project_id": world.project, "task_id": world.task, "comment_id": world.comment}
    if case.params is not None:
        params |= case.params(world, role)
    return case.path.format(**params)


MATRIX = [
    pytest.param(case, role, id=f"{case.method} {case.path} [{case.variant}] as {role}")
    for case in CASES
    for role in ROLES
]


@pytest.mark.parametrize(("case", "role"), MATRIX)
async def test_permission(
    api: AsyncTestClient[Litestar], app: Litestar, conn: AsyncConnection[Any], case: Case, role: str
) -> None:
    world = await build_world(app, conn)
    before = await world_rows(conn, world)
    kwargs: dict[str, Any] = {"headers": world.headers.get(role, {})}
    if case.body is not None:
        kwargs["json"] = case.body(world, role)
    response = await api.request(case.method, _url(case, world, role), **kwargs)
    expected = case.statuses[role]
    assert response.status_code == expected, (
        f"{case.method} {_url(case, world, role)} as {role}: {response.status_code}, "
        f"expected {expected}: {response.text}"
    )
    if expected >= 400:
        assert_problem(
            response,
            expected,
            {401: "unauthorized", 403: "forbidden", 404: "not-found", 409: "conflict"}[expected],
        )
        assert await world_rows(conn, world) == before, "a refused call changed its world"


async def test_non_members_cannot_tell_a_foreign_project_from_a_missing_one(
    client: AsyncTestClient[Litestar], app: Litestar, db: AsyncConnection[Any]
) -> None:
    """404 for a non-member is the same answer as for an id that does not exist."""
    world = await build_world(app, db)
    headers = world.headers["non_member"]
    for foreign_path, missing_path in (
        (f"/api/projects/{world.project}", "/api/projects/999999"),
        (f"/api/tasks/{world.task}", "/api/tasks/999999"),
        (f"/api/tasks/{world.task}/comments", "/api/tasks/999999/comments"),
    ):
        foreign = await client.get(foreign_path, headers=headers)
        missing = await client.get(missing_path, headers=headers)
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["detail"] == missing.json()["detail"]
    listed = await client.get("/api/projects", headers=headers)
    assert listed.json()["items"] == []
