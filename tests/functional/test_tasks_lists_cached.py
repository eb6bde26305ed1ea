"""Project task lists through the HTTP API with their page cache on (the default): a member's repeated
read is served from Valkey, and every change made through the API is in the very next read: task
created, changed, deleted, a member removed (their tasks unassigned, their own reads 404), a member
joined, the project deleted."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from psycopg import AsyncConnection

from app.db.models import ProjectRole
from tests.factories import Actor, make_project, make_user

Client = AsyncTestClient[Litestar]


def hits() -> float:
    sample = REGISTRY.get_sample_value("app_cache_requests_total", {"namespace": "tasks", "result": "hit"})
    return sample or 0.0


async def listed(client: Client, project_id: int, reader: Actor, **params: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/projects/{project_id}/tasks", params=params, headers=reader.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def team(db: AsyncConnection[Any], app: Litestar) -> tuple[Actor, Actor, Actor, int]:
    owner = await make_user(db, app, name="Owner")
    editor = await make_user(db, app, name="Editor")
    viewer = await make_user(db, app, name="Viewer")
    project = await make_project(db, owner, {editor.id: ProjectRole.EDITOR, viewer.id: ProjectRole.VIEWER})
    return owner, editor, viewer, project


async def create(client: Client, project_id: int, actor: Actor, **fields: Any) -> dict[str, Any]:
    response = await client.post(f"/api/projects/{project_id}/tasks", json=fields, headers=actor.headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


async def test_a_repeated_read_is_served_from_the_cache_and_answers_the_same(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    owner, editor, viewer, project = await team(db, app)
    await create(client, project, editor, title="One")
    first = await client.get(f"/api/projects/{project}/tasks", headers=viewer.headers)
    before = hits()
    again = await client.get(f"/api/projects/{project}/tasks", headers=viewer.headers)
    by_another_member = await client.get(f"/api/projects/{project}/tasks", headers=owner.headers)
    assert hits() == before + 2
    assert again.content == first.content == by_another_member.content
    assert again.headers["content-type"] == "application/json"


async def test_every_task_change_is_in_the_next_read(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    _, editor, viewer, project = await team(db, app)
    one = await create(client, project, editor, title="One")
    assert [t["title"] for t in await listed(client, project, viewer)] == ["One"]

    two = await create(client, project, editor, title="Two")
    assert [t["title"] for t in await listed(client, project, viewer)] == ["One", "Two"]

    response = await client.patch(
        f"/api/tasks/{one['id']}", json={"status": "done", "title": "One!"}, headers=editor.headers
    )
    assert response.status_code == 200, response.text
    assert [(t["title"], t["status"]) for t in await listed(client, project, viewer)] == [
        ("One!", "done"),
        ("Two", "todo"),
    ]
    assert [t["id"] for t in await listed(client, project, viewer, status="done")] == [one["id"]]

    response = await client.delete(f"/api/tasks/{two['id']}", headers=editor.headers)
    assert response.status_code == 204, response.text
    assert [t["id"] for t in await listed(client, project, viewer)] == [one["id"]]


async def test_a_removed_member_gets_404_at_once_and_their_tasks_are_unassigned(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    owner, editor, viewer, project = await team(db, app)
    await create(client, project, editor, title="Theirs", assignee_id=viewer.id)
    assert [t["assignee_id"] for t in await listed(client, project, viewer)] == [viewer.id]
    assert [t["assignee_id"] for t in await listed(client, project, owner)] == [viewer.id]

    response = await client.delete(f"/api/projects/{project}/members/{viewer.id}", headers=owner.headers)
    assert response.status_code == 204, response.text

    gone = await client.get(f"/api/projects/{project}/tasks", headers=viewer.headers)
    assert gone.status_code == 404, gone.text
    assert [t["assignee_id"] for t in await listed(client, project, owner)] == [None]


async def test_a_member_who_joins_by_invitation_reads_the_list(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    owner, editor, _, project = await team(db, app)
    newcomer = await make_user(db, app, name="Newcomer")
    await create(client, project, editor, title="One")
    refused = await client.get(f"/api/projects/{project}/tasks", headers=newcomer.headers)
    assert refused.status_code == 404, "their scope is now cached without the project"

    response = await client.post(
        f"/api/projects/{project}/invitations",
        json={"email": newcomer.email, "role": "viewer"},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    accepted = await client.post(
        f"/api/me/invitations/{response.json()['id']}/accept", headers=newcomer.headers
    )
    assert accepted.status_code == 200, accepted.text
    assert [t["title"] for t in await listed(client, project, newcomer)] == ["One"]


async def test_a_deleted_project_lists_404_for_its_former_members(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    owner, editor, viewer, project = await team(db, app)
    await create(client, project, editor, title="One")
    await listed(client, project, viewer)
    response = await client.delete(f"/api/projects/{project}", headers=owner.headers)
    assert response.status_code == 204, response.text
    for reader in (owner, editor, viewer):
        gone = await client.get(f"/api/projects/{project}/tasks", headers=reader.headers)
        assert gone.status_code == 404, gone.text
