"""Activity events: every mutation of projects, members, tasks and comments leaves its event in the
outbox, in its transaction, and the feed stores each outbox event once.

Each test does one mutation over HTTP and reads back the outbox rows it wrote (``record_activity`` on
the ``feed`` queue); a refused mutation (403, 404, 422, 409) writes none. The consumer end is
``ActivityService.record_batch`` (the ``feed`` queue's job), run in the test's own event loop through
``open_services``: storing one outbox event twice leaves one ``activity_events`` row.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from tests.factories import Client, Team, answer_racing, make_project, make_task, make_user

# Every test runs in the world of the team's project with its task "Launch" (arranged without events).
pytestmark = pytest.mark.usefixtures("task")
PAYLOAD_KEYS = {"actor_id", "verb", "object_type", "object_id", "project_id", "data", "occurred_at"}


class Event(msgspec.Struct, frozen=True):
    outbox_id: int
    verb: str
    actor_id: int
    object_type: str
    object_id: int
    project_id: int | None
    data: dict[str, Any]
    occurred_at: datetime


@pytest.fixture
async def task(db: AsyncConnection[Any], team: Team) -> int:
    """The team's task "Launch", arranged (with the team) without any event."""
    task_id = await make_task(db, team.project, team.owner, title="Launch")
    assert await outbox_events(db) == []
    return task_id


async def outbox_events(db: AsyncConnection[Any], after_id: int = 0) -> list[Event]:
    """The activity events in the outbox, oldest first (any other row of the feed's queue fails the test;
    other queues' jobs, a deleted project's purge, are not events)."""
    rows = await (
        await db.execute(
            "select id, queue, task, payload from outbox where id > %s and queue = 'feed' order by id",
            (after_id,),
        )
    ).fetchall()
    events = []
    for outbox_id, queue, task, payload in rows:
        assert (queue, task) == ("feed", "record_activity"), (queue, task, payload)
        assert set(payload) == PAYLOAD_KEYS, payload
        occurred_at = datetime.fromisoformat(payload["occurred_at"])
        assert occurred_at.tzinfo is not None
        assert abs(datetime.now(UTC) - occurred_at) < timedelta(minutes=5)
        events.append(
            Event(
                outbox_id=outbox_id,
                verb=payload["verb"],
                actor_id=payload["actor_id"],
                object_type=payload["object_type"],
                object_id=payload["object_id"],
                project_id=payload["project_id"],
                data=payload["data"],
                occurred_at=occurred_at,
            )
        )
    return events


def summary(events: list[Event]) -> list[tuple[str, int, str, int, int | None, dict[str, Any]]]:
    return [(e.verb, e.actor_id, e.object_type, e.object_id, e.project_id, e.data) for e in events]


# -- projects and members -----------------------------------------------------------------------------


async def test_project_created(client: Client, app: Litestar, db: AsyncConnection[Any]) -> None:
    creator = await make_user(db, app, name="Creator")
    response = await client.post("/api/projects", json={"name": "  Gemini  "}, headers=creator.headers)
    assert response.status_code == 201, response.text
    project_id = response.json()["id"]
    assert summary(await outbox_events(db)) == [
        ("project.created", creator.id, "project", project_id, project_id, {"name": "Gemini"})
    ]


