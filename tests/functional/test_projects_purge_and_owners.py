"""A deleted project's purge leaves no title of what it held in the feed's objects, and the last owner
who can still act stays one.

The feed keeps the title of each object an event named in ``activity_objects`` (a task's title, a
file's name); a ``*.deleted`` event makes the object a tombstone (no title, ``deleted``). A project's
deletion emits no such event for each of its tasks and files: the purge tombstones them itself, and a
one-off migration tombstones those that earlier purges left behind.

An owner whose account is deactivated cannot act: the last *active* owner can neither leave nor be
demoted while the other owners are all deactivated.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from app.core.db import UnitOfWork
from app.db.models import ProjectRole
from app.domains.activity.events import emit
from app.domains.activity.services import ActivityService
from app.domains.projects import services as project_services
from app.domains.projects.jobs import purge_deleted_project
from tests.factories import Actor, Client, Team, make_project, make_task, migration_up
from tests.functional.test_activity_feed import deliver, feed, new_task, services  # noqa: F401

OBJECT = "select title, deleted from activity_objects where object_type = %s and object_id = %s"
NEW_OBJECT = (
    "insert into activity_objects (object_type, object_id, title, deleted, seq) values (%s, %s, %s, false, 1)"
)


async def object_row(db: AsyncConnection[Any], object_type: str, object_id: int) -> list[tuple[Any, ...]]:
    return await (await db.execute(OBJECT, (object_type, object_id))).fetchall()


async def new_file(db: AsyncConnection[Any], project: int, uploader: Actor, filename: str) -> int:
    """A file row of ``project`` and its ``file.uploaded`` event in the outbox (as the upload writes
    them; nothing on disk: the purge never reads it)."""
    row = await (
        await db.execute(
            "insert into project_files (project_id, uploaded_by, filename, content_type, size_bytes, sha256,"
            " storage_key) values (%s, %s, %s, 'text/plain', 1, repeat('0', 64), gen_random_uuid()::text)"
            " returning id",
            (project, uploader.id, filename),
        )
    ).fetchone()
    assert row is not None
    await emit(
        UnitOfWork(db),
        actor=uploader.id,
        verb="file.uploaded",
        obj=("file", row[0]),
        project_id=project,
        data={"filename": filename, "size_bytes": 1},
    )
    return int(row[0])


async def delete_and_purge(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    deleted = await client.delete(f"/api/projects/{team.project}", headers=team.owner.headers)
    assert deleted.status_code == 204, deleted.text
    ctx = {"services": client.app.state.services}
    assert client.blocking_portal.call(partial(purge_deleted_project, ctx, project_id=team.project))
    gone = await (await db.execute("select count(*) from projects where id = %s", (team.project,))).fetchone()
    assert gone == (0,)


# -- D1: the purge tombstones the project's tasks and files ----------------------------------------


async def test_the_purge_tombstones_the_titles_of_the_projects_tasks(
    client: Client,
    db: AsyncConnection[Any],
    team: Team,
    feed: ActivityService,  # noqa: F811
) -> None:
    task = await new_task(client, team.editor, team.project, "Secret merger with Initech")
    other = await make_project(db, team.owner, {team.editor.id: ProjectRole.EDITOR}, name="Gemini")
    kept = await new_task(client, team.editor, other, "Public roadmap")
    assert await deliver(db, feed) >= 2
    assert await object_row(db, "task", task) == [("Secret merger with Initech", False)]

    await delete_and_purge(client, db, team)
    await deliver(db, feed)  # the project.deleted event

    assert await object_row(db, "task", task) == [(None, True)], "the purged task's title is still stored"
    assert await object_row(db, "task", kept) == [("Public roadmap", False)]


async def test_the_purge_tombstones_the_names_of_the_projects_files(
    client: Client,
    db: AsyncConnection[Any],
    team: Team,
    feed: ActivityService,  # noqa: F811
) -> None:
    files = [await new_file(db, team.project, team.owner, f"salaries-{n}.xlsx") for n in range(2)]
    other = await make_project(db, team.owner, name="Gemini")
    kept = await new_file(db, other, team.owner, "brochure.pdf")
    assert await deliver(db, feed) == 3
    assert await object_row(db, "file", files[0]) == [("salaries-0.xlsx", False)]

    await delete_and_purge(client, db, team)

    for file_id in files:
        assert await object_row(db, "file", file_id) == [(None, True)], "a purged file's name is still stored"
    assert await object_row(db, "file", kept) == [("brochure.pdf", False)]


async def test_a_task_deleted_just_before_its_project_loses_its_title_too(
    client: Client,
    db: AsyncConnection[Any],
    team: Team,
    feed: ActivityService,  # noqa: F811
) -> None:
    """Its task.deleted event was still in the outbox when the project was deleted: the feed drops the
    events of a project being deleted, and the task's row is gone before the purge looks for it."""
    task = await new_task(client, team.editor, team.project, "Layoffs list")
    assert await deliver(db, feed) == 1
    removed = await client.delete(f"/api/tasks/{task}", headers=team.owner.headers)
    assert removed.status_code == 204, removed.text

    await delete_and_purge(client, db, team)
    await deliver(db, feed)  # the task.deleted event (dropped) and the project.deleted one

    assert await object_row(db, "task", task) == [(None, True)], "the deleted task's title is still stored"


