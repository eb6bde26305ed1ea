"""Business rules of projects, members, tasks and comments, over HTTP."""

from __future__ import annotations

import base64
import uuid
from datetime import date
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.db import accounts as account_queries
from app.db import projects as project_queries
from app.db import tasks as task_queries
from app.db.models import ProjectRole, TaskPriority, TaskStatus, UserRole

Client = AsyncTestClient[Litestar]
FAKE_HASH = "$argon2id$v=19$m=65536,t=3,p=4$bm90LWEtcmVhbC1zYWx0$bm90LWEtcmVhbC1oYXNoLW5vdC1hLXJlYWwtaGFzaA"


class Actor(msgspec.Struct, frozen=True):
    id: int
    headers: dict[str, str]


async def make_user(app: Litestar, db: AsyncConnection[Any], name: str) -> Actor:
    user = await account_queries.create_user(
        db,
        email=f"{name}-{uuid.uuid4().hex[:10]}@example.com",
        display_name=name.title(),
        password_hash=FAKE_HASH,
        role=UserRole.MEMBER,
    )
    assert user is not None
    token, _ = app.state.accounts.tokens.issue(user.id, "member", uuid.uuid4())
    return Actor(user.id, {"Authorization": f"Bearer {token}"})


async def make_project(db: AsyncConnection[Any], owner: Actor, **members: tuple[Actor, ProjectRole]) -> int:
    project = await project_queries.create_project(db, name="Apollo", description="", owner_id=owner.id)
    assert project is not None
    await project_queries.add_member(db, project_id=project.id, user_id=owner.id, role=ProjectRole.OWNER)
    for actor, role in members.values():
        await project_queries.add_member(db, project_id=project.id, user_id=actor.id, role=role)
    return project.id


async def make_task(
    db: AsyncConnection[Any],
    project_id: int,
    creator: Actor,
    *,
    title: str = "Task",
    assignee: Actor | None = None,
    due: date | None = None,
    status: TaskStatus = TaskStatus.TODO,
) -> int:
    task = await task_queries.create_task(
        db,
        project_id=project_id,
        title=title,
        description="",
        status=status,
        priority=TaskPriority.MEDIUM,
        assignee_id=assignee.id if assignee else None,
        due_date=due,
        created_by=creator.id,
    )
    assert task is not None
    return task.id


class Team(msgspec.Struct, frozen=True):
    owner: Actor
    editor: Actor
    viewer: Actor
    outsider: Actor
    project: int


@pytest.fixture
async def team(app: Litestar, db: AsyncConnection[Any]) -> Team:
    owner = await make_user(app, db, "owner")
    editor = await make_user(app, db, "editor")
    viewer = await make_user(app, db, "viewer")
    outsider = await make_user(app, db, "outsider")
    project = await make_project(db, owner, e=(editor, ProjectRole.EDITOR), v=(viewer, ProjectRole.VIEWER))
    return Team(owner, editor, viewer, outsider, project)


async def role_of(db: AsyncConnection[Any], project_id: int, user_id: int) -> ProjectRole | None:
    return await project_queries.get_member_role(db, project_id=project_id, user_id=user_id)


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
        assert response.status_code == 422, response.text
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
    assert refused.status_code == 422, refused.text
    assert await assignee_of(db, task_id) == team.viewer.id


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


async def test_removing_a_member_clears_their_assignments_in_that_project_only(
    client: Client, app: Litestar, db: AsyncConnection[Any], team: Team
) -> None:
    other_project = await make_project(db, team.owner, e=(team.editor, ProjectRole.EDITOR))
    here = [await make_task(db, team.project, team.owner, assignee=team.editor) for _ in range(2)]
    someone_else = await make_task(db, team.project, team.owner, assignee=team.viewer)
    there = await make_task(db, other_project, team.owner, assignee=team.editor)

    response = await client.delete(
        f"/api/projects/{team.project}/members/{team.editor.id}", headers=team.owner.headers
    )
    assert response.status_code == 204, response.text

    assert await role_of(db, team.project, team.editor.id) is None
    assert [await assignee_of(db, task_id) for task_id in here] == [None, None]
    assert await assignee_of(db, someone_else) == team.viewer.id
    assert await assignee_of(db, there) == team.editor.id
    assert (await client.get(f"/api/tasks/{here[0]}", headers=team.editor.headers)).status_code == 404


