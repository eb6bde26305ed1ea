"""The catalogue's cache under order traffic: a reservation or a release of one product drops that
product's own entry only, so every other product's entry (and the catalogue's pages) keeps serving.

Observed through a second process's services (a 60 s TTL, far beyond the test's length): a product's
row is changed behind the cache's back (no invalidation), so a read that still answers the old row
was served by the entry that was kept, and the namespace's hit counter says so too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import NotFoundError
from app.core.services import Services
from app.domains.products.services import CATALOGUE_PAGE, ProductFilters, ProductService
from tests.factories import COMMERCE, make_product


@pytest.fixture
async def products(settings: Settings, valkey: Valkey) -> AsyncIterator[ProductService]:
    """The services of another process, on a clean Valkey (``valkey`` flushes it: ids repeat)."""
    other = Services(msgspec.structs.replace(settings, product_cache_ttl_s=60.0), COMMERCE)
    await other.start()
    try:
        yield other[ProductService]
    finally:
        await other.close()


def hits() -> float:
    value = REGISTRY.get_sample_value("app_cache_requests_total", {"namespace": "products", "result": "hit"})
    return value or 0.0


async def test_stock_taken_or_given_back_keeps_other_products_cached(
    products: ProductService, db: AsyncConnection[Any]
) -> None:
    a = await make_product(db, name="A", stock=5)
    b = await make_product(db, name="B", stock=5)
    assert (await products.get(a, include_inactive=False)).name == "A"
    assert (await products.get(b, include_inactive=False)).stock == 5
    await db.execute("update products set name = 'A renamed behind the cache' where id = %s", (a,))

    async with products.db.transaction() as uow:
        assert await products.reserve_stock(uow, b, 2) == 3
    before = hits()
    assert (await products.get(a, include_inactive=False)).name == "A"  # A's entry was kept
    assert hits() == before + 1
    assert (await products.get(b, include_inactive=False)).stock == 3  # B's own entry was dropped

    async with products.db.transaction() as uow:
        await products.release_stock(uow, b, 2)
    assert (await products.get(a, include_inactive=False)).name == "A"
    assert (await products.get(b, include_inactive=False)).stock == 5


async def test_what_readers_ask_stores_nothing_beyond_the_catalogue(
    products: ProductService, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Every variation of a public query was an entry of its own (a page of descriptions each), and
    every unknown id a cached "none": what the cache holds grew with what readers asked, in a Valkey
    that does not evict. Only existing products and the opening page are stored now."""
    a = await make_product(db, name="A mug", stock=5)
    await make_product(db, name="B mug", stock=0)

    for price in range(1, 21):
        filters = ProductFilters(min_price=Decimal(price))
        await products.catalogue(filters, after_id=0, limit=CATALOGUE_PAGE, include_inactive=False)
        await products.catalogue(ProductFilters(), after_id=0, limit=price, include_inactive=False)
        await products.catalogue(
            ProductFilters(), after_id=price, limit=CATALOGUE_PAGE, include_inactive=False
        )
        with pytest.raises(NotFoundError):
            await products.get(a + 1000 + price, include_inactive=False)
    first = await products.catalogue(
        ProductFilters(), after_id=0, limit=CATALOGUE_PAGE, include_inactive=False
    )
    mugs = ProductFilters(search="mug", in_stock_only=True)
    found = await products.catalogue(mugs, after_id=0, limit=CATALOGUE_PAGE, include_inactive=False)
    await products.get(a, include_inactive=False)

    assert [p.name for p in first.items] == ["A mug", "B mug"] and [p.name for p in found.items] == ["A mug"]
    stored = sorted(
        key.decode().rsplit(":", 1)[-1]
        for key in await valkey.keys("*products*")
        if not key.endswith((b":gen", b":lock"))
    )
    assert stored == sorted(["first", str(a)]), stored
