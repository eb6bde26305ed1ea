"""The members one project may have (``PROJECT_MEMBERS_MAX``): an acceptance past it is a 409
``project-full`` that leaves the invitation waiting (review: nothing bounded a project's members,
though each member's feed reads every event of the project and a deletion removes them all in one
transaction)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from tests.factories import Client, assert_problem, generous_client, make_project, make_user
from tests.functional.test_projects_membership_cap import accept, invite, waiting

MEMBERS = 3


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, project_members_max=MEMBERS):
        yield client


async def test_an_acceptance_past_the_projects_members_is_refused_and_waits(
    api: Client, db: AsyncConnection[Any]
) -> None:
    owner, first, second, third = [await make_user(db, api.app) for _ in range(4)]
    project = await make_project(db, owner, {first.id: "viewer"})  # two members
    joins = await invite(api, owner, project, second)
    waits = await invite(api, owner, project, third)
    assert (await accept(api, second, joins)).status_code == 200  # the third member
    refused = assert_problem(await accept(api, third, waits), 409, "project-full")
    assert "3 members" in refused["detail"]
    assert await waiting(api, third) == [waits.id], "the invitation waits"

    removed = await api.delete(f"/api/projects/{project}/members/{first.id}", headers=owner.headers)
    assert removed.status_code == 204, removed.text
    assert (await accept(api, third, waits)).status_code == 200
    # a member already adds nothing and is never refused, full or not
    again = await invite(api, owner, project, second, role="editor")
    assert (await accept(api, second, again)).status_code == 200
