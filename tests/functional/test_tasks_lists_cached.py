"""Project task lists through the HTTP API with their page cache on (the default): a member's repeated
read is served from Valkey, and every change made through the API is in the very next read: task
created, changed, deleted, a member removed (their tasks unassigned, their own reads 404), a member
joined, the project deleted. What one reader can leave in Valkey is bounded, and the versions expire.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import NotFoundError
from app.core.services import open_services
from app.db.models import ProjectRole
from app.domains.tasks.cache import PAGES_PER_PROJECT
from app.domains.tasks.schemas import TaskCreate
from app.domains.tasks.services import TaskFilters, TaskService
from app.modules import MODULES
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
        f"/api/me/invitations/{response.json()['id']}/accept",
        json={"token": response.json()["token"]},
        headers=newcomer.headers,
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


async def test_made_up_queries_leave_a_bounded_number_of_pages(
    client: Client, app: Litestar, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Review: each cursor, date or limit a reader made up was a page of its own in Valkey (120
    requests, 120 entries, 30 MB). Pages after a cursor are not stored, a project keeps at most
    ``PAGES_PER_PROJECT`` (the newest: the made-up ones may push the first page out, once); the
    first page read over and over is served from the cache."""
    owner, editor, viewer, project = await team(db, app)
    for title in ("One", "Two", "Three"):
        await create(client, project, editor, title=title)
    first = await client.get(f"/api/projects/{project}/tasks", headers=viewer.headers)
    assert first.status_code == 200, first.text
    made_up = [{"cursor": f"created.0.{n}.0"} for n in range(40)]
    made_up += [{"due_before": f"2{n:03d}-01-01"} for n in range(40)]
    made_up += [{"limit": str(n)} for n in range(1, 41)]
    for params in made_up:
        response = await client.get(f"/api/projects/{project}/tasks", params=params, headers=owner.headers)
        assert response.status_code == 200, response.text
    pages = [key async for key in valkey.scan_iter(f"tasks:entry:*:{project}:*")]
    assert len(pages) <= PAGES_PER_PROJECT, f"{len(pages)} pages stored"

    reloaded = await client.get(f"/api/projects/{project}/tasks", headers=viewer.headers)
    assert reloaded.json()["items"] == first.json()["items"]
    before = hits()
    for _ in range(3):
        again = await client.get(f"/api/projects/{project}/tasks", headers=viewer.headers)
        assert again.content == reloaded.content  # a reloaded page has an as_of of its own
    assert hits() == before + 3


async def test_a_deleted_projects_versions_and_its_readers_expire(
    client: Client, app: Litestar, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Review: versions were set without an expiry, so a deleted project's ``tasks:pv``/``feed:pv``
    and every reader's versions stayed in Valkey for ever."""
    owner, _, viewer, project = await team(db, app)
    for reader in (owner, viewer):
        await listed(client, project, reader)
        feed = await client.get("/api/feed", headers=reader.headers)
        assert feed.status_code == 200, feed.text
    response = await client.delete(f"/api/projects/{project}", headers=owner.headers)
    assert response.status_code == 204, response.text
    versions = [f"tasks:pv:{project}", f"feed:pv:{project}", "feed:seq", "feed:names"]
    for reader in (owner, viewer):
        versions += [f"{kind}:{reader.id}" for kind in ("tasks:mv", "feed:mv", "feed:rv", "feed:uv")]
    for key in versions:
        assert await valkey.exists(key), key
        assert await valkey.ttl(key) > 0, f"{key} never expires"


async def test_a_member_is_not_refused_by_the_load_a_removed_member_started(
    settings: Settings, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """Review: a missing page is loaded once for the readers that ask at the same time, and the
    load checked its starter's membership in PostgreSQL: a member whose read joined the load of a
    member just removed (the removal committed, its version not yet replaced) got their 404."""
    owner = await make_user(db, app, name="Owner")
    leaving = await make_user(db, app, name="Leaving")
    staying = await make_user(db, app, name="Staying")
    project = await make_project(db, owner, {leaving.id: ProjectRole.VIEWER, staying.id: ProjectRole.VIEWER})
    async with open_services(settings, MODULES) as services:  # in the test's event loop
        tasks = services[TaskService]
        await tasks.create(owner.id, project, TaskCreate(title="T"))

        async def read(reader: Actor, limit: int) -> str:
            try:
                await tasks.page_in_project(
                    reader.id, project, filters=TaskFilters(), sort="created", cursor=None, limit=limit
                )
            except NotFoundError:
                return "404"
            return "page"

        for reader in (leaving, staying):  # their scopes cached, and the opening page
            assert await read(reader, 50) == "page"
        await tasks.cache.tasks_changed(project)  # the page is stale: the reads below load it again
        # The removal, committed; its after-commit replacement of the versions has not run yet.
        await db.execute(
            "delete from project_members where project_id = %s and user_id = %s", (project, leaving.id)
        )
        assert list(await asyncio.gather(read(leaving, 50), read(staying, 50))) == ["404", "page"]
