"""Wire shapes of the catalogue."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

import msgspec

from app.core.wire import from_row
from app.db.models import Product

Sku = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"\S")]
MAX_PRICE = Decimal("9999999999.99")


def _check_price(price: Decimal | None) -> None:
    """msgspec has no range constraints for Decimal: 0 to MAX_PRICE with at most two decimals."""
    if price is None:
        return
    if not price.is_finite() or price < 0 or price > MAX_PRICE or price != price.quantize(Decimal("0.01")):
        raise ValueError(f"price must be between 0 and {MAX_PRICE} with at most two decimals")


class ProductCreate(msgspec.Struct, forbid_unknown_fields=True):
    sku: Sku
    name: Name
    price: Decimal
    stock: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)] = 0
    description: Annotated[str, msgspec.Meta(max_length=10_000)] = ""

    def __post_init__(self) -> None:
        _check_price(self.price)


class ProductUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | None = None
    description: Annotated[str, msgspec.Meta(max_length=10_000)] | None = None
    price: Decimal | None = None
    active: bool | None = None

    def __post_init__(self) -> None:
        _check_price(self.price)


class StockAdjustmentIn(msgspec.Struct, forbid_unknown_fields=True):
    delta: Annotated[int, msgspec.Meta(ge=-1_000_000_000, le=1_000_000_000, description="Not zero")]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=r"\S")]

    def __post_init__(self) -> None:
        if self.delta == 0:
            raise ValueError("delta must not be zero")


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

    @classmethod
    def from_row(cls, product: Product, currency: str) -> ProductOut:
        return from_row(cls, product, currency=currency)


class StockOut(msgspec.Struct, frozen=True):
    product_id: int
    stock: int


class ProductCursor(msgspec.Struct, frozen=True):
    after_id: int


class ProductPage(msgspec.Struct, frozen=True):
    items: list[ProductOut]
    next_cursor: str | None = None
