"""Keyset pagination: opaque cursors and capped page sizes shared by every list endpoint."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Annotated, Generic, TypeVar

import msgspec
from litestar.params import QueryParameter

from app.core.errors import AppError

T = TypeVar("T")
R = TypeVar("R")
C = TypeVar("C", bound=msgspec.Struct)

MAX_PAGE_SIZE = 100

PageSize = Annotated[
    int, QueryParameter(ge=1, le=MAX_PAGE_SIZE, description=f"Page size (1-{MAX_PAGE_SIZE})")
]
CursorParam = Annotated[
    str | None,
    QueryParameter(max_length=512, description="Opaque cursor from the previous page's `next_cursor`"),
]


class InvalidCursorError(AppError):
    slug = "invalid-cursor"
    title = "Invalid cursor"


class Page(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    next_cursor: str | None = None


def paginate(
    rows: Sequence[R],
    limit: int,
    position: Callable[[R], msgspec.Struct],
    convert: Callable[[R], T] | None = None,
) -> Page[T]:
    """A page from the ``limit + 1`` rows a query fetched: the extra row only tells that a next
    page exists; the cursor is the position of the last row shown."""
    shown = rows[:limit]
    items = [convert(row) for row in shown] if convert else list(shown)
    more = len(rows) > limit
    return Page(items=items, next_cursor=encode_cursor(position(shown[-1])) if more else None)  # type: ignore[arg-type]


def encode_cursor(position: msgspec.Struct) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def decode_cursor(cursor: str, kind: type[C]) -> C:
    """The position a cursor encodes; a tampered or foreign cursor is a 400, never a 500."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=kind)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidCursorError("The cursor is not one this API issued for this list.") from exc