async def test_the_purge_tombstones_objects_of_its_tasks_and_files_in_chunks(
    client: Client, db: AsyncConnection[Any], team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Titles stored with no event of the project left to name them (the feed's events of the project
    are purged first): the task chunks and the file chunks find them by the rows (two per transaction
    here), every one, and none of another project's."""
    monkeypatch.setattr(project_services, "PURGE_TASKS_CHUNK", 2)
    monkeypatch.setattr(project_services, "PURGE_FILES_CHUNK", 2)
    other = await make_project(db, team.owner, name="Gemini")
    tasks = [await make_task(db, team.project, team.owner, title=f"Plan {n}") for n in range(5)]
    files = [await new_file(db, team.project, team.owner, f"plan-{n}.pdf") for n in range(5)]
    kept_task = await make_task(db, other, team.owner, title="Kept")
    kept_file = await new_file(db, other, team.owner, "kept.pdf")
    objects = [("task", t, f"Plan {n}") for n, t in enumerate(tasks)]
    objects += [("file", f, f"plan-{n}.pdf") for n, f in enumerate(files)]
    objects += [("task", kept_task, "Kept"), ("file", kept_file, "kept.pdf")]
    async with db.cursor() as cur:
        await cur.executemany(
            NEW_OBJECT,
            objects,
        )

    await delete_and_purge(client, db, team)

    for object_type, object_id, _ in objects[:10]:
        assert await object_row(db, object_type, object_id) == [(None, True)], (object_type, object_id)
    assert await object_row(db, "task", kept_task) == [("Kept", False)]
    assert await object_row(db, "file", kept_file) == [("kept.pdf", False)]


async def test_the_backfill_tombstones_objects_whose_task_or_file_is_gone(
    database_url: str, db: AsyncConnection[Any], team: Team
) -> None:
    """What purges before the fix left: titles of tasks and files that no longer exist. The backfill
    erases those (in batches, and may run again), keeps the titles of live ones, and touches no other
    type of object (a project or a user is not the purge's)."""
    live_task = await (
        await db.execute(
            "insert into tasks (project_id, title, description, position, created_by, updated_by)"
            " values (%s, 'Live task', '', 1, %s, %s) returning id",
            (team.project, team.owner.id, team.owner.id),
        )
    ).fetchone()
    live_file = await (
        await db.execute(
            "insert into project_files (project_id, uploaded_by, filename, content_type, size_bytes, sha256,"
            " storage_key) values (%s, %s, 'live.txt', 'text/plain', 1, repeat('0', 64), 'live-backfill')"
            " returning id",
            (team.project, team.owner.id),
        )
    ).fetchone()
    assert live_task is not None and live_file is not None
    ceiling = 10_000_000_000  # ids no task or file has
    objects = [("task", live_task[0], "Live task"), ("file", live_file[0], "live.txt")]
    objects += [("file", ceiling + n, f"gone file {n}") for n in range(3)]
    objects += [("project", ceiling + 1, "gone project"), ("user", ceiling + 1, "Someone")]
    async with db.cursor() as cur:
        await cur.executemany(
            NEW_OBJECT,
            objects,
        )
        await cur.execute(
            "insert into activity_objects (object_type, object_id, title, deleted, seq)"
            " values ('task', %s, null, true, 1)",
            (ceiling - 1,),
        )
        await cur.execute(
            "insert into activity_objects (object_type, object_id, title, deleted, seq)"
            " select 'task', %s + n, 'gone task ' || n, false, 1 from generate_series(0, 2099) n",
            (ceiling,),
        )

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_up("activity_objects_purged_tombstones"))
        conn.execute(migration_up("activity_objects_purged_tombstones"))

    rows = await (
        await db.execute("select object_type, object_id, title, deleted from activity_objects order by 1, 2")
    ).fetchall()
    after = {(t, i): (title, deleted) for t, i, title, deleted in rows}
    assert after[("task", live_task[0])] == ("Live task", False)
    assert after[("file", live_file[0])] == ("live.txt", False)
    assert after[("project", ceiling + 1)] == ("gone project", False)
    assert after[("user", ceiling + 1)] == ("Someone", False)
    assert after[("task", ceiling - 1)] == (None, True)
    for n in range(2_100):
        assert after[("task", ceiling + n)] == (None, True)
    for n in range(3):
        assert after[("file", ceiling + n)] == (None, True)
    # a transaction per batch of 1,000 objects: a backfill of many holds no lock on them all until it ends
    batches = await (
        await db.execute(
            "select count(distinct xmin::text) from activity_objects"
            " where object_type = 'task' and object_id > %s",
            (ceiling - 1,),
        )
    ).fetchone()
    assert batches == (3,)