async def test_a_member_leaving_clears_their_assignments_too(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    task_id = await make_task(db, team.project, team.owner, assignee=team.viewer)
    response = await client.delete(
        f"/api/projects/{team.project}/members/{team.viewer.id}", headers=team.viewer.headers
    )
    assert response.status_code == 204, response.text
    assert await assignee_of(db, task_id) is None
    assert await role_of(db, team.project, team.viewer.id) is None


# -- owners -------------------------------------------------------------------------------------------


async def test_the_last_owner_can_be_neither_demoted_nor_removed(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    members = f"/api/projects/{team.project}/members"
    me = f"{members}/{team.owner.id}"
    demoted = await client.patch(me, json={"role": "editor"}, headers=team.owner.headers)
    assert demoted.status_code == 409, demoted.text
    assert demoted.headers["content-type"] == "application/problem+json"
    left = await client.delete(me, headers=team.owner.headers)
    assert left.status_code == 409, left.text
    assert await role_of(db, team.project, team.owner.id) == ProjectRole.OWNER
    # an owner may "change" their role to owner: nothing to protect
    same = await client.patch(me, json={"role": "owner"}, headers=team.owner.headers)
    assert same.status_code == 200, same.text


async def test_with_a_second_owner_the_first_can_step_down_and_leave(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    members = f"/api/projects/{team.project}/members"
    promoted = await client.patch(
        f"{members}/{team.editor.id}", json={"role": "owner"}, headers=team.owner.headers
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {"role": "owner"}

    demoted = await client.patch(
        f"{members}/{team.owner.id}", json={"role": "viewer"}, headers=team.owner.headers
    )
    assert demoted.status_code == 200, demoted.text
    assert await role_of(db, team.project, team.owner.id) == ProjectRole.VIEWER

    # the new sole owner is protected in turn, also against the other (now viewer) member
    assert (
        await client.delete(f"{members}/{team.editor.id}", headers=team.editor.headers)
    ).status_code == 409
    assert (await client.delete(f"{members}/{team.editor.id}", headers=team.owner.headers)).status_code == 403

    left = await client.delete(f"{members}/{team.owner.id}", headers=team.owner.headers)
    assert left.status_code == 204, left.text
    assert await role_of(db, team.project, team.owner.id) is None
    assert await role_of(db, team.project, team.editor.id) == ProjectRole.OWNER


async def test_an_owner_removes_another_owner_while_one_remains(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    members = f"/api/projects/{team.project}/members"
    await project_queries.update_member_role(
        db, role=ProjectRole.OWNER, project_id=team.project, user_id=team.editor.id
    )
    removed = await client.delete(f"{members}/{team.editor.id}", headers=team.owner.headers)
    assert removed.status_code == 204, removed.text
    assert await role_of(db, team.project, team.editor.id) is None


async def test_adding_a_member_twice_conflicts_and_unknown_users_are_404(client: Client, team: Team) -> None:
    members = f"/api/projects/{team.project}/members"
    added = await client.post(
        members, json={"user_id": team.outsider.id, "role": "editor"}, headers=team.owner.headers
    )
    assert added.status_code == 201, added.text
    assert (added.json()["user_id"], added.json()["role"]) == (team.outsider.id, "editor")
    again = await client.post(members, json={"user_id": team.outsider.id}, headers=team.owner.headers)
    assert again.status_code == 409, again.text
    unknown = await client.post(members, json={"user_id": 999_999}, headers=team.owner.headers)
    assert unknown.status_code == 404, unknown.text
    listed = await client.get(members, headers=team.viewer.headers)
    assert {(m["user_id"], m["role"]) for m in listed.json()["items"]} == {
        (team.owner.id, "owner"),
        (team.editor.id, "editor"),
        (team.viewer.id, "viewer"),
        (team.outsider.id, "editor"),
    }


async def test_archiving_needs_an_owner(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    url = f"/api/projects/{team.project}"
    refused = await client.patch(url, json={"archived": True, "name": "Sneaky"}, headers=team.editor.headers)
    assert refused.status_code == 403, refused.text
    stored = await project_queries.get_project(db, id=team.project)
    assert stored is not None
    assert (stored.archived, stored.name) == (False, "Apollo")

    renamed = await client.patch(url, json={"name": "Artemis"}, headers=team.editor.headers)
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["archived"], renamed.json()["my_role"]) == (
        "Artemis",
        False,
        "editor",
    )

    archived = await client.patch(url, json={"archived": True}, headers=team.owner.headers)
    assert archived.status_code == 200, archived.text
    assert archived.json()["archived"] is True
    only_archived = await client.get(
        "/api/projects", params={"archived": "true"}, headers=team.editor.headers
    )
    assert [p["id"] for p in only_archived.json()["items"]] == [team.project]
    active = await client.get("/api/projects", params={"archived": "false"}, headers=team.editor.headers)
    assert active.json()["items"] == []


# -- comments -----------------------------------------------------------------------------------------


async def test_only_the_author_edits_a_comment(
    client: Client, app: Litestar, db: AsyncConnection[Any], team: Team
) -> None:
    other_editor = await make_user(app, db, "other")
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
        assert refused.status_code == 403, refused.text
    edited = await client.patch(url, json={"body": "Better"}, headers=team.editor.headers)
    assert edited.status_code == 200, edited.text
    assert edited.json()["body"] == "Better"
    listed = await client.get(comments, headers=team.viewer.headers)
    assert [c["body"] for c in listed.json()["items"]] == ["Better"]


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

    assert (
        await client.delete(f"{comments}/{mine.json()['id']}", headers=team.editor.headers)
    ).status_code == 403
    assert (await client.delete(f"{comments}/{ids[0]}", headers=team.viewer.headers)).status_code == 403
    assert (await client.delete(f"{comments}/{ids[0]}", headers=team.owner.headers)).status_code == 204
    assert (await client.delete(f"{comments}/{ids[1]}", headers=team.editor.headers)).status_code == 204
    assert (await client.delete(f"{comments}/{ids[1]}", headers=team.editor.headers)).status_code == 404
    listed = await client.get(comments, headers=team.viewer.headers)
    assert [c["body"] for c in listed.json()["items"]] == ["owner's"]


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
    assert (await client.patch(wrong, json={"body": "x"}, headers=team.editor.headers)).status_code == 404
    assert (await client.delete(wrong, headers=team.owner.headers)).status_code == 404


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
        assert response.status_code == 422, (other, response.text)
    # the default sort is "created": a "due" cursor without a sort is foreign too
    assert (
        await client.get(tasks, params={"cursor": cursor}, headers=team.viewer.headers)
    ).status_code == 422


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
        assert response.status_code == 400, (bad, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    members_cursor = await client.get(
        f"/api/projects/{team.project}/members", params={"cursor": cursor}, headers=team.viewer.headers
    )
    assert members_cursor.status_code == 400, members_cursor.text


async def test_page_sizes_are_capped(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    await make_task(db, team.project, team.owner)
    for path in (f"/api/projects/{team.project}/tasks", "/api/me/tasks", "/api/projects"):
        for limit, status in ((101, 400), (0, 400), (100, 200), (1, 200)):
            response = await client.get(path, params={"limit": limit}, headers=team.viewer.headers)
            assert response.status_code == status, (path, limit, response.text)


# -- my tasks -----------------------------------------------------------------------------------------


async def test_my_tasks_are_assigned_to_me_in_projects_i_am_still_in(
    client: Client, app: Litestar, db: AsyncConnection[Any], team: Team
) -> None:
    me = team.editor
    elsewhere = await make_project(db, team.outsider, me=(me, ProjectRole.VIEWER))
    left_behind = await make_project(db, team.outsider, me=(me, ProjectRole.EDITOR))
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


async def test_blank_names_titles_and_comments_are_400(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """They used to pass validation, be stripped to '' and hit a CHECK constraint as a 500."""
    headers = team.owner.headers
    task = await make_task(db, team.project, team.owner)
    attempts = [
        client.post("/api/projects", json={"name": "   "}, headers=headers),
        client.patch(f"/api/projects/{team.project}", json={"name": " "}, headers=headers),
        client.post(f"/api/projects/{team.project}/tasks", json={"title": "  "}, headers=headers),
        client.patch(f"/api/tasks/{task}", json={"title": "\t"}, headers=headers),
        client.post(f"/api/tasks/{task}/comments", json={"body": " \n "}, headers=headers),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 400, response.text


async def test_a_renamed_project_is_stored_stripped(client: Client, team: Team) -> None:
    response = await client.patch(
        f"/api/projects/{team.project}", json={"name": "  Apollo 2  "}, headers=team.owner.headers
    )
    assert response.status_code == 200
    assert response.json()["name"] == "Apollo 2"
