"""The permission matrix of the work domain: every route for owner, editor, viewer, non-member, anonymous.

``EXPECTED`` is the documented status of each route (and of each variant of a route whose answer
depends on its target or body) for each role. ``test_the_table_covers_every_route`` compares it with
the app's own route table, so a new route under /api/projects, /api/tasks or /api/me/tasks fails
the suite until its permissions are written down here (file routes are tested elsewhere).

Each case runs on a fresh project: an owner, an editor, a viewer and a bystander (viewer) as
members, one task, one comment by the editor, and a non-member user. Tokens are minted directly.
Worlds never share a row, so the cases skip the per-test truncation (the matrix has 100+ cases).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.db import accounts as account_queries
from app.db import comments as comment_queries
from app.db import projects as project_queries
from app.db import tasks as task_queries
from app.db.models import ProjectRole, TaskPriority, TaskStatus, UserRole, register_types

ROLES = ("owner", "editor", "viewer", "non_member", "anonymous")
PREFIXES = ("/api/projects", "/api/tasks", "/api/me/tasks")
FAKE_HASH = "$argon2id$v=19$m=65536,t=3,p=4$bm90LWEtcmVhbC1zYWx0$bm90LWEtcmVhbC1oYXNoLW5vdC1hLXJlYWwtaGFzaA"


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
    tokens: dict[str, str]

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
    Case(
        "POST",
        P + "/members",
        "add (owners only)",
        _ranked(201, 403, 403),
        body=lambda w, r: {"user_id": w.candidate, "role": "viewer"},
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


async def _user(db: AsyncConnection[Any], name: str) -> int:
    user = await account_queries.create_user(
        db,
        email=f"{name}-{uuid.uuid4().hex[:10]}@example.com",
        display_name=name.title(),
        password_hash=FAKE_HASH,
        role=UserRole.MEMBER,
    )
    assert user is not None
    return user.id


async def build_world(app: Litestar, db: AsyncConnection[Any]) -> World:
    ids = {name: await _user(db, name) for name in ("owner", "editor", "viewer", "bystander", "non_member")}
    candidate = await _user(db, "candidate")
    project = await project_queries.create_project(db, name="Apollo", description="", owner_id=ids["owner"])
    assert project is not None
    for name, role in (
        ("owner", ProjectRole.OWNER),
        ("editor", ProjectRole.EDITOR),
        ("viewer", ProjectRole.VIEWER),
        ("bystander", ProjectRole.VIEWER),
    ):
        await project_queries.add_member(db, project_id=project.id, user_id=ids[name], role=role)
    task = await task_queries.create_task(
        db,
        project_id=project.id,
        title="Launch",
        description="",
        status=TaskStatus.TODO,
        priority=TaskPriority.HIGH,
        assignee_id=ids["editor"],
        due_date=None,
        created_by=ids["owner"],
    )
    assert task is not None
    comment = await comment_queries.create_comment(db, task_id=task.id, author_id=ids["editor"], body="First")
    assert comment is not None
    tokens = {
        name: app.state.accounts.tokens.issue(ids[name], "member", uuid.uuid4())[0]
        for name in ("owner", "editor", "viewer", "non_member")
    }
    return World(
        **ids, candidate=candidate, project=project.id, task=task.id, comment=comment.id, tokens=tokens
    )


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
    headers = {"Authorization": f"Bearer {world.tokens[role]}"} if role != "anonymous" else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if case.body is not None:
        kwargs["json"] = case.body(world, role)
    response = await api.request(case.method, _url(case, world, role), **kwargs)
    expected = case.statuses[role]
    assert response.status_code == expected, (
        f"{case.method} {_url(case, world, role)} as {role}: {response.status_code}, "
        f"expected {expected}: {response.text}"
    )
    if expected >= 400:
        assert response.headers["content-type"] == "application/problem+json"


async def test_non_members_cannot_tell_a_foreign_project_from_a_missing_one(
    client: AsyncTestClient[Litestar], app: Litestar, db: AsyncConnection[Any]
) -> None:
    """404 for a non-member is the same answer as for an id that does not exist."""
    world = await build_world(app, db)
    headers = {"Authorization": f"Bearer {world.tokens['non_member']}"}
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
