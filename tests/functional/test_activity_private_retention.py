"""The retention of a reader's own feed groups (``ActivityService.purge_private_groups``): the groups
no project holds (orders, a project's deletion) were kept for good, growing per user (privacy review);
they go with their events and read marks ``FEED_PRIVATE_RETENTION_DAYS`` after their last event. A
project's groups go with the project, never by age."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import Services, open_services
from app.domains.activity.events import emit
from app.domains.activity.jobs import purge_private_feed_groups
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from tests.factories import Team

RETENTION_DAYS = 30


@pytest.fixture
async def services(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[Services]:
    kept = msgspec.structs.replace(settings, feed_private_retention_days=RETENTION_DAYS)
    async with open_services(kept, (activity_module,)) as opened:
        yield opened


async def group_of(db: AsyncConnection[Any], object_type: str, object_id: int) -> int:
    row = await (
        await db.execute(
            "select group_id from activity_events where object_type = %s and object_id = %s",
            (object_type, object_id),
        )
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_readers_own_groups_go_after_the_retention_and_a_projects_stay(
    db: AsyncConnection[Any], services: Services, team: Team
) -> None:
    feed = services[ActivityService]
    async with feed.db.transaction() as uow:
        for actor, order in ((team.viewer.id, 1), (team.editor.id, 2)):
            await emit(
                uow,
                actor=actor,
                verb="order.placed",
                obj=("order", order),
                project_id=None,
                data={"total": "5.00"},
            )
        await emit(uow, actor=team.editor.id, verb="task.created", obj=("task", 7), project_id=team.project)
    rows = await (await db.execute("update outbox set published_at = now() returning id, payload")).fetchall()
    assert await feed.record_batch([{**payload, "outbox_id": outbox_id} for outbox_id, payload in rows]) == 3
    old_order, young_order, project_task = [
        await group_of(db, kind, object_id) for kind, object_id in (("order", 1), ("order", 2), ("task", 7))
    ]
    for group, days in (
        (old_order, RETENTION_DAYS + 1),
        (young_order, RETENTION_DAYS - 1),
        (project_task, 400),
    ):
        await db.execute(
            "update activity_groups set first_at = now() - make_interval(days => %s),"
            " last_at = now() - make_interval(days => %s) where id = %s",
            (days, days, group),
        )
    await db.execute(
        "insert into activity_event_reads (user_id, event_id, group_id)"
        " select %s, id, group_id from activity_events where group_id = %s",
        (team.viewer.id, old_order),
    )

    purged = await feed.purge_private_groups(chunk_size=1)
    again = await purge_private_feed_groups({"services": services})  # the cron's job

    assert (purged, again) == (1, 0)
    groups = await (await db.execute("select id from activity_groups order by id")).fetchall()
    assert sorted(row[0] for row in groups) == sorted([young_order, project_task])
    left = await (
        await db.execute(
            "select (select count(*) from activity_events where group_id = %s),"
            " (select count(*) from activity_event_reads where user_id = %s)",
            (old_order, team.viewer.id),
        )
    ).fetchone()
    assert left == (0, 0)
