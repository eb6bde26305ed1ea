"""An administrator's feed while a project is being deleted: its members lost access with their
membership, and the administrators' range (which reads every group) leaves its groups out before the
page's limit, so pages stay full and a walk ends where the feed does, until the purge deletes them.

Review: the groups were only dropped when a page was hydrated, after the limit: an administrator's
pages came out short or empty while still handing out a ``next_cursor``.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from app.db.models import UserRole
from app.domains.activity.services import ActivityService
from tests.factories import Actor, Client, Team, make_user
from tests.functional.test_activity_feed import deliver, feed, new_task, ok, services

__all__ = ["feed", "services"]  # fixtures


async def walk(client: Client, who: Actor, **params: Any) -> list[dict[str, Any]]:
    """Every page of ``/api/feed``: each page must hold items when it says more follow."""
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = await ok(await client.get("/api/feed", params=query, headers=who.headers))
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(page["items"]) == params["limit"], pages


async def test_an_administrators_pages_skip_a_project_being_deleted_before_their_limit(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    admin = await make_user(db, client.app, UserRole.ADMIN)
    created = await client.post("/api/projects", json={"name": "Kept"}, headers=team.owner.headers)
    kept = await ok(created, 201)
    for n in range(3):
        await new_task(client, team.owner, kept["id"], f"kept {n}")
    await deliver(db, feed)
    tasks = [await new_task(client, team.editor, team.project, f"t{n}") for n in range(12)]
    for task in tasks:  # one comment.added group per task: newer than the kept project's groups
        await ok(
            await client.post(f"/api/tasks/{task}/comments", json={"body": "x"}, headers=team.editor.headers),
            201,
        )
    await deliver(db, feed)
    before = [g for page in await walk(client, admin, limit=5) for g in page["items"]]
    assert {g["project"]["id"] for g in before if g["project"]} == {kept["id"], team.project}

    await ok(await client.delete(f"/api/projects/{team.project}", headers=team.owner.headers), 204)

    for limit in (1, 5):
        pages = await walk(client, admin, limit=limit)
        shown = [g for page in pages for g in page["items"]]
        assert shown and all((g["project"] or {}).get("id") != team.project for g in shown), pages
        assert {g["project"]["id"] for g in shown if g["project"]} == {kept["id"]}, pages
    by_actor = await ok(
        await client.get("/api/feed", params={"actor_id": team.editor.id, "limit": 5}, headers=admin.headers)
    )
    assert by_actor["items"] == [] and by_actor["next_cursor"] is None, by_actor
