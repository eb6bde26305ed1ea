"""Rotating a site's ingest key (``POST /api/sites/{site_id}/ingest-key``): a leaked key is replaced
without deleting the site. The site's owner (or an administrator) gets the site back with a new key;
anyone else a 404. The old key is refused by the ingest like a deleted site's (422
``unknown-site-key``) in the rotating process at once and in every other one from the rotation's
NOTIFY on, however long it had the key cached; a process that starts (or reconnects) later loads it.
The site keeps its data: the deleted sites' purge does not touch it.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.db.models import UserRole
from app.domains.pageviews.services import DELETED_SITE_GRACE, PageViewService
from app.domains.sites.services import ROTATIONS_PER_HOUR, SiteService
from app.modules import MODULES
from tests.factories import (
    Client,
    Served,
    answer_racing,
    assert_problem,
    create_user,
    make_site,
    make_user,
    mint_headers,
    serve_in_loop,
    wait_until,
)

SINGLE = "/api/page-views"
UNLIMITED = {"rate_limit_ingest_per_minute": 10_000_000, "rate_limit_ingest_per_hour": 100_000_000}


def rotation(site_id: int) -> str:
    return f"/api/sites/{site_id}/ingest-key"


def view(key: str, **fields: Any) -> dict[str, Any]:
    return {"site_key": key, "url": "https://shop.example.com/", **fields}


async def key_of(db: AsyncConnection[Any], site_id: int) -> str:
    row = await (await db.execute("select ingest_key from sites where id = %s", (site_id,))).fetchone()
    assert row is not None
    return str(row[0])


async def stored(db: AsyncConnection[Any], site_id: int) -> int:
    row = await (
        await db.execute("select count(*) from page_views where site_id = %s", (site_id,))
    ).fetchone()
    assert row is not None
    return int(row[0])


async def with_partitions(db: AsyncConnection[Any]) -> None:
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")


# -- who may rotate, and what they get ----------------------------------------------------------------


async def test_the_owner_rotates_and_the_site_carries_the_new_key(
    api: Client, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, api.app)
    created = await api.post("/api/sites", json={"domain": "shop.example"}, headers=owner.headers)
    assert created.status_code == 201, created.text
    site = created.json()

    rotated = await api.post(rotation(site["id"]), headers=owner.headers)

    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["ingest_key"] != site["ingest_key"]
    assert {k: v for k, v in body.items() if k != "ingest_key"} == {
        k: v for k, v in site.items() if k != "ingest_key"
    }, "nothing but the key changes"
    assert len(body["ingest_key"]) == len(site["ingest_key"]), "made as a creation makes it"
    shown = await api.get(f"/api/sites/{site['id']}", headers=owner.headers)
    assert shown.status_code == 200, shown.text
    assert shown.json() == body
    assert await key_of(db, site["id"]) == body["ingest_key"]

    again = await api.post(rotation(site["id"]), headers=owner.headers)
    assert again.status_code == 200, again.text
    assert again.json()["ingest_key"] not in (site["ingest_key"], body["ingest_key"])


async def test_another_users_site_is_not_found_and_keeps_its_key(
    api: Client, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, api.app)
    other = await make_user(db, api.app)
    site = await make_site(db, owner)

    assert_problem(await api.post(rotation(site.id), headers=other.headers), 404, "not-found")
    assert_problem(await api.post(rotation(site.id + 1_000_000), headers=owner.headers), 404, "not-found")
    assert_problem(await api.post(rotation(site.id)), 401)
    assert await key_of(db, site.id) == site.ingest_key


async def test_a_token_claiming_admin_for_a_member_is_not_found_and_a_real_admin_rotates(
    api: Client, db: AsyncConnection[Any]
) -> None:
    """Rotating another's site is an administrator's write: the actor's row decides, not the token's
    role claim (a token issued before a demotion), as for a deletion."""
    owner = await make_user(db, api.app)
    site = await make_site(db, owner)
    member = await create_user(db)

    forged = mint_headers(api.app, member.id, UserRole.ADMIN)
    assert_problem(await api.post(rotation(site.id), headers=forged), 404, "not-found")
    assert await key_of(db, site.id) == site.ingest_key

    admin = await make_user(db, api.app, UserRole.ADMIN)
    rotated = await api.post(rotation(site.id), headers=admin.headers)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["owner_id"] == owner.id
    assert rotated.json()["ingest_key"] != site.ingest_key
    assert await key_of(db, site.id) == rotated.json()["ingest_key"]


async def test_a_rotation_waiting_behind_another_rotates_the_key_that_one_made(
    api: Client, db: AsyncConnection[Any], database_url: str
) -> None:
    """Another rotation commits while this one waits for the site's row: this one replaces the key
    that one made, and both earlier keys are retired."""
    owner = await make_user(db, api.app)
    site = await make_site(db, owner)
    between = secrets.token_urlsafe(24)
    answer = await answer_racing(
        database_url,
        f"update sites set ingest_key = '{between}' where id = %s",
        site.id,
        lambda: api.post(rotation(site.id), headers=owner.headers),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["ingest_key"] not in (site.ingest_key, between)
    assert await key_of(db, site.id) == answer.json()["ingest_key"]
    retired = await db.execute("select ingest_key from retired_ingest_keys where site_id = %s", (site.id,))
    assert {key for (key,) in await retired.fetchall()} == {site.ingest_key, between}


async def test_a_deletion_committed_while_the_rotation_waits_is_a_404(
    api: Client, db: AsyncConnection[Any], database_url: str
) -> None:
    owner = await make_user(db, api.app)
    site = await make_site(db, owner)
    answer = await answer_racing(
        database_url,
        "delete from sites where id = %s",
        site.id,
        lambda: api.post(rotation(site.id), headers=owner.headers),
    )
    assert_problem(answer, 404, "not-found")


# -- the old key at the ingest ----------------------------------------------------------------------


@pytest.fixture
async def two_instances(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[tuple[Served, Served]]:
    """Two app instances (two processes' worth of key caches and deletion mirrors) on one database."""
    async with serve_in_loop(settings, **UNLIMITED) as one, serve_in_loop(settings, **UNLIMITED) as two:
        yield one, two


async def test_the_old_key_is_refused_in_every_instance_and_the_new_one_accepted(
    two_instances: tuple[Served, Served], db: AsyncConnection[Any]
) -> None:
    """Both instances have the old key cached; the owner rotates through the first. The first refuses
    the old key at once (it learned it in its own commit), the second once the NOTIFY reached it."""
    one, two = two_instances
    owner = await create_user(db)
    site = await make_site(db, owner)
    await with_partitions(db)
    for instance in two_instances:
        assert (await instance.client.post(SINGLE, json=view(site.ingest_key))).status_code == 202

    rotated = await one.client.post(rotation(site.id), headers=mint_headers(one.app, owner.id))
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["ingest_key"]

    assert_problem(await one.client.post(SINGLE, json=view(site.ingest_key)), 422, "unknown-site-key")

    async def notified() -> bool:
        return bool(two.app.state.services[SiteService].is_deleted(site.ingest_key))

    await wait_until(notified, 30, "the second instance's mirror holds the old key (NOTIFY)")
    assert_problem(await two.client.post(SINGLE, json=view(site.ingest_key)), 422, "unknown-site-key")
    batch = {"views": [view(new_key), view(site.ingest_key, url="https://shop.example.com/2")]}
    assert_problem(await two.client.post(f"{SINGLE}/batch", json=batch), 422, "unknown-site-key")

    for instance in two_instances:
        assert (await instance.client.post(SINGLE, json=view(new_key))).status_code == 202

    async def written() -> bool:
        return await stored(db, site.id) == 4

    await wait_until(written, 30, "the four accepted views are stored, none of the refused")
    assert await stored(db, site.id) == 4


async def test_a_key_changed_by_another_process_is_refused_from_its_notification(
    two_instances: tuple[Served, Served], db: AsyncConnection[Any]
) -> None:
    """The key is replaced by a third connection (as another process would): no instance is told
    in-process, the trigger's NOTIFY tells them all."""
    owner = await create_user(db)
    site = await make_site(db, owner)
    await with_partitions(db)
    for instance in two_instances:
        assert (await instance.client.post(SINGLE, json=view(site.ingest_key))).status_code == 202
    await db.execute("update sites set ingest_key = %s where id = %s", (secrets.token_urlsafe(24), site.id))

    async def everyone_knows() -> bool:
        return all(i.app.state.services[SiteService].is_deleted(site.ingest_key) for i in two_instances)

    await wait_until(everyone_knows, 30, "every instance's mirror holds the old key (NOTIFY)")
    for instance in two_instances:
        assert_problem(
            await instance.client.post(SINGLE, json=view(site.ingest_key)), 422, "unknown-site-key"
        )


async def test_an_instance_started_after_the_rotation_loads_the_old_key(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """What a process loads when it (re)connects its listener includes the keys retired recently."""
    owner = await create_user(db)
    site = await make_site(db, owner)
    await db.execute("update sites set ingest_key = %s where id = %s", (secrets.token_urlsafe(24), site.id))
    async with serve_in_loop(settings, **UNLIMITED) as late:
        assert late.app.state.services[SiteService].is_deleted(site.ingest_key)


async def test_a_rotated_sites_data_is_not_purged_as_a_deleted_sites(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    owner = await create_user(db)
    site = await make_site(db, owner)
    await with_partitions(db)
    await db.execute(
        "insert into page_views (site_id, ts, event_id, visitor_id, path, device, browser, os)"
        " values (%s, now(), gen_random_uuid(), 1, '/', 'desktop', 'x', 'y')",
        (site.id,),
    )
    await db.execute("update sites set ingest_key = %s where id = %s", (secrets.token_urlsafe(24), site.id))
    row = await (await db.execute("select now()")).fetchone()
    assert row is not None
    async with open_services(settings, MODULES) as services:  # long after the grace of anything now
        await services[PageViewService].purge_deleted_sites(row[0] + DELETED_SITE_GRACE * 2)
    assert await stored(db, site.id) == 1
    assert await (await db.execute("select count(*) from deleted_sites")).fetchone() == (0,)


async def test_retired_keys_older_than_any_process_remembers_are_forgotten_at_the_next_rotation(
    api: Client, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, api.app)
    site = await make_site(db, owner)
    assert (await api.post(rotation(site.id), headers=owner.headers)).status_code == 200
    await db.execute("update retired_ingest_keys set retired_at = now() - interval '2 hours'")
    assert (await api.post(rotation(site.id), headers=owner.headers)).status_code == 200
    retired = await (await db.execute("select ingest_key from retired_ingest_keys")).fetchall()
    assert len(retired) == 1 and retired[0][0] != site.ingest_key, retired


async def test_rotations_past_the_hourly_limit_are_429_and_leave_the_key(
    api: Client, db: AsyncConnection[Any]
) -> None:
    """Each retired key is refused by every process for an hour, so a site's rotations are bounded."""
    owner = await make_user(db, api.app)
    site = await make_site(db, owner)
    for _ in range(ROTATIONS_PER_HOUR):
        assert (await api.post(rotation(site.id), headers=owner.headers)).status_code == 200
    key = await key_of(db, site.id)

    refused = await api.post(rotation(site.id), headers=owner.headers)

    assert_problem(refused, 429, "rotation-limit")
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    assert await key_of(db, site.id) == key
    other = await make_site(db, owner, domain="other.example")
    assert (await api.post(rotation(other.id), headers=owner.headers)).status_code == 200, "per site"
    await db.execute(  # the oldest rotation leaves the hour: one more is allowed
        "update retired_ingest_keys set retired_at = now() - interval '61 minutes' where retired_at = "
        "(select min(retired_at) from retired_ingest_keys where site_id = %s)",
        (site.id,),
    )
    assert (await api.post(rotation(site.id), headers=owner.headers)).status_code == 200


# -- the contract ------------------------------------------------------------------------------------


async def test_the_route_is_documented(api: Client) -> None:
    paths = (await api.get("/schema/openapi.json")).json()["paths"]
    operation = paths["/api/sites/{site_id}/ingest-key"]["post"]
    text = f"{operation['summary']} {operation['description']}".lower()
    assert "rotat" in text and "old key" in text and "422" in text, operation
    assert {"200", "401", "404", "429"} <= set(operation["responses"]), operation["responses"]
    assert "rotation-limit" in operation["description"]
    assert "requestBody" not in operation
    assert "rotat" in paths["/api/sites"]["post"]["description"].lower()
    assert "cannot be rotated" not in paths["/api/sites"]["post"]["description"].lower()


async def test_a_process_whose_listener_is_down_looks_keys_up_and_refuses_a_rotated_one(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """Review: with its mirror's listener down (a failover, a partition) a process answered the old key
    from its key cache for up to a minute, and the sink (which checks by site) stored the views."""
    owner = await create_user(db)
    site = await make_site(db, owner)
    await with_partitions(db)
    async with serve_in_loop(settings, **UNLIMITED) as served:
        assert (await served.client.post(SINGLE, json=view(site.ingest_key))).status_code == 202
        sites = served.app.state.services[SiteService]
        await sites.deleted.close()  # the listener's connection is lost
        assert not sites.refusals_live
        await db.execute(  # another process rotates: this one hears nothing
            "update sites set ingest_key = %s where id = %s", (secrets.token_urlsafe(24), site.id)
        )
        after = await served.client.post(SINGLE, json=view(site.ingest_key, url="https://shop.example.com/a"))
        assert_problem(after, 422, "unknown-site-key")
        assert await stored(db, site.id) == 1
        fresh = await served.client.post(SINGLE, json=view(await key_of(db, site.id)))
        assert fresh.status_code == 202, "the new key is looked up and accepted"
