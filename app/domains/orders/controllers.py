"""HTTP for orders (``/api/orders``)."""

from __future__ import annotations

from typing import Annotated

from litestar import MediaType, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, Page, PageSize, decode_cursor, paginate
from app.core.routing import Controller
from app.core.types import MAX_ID, IdPath
from app.db.models import OrderStatus
from app.domains.accounts.guards import Caller, requires_admin, requires_user
from app.domains.orders.schemas import OrderCreate, OrderCursor, OrderOut
from app.domains.orders.services import OrderService

Orders = NamedDependency[OrderService]
FIRST_PAGE = 2**63 - 1
"""``before_id`` of the first page: past every id."""


class OrdersController(Controller):
    path = "/api/orders"
    tags = ["commerce"]
    guards = [requires_user]
    security = BEARER

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        summary="Place an order (stock is reserved in the background)",
        description="Needs an `Idempotency-Key` header (kept 24 h per user): the same key and body replay "
        "the first answer with `Idempotent-Replayed: true`; a different body is 422; a concurrent "
        "duplicate is 409. Answers 202 with the pending order and its `Location`; poll it for "
        "`reserved` or `rejected`.",
        responses={**problems(400, 401, 409, 422, 429), 202: ResponseSpec(OrderOut, description="Accepted")},
    )
    async def place_order(
        self,
        data: JSONBody[OrderCreate],
        orders: Orders,
        current_user: Caller,
        idempotency_key: Annotated[
            str,
            HeaderParameter(
                name="Idempotency-Key",
                min_length=1,
                max_length=255,
                pattern=r"^[\x20-\x7e]+$",
                description="Printable ASCII, unique per intended order (a UUID, say)",
            ),
        ],
    ) -> Response[bytes]:
        placed = await orders.place(current_user.id, data, idempotency_key)
        return Response(
            placed.body,
            status_code=placed.status_code,
            media_type=MediaType.JSON,
            headers={
                "Location": f"/api/orders/{placed.order_id}",
                "Idempotent-Replayed": "true" if placed.replayed else "false",
            },
        )

    @get(
        "/", summary="Your orders (admins: everyone's, filterable by user)", responses=problems(400, 401, 429)
    )
    async def list_orders(
        self,
        orders: Orders,
        current_user: Caller,
        status: Annotated[OrderStatus | None, QueryParameter()] = None,
        user_id: Annotated[int | None, QueryParameter(ge=1, le=MAX_ID, description="Admins only")] = None,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[OrderOut]:
        owner = user_id if current_user.is_admin else current_user.id
        before_id = decode_cursor(cursor, OrderCursor).before_id if cursor else FIRST_PAGE
        rows = await orders.list(user_id=owner, status=status, before_id=before_id, limit=limit + 1)
        return paginate(rows, limit, lambda row: OrderCursor(row.id))

    @get(
        "/{order_id:int}",
        summary="An order with its history (yours; admins: any)",
        responses=problems(401, 404, 429),
    )
    async def get_order(self, order_id: IdPath, orders: Orders, current_user: Caller) -> OrderOut:
        return await orders.get(order_id, current_user.id, current_user.is_admin)

    @post(
        "/{order_id:int}/cancel",
        status_code=HTTP_200_OK,
        summary="Cancel a pending or reserved order",
        responses=problems(401, 404, 409, 429),
    )
    async def cancel(self, order_id: IdPath, orders: Orders, current_user: Caller) -> OrderOut:
        return await orders.cancel(order_id, current_user.id, current_user.is_admin)

    @post(
        "/{order_id:int}/pay",
        status_code=HTTP_200_OK,
        summary="Pay a reserved order (simulated)",
        responses=problems(401, 404, 409, 429),
    )
    async def pay(self, order_id: IdPath, orders: Orders, current_user: Caller) -> OrderOut:
        return await orders.pay(order_id, current_user.id, current_user.is_admin)

    @post(
        "/{order_id:int}/fulfil",
        status_code=HTTP_200_OK,
        guards=[requires_admin],
        summary="Mark a paid order fulfilled (admins)",
        responses=problems(401, 403, 404, 409, 429),
    )
    async def fulfil(self, order_id: IdPath, orders: Orders, current_user: Caller) -> OrderOut:
        return await orders.fulfil(order_id, current_user.id)
