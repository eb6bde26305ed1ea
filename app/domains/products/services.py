"""The catalogue: admins manage products and stock; everyone reads active products (cached)."""

from __future__ import annotations

import unicodedata
from decimal import Decimal
from functools import partial

import msgspec
import structlog

from app.core.cache import CacheNamespace
from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, NotFoundError
from app.core.idempotency import IdempotencyClaim
from app.core.pagination import encode_cursor
from app.core.preconditions import Preconditions, require_match
from app.core.wire import given
from app.db import products as queries
from app.db.models import Product
from app.domains.accounts.services import AccountService
from app.domains.products.schemas import (
    MAX_STOCK,
    ProductCreate,
    ProductCursor,
    ProductOut,
    ProductPage,
    ProductUpdate,
    StockAdjustmentIn,
)

log = structlog.get_logger("app.products")


class ProductFilters(msgspec.Struct, frozen=True):
    search: str | None = None
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    in_stock_only: bool = False


CATALOGUE_PAGE = 50
"""The catalogue's page length unless a reader asks for another: its first page at this length,
unfiltered, is the one page the cache holds."""


def _product_key(product_id: int) -> str:
    """A product's own entry in the cache (``get``'s, for readers who do not see inactive ones)."""
    return f"id:{product_id}"


async def _require_version(uow: UnitOfWork, product_id: int, conditions: Preconditions) -> None:
    """412 unless ``conditions`` allow the product's version, read under its lock (``LockProduct``),
    which the change holds until it commits: of two changes based on one version, the second is
    refused. 404 for no such product."""
    locked = await queries.lock_product(uow.conn, id=product_id)
    if locked is None:
        raise NotFoundError("No such product.")
    require_match(conditions, locked.version)


class StockChangedError(ConflictError):
    slug = "stock-changed"
    title = "Stock changed"


