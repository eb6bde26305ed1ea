"""The activity feed over HTTP: real mutations emit events, the feed stores and groups them (through
``ActivityService.record_batch``, what the ``feed`` queue's job runs), readers see what they may.

The outbox is delivered by the test (``deliver``) instead of the relay, so each test decides when
events arrive. The service used for that runs in the test's own event loop (``open_services``),
never the app's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import Services, open_services
from app.db import projects as project_queries
from app.db.models import ProjectRole, UserRole
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from app.domains.projects.services import PURGE_FEED_ROWS_CHUNK, PURGE_GROUPS_CHUNK
from tests.factories import (
    Actor,
    Client,
    Team,
    answer_racing,
    assert_problem,
    make_product,
    make_project,
    make_user,
    mint_headers,
)

PROBLEM = "application/problem+json"


@pytest.fixture
async def services(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[Services]:
    async with open_services(settings, (activity_module,)) as opened:
        yield opened


@pytest.fixture
def feed(services: Services) -> ActivityService:
    return services[ActivityService]


async def deliver(db: AsyncConnection[Any], feed: ActivityService) -> int:
    """What the relay and the feed queue do: every unpublished activity event, as one batch."""
    rows = await (
        await db.execute(
            "update outbox set published_at = now() where published_at is null and task = 'record_activity'"
            " returning id, payload"
        )
    ).fetchall()
    return await feed.record_batch(
        [{**payload, "outbox_id": outbox_id} for outbox_id, payload in sorted(rows)]
    )


async def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def texts(client: Client, who: Actor, url: str = "/api/feed", **params: Any) -> list[str]:
    page = await ok(await client.get(url, params=params, headers=who.headers))
    return [group["text"] for group in page["items"]]


async def new_task(client: Client, who: Actor, project: int, title: str) -> int:
    created = await ok(
        await client.post(f"/api/projects/{project}/tasks", json={"title": title}, headers=who.headers), 201
    )
    return int(created["id"])


# -- grouping and permissions ------------------------------------------------------------------------


async def test_a_burst_reads_as_one_group_and_outsiders_see_nothing(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    for title in ("One", "Two", "Three"):
        await new_task(client, team.editor, team.project, title)
    await ok(
        await client.patch(
            f"/api/projects/{team.project}/members/{team.viewer.id}",
            json={"role": "editor"},
            headers=team.owner.headers,
        )
    )
    assert await deliver(db, feed) == 4

    page = await ok(await client.get("/api/feed", headers=team.viewer.headers))
    assert [group["text"] for group in page["items"]] == [
        "Owner changed the role of Viewer in Apollo",
        "Editor created 3 tasks in Apollo",
    ]
    tasks = page["items"][1]
    assert (tasks["count"], tasks["object_count"], tasks["actor_count"]) == (3, 3, 1)
    assert [o["title"] for o in tasks["objects"]] == ["Three", "Two", "One"]
    assert tasks["actors"] == [{"id": team.editor.id, "name": "Editor"}]
    assert tasks["project"] == {"id": team.project, "name": "Apollo"}
    assert tasks["unread"] is True and tasks["truncated"] is False and tasks["private"] is False
    assert tasks["rule_version"] == 1 and tasks["key"].startswith("1-")

    assert (await ok(await client.get("/api/feed", headers=team.outsider.headers)))["items"] == []
    assert_problem(await client.get(f"/api/projects/{team.project}/feed", headers=team.outsider.headers), 404)
    assert_problem(await client.get("/api/projects/999999/feed", headers=team.owner.headers), 404)
    key = tasks["key"]
    assert_problem(await client.get(f"/api/feed/groups/{key}", headers=team.outsider.headers), 404)
    assert_problem(await client.get(f"/api/feed/groups/{key}/events", headers=team.outsider.headers), 404)
    assert (await client.get("/api/feed")).status_code == 401


async def test_comments_group_by_task_across_actors_and_filters_apply_before_grouping(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    task = await new_task(client, team.owner, team.project, "Fix login")
    for who in (team.owner, team.editor, team.owner, team.viewer):
        if who is team.viewer:
            await ok(
                await client.patch(
                    f"/api/projects/{team.project}/members/{team.viewer.id}",
                    json={"role": "editor"},
                    headers=team.owner.headers,
                )
            )
        await ok(
            await client.post(f"/api/tasks/{task}/comments", json={"body": "Hm"}, headers=who.headers), 201
        )
    await deliver(db, feed)

    everything = await texts(client, team.owner, verb="comment.added")
    assert everything == ["Viewer and 2 others commented on 'Fix login' in Apollo"]
    group = (
        await ok(await client.get("/api/feed", params={"verb": "comment.added"}, headers=team.owner.headers))
    )["items"][0]
    assert group["count"] == 4 and group["actor_count"] == 3
    assert [a["id"] for a in group["actors"]] == [team.viewer.id, team.owner.id, team.editor.id]
    assert group["target"] == {"type": "task", "id": task, "title": "Fix login", "deleted": False}

    # An actor filter keeps only that actor's events: the count and the "others" follow.
    by_owner = await ok(
        await client.get("/api/feed", params={"actor_id": team.owner.id}, headers=team.editor.headers)
    )
    comment_groups = [g for g in by_owner["items"] if g["verb"] == "comment.added"]
    assert [(g["text"], g["count"], g["actor_count"]) for g in comment_groups] == [
        ("Owner commented on 'Fix login' in Apollo", 2, 1)
    ]
    detail = await ok(
        await client.get(
            f"/api/feed/groups/{group['key']}",
            params={"actor_id": team.editor.id},
            headers=team.owner.headers,
        )
    )
    assert (detail["count"], detail["actors"]) == (1, [{"id": team.editor.id, "name": "Editor"}])
    events = await ok(
        await client.get(
            f"/api/feed/groups/{group['key']}/events",
            params={"actor_id": team.owner.id},
            headers=team.editor.headers,
        )
    )
    assert [e["actor"]["id"] for e in events["items"]] == [team.owner.id, team.owner.id]
    # A filter the group does not match: the group is not there.
    assert_problem(
        await client.get(
            f"/api/feed/groups/{group['key']}", params={"verb": "task.created"}, headers=team.owner.headers
        ),
        404,
    )
    assert await texts(client, team.owner, object_type="file") == []
    project_only = await texts(client, team.owner, f"/api/projects/{team.project}/feed", object_type="task")
    assert project_only == ["Owner created task 'Fix login' in Apollo"]


async def test_deleted_objects_stay_as_tombstones(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    task = await new_task(client, team.editor, team.project, "Secret plan")
    await ok(
        await client.patch(f"/api/tasks/{task}", json={"title": "Secret plan 2"}, headers=team.editor.headers)
    )
    await deliver(db, feed)
    before = await texts(client, team.viewer)
    assert before == [
        "Editor updated task 'Secret plan 2' in Apollo",
        "Editor created task 'Secret plan 2' in Apollo",
    ]

    await ok(await client.delete(f"/api/tasks/{task}", headers=team.owner.headers), 204)
    await deliver(db, feed)
    page = await ok(await client.get("/api/feed", headers=team.viewer.headers))
    assert [g["text"] for g in page["items"]] == [
        "Owner deleted a task in Apollo",
        "Editor updated a deleted task in Apollo",
        "Editor created a deleted task in Apollo",
    ]
    for group in page["items"]:
        assert group["objects"] == [{"type": "task", "id": task, "title": None, "deleted": True}]
        events = await ok(
            await client.get(f"/api/feed/groups/{group['key']}/events", headers=team.viewer.headers)
        )
        assert "Secret" not in str(events), "a deleted object's title must not outlive it"
    updated = await ok(
        await client.get(f"/api/feed/groups/{page['items'][1]['key']}/events", headers=team.viewer.headers)
    )
    assert updated["items"][0]["details"] == {"fields": ["title"]}


async def test_a_removed_member_no_longer_sees_the_project_anywhere(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService, app: Litestar
) -> None:
    other = await make_project(db, team.owner, {team.viewer.id: ProjectRole.VIEWER}, name="Gemini")
    await new_task(client, team.owner, team.project, "In Apollo")
    await new_task(client, team.owner, other, "In Gemini")
    await deliver(db, feed)
    assert await texts(client, team.viewer) == [
        "Owner created task 'In Gemini' in Gemini",
        "Owner created task 'In Apollo' in Apollo",
    ]
    assert (await ok(await client.get("/api/feed/unread-count", headers=team.viewer.headers)))["unread"] == 2

    await ok(
        await client.delete(
            f"/api/projects/{team.project}/members/{team.viewer.id}", headers=team.owner.headers
        ),
        204,
    )
    assert await texts(client, team.viewer) == ["Owner created task 'In Gemini' in Gemini"]
    assert (await ok(await client.get("/api/feed/unread-count", headers=team.viewer.headers)))["unread"] == 1
    assert_problem(await client.get(f"/api/projects/{team.project}/feed", headers=team.viewer.headers), 404)

    await deliver(db, feed)  # the removal itself is an event of the project: not for the removed
    assert await texts(client, team.viewer) == ["Owner created task 'In Gemini' in Gemini"]
    admin = await make_user(db, app, UserRole.ADMIN, name="Root")
    assert await texts(client, admin, f"/api/projects/{team.project}/feed") == [
        "Owner removed Viewer from Apollo",
        "Owner created task 'In Apollo' in Apollo",
    ]


async def test_a_member_who_leaves_or_whose_account_is_erased_left_the_project(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService, app: Litestar
) -> None:
    """Leaving read "Viewer removed Viewer from Apollo"; an erasure "Deleted user removed Deleted user
    from Apollo" (the blackbox review)."""
    admin = await make_user(db, app, UserRole.ADMIN, name="Root")
    members = f"/api/projects/{team.project}/members"
    await ok(await client.delete(f"{members}/{team.viewer.id}", headers=team.viewer.headers), 204)
    await ok(await client.delete(f"/api/admin/users/{team.editor.id}", headers=admin.headers), 204)

    await deliver(db, feed)

    assert await texts(client, team.owner, f"/api/projects/{team.project}/feed") == [
        "Deleted user left Apollo",
        "Viewer left Apollo",
    ]


