"""Walking a project's task list while its tasks are edited (``TaskService.page_in_project``).

Review: the cursor was the last row's current sort key, and ``due``/``priority``/``updated`` keys
change when a task is edited: a task edited between two page reads moved across the cursor, so a walk
listed it twice or never. A walk now reads the list as of its first page's ``as_of``: its later pages
leave out the tasks changed after it, which ``?updated_after=<as_of>`` lists. Also here: a first page
served from the cache, a PATCH that changes nothing, a cursor of another sort.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

from litestar import Litestar
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.core.pagination import decode_cursor
from app.domains.tasks.schemas import TaskCursor
from tests.factories import Client, Team, assert_problem, make_task

Between = Callable[[int], Awaitable[None]]


def hits() -> float:
    sample = REGISTRY.get_sample_value("app_cache_requests_total", {"namespace": "tasks", "result": "hit"})
    return sample or 0.0


async def nothing(_: int) -> None:
    return None


class Walk:
    """The titles a walk listed, page by page, and the ``as_of`` every page carried."""

    def __init__(self) -> None:
        self.titles: list[str] = []
        self.as_of: set[str] = set()
        self.bodies: list[bytes] = []


async def walk(
    client: Client, team: Team, params: dict[str, str], between: Between = nothing, *, limit: int = 1
) -> Walk:
    """Follows ``next_cursor`` to the end; ``between(n)`` runs after the n-th page (from 0)."""
    done = Walk()
    query: dict[str, Any] = {"limit": limit, **params}
    for n in range(50):
        response = await client.get(
            f"/api/projects/{team.project}/tasks", params=query, headers=team.viewer.headers
        )
        assert response.status_code == 200, response.text
        page = response.json()
        done.bodies.append(response.content)
        done.titles += [item["title"] for item in page["items"]]
        done.as_of.add(page.get("as_of"))
        if page["next_cursor"] is None:
            return done
        query["cursor"] = page["next_cursor"]
        await between(n)
    raise AssertionError("the walk does not end")


async def catch_up(client: Client, team: Team, as_of: str, sort: str = "created") -> list[str]:
    """What changed during a walk that read as of ``as_of``: a walk of ``updated_after=<as_of>``."""
    return (await walk(client, team, {"updated_after": as_of, "sort": sort}, limit=100)).titles


async def patch(client: Client, team: Team, task_id: int, **fields: Any) -> dict[str, Any]:
    response = await client.patch(f"/api/tasks/{task_id}", json=fields, headers=team.editor.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def due_tasks(db: AsyncConnection[Any], team: Team) -> dict[str, int]:
    return {
        title: await make_task(db, team.project, team.owner, title=title, due=date(2030, 1, day))
        for title, day in (("A", 1), ("B", 2), ("C", 3))
    }


async def test_a_due_walk_lists_each_unchanged_task_once_and_the_catch_up_the_moved_ones(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """The reviewer's walk: after page 1 (A), C moves before A and A after C. It listed
    ['A', 'B', 'A'] (C never, A twice)."""
    ids = await due_tasks(db, team)

    async def move(n: int) -> None:
        if n == 0:
            await patch(client, team, ids["C"], due_date="2029-12-01")
            await patch(client, team, ids["A"], due_date="2030-02-01")

    walked = await walk(client, team, {"sort": "due"}, move)
    assert walked.titles == ["A", "B"]
    assert len(walked.as_of) == 1, "every page of a walk carries the first page's as_of"
    (as_of,) = walked.as_of
    assert sorted(await catch_up(client, team, as_of)) == ["A", "C"]
    assert sorted(await catch_up(client, team, as_of, sort="due")) == ["A", "C"]


async def test_an_updated_walk_does_not_lose_a_task_edited_before_its_turn(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """The reviewer's other walk (newest first: C, B, A): A edited after page 1 jumped to the top,
    before the cursor, and was never listed."""
    ids = {title: await make_task(db, team.project, team.owner, title=title) for title in ("A", "B", "C")}

    async def edit_a(n: int) -> None:
        if n == 0:
            await patch(client, team, ids["A"], description="edited")

    walked = await walk(client, team, {"sort": "updated"}, edit_a)
    assert walked.titles == ["C", "B"]
    (as_of,) = walked.as_of
    assert await catch_up(client, team, as_of) == ["A"]


async def test_a_created_walk_keeps_the_tasks_edited_meanwhile_in_place(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    ids = await due_tasks(db, team)

    async def edit(n: int) -> None:
        if n == 0:
            await patch(client, team, ids["A"], title="A!")
            await patch(client, team, ids["C"], title="C!")

    walked = await walk(client, team, {"sort": "created"}, edit)
    assert walked.titles == ["A", "B", "C!"]
    (as_of,) = walked.as_of
    assert sorted(await catch_up(client, team, as_of)) == ["A!", "C!"]


async def test_updated_after_is_exclusive_and_never_cached(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    ids = await due_tasks(db, team)
    edited = await patch(client, team, ids["B"], title="B!")
    moment = edited["updated_at"]
    assert await catch_up(client, team, moment) == [], "exclusive: a task changed at that moment is not"
    just_before = (datetime.fromisoformat(moment) - timedelta(microseconds=1)).isoformat()
    assert await catch_up(client, team, just_before) == ["B!"]

    before = hits()
    assert await catch_up(client, team, just_before) == ["B!"]
    elsewhere = datetime.fromisoformat(just_before).astimezone(timezone(timedelta(hours=-5, minutes=-30)))
    assert await catch_up(client, team, elsewhere.isoformat()) == ["B!"], "the same moment"
    assert hits() == before, "a catch-up is one walk's own: it takes no place among the shared pages"
    await patch(client, team, ids["C"], title="C!")
    assert await catch_up(client, team, just_before) == ["B!", "C!"]


async def test_updated_after_at_the_ends_of_the_calendar_answers(client: Client, team: Team) -> None:
    for moment in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-01-01T00:00:00"):
        response = await client.get(
            f"/api/projects/{team.project}/tasks",
            params={"updated_after": moment},
            headers=team.viewer.headers,
        )
        assert response.status_code == 200, (moment, response.text)


async def test_updated_after_is_a_moment_of_the_calendar_or_a_400(client: Client, team: Team) -> None:
    for moment in (
        "0.5",
        "1733112000",
        "2026-02-30T00:00:00Z",
        "2026-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
    ):
        response = await client.get(
            f"/api/projects/{team.project}/tasks",
            params={"updated_after": moment},
            headers=team.viewer.headers,
        )
        assert_problem(response, 400, "validation", {"query.updated_after"})


async def test_a_patch_that_changes_nothing_is_no_change(
    client: Client, db: AsyncConnection[Any], team: Team, valkey: Valkey
) -> None:
    """It answered 200 with a new ``updated_at`` (the task jumped to the top of ``sort=updated`` and
    out of every walk under way), wrote ``updated_by`` and made the lists' stored pages stale. Now:
    the task as it was, no event, the same version."""
    task_id = await make_task(db, team.project, team.owner, title="Same", due=date(2030, 1, 1))
    response = await client.get(f"/api/tasks/{task_id}", headers=team.viewer.headers)
    assert response.status_code == 200, response.text
    task = response.json()
    await client.get(f"/api/projects/{team.project}/tasks", headers=team.viewer.headers)
    version = await valkey.get(f"tasks:pv:{team.project}")
    assert version is not None
    row = await (await db.execute("select coalesce(max(id), 0) from outbox")).fetchone()
    assert row is not None
    last_event = row[0]

    same = {
        "title": "Same",
        "description": "",
        "status": task["status"],
        "priority": task["priority"],
        "assignee_id": None,
        "due_date": "2030-01-01",
        "position": task["position"],
    }
    for body in ({"title": "Same"}, {"due_date": "2030-01-01"}, {}, same):
        assert await patch(client, team, task_id, **body) == task, body

    assert await valkey.get(f"tasks:pv:{team.project}") == version
    events = await (await db.execute("select count(*) from outbox where id > %s", (last_event,))).fetchone()
    assert events == (0,)

    changed = await patch(client, team, task_id, title="Changed")
    assert datetime.fromisoformat(changed["updated_at"]) > datetime.fromisoformat(task["updated_at"])
    assert changed["updated_by"] == team.editor.id
    assert await valkey.get(f"tasks:pv:{team.project}") != version


async def test_a_cursor_of_another_sort_is_a_400_invalid_cursor(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """It was a 422 ``unprocessable``, unlike every other cursor the list cannot continue."""
    await due_tasks(db, team)
    tasks = f"/api/projects/{team.project}/tasks"
    first = await client.get(tasks, params={"sort": "due", "limit": 1}, headers=team.viewer.headers)
    cursor = first.json()["next_cursor"]
    assert decode_cursor(cursor, TaskCursor).sort == "due"
    for params in (
        {"sort": "created", "cursor": cursor},
        {"cursor": cursor},
        {"sort": "updated", "cursor": cursor},
    ):
        response = await client.get(tasks, params=params, headers=team.viewer.headers)
        assert_problem(response, 400, "invalid-cursor", {"query.cursor"})


def test_the_list_documents_no_422(app: Litestar) -> None:
    operation = app.openapi_schema.to_schema()["paths"]["/api/projects/{project_id}/tasks"]["get"]
    assert "422" not in operation["responses"]
    assert "updated_after=<as_of>" in operation["description"]


async def test_a_removed_members_unassigned_tasks_are_in_the_catch_up(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """The foreign key unassigns a removed member's tasks (no SQL of ours runs): they kept their
    ``updated_at``, so the walk's catch-up and the ``updated`` sort never showed the change."""
    ids = {
        title: await make_task(
            db, team.project, team.owner, title=title, assignee=team.editor if title == "B" else None
        )
        for title in ("A", "B", "C")
    }
    before = await patch(client, team, ids["C"], description="edited last")
    walked = await walk(client, team, {"sort": "created"}, limit=100)
    (as_of,) = walked.as_of

    removed = await client.delete(
        f"/api/projects/{team.project}/members/{team.editor.id}", headers=team.owner.headers
    )
    assert removed.status_code == 204, removed.text

    assert await catch_up(client, team, as_of) == ["B"]
    newest_first = await walk(client, team, {"sort": "updated"}, limit=100)
    assert newest_first.titles[0] == "B", "the unassignment is the latest change"
    task = (await client.get(f"/api/tasks/{ids['B']}", headers=team.viewer.headers)).json()
    assert task["assignee_id"] is None
    assert task["updated_at"] > before["updated_at"]
