"""Sites: a per-owner cap on creation (free accounts cannot mint unlimited ingest keys)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from tests.factories import Client, answer_racing, assert_problem, generous_client, make_user

CAP = 3


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, sites_per_user_max=CAP):
        yield client


async def test_a_burst_of_creations_stops_at_the_cap_and_other_owners_are_unaffected(
    api: Client, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, api.app)
    other = await make_user(db, api.app)

    async def create(n: int) -> Any:
        return await api.post("/api/sites", json={"domain": f"site{n}.example"}, headers=owner.headers)

    answers = await asyncio.gather(*(create(n) for n in range(10)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * CAP + [409] * (10 - CAP), statuses
    assert_problem(next(a for a in answers if a.status_code == 409), 409, "site-limit")
    cursor = await db.execute("select count(*) from sites where owner_id = %s", (owner.id,))
    assert await cursor.fetchone() == (CAP,)

    theirs = await api.post("/api/sites", json={"domain": "theirs.example"}, headers=other.headers)
    assert theirs.status_code == 201, theirs.text


async def test_deleting_a_site_frees_its_place(api: Client, db: AsyncConnection[Any]) -> None:
    owner = await make_user(db, api.app)
    ids = []
    for n in range(CAP):
        created = await api.post("/api/sites", json={"domain": f"s{n}.example"}, headers=owner.headers)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    refused = await api.post("/api/sites", json={"domain": "more.example"}, headers=owner.headers)
    assert_problem(refused, 409, "site-limit")
    assert (await api.delete(f"/api/sites/{ids[0]}", headers=owner.headers)).status_code == 204
    again = await api.post("/api/sites", json={"domain": "more.example"}, headers=owner.headers)
    assert again.status_code == 201, again.text


async def test_a_deletion_racing_another_is_a_404(
    api: Client, db: AsyncConnection[Any], database_url: str
) -> None:
    """Both deletions read the site before either committed; the second deleted nothing and still
    answered 204."""
    owner = await make_user(db, api.app)
    created = await api.post("/api/sites", json={"domain": "race.example"}, headers=owner.headers)
    assert created.status_code == 201, created.text
    site_id = created.json()["id"]
    answer = await answer_racing(
        database_url,
        "delete from sites where id = %s",
        site_id,
        lambda: api.delete(f"/api/sites/{site_id}", headers=owner.headers),
    )
    assert_problem(answer, 404, "not-found")


async def test_a_creation_waiting_behind_another_counts_the_site_it_made(
    api: Client, db: AsyncConnection[Any], database_url: str
) -> None:
    """The other creation holds the owner's lock and reaches the cap; this one, waiting for the lock,
    must count that site (a count in the locking statement saw the snapshot from before the wait)."""
    owner = await make_user(db, api.app)
    for n in range(CAP - 1):
        created = await api.post("/api/sites", json={"domain": f"w{n}.example"}, headers=owner.headers)
        assert created.status_code == 201, created.text
    concurrent_creation = """
        with owner as (select %s::bigint as id),
        locked as (select pg_advisory_xact_lock(hashtextextended(concat('sites-owner:', id), 0)) from owner)
        insert into sites (owner_id, domain, ingest_key, timezone)
        select id, 'other-request.example', md5(random()::text), 'UTC' from owner, locked"""
    answer = await answer_racing(
        database_url,
        concurrent_creation,
        owner.id,
        lambda: api.post("/api/sites", json={"domain": "late.example"}, headers=owner.headers),
    )
    assert_problem(answer, 409, "site-limit")
    cursor = await db.execute("select count(*) from sites where owner_id = %s", (owner.id,))
    assert await cursor.fetchone() == (CAP,)