class ProductService:
    """Reads for everyone go through a short-lived cache (stock shown may lag by the TTL; the
    reservation itself is always checked against the database).

    An administrator's change (creation, details, a stock adjustment) invalidates the whole cache
    only after its transaction committed (``uow.after_commit``): the cache's generation moves on, so
    a reader that loaded the old row meanwhile stores it under the old generation, where nobody
    reads it again. Stock taken or given back by orders (``reserve_stock``, ``release_stock``, all
    the time under order traffic) drops only that product's own entry after the commit: the
    catalogue's pages, and a reader racing the commit that stores the row it loaded before it, show
    the old stock until their TTL, as promised above. Moving the generation there dropped every
    product and page on each reservation of any product, and the catalogue's cache barely hit. A
    cached read needs no database connection at all.

    What the cache holds is bounded by the catalogue, not by what readers ask: a product that exists
    (an unknown id is not stored) and the catalogue's opening page (``CATALOGUE_PAGE``, unfiltered).
    A filtered page, a later one or another length is read from PostgreSQL: keyed by its query, every
    reader's variation was an entry of up to a page of descriptions (~1 MB at 100 products), and the
    route is public, so one address at its rate limit kept hundreds of MB in a Valkey that does not
    evict (the queues' and the rate limits' store).

    A product's ``version`` (its ``ETag``) moves with its name, description, price or ``active``
    only (a trigger, ``products_next_version``), never with its stock: a change with ``If-Match``
    compares it under the row's lock (``LockProduct``) and changes nothing on a mismatch (412).

    An administrator's change takes the actor's row first (``AccountService.lock_admin``): the
    token's role is a claim, the row decides.
    """

    def __init__(
        self,
        db: Database,
        cache: CacheNamespace,
        currency: str,
        ttl_s: float,
        accounts: AccountService,
    ) -> None:
        self.db = db
        self.cache = cache
        self.currency = currency
        self.ttl_s = ttl_s
        self.accounts = accounts

    async def create(
        self, data: ProductCreate, actor: int | None = None, *, claim: IdempotencyClaim[Product] | None = None
    ) -> Product:
        """``actor``: the administrator creating it, or None for the demo seed (no caller). ``claim``:
        the request's idempotency key, completed in this transaction."""
        async with self.db.transaction() as uow:
            if actor is not None:
                await self.accounts.lock_admin(uow, actor)
            product = await queries.create_product(
                uow.conn,
                sku=data.sku,
                name=data.name.strip(),
                description=data.description,
                price=Decimal(data.price),
                stock=data.stock,
            )
            if product is None:
                raise ConflictError("A product with this SKU exists.")
            if claim is not None:
                await claim.complete(uow, product, resource_id=product.id)
            uow.after_commit(self.cache.invalidate_all)
        if actor is not None:
            log.info(
                "product_created", product_id=product.id, by=actor, sku=product.sku, price=str(product.price)
            )
        return product

    async def update(
        self, actor: int, product_id: int, data: ProductUpdate, *, conditions: Preconditions | None = None
    ) -> Product:
        """``conditions``: only at a version they allow (else 412, nothing
        changed), compared with the version read under the product's lock, which this change holds
        until it commits: of two changes based on one version, the second is refused. A change that
        changes nothing keeps the version and ``updated_at``, and leaves the catalogue's cache."""
        async with self.db.transaction() as uow:
            await self.accounts.lock_admin(uow, actor)
            await queries.hold_product_terms_for_change(uow.conn, id=product_id)  # placements under way
            before = await queries.lock_product(uow.conn, id=product_id)  # the lock the update takes anyway
            if before is None:
                raise NotFoundError("No such product.")
            require_match(conditions, before.version)
            product = await queries.update_product(
                uow.conn,
                name=name.strip() if (name := given(data.name)) else None,
                description=given(data.description),
                price=Decimal(price) if (price := given(data.price)) is not None else None,
                active=given(data.active),
                id=product_id,
            )
            if product is None:  # nothing to change
                return before
            uow.after_commit(self.cache.invalidate_all)
        log.info("product_updated", product_id=product_id, by=actor, **_changes(before, product))
        return product

    async def adjust_stock(
        self,
        actor: int,
        product_id: int,
        data: StockAdjustmentIn,
        *,
        conditions: Preconditions | None = None,
        claim: IdempotencyClaim[int] | None = None,
    ) -> int:
        """Add or remove stock with a recorded reason; never below zero nor above MAX_STOCK (409).
        With ``expected_stock``, only from that stock (409 ``stock-changed`` otherwise): a delta is
        relative, so a blind retry of one whose answer was lost would apply it twice.

        ``conditions``: only at a version they allow (else 412, nothing
        applied), compared under the product's lock as ``update`` does. The version is the
        product's details', which stock does not move: ``expected_stock`` is the condition on the
        stock. ``claim``: the request's idempotency key, completed in this transaction (a retry then
        replays the stock this adjustment left, and applies nothing again)."""
        async with self.db.transaction() as uow:
            await self.accounts.lock_admin(uow, actor)
            if conditions is not None:
                await _require_version(uow, product_id, conditions)
            stock = await queries.adjust_stock(
                uow.conn,
                delta=data.delta,
                id=product_id,
                max_stock=MAX_STOCK,
                expected_stock=data.expected_stock,
            )
            if stock is None:
                product = await queries.get_product(uow.conn, id=product_id)
                if product is None:
                    raise NotFoundError("No such product.")
                if data.expected_stock is not None and product.stock != data.expected_stock:
                    raise StockChangedError(
                        f"The stock is {product.stock}, not {data.expected_stock}: nothing was applied."
                    )
                if data.delta < 0:
                    raise ConflictError("Not enough stock to remove that many units.")
                raise ConflictError(f"The stock of a product is at most {MAX_STOCK} units.")
            await queries.record_stock_adjustment(
                uow.conn,
                product_id=product_id,
                delta=data.delta,
                reason=data.reason,
                actor_id=actor,
                stock_after=stock,
            )
            if claim is not None:
                await claim.complete(uow, stock, resource_id=product_id)
            uow.after_commit(self.cache.invalidate_all)
            return stock

    async def get(self, product_id: int, *, include_inactive: bool) -> ProductOut:
        async def load() -> ProductOut:
            async with self.db.transaction() as uow:
                product = await queries.get_product(uow.conn, id=product_id)
            if product is None:
                raise NotFoundError("No such product.")  # raised through the cache: nothing stored
            return ProductOut.from_row(product, self.currency)

        if include_inactive:
            return await load()
        key = _product_key(product_id)
        product = await self.cache.get_or_load(key, load, ttl_s=self.ttl_s, type=ProductOut)
        if not product.active:
            raise NotFoundError("No such product.")
        return product

    async def catalogue(
        self, filters: ProductFilters, *, after_id: int, limit: int, include_inactive: bool
    ) -> ProductPage:
        async def load() -> ProductPage:
            async with self.db.transaction() as uow:
                rows = await queries.list_products(
                    uow.conn,
                    include_inactive=include_inactive,
                    search=filters.search and unicodedata.normalize("NFKC", filters.search),
                    min_price=filters.min_price,
                    max_price=filters.max_price,
                    in_stock_only=filters.in_stock_only,
                    after_id=after_id,
                    row_limit=limit + 1,
                )
            items = [ProductOut.from_row(row, self.currency) for row in rows[:limit]]
            more = len(rows) > limit
            return ProductPage(
                items=items, next_cursor=encode_cursor(ProductCursor(items[-1].id)) if more else None
            )

        if include_inactive or after_id or limit != CATALOGUE_PAGE or filters != ProductFilters():
            return await load()
        return await self.cache.get_or_load("list:first", load, ttl_s=self.ttl_s, type=ProductPage)

    # -- for orders, inside their transaction ----------------------------------------------------

    async def hold_for_placement(self, uow: UnitOfWork, ids: list[int]) -> list[Product]:
        """The products with these ids an order is placed with (any order; unknown ids are absent),
        their price and ``active`` held until ``uow`` commits: a change of them (``update``) waits for
        the placement, or the placement for the change, whose result it then reads
        (``HoldProductTerms``). Their stock is not held: reservations and adjustments never wait for
        placements."""
        await queries.hold_product_terms(uow.conn, ids=ids)
        return await queries.get_products_by_ids(uow.conn, ids=ids)

    async def lock_stock(self, uow: UnitOfWork, ids: list[int]) -> dict[int, int]:
        """The stock of the products ``ids``, their rows locked until ``uow`` commits, in id order (the
        order every reservation, release and adjustment locks them in): reservations that follow in
        ``uow`` find exactly this stock."""
        return {row.id: row.stock for row in await queries.lock_stock(uow.conn, ids=sorted(ids))}

    async def reserve_stock(self, uow: UnitOfWork, product_id: int, quantity: int) -> int | None:
        """Take ``quantity`` units if that many are in stock; the stock left, or None (short)."""
        left = await queries.reserve_stock(uow.conn, quantity=quantity, id=product_id)
        if left is not None:
            uow.after_commit(partial(self.cache.invalidate, _product_key(product_id)))
        return left

    async def release_stock(self, uow: UnitOfWork, product_id: int, quantity: int) -> None:
        """Give back units a reservation held (cancel, expiry)."""
        await queries.release_stock(uow.conn, quantity=quantity, id=product_id)
        uow.after_commit(partial(self.cache.invalidate, _product_key(product_id)))

    async def write_off(self, uow: UnitOfWork, units: dict[int, int], actor: int, reason: str) -> None:
        """Record ``units`` (product id → quantity) held by an order as gone, never to come back to
        stock (a paid order's goods, damaged or missing): a removal per product in the adjustments'
        audit trail, the stock unchanged (it left the stock when it was reserved)."""
        ids = sorted(units)
        await queries.record_write_off(
            uow.conn, reason=reason, actor_id=actor, product_ids=ids, quantities=[units[i] for i in ids]
        )


_AUDITED = ("name", "price", "active")


def _changes(before: Product, after: Product) -> dict[str, object]:
    """What an administrator's change changed, field by field: ``[old, new]``, and whether the
    description did (its text is not repeated in the log): the catalogue's audit trail (an access
    log said only who sent a PATCH: the admin reviewer)."""
    changed: dict[str, object] = {}
    for name in _AUDITED:
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            changed[name] = [_logged(old), _logged(new)]
    if before.description != after.description:
        changed["description_changed"] = True
    return changed


def _logged(value: object) -> str | bool | None:
    return value if value is None or isinstance(value, bool) else str(value)