async def test_a_leaving_stored_before_member_left_existed_reads_as_one(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    """The previous release emitted a leaving as ``member.removed`` by the member: such a group keeps
    its verb and reads as a leaving. An owner's removal of another member still reads as a removal."""
    members = f"/api/projects/{team.project}/members"
    await ok(await client.delete(f"{members}/{team.viewer.id}", headers=team.viewer.headers), 204)
    await db.execute(
        "update outbox set payload = jsonb_set(payload, '{verb}', '\"member.removed\"')"
        " where task = 'record_activity' and payload->>'verb' = 'member.left'"
    )
    await ok(await client.delete(f"{members}/{team.editor.id}", headers=team.owner.headers), 204)
    await deliver(db, feed)

    page = await ok(await client.get(f"/api/projects/{team.project}/feed", headers=team.owner.headers))
    assert [(group["verb"], group["text"]) for group in page["items"]] == [
        ("member.removed", "Owner removed Editor from Apollo"),
        ("member.removed", "Viewer left Apollo"),
    ]


async def test_answers_read_before_a_promotion_or_a_deletion_are_not_served_after_it(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService, app: Litestar
) -> None:
    """The unread count and the first page are cached (FEED_CACHE_TTL_S): a change of what the reader
    may see, made through the API, must show at the next read, not when the entry expires."""
    other = await make_project(db, team.owner, name="Gemini")
    await new_task(client, team.owner, team.project, "In Apollo")
    await new_task(client, team.owner, other, "In Gemini")
    await deliver(db, feed)
    unread = "/api/feed/unread-count"
    assert await texts(client, team.viewer) == ["Owner created task 'In Apollo' in Apollo"]
    assert (await ok(await client.get(unread, headers=team.viewer.headers)))["unread"] == 1

    admin = await make_user(db, app, UserRole.ADMIN, name="Root")
    await ok(
        await client.patch(
            f"/api/admin/users/{team.viewer.id}", json={"role": "admin"}, headers=admin.headers
        )
    )
    promoted = mint_headers(app, team.viewer.id, UserRole.ADMIN)  # the promotion revoked their sessions
    assert (await ok(await client.get(unread, headers=promoted)))["unread"] == 2
    assert await texts(client, msgspec.structs.replace(team.viewer, headers=promoted)) == [
        "Owner created task 'In Gemini' in Gemini",
        "Owner created task 'In Apollo' in Apollo",
    ]

    assert await texts(client, team.editor) == ["Owner created task 'In Apollo' in Apollo"]
    await ok(await client.delete(f"/api/projects/{team.project}", headers=team.owner.headers), 204)
    assert await texts(client, team.editor) == []
    assert (await ok(await client.get(unread, headers=team.editor.headers)))["unread"] == 0


async def test_a_renamed_actor_shows_under_the_new_name_at_the_next_read_of_the_cached_page(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    """Actor names are read live from ``users``; the cached first page must not keep the old one after
    PATCH /api/auth/me, even for readers who share no project with the actor any more."""
    await new_task(client, team.editor, team.project, "Plan")
    await deliver(db, feed)
    assert await texts(client, team.viewer) == ["Editor created task 'Plan' in Apollo"]
    await ok(
        await client.delete(
            f"/api/projects/{team.project}/members/{team.editor.id}", headers=team.owner.headers
        ),
        204,
    )
    assert await texts(client, team.viewer) == ["Editor created task 'Plan' in Apollo"]

    await ok(await client.patch("/api/auth/me", json={"display_name": "Eve"}, headers=team.editor.headers))

    page = await ok(await client.get("/api/feed", headers=team.viewer.headers))
    assert [g["text"] for g in page["items"]] == ["Eve created task 'Plan' in Apollo"]
    assert page["items"][0]["actors"] == [{"id": team.editor.id, "name": "Eve"}]


async def test_orders_are_private_to_their_buyer_and_administrators(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService, app: Litestar
) -> None:
    product = await make_product(db, stock=5)
    placed = await client.post(
        "/api/orders",
        json={"lines": [{"product_id": product, "quantity": 1}]},
        headers={**team.viewer.headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    order = (await ok(placed, 202))["id"]
    admin = await make_user(db, app, UserRole.ADMIN, name="Root")
    # An administrator's cancellation, emitted for the buyer (emit(..., audience_user_id=buyer)).
    at = datetime.now(UTC).isoformat()
    cancelled = {
        "outbox_id": 10**9,
        "actor_id": admin.id,
        "verb": "order.cancelled",
        "object_type": "order",
        "object_id": order,
        "project_id": None,
        "data": {"reason": "admin", "total": "2.50"},
        "occurred_at": at,
        "audience_user_id": team.viewer.id,
    }
    await deliver(db, feed)
    assert await feed.record_batch([cancelled]) == 1

    assert await texts(client, team.viewer) == [
        f"Root cancelled order #{order}",
        f"Viewer placed order #{order}",
    ]
    groups = (await ok(await client.get("/api/feed", headers=team.viewer.headers)))["items"]
    assert all(group["private"] and group["project"] is None for group in groups)
    assert await texts(client, team.owner) == []
    assert await texts(client, admin, verb="order.placed") == [f"Viewer placed order #{order}"]
    assert await texts(client, team.viewer, object_type="order", actor_id=admin.id) == [
        f"Root cancelled order #{order}"
    ]


# -- read state ------------------------------------------------------------------------------------------


async def test_read_state_groups_events_watermark_and_seen(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    async def counts() -> tuple[int, int]:
        body = await ok(await client.get("/api/feed/unread-count", headers=team.viewer.headers))
        return body["unread"], body["unseen"]

    async def groups() -> list[dict[str, Any]]:
        return list((await ok(await client.get("/api/feed", headers=team.viewer.headers)))["items"])

    first = await new_task(client, team.editor, team.project, "A")
    await new_task(client, team.editor, team.project, "B")
    await ok(await client.patch(f"/api/tasks/{first}", json={"status": "done"}, headers=team.owner.headers))
    await deliver(db, feed)
    assert await counts() == (2, 2)

    # The bell was opened: nothing unseen, everything still unread.
    await ok(await client.post("/api/feed/seen", json={}, headers=team.viewer.headers), 204)
    assert await counts() == (2, 0)

    # A group marked read is unread again once it grows.
    created, status = (await groups())[1], (await groups())[0]
    assert created["text"] == "Editor created 'A' and 'B' in Apollo"
    await ok(
        await client.post(f"/api/feed/groups/{created['key']}/read", json={}, headers=team.viewer.headers),
        204,
    )
    assert await counts() == (1, 0)
    await new_task(client, team.editor, team.project, "C")
    await deliver(db, feed)
    assert await counts() == (2, 1)
    grown = (await groups())[0]
    assert (grown["key"], grown["count"], grown["unread"]) == (created["key"], 3, True)

    # Single events: reading the one new event reads the group again.
    events = await ok(
        await client.get(f"/api/feed/groups/{grown['key']}/events", headers=team.viewer.headers)
    )
    assert [e["read"] for e in events["items"]] == [False, True, True]
    await ok(
        await client.post(
            "/api/feed/events/read",
            json={"event_ids": [events["items"][0]["id"]]},
            headers=team.viewer.headers,
        ),
        204,
    )
    assert await counts() == (1, 0)
    assert not (await groups())[0]["unread"] and (await groups())[1]["unread"]

    # Everything up to an event; then everything.
    await ok(
        await client.post(
            "/api/feed/read", json={"through": status["last_event_id"]}, headers=team.viewer.headers
        ),
        204,
    )
    assert await counts() == (0, 0)
    await new_task(client, team.editor, team.project, "D")
    await deliver(db, feed)
    assert await counts() == (1, 1)
    await ok(await client.post("/api/feed/read", json={}, headers=team.viewer.headers), 204)
    assert await counts() == (0, 0)
    # Read state is per reader.
    assert (await ok(await client.get("/api/feed/unread-count", headers=team.owner.headers)))["unread"] == 2

    # Marks on what the reader may not see are refused (groups) or ignored (events).
    assert_problem(
        await client.post(f"/api/feed/groups/{grown['key']}/read", json={}, headers=team.outsider.headers),
        404,
    )
    await ok(
        await client.post(
            "/api/feed/events/read",
            json={"event_ids": [events["items"][0]["id"]]},
            headers=team.outsider.headers,
        ),
        204,
    )
    assert (await ok(await client.get("/api/feed/unread-count", headers=team.outsider.headers)))[
        "unread"
    ] == 0


# -- paging and input -------------------------------------------------------------------------------------


async def test_marking_an_event_read_while_its_project_is_deleted_ignores_it(
    client: Client, db: AsyncConnection[Any], database_url: str, team: Team, feed: ActivityService
) -> None:
    """The mark checked the event's visibility before the deletion (which takes the project's groups
    and events along) committed, then its insert's foreign-key check failed: a 500. The projects are
    now locked before the marks: the deleted project's event is ignored like any invisible id."""
    await new_task(client, team.editor, team.project, "A")
    await deliver(db, feed)
    row = await (
        await db.execute("select id from activity_events where project_id = %s", (team.project,))
    ).fetchone()
    assert row is not None
    answer = await answer_racing(
        database_url,
        "delete from projects where id = %s",
        team.project,
        lambda: client.post(
            "/api/feed/events/read", json={"event_ids": [row[0]]}, headers=team.viewer.headers
        ),
    )
    assert answer.status_code == 204, answer.text
    marks = await (await db.execute("select count(*) from activity_event_reads")).fetchone()
    assert marks == (0,)


async def test_an_administrator_marking_an_event_read_while_a_purge_chunk_deletes_it_is_ignored(
    client: Client,
    db: AsyncConnection[Any],
    database_url: str,
    app: Litestar,
    team: Team,
    feed: ActivityService,
) -> None:
    """Review: an administrator's mark found the event visible, then the project was marked deleted
    and a purge chunk deleted the event (neither waits for the project's FOR KEY SHARE), and the
    mark's foreign-key check failed: a 500. A chunk now locks its groups as the marks do, and a mark
    reads its events again once it holds them. Here the deletion's mark and the chunk's statements
    share one transaction, committed once the request waits for it."""
    admin = await make_user(db, app, UserRole.ADMIN, name="Root")
    await new_task(client, team.editor, team.project, "A")
    await deliver(db, feed)
    row = await (
        await db.execute("select id, group_id from activity_events where project_id = %s", (team.project,))
    ).fetchone()
    assert row is not None
    event_id, group_id = row

    def mark_deleted_and_purge_a_chunk(conn: psycopg.Connection[Any]) -> None:
        conn.execute("update projects set deleting_since = now() where id = %s", (team.project,))
        with psycopg.RawCursor(conn) as cur:
            cur.execute(project_queries.PURGE_PROJECT_GROUP_IDS, (team.project, PURGE_GROUPS_CHUNK))
            assert [found for (found,) in cur.fetchall()] == [group_id]
            cur.execute(project_queries.PURGE_GROUP_EVENT_READS, ([group_id], PURGE_FEED_ROWS_CHUNK))
            cur.execute(project_queries.PURGE_GROUP_EVENTS, ([group_id], PURGE_FEED_ROWS_CHUNK))

    answer = await answer_racing(
        database_url,
        mark_deleted_and_purge_a_chunk,
        team.project,
        lambda: client.post("/api/feed/events/read", json={"event_ids": [event_id]}, headers=admin.headers),
    )
    assert answer.status_code == 204, answer.text
    assert await read_marks(db) == (0, 0)


async def test_events_of_a_project_being_deleted_are_not_marked_read(
    client: Client, db: AsyncConnection[Any], app: Litestar, team: Team, feed: ActivityService
) -> None:
    """A project being deleted (its purge not run yet) is gone from the feed (its groups 404), so
    marking its events counts none, for an administrator too (who may see every project)."""
    admin = await make_user(db, app, UserRole.ADMIN, name="Root")
    await new_task(client, team.editor, team.project, "A")
    await deliver(db, feed)
    row = await (
        await db.execute("select id from activity_events where project_id = %s", (team.project,))
    ).fetchone()
    assert row is not None
    await db.execute("update projects set deleting_since = now() where id = %s", (team.project,))
    await ok(
        await client.post("/api/feed/events/read", json={"event_ids": [row[0]]}, headers=admin.headers), 204
    )
    assert await read_marks(db) == (0, 0)


async def read_marks(db: AsyncConnection[Any]) -> tuple[int, int]:
    """Marks of single events and of whole groups (a group's last event read becomes a group mark)."""
    row = await (
        await db.execute(
            "select (select count(*) from activity_event_reads), (select count(*) from activity_group_reads)"
        )
    ).fetchone()
    assert row is not None
    return row[0], row[1]


async def test_pages_are_full_and_the_cursor_walks_everything(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    events = [
        {
            "outbox_id": 5000 + n,
            "actor_id": team.editor.id,
            "verb": "task.created",
            "object_type": "task",
            "object_id": n,
            "project_id": team.project,
            "data": {"title": f"T{n}"},
            "occurred_at": (base + timedelta(hours=n)).isoformat(),  # each its own group
        }
        for n in range(7)
    ]
    assert await feed.record_batch(events) == 7
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = await ok(await client.get("/api/feed", params=params, headers=team.viewer.headers))
        seen += [group["objects"][0]["title"] for group in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["items"]) == 3
    assert seen == [f"T{n}" for n in reversed(range(7))]


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("GET", "/api/feed?cursor=abc", None, "query.cursor"),
        ("GET", "/api/feed?limit=101", None, "query.limit"),
        ("GET", "/api/feed?verb=task.exploded", None, "query.verb"),
        ("GET", "/api/feed?actor_id=0", None, "query.actor_id"),
        ("GET", "/api/feed/groups/nope", None, "path.key"),
        ("GET", "/api/feed/groups/1-1/events?cursor=1.2", None, "query.cursor"),
        ("POST", "/api/feed/read", {"through": -1}, "through"),
        ("POST", "/api/feed/read", {"everything": True}, "everything"),
        ("POST", "/api/feed/events/read", {"event_ids": []}, "event_ids"),
        ("POST", "/api/feed/events/read", {"event_ids": list(range(1, 102))}, "event_ids"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    client: Client, team: Team, method: str, url: str, body: Any, field: str
) -> None:
    response = await client.request(method, url, json=body, headers=team.viewer.headers)
    assert_problem(response, 400, fields={field})


async def test_stream_needs_a_valid_last_event_id(client: Client, team: Team) -> None:
    response = await client.get("/api/feed/stream", headers={**team.viewer.headers, "Last-Event-ID": "x1"})
    assert_problem(response, 400, fields={"header.Last-Event-ID"})
    assert (await client.get("/api/feed/stream")).status_code == 401


def sse_messages(body: str) -> list[dict[str, str]]:
    """The events of a text/event-stream body (comment lines dropped)."""
    messages = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if fields:
            messages.append(fields)
    return messages


async def test_a_client_not_asking_for_an_event_stream_gets_a_poll_that_ends(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    """EventSource sends ``Accept: text/event-stream`` and keeps the stream; any other client gets
    ``ready`` and the replay after its ``Last-Event-ID``, with the same permissions, then the end."""
    await new_task(client, team.editor, team.project, "Before")
    await deliver(db, feed)
    fresh = await client.get("/api/feed/stream", headers=team.viewer.headers)
    assert fresh.status_code == 200, fresh.text
    ready = sse_messages(fresh.text)
    assert [m["event"] for m in ready] == ["ready"]
    mark = int(ready[0]["id"])
    assert json.loads(ready[0]["data"]) == {"last_event_id": mark}

    other = await make_project(db, team.owner, {}, name="Hidden")
    await new_task(client, team.editor, team.project, "After")
    await new_task(client, team.owner, other, "Invisible")
    await deliver(db, feed)
    response = await client.get(
        "/api/feed/stream", headers={**team.viewer.headers, "Last-Event-ID": str(mark), "Accept": "*/*"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["cache-control"] == "no-store"
    messages = sse_messages(response.text)
    assert [m["event"] for m in messages] == ["ready", "group"]
    group = json.loads(messages[1]["data"])
    assert group["text"] == "Editor created 'Before' and 'After' in Apollo"
    assert int(messages[1]["id"]) == group["last_event_id"] > mark


async def test_a_member_is_named_from_their_account_and_events_keep_no_names_or_titles(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    """A member's name was kept as their feed object's title, and every event kept the title or name
    it was emitted with: a rename, or a deletion, left the old text in the feed for good (privacy
    review). Members are named from their accounts at each read; events keep only their details."""
    role = f"/api/projects/{team.project}/members/{team.viewer.id}"
    await ok(await client.patch(role, json={"role": "editor"}, headers=team.owner.headers))
    task = await new_task(client, team.editor, team.project, "Collect medical records")
    await ok(await client.delete(f"/api/tasks/{task}", headers=team.editor.headers), 204)
    await deliver(db, feed)
    await ok(
        await client.patch("/api/auth/me", json={"display_name": "V. Renamed"}, headers=team.viewer.headers)
    )

    page = await ok(await client.get("/api/feed", headers=team.owner.headers))
    changed = next(g for g in page["items"] if g["verb"] == "member.role_changed")
    assert [o["title"] for o in changed["objects"]] == ["V. Renamed"], changed
    events_url = f"/api/feed/groups/{changed['key']}/events"
    events = (await ok(await client.get(events_url, headers=team.owner.headers)))["items"]
    assert [e["object"]["title"] for e in events] == ["V. Renamed"], events
    assert events[0]["details"] == {"from": "viewer", "to": "editor"}

    stored = await (await db.execute("select data::text from activity_events")).fetchall()
    kept = await (await db.execute("select coalesce(title, '') from activity_objects")).fetchall()
    text = repr([*stored, *kept])
    assert "Viewer" not in text and "Collect medical records" not in text, text
