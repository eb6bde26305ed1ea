"""The demo data gives the seeded users a readable feed: ``just seed`` (every module's seed, through
the services), then the outbox delivered to the feed as the ``feed`` queue would, then Ana's feed.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.domains.activity.services import ActivityService
from app.modules import MODULES
from app.seed import run_seeders


async def test_the_seeded_users_see_a_readable_grouped_feed(
    client: AsyncTestClient[Litestar], db: AsyncConnection[Any], settings: Settings
) -> None:
    async with open_services(settings, MODULES) as services:
        await run_seeders(services)
        rows = await (
            await db.execute("select id, payload from outbox where task = 'record_activity' order by id")
        ).fetchall()
        assert await services[ActivityService].record_batch(
            [{**payload, "outbox_id": outbox_id} for outbox_id, payload in rows]
        ) == len(rows)
        await run_seeders(services)  # idempotent: nothing new to store
        assert (
            await (await db.execute("select count(*) from outbox where task = 'record_activity'")).fetchone()
        ) == (len(rows),)

    login = await client.post(
        "/api/auth/login", json={"email": "ana@example.com", "password": settings.demo_password}
    )
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    page = await client.get("/api/feed", params={"limit": 100}, headers=headers)
    assert page.status_code == 200, page.text
    groups = page.json()["items"]
    texts = [group["text"] for group in groups]
    assert page.json()["next_cursor"] is None
    # The seed's own story, newest first (activity/seed.py), over the projects' demo data.
    assert texts[:4] == [
        "Ana Lima deleted a task in Apollo",
        "Ana Lima created 3 tasks in Apollo",
        "Ben Okafor changed the status of task 'Load-test the checkout' in Apollo",
        "Ana Lima and Ben Okafor commented on 'Load-test the checkout' in Apollo",
    ]
    assert "Ana Lima created project Apollo" in texts
    # Readable: every line names people and titles, never "Someone" or a bare "#id".
    people = ("Ana Lima", "Ben Okafor", "Administrator")
    unreadable = [t for t in texts if not t.startswith(people) or "#" in t]
    assert unreadable == []
    created = groups[1]
    assert (created["count"], created["object_count"], created["truncated"]) == (3, 3, False)
    assert [o["deleted"] for o in created["objects"]] == [True, False, False], (
        "the deleted one is a tombstone"
    )
