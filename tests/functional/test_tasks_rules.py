"""Business rules of tasks and comments over HTTP: assignees, comment authorship, listing, my tasks."""

from __future__ import annotations

import base64
from datetime import date
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.db import projects as project_queries
from app.db.models import ProjectRole, TaskStatus
from tests.factories import (
    Client,
    Team,
    answer_racing,
    assert_page_size_is_capped,
    assert_problem,
    make_project,
    make_task,
    make_user,
)


async def assignee_of(db: AsyncConnection[Any], task_id: int) -> int | None:
    row = await (await db.execute("select assignee_id from tasks where id = %s", (task_id,))).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


# -- assignees ----------------------------------------------------------------------------------------


async def test_the_assignee_must_be_a_member(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    tasks = f"/api/projects/{team.project}/tasks"
    for stranger in (team.outsider.id, 999_999):
        response = await client.post(
            tasks, json={"title": "Ship", "assignee_id": stranger}, headers=team.editor.headers
        )
        assert_problem(response, 422, "unprocessable")
    count = await (await db.execute("select count(*) from tasks")).fetchone()
    assert count == (0,)

    created = await client.post(
        tasks, json={"title": "Ship", "assignee_id": team.viewer.id}, headers=team.editor.headers
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    assert created.json()["assignee_id"] == team.viewer.id

    refused = await client.patch(
        f"/api/tasks/{task_id}", json={"assignee_id": team.outsider.id}, headers=team.editor.headers
    )
    assert_problem(refused, 422, "unprocessable")
    assert await assignee_of(db, task_id) == team.viewer.id


PROJECT_DELETED = "delete from projects where id = %s"
VIEWER_REMOVED = "delete from project_members where project_id = %s and user_id = {viewer}"


@pytest.mark.parametrize(
    ("change", "method", "path", "body", "status"),
    [
        (PROJECT_DELETED, "POST", "/api/projects/{project}/tasks", {"title": "New"}, 404),
        (PROJECT_DELETED, "PATCH", "/api/tasks/{task}", {"assignee_id": "{viewer}"}, 404),
        (
            VIEWER_REMOVED,
            "POST",
            "/api/projects/{project}/tasks",
            {"title": "New", "assignee_id": "{viewer}"},
            422,
        ),
        (VIEWER_REMOVED, "PATCH", "/api/tasks/{task}", {"assignee_id": "{viewer}"}, 422),
    ],
    ids=["created in a deleted project", "assigned in a deleted project", "created for", "assigned to"],
)
async def test_a_write_racing_a_removal_it_depends_on_is_a_4xx_and_stores_nothing(
    client: Client,
    db: AsyncConnection[Any],
    database_url: str,
    team: Team,
    change: str,
    method: str,
    path: str,
    body: dict[str, str],
    status: int,
) -> None:
    """The request checked the project (or the assignee's membership) before another transaction's
    deletion of it committed; its insert's foreign-key check then failed: a 500. The checks now lock
    what they rely on first, so the request waits for the deletion and answers as if it came after."""
    task_id = await make_task(db, team.project, team.owner, assignee=team.editor)
    names = {"project": team.project, "task": task_id, "viewer": team.viewer.id}
    json = {key: int(value.format(**names)) if key == "assignee_id" else value for key, value in body.items()}
    outbox = "select count(*) from outbox"
    before = await (await db.execute(outbox)).fetchone()

    answer = await answer_racing(
        database_url,
        change.format(**names),
        team.project,
        lambda: client.request(method, path.format(**names), headers=team.editor.headers, json=json),
    )

    assert_problem(answer, status, "not-found" if status == 404 else "unprocessable")
    assert await (await db.execute(outbox)).fetchone() == before
    tasks = await (await db.execute("select id, assignee_id from tasks")).fetchall()
    assert tasks == ([] if change == PROJECT_DELETED else [(task_id, team.editor.id)])


async def test_null_assignee_or_due_date_clears_it_and_omitting_keeps_it(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    task_id = await make_task(db, team.project, team.owner, assignee=team.editor, due=date(2030, 1, 2))
    url = f"/api/tasks/{task_id}"

    kept = await client.patch(url, json={"title": "Renamed"}, headers=team.editor.headers)
    assert kept.status_code == 200, kept.text
    assert kept.json()["assignee_id"] == team.editor.id
    assert kept.json()["due_date"] == "2030-01-02"
    assert kept.json()["title"] == "Renamed"

    cleared = await client.patch(url, json={"assignee_id": None}, headers=team.editor.headers)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["assignee_id"] is None
    assert cleared.json()["due_date"] == "2030-01-02"

    due_cleared = await client.patch(url, json={"due_date": None}, headers=team.editor.headers)
    assert due_cleared.status_code == 200, due_cleared.text
    assert due_cleared.json()["due_date"] is None

    stored = await (
        await db.execute("select assignee_id, due_date, title from tasks where id = %s", (task_id,))
    ).fetchone()
    assert stored == (None, None, "Renamed")

    set_again = await client.patch(
        url, json={"assignee_id": team.viewer.id, "due_date": "2031-05-06"}, headers=team.editor.headers
    )
    assert set_again.status_code == 200, set_again.text
    assert (set_again.json()["assignee_id"], set_again.json()["due_date"]) == (team.viewer.id, "2031-05-06")


# -- comments -----------------------------------------------------------------------------------------


async def test_only_the_author_edits_a_comment(
    client: Client, app: Litestar, db: AsyncConnection[Any], team: Team
) -> None:
    other_editor = await make_user(db, app, name="Other")
    await project_queries.add_member(
        db, project_id=team.project, user_id=other_editor.id, role=ProjectRole.EDITOR
    )
    task_id = await make_task(db, team.project, team.owner)
    comments = f"/api/tasks/{task_id}/comments"
    posted = await client.post(comments, json={"body": "Original"}, headers=team.editor.headers)
    assert posted.status_code == 201, posted.text
    assert posted.json()["author_id"] == team.editor.id
    url = f"{comments}/{posted.json()['id']}"

    for intruder in (team.owner, other_editor, team.viewer):
        refused = await client.patch(url, json={"body": "Hijacked"}, headers=intruder.headers)
        assert_problem(refused, 403, "forbidden")
    edited = await client.patch(url, json={"body": "Better"}, headers=team.editor.headers)
    assert edited.status_code == 200, edited.text
    assert edited.json()["body"] == "Better"
    listed = await client.get(comments, headers=team.viewer.headers)
    assert [c["body"] for c in listed.json()["items"]] == ["Better"]


@pytest.mark.parametrize(
    ("method", "what", "body", "deleted"),
    [
        ("PATCH", "comment", {"body": "Edited"}, "comments"),
        ("DELETE", "comment", None, "comments"),
        ("PATCH", "task", {"title": "Edited"}, "tasks"),
        ("DELETE", "task", None, "tasks"),
        ("POST", "comments", {"body": "New"}, "tasks"),
    ],
)
async def test_a_change_racing_a_deletion_is_a_404(
    client: Client,
    db: AsyncConnection[Any],
    database_url: str,
    team: Team,
    method: str,
    what: str,
    body: dict[str, str] | None,
    deleted: str,
) -> None:
    """Found by the contract run (two workers): an edit that read the comment before a concurrent
    deletion committed updated nothing and answered 500; a second deletion answered 204 and recorded
    the deletion twice. The same held for tasks. Every change now locks its row before reading it."""
    task_id = await make_task(db, team.project, team.owner)
    comments = f"/api/tasks/{task_id}/comments"
    posted = await client.post(comments, json={"body": "Mine"}, headers=team.editor.headers)
    comment_id = posted.json()["id"]
    url = {"comment": f"{comments}/{comment_id}", "task": f"/api/tasks/{task_id}", "comments": comments}[what]
    answer = await answer_racing(
        database_url,
        f"delete from {deleted} where id = %s",
        comment_id if deleted == "comments" else task_id,
        lambda: client.request(method, url, headers=team.editor.headers, json=body),
    )
    assert_problem(answer, 404, "not-found")


async def test_the_owner_deletes_any_comment_others_only_their_own(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    task_id = await make_task(db, team.project, team.owner)
    comments = f"/api/tasks/{task_id}/comments"
    ids = []
    for body in ("one", "two"):
        posted = await client.post(comments, json={"body": body}, headers=team.editor.headers)
        assert posted.status_code == 201, posted.text
        ids.append(posted.json()["id"])
    mine = await client.post(comments, json={"body": "owner's"}, headers=team.owner.headers)
    assert mine.status_code == 201

    assert_problem(
        await client.delete(f"{comments}/{mine.json()['id']}", headers=team.editor.headers), 403, "forbidden"
    )
    assert_problem(await client.delete(f"{comments}/{ids[0]}", headers=team.viewer.headers), 403, "forbidden")
    assert (await client.delete(f"{comments}/{ids[0]}", headers=team.owner.headers)).status_code == 204
    assert (await client.delete(f"{comments}/{ids[1]}", headers=team.editor.headers)).status_code == 204
    assert_problem(await client.delete(f"{comments}/{ids[1]}", headers=team.editor.headers), 404, "not-found")
    listed = await client.get(comments, headers=team.viewer.headers)
    assert [c["body"] for c in listed.json()["items"]] == ["owner's"]


async def test_an_author_demoted_to_viewer_can_no_longer_edit_or_delete_their_comments(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """Review L13: authorship alone is not enough; writing needs the editor role at the time."""
    task_id = await make_task(db, team.project, team.owner)
    comments = f"/api/tasks/{task_id}/comments"
    posted = await client.post(comments, json={"body": "Mine"}, headers=team.editor.headers)
    url = f"{comments}/{posted.json()['id']}"
    demoted = await client.patch(
        f"/api/projects/{team.project}/members/{team.editor.id}",
        json={"role": "viewer"},
        headers=team.owner.headers,
    )
    assert demoted.status_code == 200, demoted.text
    assert_problem(
        await client.patch(url, json={"body": "Still?"}, headers=team.editor.headers), 403, "forbidden"
    )
    assert_problem(await client.delete(url, headers=team.editor.headers), 403, "forbidden")
    listed = await client.get(comments, headers=team.editor.headers)
    assert [c["body"] for c in listed.json()["items"]] == ["Mine"]
    promoted = await client.patch(
        f"/api/projects/{team.project}/members/{team.editor.id}",
        json={"role": "editor"},
        headers=team.owner.headers,
    )
    assert promoted.status_code == 200
    assert (await client.patch(url, json={"body": "Again"}, headers=team.editor.headers)).status_code == 200
    assert (await client.delete(url, headers=team.editor.headers)).status_code == 204


async def test_a_comment_is_only_reachable_through_its_own_task(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    first = await make_task(db, team.project, team.owner)
    second = await make_task(db, team.project, team.owner)
    posted = await client.post(
        f"/api/tasks/{first}/comments", json={"body": "hi"}, headers=team.editor.headers
    )
    comment_id = posted.json()["id"]
    wrong = f"/api/tasks/{second}/comments/{comment_id}"
    assert_problem(
        await client.patch(wrong, json={"body": "x"}, headers=team.editor.headers), 404, "not-found"
    )
    assert_problem(await client.delete(wrong, headers=team.owner.headers), 404, "not-found")
    kept = await client.get(f"/api/tasks/{first}/comments", headers=team.viewer.headers)
    assert [c["body"] for c in kept.json()["items"]] == ["hi"]


# -- listing: cursors and page sizes ------------------------------------------------------------------


async def first_cursor(client: Client, team: Team, sort: str) -> str:
    response = await client.get(
        f"/api/projects/{team.project}/tasks", params={"sort": sort, "limit": 1}, headers=team.viewer.headers
    )
    assert response.status_code == 200, response.text
    cursor = response.json()["next_cursor"]
    assert isinstance(cursor, str)
    return cursor


async def test_a_cursor_only_continues_its_own_sort(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    for day in (3, 1, 2):
        await make_task(db, team.project, team.owner, due=date(2030, 1, day))
    tasks = f"/api/projects/{team.project}/tasks"
    cursor = await first_cursor(client, team, "due")
    same = await client.get(tasks, params={"sort": "due", "cursor": cursor}, headers=team.viewer.headers)
    assert same.status_code == 200, same.text
    assert [t["due_date"] for t in same.json()["items"]] == ["2030-01-02", "2030-01-03"]
    for other in ("created", "priority", "updated"):
        response = await client.get(
            tasks, params={"sort": other, "cursor": cursor}, headers=team.viewer.headers
        )
        assert_problem(response, 400, "invalid-cursor")
    # the default sort is "created": a "due" cursor without a sort is foreign too
    assert_problem(
        await client.get(tasks, params={"cursor": cursor}, headers=team.viewer.headers), 400, "invalid-cursor"
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_a_tampered_or_foreign_cursor_is_a_400(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    for _ in range(3):
        await make_task(db, team.project, team.owner)
    cursor = await first_cursor(client, team, "created")
    tasks = f"/api/projects/{team.project}/tasks"
    tampered = [
        cursor[:-3] + ("AAA" if not cursor.endswith("AAA") else "BBB"),
        "!!not-base64!!",
        _b64(b"not json"),
        _b64(b'{"sort": "created", "key": "zero", "id": 1}'),
        _b64(b'{"sort": "sideways", "key": 0, "id": 1}'),
        _b64(b'{"after_id": 1}'),  # a cursor of another list
    ]
    for bad in tampered:
        response = await client.get(tasks, params={"cursor": bad}, headers=team.viewer.headers)
        assert_problem(response, 400, "invalid-cursor")
    members_cursor = await client.get(
        f"/api/projects/{team.project}/members", params={"cursor": cursor}, headers=team.viewer.headers
    )
    assert_problem(members_cursor, 400, "invalid-cursor")


async def test_page_sizes_are_capped(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    await make_task(db, team.project, team.owner)
    for path in (f"/api/projects/{team.project}/tasks", "/api/me/tasks"):
        await assert_page_size_is_capped(client, path, team.viewer.headers)


# -- my tasks -----------------------------------------------------------------------------------------


async def test_my_tasks_are_assigned_to_me_in_projects_i_am_still_in(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    me = team.editor
    elsewhere = await make_project(db, team.outsider, {me.id: ProjectRole.VIEWER})
    left_behind = await make_project(db, team.outsider, {me.id: ProjectRole.EDITOR})
    mine = [
        await make_task(db, team.project, team.owner, assignee=me),
        await make_task(db, elsewhere, team.outsider, assignee=me, status=TaskStatus.DONE),
        await make_task(db, team.project, team.owner, assignee=me, status=TaskStatus.DONE),
    ]
    await make_task(db, team.project, team.owner, assignee=team.viewer)
    await make_task(db, team.project, team.owner)
    await make_task(db, left_behind, team.outsider, assignee=me)
    # membership gone but the assignment left behind (as a direct database change can do)
    await db.execute(
        "delete from project_members where project_id = %s and user_id = %s", (left_behind, me.id)
    )

    listed = await client.get("/api/me/tasks", headers=me.headers)
    assert listed.status_code == 200, listed.text
    assert [t["id"] for t in listed.json()["items"]] == sorted(mine)
    assert all(t["assignee_id"] == me.id for t in listed.json()["items"])

    done = await client.get("/api/me/tasks", params={"status": "done"}, headers=me.headers)
    assert [t["id"] for t in done.json()["items"]] == sorted(mine[1:])

    pages: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/me/tasks", params=params, headers=me.headers)).json()
        pages += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == sorted(mine)

    removed = await client.delete(f"/api/projects/{elsewhere}/members/{me.id}", headers=me.headers)
    assert removed.status_code == 204
    after = await client.get("/api/me/tasks", headers=me.headers)
    assert [t["id"] for t in after.json()["items"]] == sorted([mine[0], mine[2]])
    outsider_view = await client.get("/api/me/tasks", headers=team.outsider.headers)
    assert outsider_view.json()["items"] == []


async def test_blank_titles_and_comments_are_400(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """They used to pass validation, be stripped to '' and hit a CHECK constraint as a 500."""
    headers = team.owner.headers
    task = await make_task(db, team.project, team.owner)
    attempts = [
        (client.post(f"/api/projects/{team.project}/tasks", json={"title": "  "}, headers=headers), "title"),
        (client.patch(f"/api/tasks/{task}", json={"title": "\t"}, headers=headers), "title"),
        (client.post(f"/api/tasks/{task}/comments", json={"body": " \n "}, headers=headers), "body"),
    ]
    for attempt, field in attempts:
        assert_problem(await attempt, 400, "validation", {field})
    comment = await client.post(f"/api/tasks/{task}/comments", json={"body": "kept"}, headers=headers)
    edited = await client.patch(
        f"/api/tasks/{task}/comments/{comment.json()['id']}", json={"body": "  "}, headers=headers
    )
    assert_problem(edited, 400, "validation", {"body"})


async def test_an_unknown_status_filter_is_400(client: Client, team: Team) -> None:
    for path in ("/api/me/tasks", f"/api/projects/{team.project}/tasks"):
        response = await client.get(path, params={"status": "lost"}, headers=team.viewer.headers)
        assert_problem(response, 400, "validation", {"query.status"})
