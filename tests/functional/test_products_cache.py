"""The catalogue's cache under order traffic: a reservation or a release of one product drops that
product's own entry only, so every other product's entry (and the catalogue's pages) keeps serving.

Observed through a second process's services (a 60 s TTL, far beyond the test's length): a product's
row is changed behind the cache's back (no invalidation), so a read that still answers the old row
was served by the entry that was kept, and the namespace's hit counter says so too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import Services
from app.domains.products.services import ProductService
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
