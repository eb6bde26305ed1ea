"""A project's deletion in two steps: the request marks the project, deletes its memberships and
invitations and enqueues its purge, in one short transaction whatever the project holds; the purge job
deletes the rest in bounded chunks, each its own transaction, then the project's row.

Review: the deletion was one ``delete from projects`` cascading to everything of the project; at the
caps (10,000 tasks of 1,000 comments, and their feed) it ran far past the statement timeout, so such a
project could never be deleted. Speed is not asserted here: what is gone when, and that a purge stopped
anywhere goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.queues import build_saq_config
from app.core.services import Services
from app.db.models import ProjectRole, UserRole
from app.domains.projects import services as project_services
from app.domains.projects.jobs import purge_deleted_project, requeue_lost_project_purges
from app.domains.projects.services import PURGE_GROUPS_CHUNK, PURGE_TASK, PURGE_TASKS_CHUNK, ProjectService
from app.modules import MODULES
from tests.factories import (
    Client,
    Team,
    answer_racing,
    assert_problem,
    generous_client,
    make_project,
    make_user,
)
from tests.functional.test_projects_deletion_scale import fill, holdings, totals

CAP = 2


def context(client: Client) -> Any:
    app: Litestar = client.app
    return {"services": app.state.services}


def service(client: Client) -> ProjectService:
    app: Litestar = client.app
    projects: ProjectService = app.state.services[ProjectService]
    return projects


def run_purge(client: Client, project: int) -> bool:
    """The job, as the worker runs it."""
    return bool(
        client.blocking_portal.call(partial(purge_deleted_project, context(client), project_id=project))
    )


async def purges_enqueued(db: AsyncConnection[Any]) -> list[int]:
    rows = await (
        await db.execute(
            "select (payload->>'project_id')::bigint from outbox where task = %s order by id", (PURGE_TASK,)
        )
    ).fetchall()
    return [row[0] for row in rows]


async def project_ids(db: AsyncConnection[Any]) -> list[int]:
    return [row[0] for row in await (await db.execute("select id from projects order by id")).fetchall()]


async def test_a_deleted_project_is_gone_at_once_for_its_members_and_administrators(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    admin = await make_user(db, client.app, UserRole.ADMIN)
    await fill(db, team.project, team.owner.id, team.editor.id, tasks=3, comments=2)
    task = await (
        await db.execute("select min(id) from tasks where project_id = %s", (team.project,))
    ).fetchone()
    file = await (
        await db.execute("select id from project_files where project_id = %s", (team.project,))
    ).fetchone()
    assert task is not None and file is not None
    task_id, file_id = task[0], file[0]
    project = f"/api/projects/{team.project}"
    readable = [
        project,
        f"{project}/tasks",
        f"{project}/files",
        f"{project}/files/{file_id}",
        f"{project}/members",
        f"{project}/feed",
        f"/api/tasks/{task_id}",
        f"/api/tasks/{task_id}/comments",
    ]
    for url in readable:
        if url.endswith(f"/files/{file_id}"):
            continue  # the filled row has no stored bytes: readable, not downloadable
        seen = await client.get(url, headers=team.owner.headers)
        assert seen.status_code == 200, (url, seen.text)
    assert (await client.get(f"{project}/feed", headers=admin.headers)).status_code == 200
    await db.execute("update activity_groups set key = '1-' || id where project_id = %s", (team.project,))
    global_feed = await client.get("/api/feed", headers=admin.headers)
    keys = [g["key"] for g in global_feed.json()["items"] if (g["project"] or {}).get("id") == team.project]
    assert len(keys) == 3, global_feed.text
    assert (await client.get(f"/api/feed/groups/{keys[0]}", headers=admin.headers)).status_code == 200
    unread = await client.get("/api/feed/unread-count", headers=admin.headers)
    assert unread.json()["unread"] == 3, unread.text

    deleted = await client.delete(project, headers=team.owner.headers)
    assert deleted.status_code == 204, deleted.text

    # The administrators' global feed shows every project's groups: not those of one being deleted,
    # whose groups stay until its purge reaches them.
    admin_feed = await client.get("/api/feed", headers=admin.headers)
    assert admin_feed.status_code == 200, admin_feed.text
    assert [g for g in admin_feed.json()["items"] if g["project"] is not None] == [], admin_feed.text
    for key in keys:
        assert_problem(await client.get(f"/api/feed/groups/{key}", headers=admin.headers), 404)
    unread = await client.get("/api/feed/unread-count", headers=admin.headers)
    assert unread.json()["unread"] == 0, unread.text

    for who in (team.owner, team.editor, team.viewer, admin):
        for url in readable:
            assert_problem(await client.get(url, headers=who.headers), 404)
        listed = await client.get("/api/projects", headers=who.headers)
        assert listed.status_code == 200 and listed.json()["items"] == [], listed.text
    for who in (team.owner, team.editor, team.viewer):
        feed = await client.get("/api/feed", headers=who.headers)
        assert feed.status_code == 200 and feed.json()["items"] == [], feed.text
    assert_problem(await client.delete(project, headers=team.owner.headers), 404)
    assert_problem(await client.patch(project, json={"name": "Back"}, headers=team.owner.headers), 404)
    invited = await client.post(
        f"{project}/invitations",
        json={"email": "late@example.com", "role": "viewer"},
        headers=team.owner.headers,
    )
    assert_problem(invited, 404)
    posted = await client.post(
        f"/api/tasks/{task_id}/comments", json={"body": "late"}, headers=team.editor.headers
    )
    assert_problem(posted, 404)

    # What it held is the purge's: still there, its memberships and invitations aside, until it runs.
    held = await holdings(db, team.project)
    assert held["project_members"] == held["project_invitations"] == 0, held
    assert held["tasks"] == 3 and held["comments"] == 6 and held["activity_groups"] == 3, held
    assert await purges_enqueued(db) == [team.project]


DELETION_FIRST_STEP = """
with locked as (select id from projects where id = %s for update),
marked as (update projects set deleting_since = now() where id in (select id from locked) returning id)
delete from project_members where project_id in (select id from marked)
"""
"""What the deletion's transaction does before its commit (the project locked and marked, its
memberships deleted), as one statement."""


async def test_a_task_created_while_the_deletion_commits_is_a_404_not_a_foreign_key_violation(
    client: Client, team: Team, database_url: str
) -> None:
    """The creation holds the project (FOR KEY SHARE) before it reads the caller's role: it waits for
    the deletion, then sees the project marked (the lock re-reads the row) and answers 404, instead of
    going on with a role read from the membership the deletion removed (a task created in a deleted
    project, or here a 422 for an assignee who is no longer a member)."""

    async def create() -> Any:
        return await client.post(
            f"/api/projects/{team.project}/tasks",
            json={"title": "Late", "assignee_id": team.editor.id},
            headers=team.editor.headers,
        )

    answer = await answer_racing(database_url, DELETION_FIRST_STEP, team.project, create)
    assert_problem(answer, 404)


async def test_the_purge_removes_everything_of_the_project_and_nothing_of_another(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    other = await make_project(db, team.owner, {team.editor.id: ProjectRole.EDITOR}, name="Gemini")
    await fill(db, team.project, team.owner.id, team.editor.id, tasks=2 * PURGE_TASKS_CHUNK + 5, comments=3)
    await fill(db, other, team.owner.id, team.editor.id, tasks=15, comments=10)
    kept = await holdings(db, other)
    assert all(kept.values()), kept

    assert (
        await client.delete(f"/api/projects/{team.project}", headers=team.owner.headers)
    ).status_code == 204
    assert run_purge(client, team.project) is True

    assert await totals(db) == kept
    assert await holdings(db, other) == kept
    assert await project_ids(db) == [other]
    # Done is done: again, nothing happens; a live project is never purged.
    assert run_purge(client, team.project) is True
    assert run_purge(client, other) is True
    assert await holdings(db, other) == kept and await project_ids(db) == [other]


async def test_the_deletion_touches_no_task_and_the_purge_takes_them_with_their_assignees(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """The assignee was a foreign key to the membership, ``on delete set null``: the deletion's removal
    of every membership unassigned every assigned task of the project in the request (10,000 tasks,
    0.64 s; near ``TASKS_PER_PROJECT_MAX``'s bound, past the statement timeout, and the project could
    not be deleted). Now the deletion updates no task; a member removed from a live project still has
    their tasks there unassigned at once."""
    other = await make_project(db, team.owner, {team.editor.id: ProjectRole.EDITOR}, name="Gemini")
    await fill(db, team.project, team.owner.id, team.editor.id, tasks=40, comments=1)
    await fill(db, other, team.owner.id, team.editor.id, tasks=10, comments=1)
    assigned = "select count(*) from tasks where project_id = %s and assignee_id is not null"

    async def count(query: str, project: int) -> int:
        row = await (await db.execute(query, (project,))).fetchone()
        assert row is not None
        return int(row[0])

    versions = "select sum(version) from tasks where project_id = %s"
    before = await count(versions, team.project)
    assert await count(assigned, team.project) == 20
    assert (
        await client.delete(f"/api/projects/{team.project}", headers=team.owner.headers)
    ).status_code == 204
    assert await count(assigned, team.project) == 20, "the deletion unassigned the project's tasks"
    assert await count(versions, team.project) == before, "the deletion updated the project's tasks"

    assert run_purge(client, team.project) is True
    assert await count("select count(*) from tasks where project_id = %s", team.project) == 0
    assert await count("select count(*) from project_assignees where project_id = %s", team.project) == 0

    removed = await client.delete(
        f"/api/projects/{other}/members/{team.editor.id}", headers=team.owner.headers
    )
    assert removed.status_code == 204, removed.text
    assert await count(assigned, other) == 0, "a removed member's tasks are unassigned at once"
    assert await count("select count(*) from project_assignees where project_id = %s", other) == 1


async def test_a_purge_stopped_after_a_chunk_leaves_a_consistent_project_and_the_next_run_finishes(
    client: Client, db: AsyncConnection[Any], team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = await make_project(db, team.owner, {team.editor.id: ProjectRole.EDITOR}, name="Gemini")
    tasks = PURGE_TASKS_CHUNK + PURGE_GROUPS_CHUNK // 2
    await fill(db, team.project, team.owner.id, team.editor.id, tasks=tasks, comments=2)
    await fill(db, other, team.owner.id, team.editor.id, tasks=5, comments=2)
    kept = await holdings(db, other)
    assert (
        await client.delete(f"/api/projects/{team.project}", headers=team.owner.headers)
    ).status_code == 204
    projects = service(client)

    def chunk() -> bool:
        """One chunk, then the run hands over as if out of time: whether the project is left."""
        return not client.blocking_portal.call(
            partial(projects.purge_deleted_project, team.project, max_chunks=1)
        )

    # The feed first: a chunk of groups emptied, a bounded number of their rows at a time (a group's
    # events are bounded by no cap), then deleted.
    monkeypatch.setattr(project_services, "PURGE_FEED_ROWS_CHUNK", 50)
    before = await holdings(db, team.project)
    assert chunk()
    held = await holdings(db, team.project)
    feed_rows = ("activity_event_reads", "activity_events", "activity_group_objects")
    assert sum(before[table] - held[table] for table in feed_rows) == 50, (before, held)
    assert held["activity_groups"] == tasks and held["tasks"] == tasks, held
    while held["activity_groups"] == tasks:
        assert chunk()
        held = await holdings(db, team.project)
    assert held["activity_groups"] == tasks - PURGE_GROUPS_CHUNK, held
    assert held["activity_events"] == 2 * held["activity_groups"], held
    assert held["activity_group_objects"] == held["activity_events"], held
    assert held["activity_group_actors"] == held["activity_groups"], held
    assert held["tasks"] == tasks and held["comments"] == 2 * tasks, held
    while (await holdings(db, team.project))["activity_groups"]:
        assert chunk()

    # Then the tasks, each with its comments and search document, a chunk at a time.
    assert chunk()
    held = await holdings(db, team.project)
    left = tasks - PURGE_TASKS_CHUNK
    assert held["tasks"] == left and held["comments"] == 2 * left, held
    assert held["task_search_documents"] == left, held
    assert await project_ids(db) == [team.project, other]
    assert await holdings(db, other) == kept

    # A run out of time hands over to the next job (enqueued with its last chunk) and stops.
    enqueued = len(await purges_enqueued(db))
    assert (
        client.blocking_portal.call(partial(projects.purge_deleted_project, team.project, budget_s=0))
        is False
    )
    assert (await holdings(db, team.project))["tasks"] == left
    assert len(await purges_enqueued(db)) == enqueued + 1

    assert run_purge(client, team.project) is True
    assert await totals(db) == kept
    assert await project_ids(db) == [other]


async def test_the_cron_enqueues_a_purge_that_was_lost(
    client: Client, db: AsyncConnection[Any], team: Team, settings: Settings, valkey_url: str
) -> None:
    config = build_saq_config(Services(settings, MODULES), valkey_url, run_workers_in_process=False)
    default = next(queue for queue in config.queue_configs if queue.name == "default")
    crons = [
        job.cron for job in default.scheduled_tasks if job.function.__wrapped__ is requeue_lost_project_purges
    ]
    registered = [task.__wrapped__ for task in default.tasks]  # type: ignore[union-attr]
    await config.queue_instances["default"].redis.aclose()  # type: ignore[index,union-attr]
    assert len(crons) == 1, crons
    minute, *rest = str(crons[0]).split()
    assert minute.isdigit() and rest == ["*", "*", "*", "*"], crons
    assert purge_deleted_project in registered and purge_deleted_project.__name__ == PURGE_TASK

    recent = await make_project(db, team.owner, name="Recent")
    for project in (team.project, recent):
        assert (
            await client.delete(f"/api/projects/{project}", headers=team.owner.headers)
        ).status_code == 204
    await db.execute("delete from outbox where task = %s", (PURGE_TASK,))  # both jobs lost
    await db.execute(
        "update projects set deleting_since = now() - interval '11 minutes' where id = %s", (team.project,)
    )

    assert client.blocking_portal.call(requeue_lost_project_purges, context(client)) == 1
    assert await purges_enqueued(db) == [team.project]
    assert run_purge(client, team.project) is True
    assert await project_ids(db) == [recent]
    assert client.blocking_portal.call(requeue_lost_project_purges, context(client)) == 0


@pytest.fixture(scope="module")
async def capped(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, projects_per_user_max=CAP):
        yield client


async def test_a_project_being_deleted_does_not_count_toward_its_creators_cap(
    capped: Client, db: AsyncConnection[Any]
) -> None:
    creator = await make_user(db, capped.app)
    made = [await make_project(db, creator, name=f"P{n}") for n in range(CAP)]
    assert_problem(await capped.post("/api/projects", json={"name": "More"}, headers=creator.headers), 409)

    assert (await capped.delete(f"/api/projects/{made[0]}", headers=creator.headers)).status_code == 204
    assert made[0] in await project_ids(db)  # not purged yet
    again = await capped.post("/api/projects", json={"name": "More"}, headers=creator.headers)
    assert again.status_code == 201, again.text
    assert_problem(await capped.post("/api/projects", json={"name": "Most"}, headers=creator.headers), 409)
