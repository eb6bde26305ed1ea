"""Keyset pagination: cursors with a documented grammar and capped page sizes for every list endpoint.

A cursor is the position of the last row of a page, its fields joined by dots: ``42`` (an id),
``due.19723.42.1796169600000000`` (a sort, its key, an id and the moment the walk reads the list as
of). Each list documents its cursor's exact pattern, and every string matching that pattern decodes
to a position, so the schema says precisely what the API accepts: a value the pattern refuses, or a
position the request cannot continue from (a task cursor of another ``sort``), is a 400
``invalid-cursor`` naming ``query.cursor``. Forging one is harmless: a position only says where to
continue, every row is still filtered by the caller's rights, and the integers are bounded (16
digits) far inside ``bigint``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import Annotated, Generic, TypeVar

import msgspec
from litestar.params import QueryParameter

from app.core.errors import AppError, FieldError
from app.core.types import whole

T = TypeVar("T")
R = TypeVar("R")
C = TypeVar("C", bound=msgspec.Struct)

MAX_PAGE_SIZE = 100
BEFORE_EVERY_ID = 2**63 - 1
"""``before_id`` of a newest-first list's first page: past every id (the largest ``bigint``)."""
CURSOR_DIGITS = 16
"""Digits of a cursor's integers: below 10^16, inside every JSON client's exact range and bigint's."""

PageSize = Annotated[
    int, QueryParameter(ge=1, le=MAX_PAGE_SIZE, description=f"Page size (1-{MAX_PAGE_SIZE})")
]


class InvalidCursorError(AppError):
    slug = "invalid-cursor"
    title = "Invalid cursor"
    errors = [FieldError(field="query.cursor", message="Not a position of this list")]


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


def _field_grammar(field: msgspec.inspect.Field) -> tuple[str, int]:
    """(regular expression, longest match) of one cursor field."""
    kind = field.type
    if isinstance(kind, msgspec.inspect.LiteralType):
        values = [str(value) for value in kind.values]
        return "(" + "|".join(re.escape(value) for value in values) + ")", max(map(len, values))
    if isinstance(kind, msgspec.inspect.IntType):
        signed = kind.ge is None or kind.ge < 0
        return f"({'-?' if signed else ''}[0-9]{{1,{CURSOR_DIGITS}}})", CURSOR_DIGITS + signed
    raise TypeError(f"cursor field {field.name!r}: only int and Literal fields are supported")


@cache
def _grammar(kind: type[msgspec.Struct]) -> tuple[str, int]:
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = [_field_grammar(field) for field in info.fields]
    pattern = whole(r"\.".join(regex for regex, _ in fields))
    return pattern, sum(length for _, length in fields) + len(fields) - 1


def cursor_pattern(kind: type[msgspec.Struct]) -> str:
    """The regular expression of ``kind``'s cursors: one group per field, in field order."""
    return _grammar(kind)[0]


def _example_cursor(kind: type[msgspec.Struct]) -> str:
    """A cursor of ``kind`` for the docs: each literal field's first value, each number 42."""
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    return ".".join(
        str(field.type.values[0]) if isinstance(field.type, msgspec.inspect.LiteralType) else "42"
        for field in info.fields
    )


def cursor_query(kind: type[msgspec.Struct], example: str | None = None) -> QueryParameter:
    """The ``cursor`` query parameter of a list whose positions are ``kind``:
    ``cursor: Annotated[str | None, cursor_query(TaskCursor)] = None``.

    Its ``example`` (one built from the grammar unless given) is the schema's only, not the
    parameter's: Swagger UI fills a parameter in with the parameter's example, and a first page has
    no cursor. Without one, a tool that fills a patterned text in makes one up from the pattern."""
    pattern, longest = _grammar(kind)
    return QueryParameter(
        pattern=pattern,
        min_length=1,
        max_length=longest,
        description="Resume after this position: the previous page's `next_cursor`.",
        schema_extra={"examples": [example or _example_cursor(kind)]},
    )


class IdCursor(msgspec.Struct, frozen=True):
    """The position of a list ordered by id: the id of the last row shown."""

    id: Annotated[int, msgspec.Meta(ge=0)]


CursorParam = Annotated[str | None, cursor_query(IdCursor)]
"""The ``cursor`` of a list ordered by id (``next_cursor`` is the last id shown, e.g. ``42``)."""


def encode_cursor(position: msgspec.Struct) -> str:
    return ".".join(str(value) for value in msgspec.structs.astuple(position))


def decode_cursor(cursor: str, kind: type[C]) -> C:
    """The position a cursor encodes. The query parameter's pattern has already admitted it; the
    check is repeated for callers that bypass Litestar's validation, and as a whole-string match:
    Litestar's check is a search, where ``$`` also matches before a final newline."""
    match = re.fullmatch(cursor_pattern(kind), cursor)
    if match is None:
        raise InvalidCursorError("The cursor is not a position of this list.")
    fields = msgspec.structs.fields(kind)
    values = {
        field.name: int(text) if _is_int(field.type) else text
        for field, text in zip(fields, match.groups(), strict=True)
    }
    return msgspec.convert(values, kind)


def _is_int(annotation: object) -> bool:
    return isinstance(msgspec.inspect.type_info(annotation), msgspec.inspect.IntType)


__all__ = [
    "BEFORE_EVERY_ID",
    "MAX_PAGE_SIZE",
    "CursorParam",
    "IdCursor",
    "InvalidCursorError",
    "Page",
    "PageSize",
    "cursor_pattern",
    "cursor_query",
    "decode_cursor",
    "encode_cursor",
    "paginate",
]
