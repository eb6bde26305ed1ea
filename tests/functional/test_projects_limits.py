"""Caps on projects per creator and on a project's waiting invitations (review: one account created
60 projects named "Click http://evil.example/N" and invited a victim from each, flooding their list)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from tests.factories import (
    Client,
    answer_racing,
    assert_problem,
    generous_client,
    make_project,
    make_user,
    unique_email,
)

CAP = 3
INVITATIONS_CAP = 3


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(
        settings, projects_per_user_max=CAP, project_invitations_max=INVITATIONS_CAP
    ):
        yield client


async def count(db: AsyncConnection[Any], sql: str, value: int) -> int:
    row = await (await db.execute(sql, (value,))).fetchone()
    assert row is not None
    return int(row[0])


CREATED = "select count(*) from projects where owner_id = %s"
WAITING = "select count(*) from project_invitations where project_id = %s"


# -- projects per creator ---------------------------------------------------------------------------


async def test_a_burst_of_creations_stops_at_the_cap_and_other_users_are_unaffected(
    api: Client, db: AsyncConnection[Any]
) -> None:
    creator = await make_user(db, api.app)
    other = await make_user(db, api.app)

    async def create(n: int) -> Any:
        return await api.post("/api/projects", json={"name": f"Click {n}"}, headers=creator.headers)

    answers = await asyncio.gather(*(create(n) for n in range(10)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * CAP + [409] * (10 - CAP), statuses
    assert_problem(next(a for a in answers if a.status_code == 409), 409, "project-limit")
    assert await count(db, CREATED, creator.id) == CAP

    theirs = await api.post("/api/projects", json={"name": "Theirs"}, headers=other.headers)
    assert theirs.status_code == 201, theirs.text


async def test_deleting_a_project_frees_its_place_and_handing_one_over_does_not(
    api: Client, db: AsyncConnection[Any]
) -> None:
    creator = await make_user(db, api.app)
    heir = await make_user(db, api.app)
    ids = [await make_project(db, creator, name=f"P{n}") for n in range(CAP)]
    refused = await api.post("/api/projects", json={"name": "More"}, headers=creator.headers)
    assert_problem(refused, 409, "project-limit")

    # the creator hands the first one over and leaves it: it still counts (owner_id is the creator)
    await db.execute("insert into project_members values (%s, %s, 'owner')", (ids[0], heir.id))
    left = await api.delete(f"/api/projects/{ids[0]}/members/{creator.id}", headers=creator.headers)
    assert left.status_code == 204, left.text
    assert_problem(await api.post("/api/projects", json={"name": "More"}, headers=creator.headers), 409)

    assert (await api.delete(f"/api/projects/{ids[1]}", headers=creator.headers)).status_code == 204
    again = await api.post("/api/projects", json={"name": "More"}, headers=creator.headers)
    assert again.status_code == 201, again.text


async def test_a_creation_waiting_behind_another_counts_the_project_it_made(
    api: Client, db: AsyncConnection[Any], database_url: str
) -> None:
    """The other creation holds the creator's lock and reaches the cap; this one, waiting for the
    lock, must count that project (a count in the locking statement saw the snapshot before the wait)."""
    creator = await make_user(db, api.app)
    for n in range(CAP - 1):
        await make_project(db, creator, name=f"W{n}")
    concurrent_creation = """
        with creator as (select %s::bigint as id),
        locked as (
            select pg_advisory_xact_lock(hashtextextended(concat('projects-creator:', id), 0)) from creator
        )
        insert into projects (name, owner_id) select 'Other request', id from creator, locked"""
    answer = await answer_racing(
        database_url,
        concurrent_creation,
        creator.id,
        lambda: api.post("/api/projects", json={"name": "Late"}, headers=creator.headers),
    )
    assert_problem(answer, 409, "project-limit")
    assert await count(db, CREATED, creator.id) == CAP


async def test_the_default_cap_is_a_hundred_projects(
    client: Client, db: AsyncConnection[Any], settings: Settings
) -> None:
    assert settings.projects_per_user_max == 100
    creator = await make_user(db, client.app)
    for n in range(99):
        await make_project(db, creator, name=f"Click http://evil.example/{n}")
    last = await client.post("/api/projects", json={"name": "The hundredth"}, headers=creator.headers)
    assert last.status_code == 201, last.text
    assert_problem(
        await client.post("/api/projects", json={"name": "One more"}, headers=creator.headers),
        409,
        "project-limit",
    )


# -- waiting invitations per project -----------------------------------------------------------------


async def test_a_burst_of_invitations_stops_at_the_cap_and_inviting_again_still_updates(
    api: Client, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, api.app)
    project = await make_project(db, owner)
    elsewhere = await make_project(db, owner, name="Elsewhere")
    url = f"/api/projects/{project}/invitations"
    emails = [unique_email("invitee") for _ in range(10)]

    async def invite(email: str) -> Any:
        return await api.post(url, json={"email": email}, headers=owner.headers)

    answers = await asyncio.gather(*(invite(email) for email in emails))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * INVITATIONS_CAP + [409] * (10 - INVITATIONS_CAP), statuses
    assert_problem(next(a for a in answers if a.status_code == 409), 409, "invitation-limit")
    assert await count(db, WAITING, project) == INVITATIONS_CAP

    invited = [a.json() for a in answers if a.status_code == 201]
    again = await api.post(url, json={"email": invited[0]["email"], "role": "editor"}, headers=owner.headers)
    assert again.status_code == 201, again.text
    assert again.json()["role"] == "editor"
    other = await api.post(
        f"/api/projects/{elsewhere}/invitations", json={"email": emails[-1]}, headers=owner.headers
    )
    assert other.status_code == 201, other.text

    withdrawn = await api.delete(f"{url}/{invited[1]['id']}", headers=owner.headers)
    assert withdrawn.status_code == 204, withdrawn.text
    freed = await api.post(url, json={"email": emails[-1]}, headers=owner.headers)
    assert freed.status_code == 201, freed.text


async def test_an_invitation_waiting_behind_another_counts_it(
    api: Client, db: AsyncConnection[Any], database_url: str
) -> None:
    """Another invitation holds the project (as invitations do) and fills the last place."""
    owner = await make_user(db, api.app)
    project = await make_project(db, owner)
    for _ in range(INVITATIONS_CAP - 1):
        await db.execute(
            "insert into project_invitations (project_id, email, role) values (%s, %s, 'viewer')",
            (project, unique_email("early")),
        )
    concurrent_invitation = """
        with locked as (select id from projects where id = %s for no key update)
        insert into project_invitations (project_id, email, role)
        select id, 'other-request@example.com', 'viewer' from locked"""
    answer = await answer_racing(
        database_url,
        concurrent_invitation,
        project,
        lambda: api.post(
            f"/api/projects/{project}/invitations", json={"email": "late@example.com"}, headers=owner.headers
        ),
    )
    assert_problem(answer, 409, "invitation-limit")
    assert await count(db, WAITING, project) == INVITATIONS_CAP


async def test_the_caps_are_documented(api: Client) -> None:
    doc = (await api.get("/schema/openapi.json")).json()
    assert "409" in doc["paths"]["/api/projects"]["post"]["responses"]
    assert "409" in doc["paths"]["/api/projects/{project_id}/invitations"]["post"]["responses"]
