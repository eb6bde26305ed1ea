"""A creation's 201 names what it created (``Location``, RFC 9110 15.3.2), its replay too.

Without it the target, the collection, is taken for the new resource (an HTTP-semantics review).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.db.models import UserRole
from tests.factories import Actor, Client, make_project, make_task, make_user

Create = Callable[[Client, Actor, int], Awaitable[httpx.Response]]


def keyed(actor: Actor, key: str) -> dict[str, str]:
    return {**actor.headers, "Idempotency-Key": key}


CREATIONS: dict[str, Create] = {
    "project": lambda c, a, _: c.post("/api/projects", json={"name": "Located"}, headers=keyed(a, "p-1")),
    "task": lambda c, a, p: c.post(
        f"/api/projects/{p}/tasks", json={"title": "Located"}, headers=keyed(a, "t-1")
    ),
    "site": lambda c, a, _: c.post("/api/sites", json={"domain": "located.example"}, headers=keyed(a, "s-1")),
    "file": lambda c, a, p: c.post(
        f"/api/projects/{p}/files",
        files={"file": ("a.txt", b"located", "text/plain")},
        headers=keyed(a, "f-1"),
    ),
    "product": lambda c, a, _: c.post(
        "/api/products", json={"sku": "LOC-1", "name": "Located", "price": "1.00"}, headers=keyed(a, "pr-1")
    ),
}


@pytest.mark.parametrize("kind", list(CREATIONS))
async def test_a_creation_answers_where_to_read_what_it_created_and_its_replay_the_same(
    client: Client, app: Litestar, db: AsyncConnection[Any], kind: str
) -> None:
    actor = await make_user(db, app, UserRole.ADMIN if kind == "product" else UserRole.MEMBER)
    project = await make_project(db, actor.id)
    create = CREATIONS[kind]

    created = await create(client, actor, project)
    replayed = await create(client, actor, project)

    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert replayed.headers["location"] == location
    assert replayed.headers["idempotent-replayed"] == "true"
    read = await client.get(location, headers=actor.headers)
    assert read.status_code == 200, (location, read.text)
    if kind != "file":  # a file's path answers its bytes
        assert read.json()["id"] == created.json()["id"]


async def test_a_comment_and_an_invitation_answer_where_they_are(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """Created without a path of their own to read, but with one to change or delete: the 201 named
    none, so the collection was taken for them (the HTTP-semantics reviewer)."""
    owner = await make_user(db, app)
    project = await make_project(db, owner.id)
    task = await make_task(db, project, owner, title="t")
    comments = f"/api/tasks/{task}/comments"
    comment = await client.post(comments, json={"body": "hi"}, headers=keyed(owner, "c-1"))
    assert comment.status_code == 201, comment.text
    location = comment.headers["location"]
    assert location == f"{comments}/{comment.json()['id']}"
    replayed = await client.post(comments, json={"body": "hi"}, headers=keyed(owner, "c-1"))
    assert replayed.headers["location"] == location
    assert (await client.patch(location, json={"body": "edited"}, headers=owner.headers)).status_code == 200
    invited = await client.post(
        f"/api/projects/{project}/invitations",
        json={"email": "someone@example.com", "role": "viewer"},
        headers=owner.headers,
    )
    assert invited.status_code == 201, invited.text
    location = invited.headers["location"]
    assert location == f"/api/projects/{project}/invitations/{invited.json()['id']}"
    assert (await client.delete(location, headers=owner.headers)).status_code == 204


def test_the_schema_documents_the_location_of_every_creation(app: Litestar) -> None:
    paths = app.openapi_schema.to_schema()["paths"]
    for path in (
        "/api/projects",
        "/api/projects/{project_id}/tasks",
        "/api/sites",
        "/api/projects/{project_id}/files",
        "/api/products",
        "/api/tasks/{task_id}/comments",
        "/api/projects/{project_id}/invitations",
        "/api/github/tracked",
    ):
        assert "Location" in paths[path]["post"]["responses"]["201"]["headers"], path
    refresh = paths["/api/github/users/{username}/refresh"]["post"]["responses"]["202"]
    assert "Location" in refresh["headers"]
