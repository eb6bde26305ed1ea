"""The task list in every sort, since each sort is a statement of its own (``ListProjectTasksBy*``):
a walk lists every task once, in the documented order, and a cursor (one handed out before, or any
string of the cursor's grammar) continues exactly where the single statement with its CASE sort key
did: after ``(key, id)``, the key being the one ``services.sort_key`` gives.

The documented order (the ``sort`` parameter): created by id; due soonest first, undated last;
priority urgent first; updated most recent first; ties by id. The tasks share due dates, priorities
and moments, and include the first and last dates Python has, so every page boundary falls inside a
tie, between the dated and the undated, and between two priorities.

Also: a new task's position never exceeds the largest a client may set (``MAX_POSITION``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.core.pagination import encode_cursor
from app.domains.tasks.schemas import MAX_POSITION, TaskCursor, TaskSort
from app.domains.tasks.services import to_micros
from tests.factories import Client, Team

SORTS: tuple[TaskSort, ...] = ("created", "due", "priority", "updated")
PRIORITY_RANK = {"low": 1, "medium": 2, "high": 3, "urgent": 4}
DAYS = (date(1, 1, 1), date(2027, 1, 1), date(2027, 1, 2), date(2027, 3, 1), date(9999, 12, 31), None)
MOMENTS = [datetime(2026, 11, 1, tzinfo=UTC) + timedelta(microseconds=n * 1_000_001) for n in range(4)]
TASKS = 60
EPOCH_DAY = date(1970, 1, 1)
UNDATED_KEY = 2**31 - 1
"""The ``due`` key of an undated task (after every date's: days since the epoch)."""


def key(sort: TaskSort, task: dict[str, Any]) -> int:
    """The cursor's key of ``task`` as the single statement computed it (its CASE), from the answer."""
    if sort == "due":
        due = task["due_date"]
        return UNDATED_KEY if due is None else (date.fromisoformat(due) - EPOCH_DAY).days
    if sort == "priority":
        return -PRIORITY_RANK[task["priority"]]
    if sort == "updated":
        return -to_micros(datetime.fromisoformat(task["updated_at"]))
    return 0


def documented(sort: TaskSort, tasks: list[dict[str, Any]]) -> list[int]:
    """The ids in the order the API documents, by Python's sort."""
    if sort == "due":
        order = sorted(tasks, key=lambda t: (t["due_date"] is None, t["due_date"] or "", t["id"]))
    elif sort == "priority":
        order = sorted(tasks, key=lambda t: (-PRIORITY_RANK[t["priority"]], t["id"]))
    elif sort == "updated":
        order = sorted(tasks, key=lambda t: (-to_micros(datetime.fromisoformat(t["updated_at"])), t["id"]))
    else:
        order = sorted(tasks, key=lambda t: t["id"])
    return [t["id"] for t in order]


async def arrange(db: AsyncConnection[Any], team: Team) -> None:
    """``TASKS`` tasks cycling through the dates (undated included), priorities and moments at
    different strides, so that each tie of one sort mixes the others' values."""
    for n in range(TASKS):
        await db.execute(
            "insert into tasks (project_id, title, status, priority, due_date, position, created_by,"
            " updated_by, updated_at)"
            " values (%s, %s, %s, (enum_range(null::task_priority))[%s], %s, %s, %s, %s, %s)",
            (
                team.project,
                f"task {n}",
                "done" if n % 3 == 0 else "todo",
                1 + n * 3 % 4,
                DAYS[n * 5 % len(DAYS)],
                n,
                team.owner.id,
                team.owner.id,
                MOMENTS[n * 7 % len(MOMENTS)],
            ),
        )


async def page(client: Client, team: Team, **params: Any) -> dict[str, Any]:
    response = await client.get(
        f"/api/projects/{team.project}/tasks", params=params, headers=team.viewer.headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def walk(client: Client, team: Team, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every task a walk lists, following ``next_cursor`` to the end."""
    listed: list[dict[str, Any]] = []
    query: dict[str, Any] = {"limit": limit, **params}
    for _ in range(TASKS + 2):
        body = await page(client, team, **query)
        listed += body["items"]
        if body["next_cursor"] is None:
            return listed
        query["cursor"] = body["next_cursor"]
    raise AssertionError("the walk does not end")


@pytest.mark.parametrize("sort", SORTS)
async def test_a_walk_lists_every_task_once_in_the_documented_order(
    client: Client, db: AsyncConnection[Any], team: Team, sort: TaskSort
) -> None:
    await arrange(db, team)
    everything = await walk(client, team, 100, sort="created")
    assert len(everything) == TASKS
    for limit in (1, 7, 100):
        listed = await walk(client, team, limit, sort=sort)
        assert [t["id"] for t in listed] == documented(sort, everything), limit
    # a filter: the walk's rows are the range's that match, in the same order
    todo = [t for t in everything if t["status"] == "todo"]
    listed = await walk(client, team, 4, sort=sort, status="todo")
    assert [t["id"] for t in listed] == documented(sort, todo)


@pytest.mark.parametrize("sort", SORTS)
async def test_any_cursor_continues_after_its_key_and_id(
    client: Client, db: AsyncConnection[Any], team: Team, sort: TaskSort
) -> None:
    """A cursor at each task, and cursors of the grammar that no task has (before or after every
    key, between two keys, beyond the undated): the page is the documented order's tasks after
    ``(key, id)``, as the single statement's ``(sort_key, id) > (key, id)`` listed them."""
    await arrange(db, team)
    everything = await walk(client, team, 100, sort="created")
    order = documented(sort, everything)
    by_id = {t["id"]: t for t in everything}
    as_of = to_micros(datetime.fromisoformat((await page(client, team, sort=sort))["as_of"]))
    keys = sorted({key(sort, t) for t in everything})
    ids = sorted(by_id)
    positions = [(key(sort, by_id[i]), i) for i in order]
    positions += [(k + d, i) for k in keys for d in (-1, 0, 1) for i in (0, ids[len(ids) // 2], ids[-1] + 1)]
    positions += [(k, 0) for k in (-(10**16) + 1, 10**16 - 1, UNDATED_KEY + 1, -5, -1, 0, 1)]
    for k, i in positions:
        cursor = encode_cursor(TaskCursor(sort=sort, key=k, id=i, as_of=as_of))
        listed = (await page(client, team, sort=sort, cursor=cursor, limit=9))["items"]
        expected = [t for t in order if (key(sort, by_id[t]), t) > (k, i)][:9]
        assert [t["id"] for t in listed] == expected, cursor


async def test_a_new_task_takes_no_position_a_client_could_not_send_back(client: Client, team: Team) -> None:
    """Review: after a task was moved to ``MAX_POSITION`` the next task took ``MAX_POSITION + 1``
    (``max + 1``), and a client echoing it back got a 400."""
    tasks = f"/api/projects/{team.project}/tasks"
    first = await client.post(tasks, json={"title": "first"}, headers=team.editor.headers)
    assert first.status_code == 201, first.text
    moved = await client.patch(
        f"/api/tasks/{first.json()['id']}", json={"position": MAX_POSITION}, headers=team.editor.headers
    )
    assert moved.status_code == 200, moved.text

    for title in ("second", "third"):
        created = await client.post(tasks, json={"title": title}, headers=team.editor.headers)
        assert created.status_code == 201, created.text
        task = created.json()
        assert task["position"] == MAX_POSITION
        echoed = await client.patch(
            f"/api/tasks/{task['id']}",
            json={"title": f"{title}, renamed", "position": task["position"]},
            headers=team.editor.headers,
        )
        assert echoed.status_code == 200, echoed.text
