"""What one user can park in Valkey through the task lists' page cache (``app/domains/tasks/cache.py``):
only a project's opening page (default sort and size, no filter, no cursor) is stored, so a user
holds at most one page per project, whatever queries they make up; every other page is read from
PostgreSQL each time.

Review: every first page was stored, any ``limit`` from 1 to 100 and any date or assignee filter,
up to 16 per project: 5 projects of 12 tasks of 20 KB and 80 first-page reads varying only the
``limit`` grew Valkey by 19 MiB (one user, 100 projects: ~400 MiB, in a Valkey with no eviction that
also holds the queues, the rate limits and the revocations).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from tests.factories import Actor, Team, make_project, make_task

Client = AsyncTestClient[Litestar]


def hits() -> float:
    sample = REGISTRY.get_sample_value("app_cache_requests_total", {"namespace": "tasks", "result": "hit"})
    return sample or 0.0


async def read(client: Client, project: int, reader: Actor, **params: str) -> bytes:
    response = await client.get(f"/api/projects/{project}/tasks", params=params, headers=reader.headers)
    assert response.status_code == 200, response.text
    return response.content


async def stored_pages(valkey: Valkey, project: int | str = "*") -> list[bytes]:
    return [key async for key in valkey.scan_iter(f"tasks:entry:*:{project}:*")]


async def stored_bytes(valkey: Valkey) -> int:
    return sum([await valkey.strlen(key) for key in await stored_pages(valkey)])


def other_pages(assignee: int) -> list[dict[str, str]]:
    """First pages (and one later page) a reader may ask for besides the opening page."""
    return [
        *({"limit": str(limit)} for limit in (1, 20, 49, 51, 100)),
        *({"sort": sort} for sort in ("due", "priority", "updated")),
        {"sort": "due", "limit": "50"},
        {"status": "todo"},
        {"status": "done", "sort": "created", "limit": "50"},
        {"priority": "high"},
        {"assignee_id": str(assignee)},
        {"due_before": "2999-01-01"},
        {"due_after": "2000-01-01"},
        {"q": "task"},
        {"updated_after": "2000-01-01T00:00:00Z"},
        {"cursor": "created.0.1.0"},
    ]


async def test_only_the_opening_page_is_stored_and_every_other_page_is_read_each_time(
    client: Client, db: AsyncConnection[Any], valkey: Valkey, team: Team
) -> None:
    for n in range(3):
        await make_task(db, team.project, team.owner, title=f"task {n}", assignee=team.editor)
    opening = await read(client, team.project, team.viewer)
    assert len(await stored_pages(valkey, team.project)) == 1

    before = hits()
    for params in other_pages(team.editor.id):
        for _ in range(2):
            await read(client, team.project, team.owner, **params)
    assert hits() == before, "a page other than the opening page was served from the cache"
    assert len(await stored_pages(valkey)) == 1, "a page other than the opening page was stored"

    assert await read(client, team.project, team.owner) == opening
    assert await read(client, team.project, team.editor, sort="created", limit="50") == opening
    assert hits() == before + 2, "the opening page, named or not, is served from the cache"


async def test_a_user_parks_at_most_one_page_per_project(
    client: Client, db: AsyncConnection[Any], valkey: Valkey, team: Team
) -> None:
    """The review's reproduction: 5 projects of 12 tasks of 20 KB, every first page at 16 limits."""
    owner = team.owner
    projects = [team.project] + [await make_project(db, owner, name=f"P{i}") for i in range(4)]
    for project in projects:
        await db.execute(
            "insert into tasks (project_id, title, description, position, created_by, updated_by)"
            " select %s, 'task ' || g, repeat('x', 19990), g, %s, %s from generate_series(1, 12) g",
            (project, owner.id, owner.id),
        )
    opening = {project: await read(client, project, owner) for project in projects}
    assert all(len(page) > 12 * 19990 for page in opening.values())
    for project in projects:
        for limit in range(12, 28):
            await read(client, project, owner, limit=str(limit))
    for project in projects:
        assert len(await stored_pages(valkey, project)) == 1, f"project {project}"
    header = 64  # the stamp and the token before each stored page
    assert await stored_bytes(valkey) <= sum(len(page) + header for page in opening.values())
    before = hits()
    for project in projects:
        assert await read(client, project, owner) == opening[project]
    assert hits() == before + len(projects)


async def test_a_walk_from_the_cached_opening_page_misses_no_change(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """The opening page, the one cached page, is served after a task on it changed by a change whose
    version has not been replaced yet (a commit's after-commit window; here an update past the
    service): its ``as_of`` is the moment it was read, so the walk's catch-up lists that task."""
    await db.execute(
        "insert into tasks (project_id, title, position, created_by, updated_by)"
        " select %s, 'task ' || g, g, %s, %s from generate_series(1, 60) g",
        (team.project, team.owner.id, team.owner.id),
    )
    stored = await read(client, team.project, team.owner)
    edited = msgspec.json.decode(stored)["items"][0]["id"]
    await db.execute("update tasks set title = 'edited', updated_at = now() where id = %s", (edited,))

    before = hits()
    opening = await read(client, team.project, team.viewer)
    assert hits() == before + 1 and opening == stored, "the stale opening page came from the cache"
    first = msgspec.json.decode(opening)
    rest = msgspec.json.decode(await read(client, team.project, team.viewer, cursor=first["next_cursor"]))
    assert rest["next_cursor"] is None and rest["as_of"] == first["as_of"]
    walked = [item["id"] for item in first["items"] + rest["items"]]
    assert len(walked) == len(set(walked)) == 60
    caught_up = msgspec.json.decode(
        await read(client, team.project, team.viewer, updated_after=first["as_of"], limit="100")
    )
    assert [(item["id"], item["title"]) for item in caught_up["items"]] == [(edited, "edited")]
