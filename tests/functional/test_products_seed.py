"""The demo catalogue: ``just seed`` (every module's seed) creates a few products in stock once, so a
demo member finds something to order; seeding again changes nothing, not even a seeded product an
administrator has changed since."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.db.models import UserRole
from app.domains.products.schemas import ProductUpdate
from app.domains.products.seed import DEMO
from app.domains.products.services import ProductService
from app.modules import MODULES
from app.seed import run_seeders
from tests.factories import create_user


async def seed(settings: Settings) -> list[str]:
    async with open_services(settings, MODULES) as services:
        return await run_seeders(services)


async def catalogue(db: AsyncConnection[Any]) -> list[tuple[str, str, int]]:
    cursor = await db.execute("select sku, name, stock from products order by sku")
    return [(sku, name, stock) for sku, name, stock in await cursor.fetchall()]


async def test_the_demo_catalogue_is_seeded_once_and_a_member_sees_it_in_stock(
    client: AsyncTestClient[Litestar], db: AsyncConnection[Any], settings: Settings
) -> None:
    first = await seed(settings)
    after_first = await catalogue(db)
    second = await seed(settings)

    assert after_first == sorted((p.sku, p.name, p.stock) for p in DEMO)
    assert await catalogue(db) == after_first
    assert any("demo catalogue" in line for line in first), first
    assert not any("demo catalogue" in line for line in second), "nothing new to announce"
    login = await client.post(
        "/api/auth/login", json={"email": "ana@example.com", "password": settings.demo_password}
    )
    assert login.status_code == 200, login.text
    page = await client.get(
        "/api/products",
        params={"in_stock": "true"},
        headers={"Authorization": f"Bearer {login.json()['access_token']}"},
    )
    assert page.status_code == 200, page.text
    assert sorted(item["sku"] for item in page.json()["items"]) == sorted(p.sku for p in DEMO)


async def test_seeding_again_keeps_what_an_administrator_changed(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    await seed(settings)
    cursor = await db.execute("select id from products where sku = %s", (DEMO[0].sku,))
    row = await cursor.fetchone()
    assert row is not None
    admin = await create_user(db, role=UserRole.ADMIN)
    async with open_services(settings, MODULES) as services:
        await services[ProductService].update(
            admin.id, row[0], ProductUpdate(name="Renamed mug", active=False)
        )

    await seed(settings)

    cursor = await db.execute("select name, active from products where sku = %s", (DEMO[0].sku,))
    assert await cursor.fetchone() == ("Renamed mug", False)
    assert len(await catalogue(db)) == len(DEMO)