async def test_project_updated_names_the_changed_fields(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    url = f"/api/projects/{team.project}"
    renamed = await client.patch(
        url, json={"name": "Artemis", "description": "Moon"}, headers=team.editor.headers
    )
    assert renamed.status_code == 200, renamed.text
    archived = await client.patch(url, json={"archived": True}, headers=team.owner.headers)
    assert archived.status_code == 200, archived.text
    assert summary(await outbox_events(db)) == [
        (
            "project.updated",
            team.editor.id,
            "project",
            team.project,
            team.project,
            {"fields": ["name", "description"], "name": "Artemis"},
        ),
        ("project.updated", team.owner.id, "project", team.project, team.project, {"fields": ["archived"]}),
    ]


async def test_member_invited_and_joined(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    invited = await client.post(
        f"/api/projects/{team.project}/invitations",
        json={"email": team.outsider.email, "role": "editor"},
        headers=team.owner.headers,
    )
    assert invited.status_code == 201, invited.text
    accepted = await client.post(
        f"/api/me/invitations/{invited.json()['id']}/accept",
        json={"token": invited.json()["token"]},
        headers=team.outsider.headers,
    )
    assert accepted.status_code == 200, accepted.text
    events = await outbox_events(db)
    assert [(e.verb, e.actor_id, e.object_type, e.object_id, e.project_id) for e in events] == [
        ("member.invited", team.owner.id, "project", team.project, team.project),
        ("member.joined", team.outsider.id, "user", team.outsider.id, team.project),
    ]
    assert events[0].data["role"] == "editor" and team.outsider.email not in str(events[0].data)
    assert events[1].data == {"role": "editor"}, "no name: the feed reads it from the account"
    assert invited.json()["token"] not in str(events), "the feed never carries the invitation's token"


async def test_member_role_changed(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    response = await client.patch(
        f"/api/projects/{team.project}/members/{team.viewer.id}",
        json={"role": "editor"},
        headers=team.owner.headers,
    )
    assert response.status_code == 200, response.text
    assert summary(await outbox_events(db)) == [
        (
            "member.role_changed",
            team.owner.id,
            "user",
            team.viewer.id,
            team.project,
            {"from": "viewer", "to": "editor"},
        )
    ]


async def test_member_removed_and_member_left(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    members = f"/api/projects/{team.project}/members"
    removed = await client.delete(f"{members}/{team.editor.id}", headers=team.owner.headers)
    assert removed.status_code == 204, removed.text
    left = await client.delete(f"{members}/{team.viewer.id}", headers=team.viewer.headers)
    assert left.status_code == 204, left.text
    assert summary(await outbox_events(db)) == [
        ("member.removed", team.owner.id, "user", team.editor.id, team.project, {}),
        ("member.left", team.viewer.id, "user", team.viewer.id, team.project, {}),
    ]


# -- tasks --------------------------------------------------------------------------------------------


async def test_task_created_unassigned(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    response = await client.post(
        f"/api/projects/{team.project}/tasks", json={"title": " Fuel "}, headers=team.editor.headers
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["id"]
    assert summary(await outbox_events(db)) == [
        ("task.created", team.editor.id, "task", task_id, team.project, {"title": "Fuel"})
    ]


async def test_task_created_assigned_also_emits_assigned(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    response = await client.post(
        f"/api/projects/{team.project}/tasks",
        json={"title": "Fuel", "assignee_id": team.viewer.id},
        headers=team.editor.headers,
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["id"]
    assert summary(await outbox_events(db)) == [
        ("task.created", team.editor.id, "task", task_id, team.project, {"title": "Fuel"}),
        (
            "task.assigned",
            team.editor.id,
            "task",
            task_id,
            team.project,
            {"assignee_id": team.viewer.id, "title": "Fuel"},
        ),
    ]


async def test_task_updated_names_the_changed_fields_only(
    client: Client, db: AsyncConnection[Any], team: Team, task: int
) -> None:
    url = f"/api/tasks/{task}"
    response = await client.patch(
        url,
        json={"title": "Launch", "priority": "urgent", "due_date": "2030-01-01"},
        headers=team.editor.headers,
    )
    assert response.status_code == 200, response.text
    assert summary(await outbox_events(db)) == [
        (
            "task.updated",
            team.editor.id,
            "task",
            task,
            team.project,
            {"fields": ["priority", "due_date"], "title": "Launch"},
        )
    ]
    # a change to nothing is no event
    last = (await outbox_events(db))[-1].outbox_id
    unchanged = await client.patch(url, json={"priority": "urgent"}, headers=team.editor.headers)
    assert unchanged.status_code == 200, unchanged.text
    assert await outbox_events(db, last) == []


async def test_task_status_changed(client: Client, db: AsyncConnection[Any], team: Team, task: int) -> None:
    response = await client.patch(
        f"/api/tasks/{task}", json={"status": "in_progress"}, headers=team.owner.headers
    )
    assert response.status_code == 200, response.text
    assert summary(await outbox_events(db)) == [
        (
            "task.status_changed",
            team.owner.id,
            "task",
            task,
            team.project,
            {"from": "todo", "to": "in_progress", "title": "Launch"},
        )
    ]


async def test_task_assigned_and_unassigned(
    client: Client, db: AsyncConnection[Any], team: Team, task: int
) -> None:
    url = f"/api/tasks/{task}"
    assigned = await client.patch(url, json={"assignee_id": team.editor.id}, headers=team.editor.headers)
    assert assigned.status_code == 200, assigned.text
    unassigned = await client.patch(url, json={"assignee_id": None}, headers=team.editor.headers)
    assert unassigned.status_code == 200, unassigned.text
    assert summary(await outbox_events(db)) == [
        (
            "task.assigned",
            team.editor.id,
            "task",
            task,
            team.project,
            {"assignee_id": team.editor.id, "title": "Launch"},
        ),
        (
            "task.assigned",
            team.editor.id,
            "task",
            task,
            team.project,
            {"assignee_id": None, "title": "Launch"},
        ),
    ]


async def test_one_patch_changing_everything_emits_each_kind_once(
    client: Client, db: AsyncConnection[Any], team: Team, task: int
) -> None:
    response = await client.patch(
        f"/api/tasks/{task}",
        json={"title": "Land", "status": "done", "assignee_id": team.viewer.id},
        headers=team.editor.headers,
    )
    assert response.status_code == 200, response.text
    events = await outbox_events(db)
    assert [e.verb for e in events] == ["task.updated", "task.status_changed", "task.assigned"]
    assert events[0].data == {"fields": ["title"], "title": "Land"}
    assert events[1].data == {"from": "todo", "to": "done", "title": "Land"}
    assert events[2].data == {"assignee_id": team.viewer.id, "title": "Land"}
    assert {(e.actor_id, e.object_id, e.project_id) for e in events} == {(team.editor.id, task, team.project)}


async def test_task_deleted(client: Client, db: AsyncConnection[Any], team: Team, task: int) -> None:
    response = await client.delete(f"/api/tasks/{task}", headers=team.editor.headers)
    assert response.status_code == 204, response.text
    assert summary(await outbox_events(db)) == [
        ("task.deleted", team.editor.id, "task", task, team.project, {"title": "Launch"})
    ]


async def test_comment_added(client: Client, db: AsyncConnection[Any], team: Team, task: int) -> None:
    response = await client.post(
        f"/api/tasks/{task}/comments", json={"body": "Go"}, headers=team.editor.headers
    )
    assert response.status_code == 201, response.text
    comment_id = response.json()["id"]
    assert summary(await outbox_events(db)) == [
        (
            "comment.added",
            team.editor.id,
            "comment",
            comment_id,
            team.project,
            {"task_id": task, "title": "Launch"},
        )
    ]


# -- refused mutations write nothing ------------------------------------------------------------------

REFUSED: list[tuple[str, str, str, Any, int]] = [
    # (caller, method, path, body, status)
    ("viewer", "PATCH", "/api/projects/{project}", {"name": "No"}, 403),
    ("editor", "PATCH", "/api/projects/{project}", {"name": "No", "archived": True}, 403),
    ("outsider", "PATCH", "/api/projects/{project}", {"name": "No"}, 404),
    ("editor", "POST", "/api/projects/{project}/invitations", {"email": "someone@example.com"}, 403),
    ("outsider", "POST", "/api/projects/{project}/invitations", {"email": "someone@example.com"}, 404),
    ("editor", "PATCH", "/api/projects/{project}/members/{viewer_id}", {"role": "owner"}, 403),
    ("owner", "PATCH", "/api/projects/{project}/members/{owner_id}", {"role": "viewer"}, 409),
    ("owner", "PATCH", "/api/projects/{project}/members/{outsider_id}", {"role": "viewer"}, 404),
    ("viewer", "DELETE", "/api/projects/{project}/members/{editor_id}", None, 403),
    ("owner", "DELETE", "/api/projects/{project}/members/{owner_id}", None, 409),
    ("viewer", "POST", "/api/projects/{project}/tasks", {"title": "No"}, 403),
    ("outsider", "POST", "/api/projects/{project}/tasks", {"title": "No"}, 404),
    ("editor", "POST", "/api/projects/{project}/tasks", {"title": "No", "assignee_id": "{outsider_id}"}, 422),
    ("viewer", "PATCH", "/api/tasks/{task}", {"status": "done"}, 403),
    ("outsider", "PATCH", "/api/tasks/{task}", {"status": "done"}, 404),
    ("editor", "PATCH", "/api/tasks/{task}", {"status": "done", "assignee_id": "{outsider_id}"}, 422),
    ("viewer", "DELETE", "/api/tasks/{task}", None, 403),
    ("outsider", "DELETE", "/api/tasks/{task}", None, 404),
    ("viewer", "POST", "/api/tasks/{task}/comments", {"body": "No"}, 403),
    ("outsider", "POST", "/api/tasks/{task}/comments", {"body": "No"}, 404),
    ("editor", "POST", "/api/tasks/999999/comments", {"body": "No"}, 404),
]


def _fill(value: Any, values: dict[str, int]) -> Any:
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return values[value[1:-1]]
    return value


@pytest.mark.parametrize(
    ("caller", "method", "path", "body", "status"),
    REFUSED,
    ids=[f"{method} {path} as {caller} -> {status}" for caller, method, path, _, status in REFUSED],
)
async def test_a_refused_mutation_writes_no_event(
    client: Client,
    db: AsyncConnection[Any],
    team: Team,
    task: int,
    caller: str,
    method: str,
    path: str,
    body: Any,
    status: int,
) -> None:
    values = {
        "project": team.project,
        "task": task,
        **{f"{name}_id": getattr(team, name).id for name in ("owner", "editor", "viewer", "outsider")},
    }
    kwargs: dict[str, Any] = {"headers": getattr(team, caller).headers}
    if body is not None:
        kwargs["json"] = _fill(body, values)
    response = await client.request(method, path.format(**values), **kwargs)
    assert response.status_code == status, response.text
    assert await outbox_events(db) == []


async def test_an_invalid_body_writes_no_event(
    client: Client, db: AsyncConnection[Any], team: Team, task: int
) -> None:
    bad = [
        ("POST", f"/api/projects/{team.project}/tasks", {"title": ""}),
        ("PATCH", f"/api/tasks/{task}", {"priority": "whenever"}),
        ("POST", "/api/projects", {"name": "x" * 201}),
    ]
    for method, url, body in bad:
        response = await client.request(method, url, json=body, headers=team.owner.headers)
        assert response.status_code == 400, response.text
    assert await outbox_events(db) == []


# -- the consumer -------------------------------------------------------------------------------------


async def test_the_feed_stores_an_outbox_event_once(
    client: Client, settings: Settings, db: AsyncConnection[Any], team: Team, task: int
) -> None:
    response = await client.patch(
        f"/api/tasks/{task}", json={"due_date": str(date(2030, 1, 1))}, headers=team.editor.headers
    )
    assert response.status_code == 200, response.text
    row = await (await db.execute("select id, payload from outbox")).fetchone()
    assert row is not None
    outbox_id, payload = row

    async with open_services(settings, (activity_module,)) as services:
        activity = services[ActivityService]
        results = [await activity.record_batch([{**payload, "outbox_id": outbox_id}]) for _ in range(2)]
    assert results == [1, 0]

    stored = await (
        await db.execute(
            "select outbox_id, actor_id, verb, object_type, object_id, project_id, data, occurred_at"
            " from activity_events"
        )
    ).fetchall()
    assert stored == [
        (
            outbox_id,
            team.editor.id,
            "task.updated",
            "task",
            task,
            team.project,
            {"fields": ["due_date"]},  # the details only: the title is the object's, never the event's
            datetime.fromisoformat(payload["occurred_at"]),
        )
    ]


# -- regressions -----------------------------------------------------------------------------------


async def test_no_change_writes_no_event(client: Client, db: AsyncConnection[Any], team: Team) -> None:
    assert (
        await client.patch(f"/api/projects/{team.project}", json={}, headers=team.owner.headers)
    ).status_code == 200
    same_role = await client.patch(
        f"/api/projects/{team.project}/members/{team.viewer.id}",
        json={"role": "viewer"},
        headers=team.owner.headers,
    )
    assert same_role.status_code == 200
    assert await outbox_events(db) == []


async def test_project_deleted_and_late_events_of_deleted_projects(
    client: Client, settings: Settings, db: AsyncConnection[Any], team: Team
) -> None:
    """Deleting names no project (it is gone); its events still in flight are dropped, not retried."""
    pending = await client.post(
        f"/api/projects/{team.project}/tasks", json={"title": "Late"}, headers=team.owner.headers
    )
    assert pending.status_code == 201
    assert (
        await client.delete(f"/api/projects/{team.project}", headers=team.owner.headers)
    ).status_code == 204
    events = await outbox_events(db)
    assert summary(events)[-1] == (
        "project.deleted",
        team.owner.id,
        "project",
        team.project,
        None,
        {"name": "Apollo"},
    )
    payloads = []
    for event in events:
        payload = msgspec.structs.asdict(event)
        payload["occurred_at"] = event.occurred_at.isoformat()
        payloads.append(payload)
    async with open_services(settings, (activity_module,)) as services:
        assert await services[ActivityService].record_batch(payloads) == 1
    stored = await (await db.execute("select verb, project_id from activity_events order by id")).fetchall()
    assert stored == [("project.deleted", None)]


async def test_events_racing_their_projects_deletion_are_dropped_and_the_batch_stored(
    client: Client, settings: Settings, db: AsyncConnection[Any], database_url: str, team: Team
) -> None:
    """The writer checked that the project exists before the deletion committed; the late event then
    joined the project's group the deletion was removing and failed its foreign-key check, failing
    the whole batch (its job retried; the failed attempt an error in monitoring). The batch's
    projects are now locked before that check: the event is dropped and the rest stored."""
    other = await make_project(db, team.owner, name="Other")
    for project, title in ((team.project, "First"), (team.project, "Late"), (other, "Elsewhere")):
        created = await client.post(
            f"/api/projects/{project}/tasks", json={"title": title}, headers=team.owner.headers
        )
        assert created.status_code == 201, created.text
    rows = await (await db.execute("select id, payload from outbox order by id")).fetchall()
    first, *late = [{**payload, "outbox_id": outbox_id} for outbox_id, payload in rows]

    async with open_services(settings, (activity_module,)) as services:
        activity = services[ActivityService]
        assert await activity.record_batch([first]) == 1  # the group the late event would join
        stored = await answer_racing(
            database_url,
            "delete from projects where id = %s",
            team.project,
            lambda: activity.record_batch(late),
        )
    assert stored == 1
    titles = await (
        await db.execute(
            "select o.payload->'data'->>'title' from activity_events e join outbox o on o.id = e.outbox_id"
        )
    ).fetchall()
    assert titles == [("Elsewhere",)]
