"""What projects tell the activity feed: a renamed project is named by its new name in the feed, in
the cached first page of ``/api/feed`` too, at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from tests.factories import Client, Team
from tests.functional.test_activity_feed import deliver, texts


@pytest.fixture
async def feed(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[ActivityService]:
    async with open_services(settings, (activity_module,)) as services:
        yield services[ActivityService]


async def test_the_feed_names_a_renamed_project_by_its_new_name(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    """Review: ``project.updated`` carried only the changed fields, so the feed kept the old name."""
    created = await client.post("/api/projects", json={"name": "Apollo"}, headers=team.owner.headers)
    assert created.status_code == 201, created.text
    project = created.json()["id"]
    task = await client.post(
        f"/api/projects/{project}/tasks", json={"title": "Fuel"}, headers=team.owner.headers
    )
    assert task.status_code == 201, task.text
    assert await deliver(db, feed) == 2
    assert await texts(client, team.owner, f"/api/projects/{project}/feed") == [
        "Owner created task 'Fuel' in Apollo",
        "Owner created project Apollo",
    ]

    renamed = await client.patch(
        f"/api/projects/{project}", json={"name": "Artemis"}, headers=team.owner.headers
    )
    assert renamed.status_code == 200, renamed.text
    described = await client.patch(
        f"/api/projects/{project}", json={"description": "Moon"}, headers=team.owner.headers
    )
    assert described.status_code == 200, described.text
    assert await deliver(db, feed) == 2

    sentences = await texts(client, team.owner, f"/api/projects/{project}/feed")
    assert sentences == [
        "Owner updated project Artemis 2 times",
        "Owner created task 'Fuel' in Artemis",
        "Owner created project Artemis",
    ], sentences


async def test_the_cached_feed_names_a_renamed_project_by_its_new_name_at_once(
    client: Client, db: AsyncConnection[Any], team: Team, feed: ActivityService
) -> None:
    """Review: the feed's sentences join the project's name live, but a rename changed no version of
    the feed's cache: its first page showed the old name until the rename's event was recorded (or
    for ``FEED_CACHE_TTL_S``). The object's own title ("created project Apollo") is the feed's record
    of it, renamed when that event is recorded, in every view alike."""
    created = await client.post("/api/projects", json={"name": "Apollo"}, headers=team.owner.headers)
    assert created.status_code == 201, created.text
    project = created.json()["id"]
    task = await client.post(
        f"/api/projects/{project}/tasks", json={"title": "Fuel"}, headers=team.owner.headers
    )
    assert task.status_code == 201, task.text
    assert await deliver(db, feed) == 2
    assert (await texts(client, team.owner))[0] == "Owner created task 'Fuel' in Apollo"
    assert (await texts(client, team.owner))[0] == "Owner created task 'Fuel' in Apollo", "cached"

    renamed = await client.patch(
        f"/api/projects/{project}", json={"name": "Artemis"}, headers=team.owner.headers
    )
    assert renamed.status_code == 200, renamed.text
    assert (await texts(client, team.owner))[0] == "Owner created task 'Fuel' in Artemis"
