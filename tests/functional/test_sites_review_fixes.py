"""Review fixes of the sites domain: a time zone PostgreSQL does not know is refused at creation (its
reports would all have been 400s, for ever), and the routes document what a deletion removes and
what a site's key survives."""

from __future__ import annotations

import enum
from typing import Any, cast

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.core.types import TimeZone
from app.db.models import UserRole
from app.domains.sites.schemas import SiteCreate
from app.domains.sites.services import SiteService, UnsupportedTimeZoneError
from app.modules import MODULES
from tests.factories import assert_problem, create_user, make_site, make_user, mint_headers

Client = AsyncTestClient[Litestar]


async def zones_postgresql_lacks(db: AsyncConnection[Any]) -> list[str]:
    """The zones the API's ``TimeZone`` admits that this PostgreSQL's tz database does not have."""
    cursor = await db.execute("select name from pg_timezone_names")
    known = {name for (name,) in await cursor.fetchall()}
    admitted = cast("type[enum.StrEnum]", TimeZone)  # an enumeration at run time (a str to mypy)
    return sorted(zone.value for zone in admitted if zone.value not in known)


async def owned_sites(db: AsyncConnection[Any], owner_id: int) -> int:
    cursor = await db.execute("select count(*) from sites where owner_id = %s", (owner_id,))
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_zone_python_knows_and_postgresql_does_not_is_a_422_and_stores_nothing(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    lacking = await zones_postgresql_lacks(db)
    # Python's tzdata (which `TimeZone` enumerates) is newer than PostgreSQL's here (the review found
    # America/Coyhaique). If they ever agree, this test cannot reach the check through HTTP: it fails
    # rather than pass vacuously; the service-level test below still covers the check itself.
    assert lacking, (
        "no zone of TimeZone is missing from pg_timezone_names: pick another way to reach the check"
    )
    owner = await make_user(db, app)

    refused = await client.post(
        "/api/sites", json={"domain": "tienda.cl", "timezone": lacking[0]}, headers=owner.headers
    )

    body = assert_problem(refused, 422, "unsupported-time-zone", fields={"timezone"})
    assert lacking[0] in body["detail"], body
    assert await owned_sites(db, owner.id) == 0

    accepted = await client.post(
        "/api/sites", json={"domain": "tienda.cl", "timezone": "America/Santiago"}, headers=owner.headers
    )
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["timezone"] == "America/Santiago"


async def test_the_refusal_leaves_the_idempotency_key_free_for_a_corrected_retry(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    lacking = await zones_postgresql_lacks(db)
    assert lacking, "no zone of TimeZone is missing from pg_timezone_names"
    owner = await make_user(db, app)
    headers = {**owner.headers, "Idempotency-Key": "site-zone-retry"}

    refused = await client.post(
        "/api/sites", json={"domain": "a.cl", "timezone": lacking[0]}, headers=headers
    )
    assert_problem(refused, 422, "unsupported-time-zone", fields={"timezone"})
    retried = await client.post("/api/sites", json={"domain": "a.cl", "timezone": "UTC"}, headers=headers)

    assert retried.status_code == 201, retried.text
    assert await owned_sites(db, owner.id) == 1


async def test_the_service_refuses_any_name_postgresql_does_not_know(
    settings: Settings, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """The check itself, whatever the two tz databases hold: a Struct built in code is not validated,
    so the service sees a name no tz database has."""
    owner = await make_user(db, app)
    async with open_services(settings, MODULES) as services:
        with pytest.raises(UnsupportedTimeZoneError) as refused:
            await services[SiteService].create(
                owner.id, SiteCreate(domain="x.example", timezone="Mars/Olympus")
            )
        created = await services[SiteService].create(owner.id, SiteCreate(domain="x.example"))

    assert refused.value.status == 422
    assert [error.field for error in refused.value.errors or []] == ["timezone"]
    assert created.timezone == "UTC"
    assert await owned_sites(db, owner.id) == 1


# -- what the OpenAPI document says ----------------------------------------------------------------


async def test_the_routes_say_what_a_deletion_removes_and_what_a_key_survives(client: Client) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    create = paths["/api/sites"]["post"]
    deletion = paths["/api/sites/{site_id}"]["delete"]

    created_text = create["description"].lower()
    assert "422" in created_text and "unsupported-time-zone" in created_text, create["description"]
    assert "deactivat" in created_text and "rotat" in created_text, create["description"]
    assert "422" in create["responses"]

    deleted_text = f"{deletion['summary']} {deletion.get('description', '')}".lower()
    assert "report" in deleted_text and "page view" in deleted_text, deletion
    assert "within a day" in deleted_text, deletion


async def test_a_token_claiming_admin_for_a_member_cannot_delete_anothers_site(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """Deleting another owner's site is an administrator's write: the actor's row decides, not the
    token's claim (a token issued before a demotion). The site is not revealed: 404, as to anyone."""
    owner = await make_user(db, app)
    site = await make_site(db, owner)
    member = await create_user(db)
    forged = mint_headers(app, member.id, UserRole.ADMIN)
    answer = await client.delete(f"/api/sites/{site.id}", headers=forged)
    assert_problem(answer, 404)
    assert await owned_sites(db, owner.id) == 1
    admin = await make_user(db, app, UserRole.ADMIN)
    assert (await client.delete(f"/api/sites/{site.id}", headers=admin.headers)).status_code == 204
    assert await owned_sites(db, owner.id) == 0
