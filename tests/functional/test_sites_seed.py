"""The demo site: ``just seed`` (every module's seed) gives the administrator one site, once, whose
ingest key takes page views at once; members do not see it."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.domains.sites.seed import DEMO_DOMAIN
from app.modules import MODULES
from app.seed import run_seeders


async def seed(settings: Settings) -> list[str]:
    async with open_services(settings, MODULES) as services:
        return await run_seeders(services)


async def bearer(client: AsyncTestClient[Litestar], email: str, password: str) -> dict[str, str]:
    login = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def test_the_admin_gets_one_demo_site_whose_key_takes_page_views(
    client: AsyncTestClient[Litestar], db: AsyncConnection[Any], settings: Settings
) -> None:
    first = await seed(settings)
    second = await seed(settings)

    cursor = await db.execute(
        "select s.domain, u.email from sites s join users u on u.id = s.owner_id order by s.id"
    )
    assert await cursor.fetchall() == [(DEMO_DOMAIN, settings.admin_email.lower())]
    assert any(DEMO_DOMAIN in line for line in first), first
    assert not any(DEMO_DOMAIN in line for line in second), "nothing new to announce"
    admin = await bearer(client, settings.admin_email, settings.admin_password)
    sites = await client.get("/api/sites", headers=admin)
    assert sites.status_code == 200, sites.text
    [site] = sites.json()["items"]
    assert site["domain"] == DEMO_DOMAIN
    view = await client.post(
        "/api/page-views", json={"site_key": site["ingest_key"], "url": f"https://{DEMO_DOMAIN}/"}
    )
    assert view.status_code == 202, view.text
    member = await bearer(client, "ana@example.com", settings.demo_password)
    theirs = await client.get("/api/sites", headers=member)
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["items"] == []
