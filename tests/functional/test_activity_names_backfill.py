"""What the feed kept before it kept no names or titles is removed by 20261206180000: events keep only
their details, and members' objects no title (they are named from their accounts when read)."""

from __future__ import annotations

from typing import Any

import psycopg
from litestar import Litestar
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from app.config import Settings
from app.core.services import open_services
from app.domains.activity.events import emit
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from tests.factories import Client, Team, make_user, migration_up

# (verb, object, details, what the previous release also kept)
EVENTS = [
    ("task.updated", ("task", 9), {"fields": ["title"]}, {"title": "Secret plan"}),
    ("member.role_changed", ("user", 0), {"from": "viewer", "to": "editor"}, {"name": "Old Name"}),
    ("file.uploaded", ("file", 4), {"size_bytes": 10}, {"filename": "cv.txt"}),
]


async def stored_as_the_previous_release(
    settings: Settings, db: AsyncConnection[Any], team: Team, events: list[tuple[Any, ...]]
) -> None:
    """``events`` recorded, then given what the previous release also kept, and the viewer's object
    its name as title (the ``user`` objects of ``(\"user\", 0)`` are the viewer's)."""
    async with open_services(settings, (activity_module,)) as services:
        feed = services[ActivityService]
        async with feed.db.transaction() as uow:
            for verb, (kind, object_id), details, _ in events:
                target = (kind, object_id or team.viewer.id)
                await emit(
                    uow, actor=team.owner.id, verb=verb, obj=target, project_id=team.project, data=details
                )
        rows = await (
            await db.execute("update outbox set published_at = now() returning id, payload")
        ).fetchall()
        recorded = await feed.record_batch(
            [{**payload, "outbox_id": outbox_id} for outbox_id, payload in rows]
        )
        assert recorded == len(events)
    for verb, (_, object_id), _, legacy in events:  # as the previous release stored them
        await db.execute(
            "update activity_events set data = data || %s where verb = %s and object_id = %s",
            (Jsonb(legacy), verb, object_id or team.viewer.id),
        )
    await db.execute(
        "insert into activity_objects (object_type, object_id, title, deleted, seq)"
        " values ('user', %s, 'Old Name', false, 1)"
        " on conflict (object_type, object_id) do update set title = excluded.title",
        (team.viewer.id,),
    )


async def test_old_events_lose_their_names_and_titles_and_keep_their_details(
    settings: Settings, database_url: str, db: AsyncConnection[Any], team: Team
) -> None:
    await stored_as_the_previous_release(settings, db, team, EVENTS)

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_up("activity_keeps_no_names"))
        conn.execute(migration_up("activity_keeps_no_names"))

    rows = await (await db.execute("select verb, data from activity_events order by outbox_id")).fetchall()
    assert rows == [(verb, details) for verb, _, details, _ in EVENTS]
    user_title = await (
        await db.execute(
            "select title from activity_objects where object_type = 'user' and object_id = %s",
            (team.viewer.id,),
        )
    ).fetchone()
    assert user_title == (None,)


async def test_an_erasure_removes_the_name_a_worker_of_the_previous_release_stored(
    settings: Settings, db: AsyncConnection[Any], app: Litestar, client: Client, team: Team
) -> None:
    """Review deployrev: during an upgrade the previous release's worker still stores a member's name
    (after 20261206180000 ran), and an erasure left it for good. The other member's is theirs to keep."""
    other = (
        "member.role_changed",
        ("user", team.editor.id),
        {"from": "viewer", "to": "editor"},
        {"name": "Ed"},
    )
    await stored_as_the_previous_release(settings, db, team, [EVENTS[1], other])
    admin = await make_user(db, app, "admin")
    erased = await client.delete(f"/api/admin/users/{team.viewer.id}", headers=admin.headers)
    assert erased.status_code == 204, erased.text
    rows = await (
        await db.execute("select object_id, data from activity_events order by outbox_id")
    ).fetchall()
    assert rows == [(team.viewer.id, EVENTS[1][2]), (team.editor.id, {**other[2], "name": "Ed"})]
    title = await (
        await db.execute(
            "select title from activity_objects where object_type = 'user' and object_id = %s",
            (team.viewer.id,),
        )
    ).fetchone()
    assert title == (None,)
