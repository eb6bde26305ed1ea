"""The projects one user may be a member of (``MEMBERSHIPS_PER_USER_MAX``): every path that adds a
membership (accepting an invitation, creating a project) stops at it, refusing with a 409 of its own
that leaves the invitation waiting (review: invitations were accepted without limit, and each
membership widens the reader's feed, counts, stream and lists)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import httpx
import pytest
from psycopg import AsyncConnection, AsyncRawCursor

from app.config import Settings, SettingsError, load_settings
from app.db import projects as queries
from tests.factories import (
    Actor,
    Client,
    answer_racing,
    assert_problem,
    generous_client,
    make_project,
    make_user,
    plan_rows_read,
    plan_scans,
)

CAP = 3


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, memberships_per_user_max=CAP):
        yield client


class Sent(NamedTuple):
    id: int
    token: str


async def invite(api: Client, owner: Actor, project: int, who: Actor, role: str = "viewer") -> Sent:
    sent = await api.post(
        f"/api/projects/{project}/invitations", json={"email": who.email, "role": role}, headers=owner.headers
    )
    assert sent.status_code == 201, sent.text
    return Sent(int(sent.json()["id"]), sent.json()["token"])


async def accept(api: Client, who: Actor, invitation: Sent) -> httpx.Response:
    return await api.post(
        f"/api/me/invitations/{invitation.id}/accept", json={"token": invitation.token}, headers=who.headers
    )


async def join(db: AsyncConnection[Any], owner: Actor, who: Actor, count: int) -> list[int]:
    """``count`` projects of ``owner`` that ``who`` is a viewer of."""
    return [await make_project(db, owner, {who.id: "viewer"}, name=f"Joined {n}") for n in range(count)]


async def memberships(db: AsyncConnection[Any], who: Actor) -> int:
    row = await (
        await db.execute("select count(*) from project_members where user_id = %s", (who.id,))
    ).fetchone()
    assert row is not None
    return int(row[0])


async def waiting(api: Client, who: Actor) -> list[int]:
    mine = await api.get("/api/me/invitations", headers=who.headers)
    assert mine.status_code == 200, mine.text
    return [item["id"] for item in mine.json()["items"]]


async def test_joining_past_the_cap_is_refused_and_the_invitation_waits_until_one_is_left(
    api: Client, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, api.app)
    user = await make_user(db, api.app)
    joined = await join(db, owner, user, CAP)
    project = await make_project(db, owner, name="One too many")
    invitation = await invite(api, owner, project, user)

    refused = assert_problem(await accept(api, user, invitation), 409, "membership-limit")
    assert f"member of {CAP} projects" in refused["detail"], refused
    assert "Leave a project" in refused["detail"], refused
    assert await memberships(db, user) == CAP
    assert await waiting(api, user) == [invitation.id]  # not used up: it can still be accepted

    left = await api.delete(f"/api/projects/{joined[0]}/members/{user.id}", headers=user.headers)
    assert left.status_code == 204, left.text
    accepted = await accept(api, user, invitation)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["id"] == project
    assert await memberships(db, user) == CAP
    assert await waiting(api, user) == []


async def test_an_invitation_to_a_project_one_is_in_is_accepted_at_the_cap(
    api: Client, db: AsyncConnection[Any]
) -> None:
    """It adds nothing, so the cap does not refuse it (and the member keeps their role)."""
    owner = await make_user(db, api.app)
    user = await make_user(db, api.app)
    joined = await join(db, owner, user, CAP)
    elsewhere = await make_project(db, owner, name="Elsewhere")
    assert_problem(
        await accept(api, user, await invite(api, owner, elsewhere, user)), 409, "membership-limit"
    )

    again = await invite(api, owner, joined[1], user, role="editor")
    accepted = await accept(api, user, again)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["my_role"] == "viewer"
    assert await memberships(db, user) == CAP
    assert await waiting(api, user) != []  # the refused one still waits; the accepted one is used up
    assert again.id not in await waiting(api, user)


async def test_creating_a_project_is_a_membership_and_stops_at_the_cap_too(
    api: Client, db: AsyncConnection[Any]
) -> None:
    """The creator's own membership counts, whichever way the cap is reached (``PROJECTS_PER_USER_MAX``
    is 100 here: it is not the one that refuses)."""
    owner = await make_user(db, api.app)
    user = await make_user(db, api.app)
    joined = await join(db, owner, user, CAP - 1)
    created = await api.post("/api/projects", json={"name": "Mine"}, headers=user.headers)
    assert created.status_code == 201, created.text

    refused = await api.post("/api/projects", json={"name": "Another"}, headers=user.headers)
    assert_problem(refused, 409, "membership-limit")
    invitation = await invite(api, owner, await make_project(db, owner, name="Theirs"), user)
    assert_problem(await accept(api, user, invitation), 409, "membership-limit")
    assert await memberships(db, user) == CAP

    left = await api.delete(f"/api/projects/{joined[0]}/members/{user.id}", headers=user.headers)
    assert left.status_code == 204, left.text
    again = await api.post("/api/projects", json={"name": "Another"}, headers=user.headers)
    assert again.status_code == 201, again.text
    assert await memberships(db, user) == CAP


# The other transaction adds a membership of the user as an acceptance or a creation would: holding the
# user's lock (LockUserProjects) until it commits.
CONCURRENT_JOIN = """
    with who as (select %s::bigint as id),
    locked as (
        select pg_advisory_xact_lock(hashtextextended(concat('projects-creator:', id), 0)) from who
    )
    insert into project_members (project_id, user_id, role)
    select p.id, who.id, 'viewer' from projects p, who, locked where p.name = 'Joined meanwhile'"""


async def test_an_acceptance_waiting_behind_another_join_counts_it(
    api: Client, db: AsyncConnection[Any], database_url: str
) -> None:
    """Two joins by one user at once: the second waits for the first's lock and counts what it added
    (a count in the locking statement, or none taken, saw the memberships before the wait)."""
    owner = await make_user(db, api.app)
    user = await make_user(db, api.app)
    await join(db, owner, user, CAP - 1)
    await make_project(db, owner, name="Joined meanwhile")
    invitation = await invite(api, owner, await make_project(db, owner, name="Late"), user)

    answer = await answer_racing(
        database_url, CONCURRENT_JOIN, user.id, lambda: accept(api, user, invitation)
    )
    assert_problem(answer, 409, "membership-limit")
    assert await memberships(db, user) == CAP
    assert await waiting(api, user) == [invitation.id]


async def test_a_creation_waiting_behind_another_join_counts_it(
    api: Client, db: AsyncConnection[Any], database_url: str
) -> None:
    owner = await make_user(db, api.app)
    user = await make_user(db, api.app)
    await join(db, owner, user, CAP - 1)
    await make_project(db, owner, name="Joined meanwhile")

    answer = await answer_racing(
        database_url,
        CONCURRENT_JOIN,
        user.id,
        lambda: api.post("/api/projects", json={"name": "Late"}, headers=user.headers),
    )
    assert_problem(answer, 409, "membership-limit")
    assert await memberships(db, user) == CAP


async def test_the_count_reads_only_the_users_own_memberships(db: AsyncConnection[Any], api: Client) -> None:
    """``CountMemberships`` reads the user's entries of ``project_members_user_idx``, not the table's
    (10,000 memberships of others here, statistics up to date)."""
    owner = await make_user(db, api.app)
    user = await make_user(db, api.app)
    await join(db, owner, user, CAP)
    crowded = await make_project(db, owner, name="Crowded")
    await db.execute(
        """with crowd as (
               insert into users (email, display_name, password_hash)
               select 'crowd-' || n || '@example.com', 'Crowd', 'x' from generate_series(1, 10000) n
               returning id
           )
           insert into project_members (project_id, user_id, role) select %s, id, 'viewer' from crowd""",
        (crowded,),
    )
    await db.execute("vacuum analyze project_members")
    async with AsyncRawCursor(db) as cur:
        await cur.execute("explain (analyze, format json) " + queries.COUNT_MEMBERSHIPS, (user.id,))
        row = await cur.fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    scans = plan_scans(plan, "project_members")
    assert scans, plan
    assert all(scan.get("Index Name") == "project_members_user_idx" for scan in scans), plan
    assert sum(plan_rows_read(scan) for scan in scans) == CAP, plan


async def test_the_cap_is_documented_and_validated(api: Client) -> None:
    doc = (await api.get("/schema/openapi.json")).json()
    assert "409" in doc["paths"]["/api/me/invitations/{invitation_id}/accept"]["post"]["responses"]
    assert (
        "membership-limit"
        in doc["paths"]["/api/me/invitations/{invitation_id}/accept"]["post"]["description"]
    )
    assert "membership-limit" in doc["paths"]["/api/projects"]["post"]["description"]
    assert load_settings({"APP_ENV": "test"}).memberships_per_user_max == 1_000
    with pytest.raises(SettingsError, match="MEMBERSHIPS_PER_USER_MAX"):
        load_settings({"APP_ENV": "test", "MEMBERSHIPS_PER_USER_MAX": "0"})
