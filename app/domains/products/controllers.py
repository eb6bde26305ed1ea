"""HTTP for the catalogue (``/api/products``): reads for everyone, changes for admins."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from litestar import Request, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED

from app.core.auth import Caller, caller_of, requires_admin
from app.core.idempotency import (
    IDEMPOTENCY_DESCRIPTION,
    DocumentsIdempotency,
    DocumentsVersionedCreation,
    Idempotent,
    OptionalIdempotencyKey,
    at_location,
    with_etag,
)
from app.core.openapi import BEARER, OPTIONAL_BEARER, problems
from app.core.pagination import CursorParam, PageSize, decode_cursor
from app.core.preconditions import (
    ETAG_FORMS,
    ETAG_HEADER,
    DocumentsConditionalRead,
    DocumentsIfMatch,
    IfMatchHeader,
    IfNoneMatchHeader,
    etag,
    parse_preconditions,
    precondition_failed,
    require_if_match,
)
from app.core.routing import Controller
from app.core.types import NO_NUL, IdPath
from app.domains.products.schemas import (
    MAX_PRICE,
    ProductCreate,
    ProductCursor,
    ProductOut,
    ProductPage,
    ProductUpdate,
    StockAdjustmentIn,
    StockOut,
)
from app.domains.products.services import CATALOGUE_PAGE, ProductFilters, ProductService

Products = NamedDependency[ProductService]


def _price_bound(description: str) -> QueryParameter:
    # schema_extra: Litestar leaves a bound of 0 out of an optional parameter's schema.
    return QueryParameter(ge=0, le=float(MAX_PRICE), description=description, schema_extra={"minimum": 0})


def _price(value: float | None) -> Decimal | None:
    """A price filter as the column's type (the float's shortest decimal spelling)."""
    return None if value is None else Decimal(repr(value))


def _with_etag(product: ProductOut) -> Response[ProductOut]:
    """The product and its ``ETag``, the version an administrator sends back in ``If-Match``.

    The version is that of the product's details (name, description, price, ``active``): its stock
    and ``updated_at`` move under the same tag (else every sale would refuse an administrator's form,
    412). So the answer is ``no-store``: the tag is for ``If-Match`` only, never a cache's validator.
    With ``no-cache`` a shared cache (nginx ``proxy_cache``, a CDN) kept the body, revalidated it
    (this route answers no 304: a fresh body under the same tag), then answered a client's
    ``If-None-Match`` with 304 for the body the client held, with its old stock (RFC 9110 8.8.3)."""
    headers = {"ETag": etag(product.version), "Cache-Control": "no-store"}
    return Response(product, headers=headers)


@dataclass
class _DocumentsConditionalIdempotentChange(DocumentsIfMatch, DocumentsIdempotency):
    """A change that takes both ``If-Match`` and ``Idempotency-Key`` (a stock adjustment)."""

    def __post_init__(self) -> None:
        DocumentsIfMatch.__post_init__(self)
        DocumentsIdempotency.__post_init__(self)


def _is_admin(request: Request[Any, Any, Any]) -> bool:
    user = caller_of(request)
    return user is not None and user.is_admin


class ProductsController(Controller):
    path = "/api/products"
    tags = ["commerce"]

    @get(
        "/",
        summary="Active products (admins also see inactive ones with include_inactive)",
        security=OPTIONAL_BEARER,
        responses=problems(400, 401, 429),
    )
    async def list_products(
        self,
        request: Request[Any, Any, Any],
        products: Products,
        q: Annotated[
            str | None,
            QueryParameter(
                min_length=1,
                max_length=100,
                pattern=NO_NUL,
                schema_extra={"examples": ["mug"]},
                description="Name contains it (ignoring case; `%` and `_` are plain characters), or the SKU",
            ),
        ] = None,
        min_price: Annotated[float | None, _price_bound("Lowest price")] = None,
        max_price: Annotated[float | None, _price_bound("Highest price")] = None,
        in_stock: Annotated[bool, QueryParameter(description="Only products with stock")] = False,
        include_inactive: Annotated[bool, QueryParameter(description="Admins only")] = False,
        cursor: CursorParam = None,
        limit: PageSize = CATALOGUE_PAGE,
    ) -> ProductPage:
        after_id = decode_cursor(cursor, ProductCursor).after_id if cursor else 0
        filters = ProductFilters(
            search=q, min_price=_price(min_price), max_price=_price(max_price), in_stock_only=in_stock
        )
        return await products.catalogue(
            filters,
            after_id=after_id,
            limit=limit,
            include_inactive=include_inactive and _is_admin(request),
        )

    @get(
        "/{product_id:int}",
        summary="A product",
        description=f"Answers the product's `ETag`, {ETAG_FORMS}: an administrator sends it as `If-Match` "
        "with a change. It versions the product's name, description, price and `active`, not its stock: "
        "stock moves under the same `ETag`, so the answer is `Cache-Control: no-store`. Read by an "
        "administrator it is always current; others may read the product as it was up to the catalogue "
        "cache's lifetime ago.",
        response_headers=[ETAG_HEADER],
        security=OPTIONAL_BEARER,
        responses=problems(400, 401, 404, 429) | precondition_failed(),
        operation_class=DocumentsConditionalRead,
    )
    async def get_product(
        self,
        request: Request[Any, Any, Any],
        product_id: IdPath,
        products: Products,
        if_match: IfMatchHeader = None,
    ) -> Response[ProductOut]:
        product = await products.get(product_id, include_inactive=_is_admin(request))
        require_if_match(if_match, product.version)
        return _with_etag(product)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        guards=[requires_admin],
        security=BEARER,
        summary="Create a product (admins)",
        description=f"Answers the new product and its `ETag`, {ETAG_FORMS}, as its GET does: send it as "
        "`If-Match` with a change. " + IDEMPOTENCY_DESCRIPTION,
        operation_class=DocumentsVersionedCreation,
        responses={
            **problems(400, 401, 403, 409, 422, 429),
            201: ResponseSpec(ProductOut, description="Created"),
        },
    )
    async def create_product(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ProductCreate],
        products: Products,
        idempotency: Idempotent,
        current_user: Caller,
        idempotency_key: OptionalIdempotencyKey = None,
    ) -> Response[bytes]:
        created = await idempotency.respond(
            request,
            current_user.id,
            idempotency_key,
            data,
            lambda claim: products.create(data, current_user.id, claim=claim),
            lambda product: ProductOut.from_row(product, products.currency),
        )
        created.set_header("Cache-Control", "no-store")  # as the product's GET (``_with_etag``)
        return at_location(with_etag(created), "/api/products/{id}")

    @patch(
        "/{product_id:int}",
        guards=[requires_admin],
        security=BEARER,
        summary="Update or (de)activate a product (admins)",
        description="With `If-Match` (the `ETag` of the product as the administrator last read it), the "
        "change is applied only if nobody has changed the product's name, description, price or `active` "
        "since: otherwise 412 `precondition-failed` and nothing changes (of two changes sent with the same "
        "`ETag`, one is applied). Stock moving (orders, stock adjustments) does not change the `ETag`. A "
        "change that changes nothing keeps the version. Answers the product and its new `ETag`. A product "
        "made inactive leaves the catalogue and can no longer be ordered; orders placed before keep their "
        "course (reserved and paid as placed): cancel them (`POST /api/orders/{id}/cancel`) to stop them.",
        response_headers=[ETAG_HEADER],
        responses={**problems(400, 401, 403, 404, 429), **precondition_failed()},
        operation_class=DocumentsIfMatch,
    )
    async def update_product(
        self,
        product_id: IdPath,
        data: JSONBody[ProductUpdate],
        products: Products,
        current_user: Caller,
        if_match: IfMatchHeader = None,
        if_none_match: IfNoneMatchHeader = None,
    ) -> Response[ProductOut]:
        conditions = parse_preconditions(if_match, if_none_match)
        product = await products.update(current_user.id, product_id, data, conditions=conditions)
        return _with_etag(ProductOut.from_row(product, products.currency))

    @post(
        "/{product_id:int}/stock-adjustments",
        status_code=HTTP_201_CREATED,
        guards=[requires_admin],
        security=BEARER,
        summary="Add or remove stock, with a reason (admins)",
        description="With `If-Match` (the product's `ETag`), applied only if the product's name, "
        "description, price and `active` are still at a version it names: otherwise 412 "
        "`precondition-failed` and nothing applied. Stock does not move the `ETag`: to apply only from "
        "a known stock, send `expected_stock`. " + IDEMPOTENCY_DESCRIPTION,
        responses={
            **problems(400, 401, 403, 404, 409, 422, 429),
            **precondition_failed(),
            201: ResponseSpec(StockOut, description="Applied: the stock it left"),
        },
        operation_class=_DocumentsConditionalIdempotentChange,
    )
    async def adjust_stock(
        self,
        request: Request[Any, Any, Any],
        product_id: IdPath,
        data: JSONBody[StockAdjustmentIn],
        products: Products,
        idempotency: Idempotent,
        current_user: Caller,
        if_match: IfMatchHeader = None,
        if_none_match: IfNoneMatchHeader = None,
        idempotency_key: OptionalIdempotencyKey = None,
    ) -> Response[bytes]:
        conditions = parse_preconditions(if_match, if_none_match)
        return await idempotency.respond(
            request,
            current_user.id,
            idempotency_key,
            data,
            lambda claim: products.adjust_stock(
                current_user.id, product_id, data, conditions=conditions, claim=claim
            ),
            lambda stock: StockOut(product_id=product_id, stock=stock),
        )
