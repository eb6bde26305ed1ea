"""The products domain: the catalogue and its stock."""

from app.core.modules import Module
from app.domains.accounts.services import AccountService
from app.domains.products.controllers import ProductsController
from app.domains.products.seed import seed_products
from app.domains.products.services import ProductService

module = Module(
    name="products",
    controllers=[ProductsController],
    service=lambda s: ProductService(
        s.db,
        s.cache.namespace("products"),
        s.settings.currency,
        s.settings.product_cache_ttl_s,
        s[AccountService],
    ),
    seed=seed_products,
)
