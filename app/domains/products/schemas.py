"""Wire shapes of the catalogue."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, ClassVar

import msgspec

from app.core.preconditions import ETAG_FORMS
from app.core.types import NonBlank, OneLine, Text, whole
from app.core.wire import from_row
from app.db.models import Product

Sku = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=whole(r"[A-Za-z0-9._-]+"),
        examples=["MUG-BLUE-350"],
    ),
]
Name = Annotated[str, OneLine, msgspec.Meta(min_length=1, max_length=200, examples=["Blue mug, 350 ml"])]
Description = Annotated[str, Text, msgspec.Meta(max_length=10_000, examples=["Stoneware, dishwasher safe."])]
MAX_PRICE = Decimal("9999999999.99")
"""What ``products.price numeric(12, 2)`` holds."""
Price = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"(0|[1-9][0-9]{0,9})(\.[0-9]{1,2})?"),
        description=f"A decimal string, 0 to {MAX_PRICE}, at most two decimals (a JSON number is refused: "
        "it could not carry the exact value)",
        examples=["12.50"],
    ),
]
MAX_STOCK = 1_000_000_000
"""Stock of one product at most (well inside ``integer``, reservations given back included)."""
ProductVersion = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        description="Taken by every change of the name, description, price or `active` (none by a change "
        f"that changes nothing, nor by stock moving): its `ETag` is {ETAG_FORMS}, for `If-Match`.",
    ),
]


class ProductCreate(msgspec.Struct, forbid_unknown_fields=True):
    sku: Sku
    name: Name
    price: Price
    stock: Annotated[int, msgspec.Meta(ge=0, le=MAX_STOCK)] = 0
    description: Description = ""


class ProductUpdate(msgspec.Struct, forbid_unknown_fields=True):
    openapi_example: ClassVar[dict[str, object]] = {}  # unedited, "Try it out" changes nothing

    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    price: Price | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET


class StockAdjustmentIn(msgspec.Struct, forbid_unknown_fields=True):
    delta: Annotated[
        int,
        msgspec.Meta(
            ge=-MAX_STOCK,
            le=MAX_STOCK,
            description="Not zero",
            examples=[-3],
            # Litestar's spelling of an extra JSON Schema keyword: documents the rule checked below.
            extra_json_schema={"extra": {"not": {"const": 0}}},
        ),
    ]
    reason: Annotated[
        str, NonBlank, msgspec.Meta(min_length=1, max_length=500, examples=["Counted at the warehouse"])
    ]
    expected_stock: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=MAX_STOCK,
                examples=[12],
                description="Apply only if the stock is this now, else 409 `stock-changed` and nothing "
                "applied: an adjustment retried after a lost answer is then applied once",
            ),
        ]
        | None
    ) = None

    post_init_field: ClassVar[str] = "delta"
    """The field ``__post_init__`` checks (so a refusal names it, not the whole body)."""

    def __post_init__(self) -> None:
        if self.delta == 0:
            raise ValueError("must not be zero")


class ProductOut(msgspec.Struct, frozen=True):
    id: int
    sku: str
    name: str
    description: str
    price: Decimal
    currency: str
    stock: int
    active: bool
    created_at: datetime
    updated_at: datetime
    version: ProductVersion

    @classmethod
    def from_row(cls, product: Product, currency: str) -> ProductOut:
        return from_row(cls, product, currency=currency)


class StockOut(msgspec.Struct, frozen=True):
    product_id: int
    stock: int


class ProductCursor(msgspec.Struct, frozen=True):
    after_id: Annotated[int, msgspec.Meta(ge=0)]


class ProductPage(msgspec.Struct, frozen=True):
    items: list[ProductOut]
    next_cursor: str | None = None
