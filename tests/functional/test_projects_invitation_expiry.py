"""An invitation expires ``INVITATION_TTL_S`` after it was sent (or sent again).

Review: invitation tokens never expired. A token handed over chat or e-mail stayed valid indefinitely,
and stale invitations kept counting toward ``PROJECT_INVITATIONS_MAX`` until an owner withdrew them, so
a project could be blocked from inviting by its own old invitations. Now an expired invitation is as if
withdrawn: it cannot be accepted or declined (the 404 of an unknown invitation), an owner cannot
withdraw it (404), it is listed nowhere and does not count toward the cap; inviting the email again
sends a fresh one (a new token, the clock restarts), and a daily job deletes the expired rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.queues import build_saq_config
from app.core.services import Services
from app.db import projects as project_queries
from app.domains.projects.jobs import purge_expired_invitations
from app.domains.projects.services import ProjectService
from app.modules import MODULES
from tests.factories import (
    Actor,
    Client,
    assert_problem,
    generous_client,
    make_project,
    make_user,
    unique_email,
)

CAP = 3
EXPIRED = "7 days 1 minute"  # older than the default TTL (604800 s)
FRESH = "6 days 23 hours"  # younger


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, project_invitations_max=CAP):
        yield client


@pytest.fixture(scope="module")
async def short_lived(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, invitation_ttl_s=3600):
        yield client


async def invite(client: Client, owner: Actor, project: int, email: str) -> dict[str, Any]:
    sent = await client.post(
        f"/api/projects/{project}/invitations", json={"email": email, "role": "editor"}, headers=owner.headers
    )
    assert sent.status_code == 201, sent.text
    answer: dict[str, Any] = sent.json()
    return answer


async def accept(client: Client, who: Actor, invitation: int, token: str) -> httpx.Response:
    return await client.post(
        f"/api/me/invitations/{invitation}/accept", json={"token": token}, headers=who.headers
    )


async def age(db: AsyncConnection[Any], invitation: int, by: str) -> None:
    """The invitation as if sent ``by`` ago."""
    await db.execute(
        "update project_invitations set created_at = now() - %s::interval where id = %s", (by, invitation)
    )


async def listed_ids(client: Client, url: str, who: Actor) -> list[int]:
    answer = await client.get(url, headers=who.headers)
    assert answer.status_code == 200, answer.text
    return [item["id"] for item in answer.json()["items"]]


async def remaining(db: AsyncConnection[Any]) -> set[int]:
    rows = await (await db.execute("select id from project_invitations")).fetchall()
    return {row[0] for row in rows}


def purge(client: Client, chunk_size: int | None = None) -> int:
    app: Litestar = client.app
    service = app.state.services[ProjectService]
    if chunk_size is None:
        return int(client.blocking_portal.call(service.purge_expired_invitations))
    return int(client.blocking_portal.call(lambda: service.purge_expired_invitations(chunk_size=chunk_size)))


async def test_the_default_ttl_is_a_week(settings: Settings) -> None:
    assert settings.invitation_ttl_s == 7 * 24 * 3600


async def test_an_expired_invitation_is_a_404_and_listed_nowhere_and_a_fresh_one_still_works(
    api: Client, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, api.app)
    old_invitee, new_invitee = await make_user(db, api.app), await make_user(db, api.app)
    project = await make_project(db, owner)
    old = await invite(api, owner, project, old_invitee.email)
    new = await invite(api, owner, project, new_invitee.email)
    await age(db, old["id"], EXPIRED)
    await age(db, new["id"], FRESH)

    owners_url = f"/api/projects/{project}/invitations"
    assert await listed_ids(api, owners_url, owner) == [new["id"]]
    assert await listed_ids(api, "/api/me/invitations", old_invitee) == []
    assert await listed_ids(api, "/api/me/invitations", new_invitee) == [new["id"]]

    expired = assert_problem(await accept(api, old_invitee, old["id"], old["token"]), 404, "not-found")
    unknown = assert_problem(await accept(api, old_invitee, old["id"] + 1000, old["token"]), 404)
    assert {k: v for k, v in expired.items() if k not in {"request_id", "instance"}} == {
        k: v for k, v in unknown.items() if k not in {"request_id", "instance"}
    }, "no existence leak"
    assert_problem(
        await api.post(
            f"/api/me/invitations/{old['id']}/decline",
            json={"token": old["token"]},
            headers=old_invitee.headers,
        ),
        404,
    )
    assert_problem(await api.delete(f"{owners_url}/{old['id']}", headers=owner.headers), 404)
    assert await project_queries.get_member_role(db, project_id=project, user_id=old_invitee.id) is None

    joined = await accept(api, new_invitee, new["id"], new["token"])
    assert joined.status_code == 200, joined.text


async def test_inviting_again_restarts_the_clock_with_a_new_token(
    api: Client, db: AsyncConnection[Any]
) -> None:
    owner, invitee = await make_user(db, api.app), await make_user(db, api.app)
    project = await make_project(db, owner)
    first = await invite(api, owner, project, invitee.email)
    await age(db, first["id"], EXPIRED)
    again = await invite(api, owner, project, invitee.email)
    assert again["id"] == first["id"]
    assert await listed_ids(api, "/api/me/invitations", invitee) == [again["id"]]
    assert_problem(await accept(api, invitee, first["id"], first["token"]), 404)
    joined = await accept(api, invitee, again["id"], again["token"])
    assert joined.status_code == 200, joined.text


async def test_expired_invitations_do_not_count_toward_the_cap(api: Client, db: AsyncConnection[Any]) -> None:
    owner = await make_user(db, api.app)
    project = await make_project(db, owner)
    url = f"/api/projects/{project}/invitations"
    sent = [await invite(api, owner, project, unique_email("stale")) for _ in range(CAP)]
    refused = await api.post(url, json={"email": unique_email("more")}, headers=owner.headers)
    assert_problem(refused, 409, "invitation-limit")

    for invitation in sent:
        await age(db, invitation["id"], EXPIRED)
    fresh = [await invite(api, owner, project, unique_email("fresh")) for _ in range(CAP)]
    assert_problem(
        await api.post(url, json={"email": unique_email("more")}, headers=owner.headers),
        409,
        "invitation-limit",
    )
    assert await listed_ids(api, url, owner) == [invitation["id"] for invitation in fresh]


async def test_the_purge_deletes_expired_invitations_only(api: Client, db: AsyncConnection[Any]) -> None:
    owner = await make_user(db, api.app)
    projects = [await make_project(db, owner, name=f"P{n}") for n in range(2)]
    sent = [await invite(api, owner, project, unique_email("p")) for project in projects for _ in range(3)]
    expired = {invitation["id"] for invitation in sent[::2]}
    for invitation in sent:
        await age(db, invitation["id"], EXPIRED if invitation["id"] in expired else FRESH)

    assert purge(api, chunk_size=1) == len(expired)  # one per transaction, until a chunk comes back short
    assert await remaining(db) == {invitation["id"] for invitation in sent} - expired
    assert purge(api) == 0


async def test_the_purge_runs_daily_on_the_default_queue(
    api: Client, db: AsyncConnection[Any], settings: Settings, valkey_url: str
) -> None:
    config = build_saq_config(Services(settings, MODULES), valkey_url, run_workers_in_process=False)
    default = next(queue for queue in config.queue_configs if queue.name == "default")
    crons = [
        job.cron for job in default.scheduled_tasks if job.function.__wrapped__ is purge_expired_invitations
    ]
    await config.queue_instances["default"].redis.aclose()  # type: ignore[index,union-attr]
    assert len(crons) == 1, crons
    minute, hour, *days = str(crons[0]).split()
    assert minute.isdigit() and hour.isdigit() and days == ["*", "*", "*"], crons

    owner = await make_user(db, api.app)
    project = await make_project(db, owner)
    old, new = [await invite(api, owner, project, unique_email("j")) for _ in range(2)]
    await age(db, old["id"], EXPIRED)
    app: Litestar = api.app
    ctx: Any = {"services": app.state.services}
    assert api.blocking_portal.call(purge_expired_invitations, ctx) == 1
    assert await remaining(db) == {new["id"]}


async def test_the_ttl_is_the_setting(short_lived: Client, db: AsyncConnection[Any]) -> None:
    owner, early, late = [await make_user(db, short_lived.app) for _ in range(3)]
    project = await make_project(db, owner)
    expired = await invite(short_lived, owner, project, early.email)
    fresh = await invite(short_lived, owner, project, late.email)
    await age(db, expired["id"], "61 minutes")
    await age(db, fresh["id"], "59 minutes")
    assert await listed_ids(short_lived, f"/api/projects/{project}/invitations", owner) == [fresh["id"]]
    assert_problem(await accept(short_lived, early, expired["id"], expired["token"]), 404)
    assert (await accept(short_lived, late, fresh["id"], fresh["token"])).status_code == 200
