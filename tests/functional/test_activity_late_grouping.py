"""A late delivery joins the burst it happened in, through the writer and its stored groups (the unit
tests of the rule: ``tests/unit/test_activity_grouping.py``).

The feed reviewer recorded an editor's four task creations, at 00:00, 00:01, 02:00 and 02:01, the
second delivered after the third (its job lost, then recovered): the feed showed four groups, the
late event's own and a fresh one for 02:01. The writer now reads a stream's groups by time
(``OpenActivityGroups``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from tests.factories import Client, Team


async def test_a_recovered_event_joins_its_burst_and_the_next_burst_stays_whole(
    client: Client, settings: Settings, db: AsyncConnection[Any], team: Team
) -> None:
    for title in ("T0", "T1", "T2", "T3"):
        created = await client.post(
            f"/api/projects/{team.project}/tasks", json={"title": title}, headers=team.editor.headers
        )
        assert created.status_code == 201, created.text
    rows = await (
        await db.execute("select id, payload from outbox where queue = 'feed' order by id")
    ).fetchall()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    minutes = {"T0": 0, "T1": 1, "T2": 120, "T3": 121}
    payloads = {
        payload["data"]["title"]: {
            **payload,
            "outbox_id": outbox_id,
            "occurred_at": (start + timedelta(minutes=minutes[payload["data"]["title"]])).isoformat(),
        }
        for outbox_id, payload in rows
    }
    async with open_services(settings, (activity_module,)) as services:
        activity = services[ActivityService]
        for title in ("T0", "T2", "T1", "T3"):
            assert await activity.record_batch([payloads[title]]) == 1

    groups = await (
        await db.execute(
            "select array_agg(o.title order by o.title), g.event_count"
            " from activity_events e join activity_groups g on g.id = e.group_id"
            " join (select id, payload->'data'->>'title' as title from outbox) o on o.id = e.outbox_id"
            " group by g.id, g.event_count order by min(e.occurred_at)"
        )
    ).fetchall()
    assert groups == [(["T0", "T1"], 2), (["T2", "T3"], 2)]
    feed = await client.get("/api/feed", headers=team.viewer.headers)
    assert feed.status_code == 200, feed.text
    assert len(feed.json()["items"]) == 2, feed.json()
