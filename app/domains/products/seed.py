"""A demo catalogue: a few products in stock, so the demo members can place orders (idempotent:
a product is created once, by its SKU; later changes to it are kept)."""

from __future__ import annotations

from app.core.errors import ConflictError
from app.core.services import Services
from app.domains.products.schemas import ProductCreate
from app.domains.products.services import ProductService

DEMO = (
    ProductCreate(
        sku="DEMO-MUG", name="Enamel mug", price="12.50", stock=40, description="A 350 ml camping mug."
    ),
    ProductCreate(
        sku="DEMO-TEE", name="Organic T-shirt", price="24.00", stock=25, description="Unisex, size M."
    ),
    ProductCreate(sku="DEMO-CAP", name="Canvas cap", price="18.00", stock=3, description="Almost sold out."),
    ProductCreate(sku="DEMO-STICKERS", name="Sticker pack", price="3.90", stock=500),
)


async def seed_products(services: Services) -> list[str]:
    products = services[ProductService]
    created = 0
    for product in DEMO:
        try:
            await products.create(product)
        except ConflictError:  # seeded before (its SKU exists)
            continue
        created += 1
    if not created:
        return []
    return [f"demo catalogue: {created} products (GET /api/products); members order with POST /api/orders"]