# -- D3: the last active owner stays -------------------------------------------------------------


async def promote(client: Client, team: Team, member: Actor) -> None:
    promoted = await client.patch(
        f"/api/projects/{team.project}/members/{member.id}",
        json={"role": "owner"},
        headers=team.owner.headers,
    )
    assert promoted.status_code == 200, promoted.text


async def deactivate(db: AsyncConnection[Any], member: Actor) -> None:
    await db.execute("update users set is_active = false where id = %s", (member.id,))


async def active_owners(db: AsyncConnection[Any], project: int) -> int:
    row = await (
        await db.execute(
            "select count(*) from project_members m join users u on u.id = m.user_id"
            " where m.project_id = %s and m.role = 'owner' and u.is_active",
            (project,),
        )
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_the_last_active_owner_cannot_leave_beside_a_deactivated_owner(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    await promote(client, team, team.editor)
    await deactivate(db, team.editor)
    left = await client.delete(
        f"/api/projects/{team.project}/members/{team.owner.id}", headers=team.owner.headers
    )
    assert left.status_code == 409, left.text
    assert await active_owners(db, team.project) == 1


async def test_the_last_active_owner_cannot_demote_themselves_beside_a_deactivated_owner(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    await promote(client, team, team.editor)
    await deactivate(db, team.editor)
    demoted = await client.patch(
        f"/api/projects/{team.project}/members/{team.owner.id}",
        json={"role": "editor"},
        headers=team.owner.headers,
    )
    assert demoted.status_code == 409, demoted.text
    assert await active_owners(db, team.project) == 1


async def test_an_owner_may_leave_while_another_active_owner_stays(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """A deactivated owner besides does not change that (nor count for it)."""
    await promote(client, team, team.editor)
    await promote(client, team, team.viewer)
    await deactivate(db, team.viewer)
    left = await client.delete(
        f"/api/projects/{team.project}/members/{team.owner.id}", headers=team.owner.headers
    )
    assert left.status_code == 204, left.text
    assert await active_owners(db, team.project) == 1
    # and the one left cannot go in turn: the deactivated owner is no owner who can act
    alone = await client.delete(
        f"/api/projects/{team.project}/members/{team.editor.id}", headers=team.editor.headers
    )
    assert alone.status_code == 409, alone.text


async def test_the_last_active_owner_may_remove_a_deactivated_owner(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """Nobody who can act goes with them: removing or demoting a deactivated owner is no last owner's."""
    await promote(client, team, team.editor)
    await promote(client, team, team.viewer)
    await deactivate(db, team.editor)
    await deactivate(db, team.viewer)
    demoted = await client.patch(
        f"/api/projects/{team.project}/members/{team.viewer.id}",
        json={"role": "viewer"},
        headers=team.owner.headers,
    )
    assert demoted.status_code == 200, demoted.text
    removed = await client.delete(
        f"/api/projects/{team.project}/members/{team.editor.id}", headers=team.owner.headers
    )
    assert removed.status_code == 204, removed.text
    assert await active_owners(db, team.project) == 1
