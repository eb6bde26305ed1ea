"""Caps on a project's tasks and a task's comments (review: neither was bounded, and a creation's
next position, the due/priority/updated sorts and a project's deletion all grow with them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.db.models import ProjectRole
from tests.factories import Client, assert_problem, generous_client, make_project, make_task, make_user
from tests.functional.test_projects_limits import count

TASKS_CAP = 3
COMMENTS_CAP = 2


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(
        settings, tasks_per_project_max=TASKS_CAP, comments_per_task_max=COMMENTS_CAP
    ):
        yield client


async def test_a_burst_of_task_creations_stops_at_the_cap_and_other_projects_are_unaffected(
    api: Client, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, api.app)
    editor = await make_user(db, api.app)
    project = await make_project(db, owner, {editor.id: ProjectRole.EDITOR})
    other = await make_project(db, owner)

    async def create(n: int) -> Any:
        who = owner if n % 2 else editor
        return await api.post(f"/api/projects/{project}/tasks", json={"title": f"T{n}"}, headers=who.headers)

    answers = await asyncio.gather(*(create(n) for n in range(8)))
    assert sorted(a.status_code for a in answers) == [201] * TASKS_CAP + [409] * (8 - TASKS_CAP)
    assert_problem(next(a for a in answers if a.status_code == 409), 409, "task-limit")
    assert await count(db, "select count(*) from tasks where project_id = %s", project) == TASKS_CAP
    created = await api.post(
        f"/api/projects/{other}/tasks", json={"title": "elsewhere"}, headers=owner.headers
    )
    assert created.status_code == 201, created.text

    first = next(a for a in answers if a.status_code == 201).json()["id"]
    assert (await api.delete(f"/api/tasks/{first}", headers=owner.headers)).status_code == 204
    again = await api.post(
        f"/api/projects/{project}/tasks", json={"title": "room again"}, headers=owner.headers
    )
    assert again.status_code == 201, "a deletion makes room"


async def test_comments_stop_at_the_cap_per_task(api: Client, db: AsyncConnection[Any]) -> None:
    owner = await make_user(db, api.app)
    project = await make_project(db, owner)
    task, other = await make_task(db, project, owner), await make_task(db, project, owner)

    async def comment(task_id: int, n: int) -> Any:
        return await api.post(f"/api/tasks/{task_id}/comments", json={"body": f"c{n}"}, headers=owner.headers)

    answers = await asyncio.gather(*(comment(task, n) for n in range(5)))
    assert sorted(a.status_code for a in answers) == [201] * COMMENTS_CAP + [409] * (5 - COMMENTS_CAP)
    assert_problem(next(a for a in answers if a.status_code == 409), 409, "comment-limit")
    assert await count(db, "select count(*) from comments where task_id = %s", task) == COMMENTS_CAP
    assert (await comment(other, 0)).status_code == 201, "the cap is per task"
