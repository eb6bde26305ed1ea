"""Building wire shapes (msgspec Structs) from generated row types."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)
T = TypeVar("T")


def from_row(kind: type[S], row: Any, **values: Any) -> S:
    """``kind`` with every field taken from the same-named attribute of ``row`` unless given in
    ``values``; the row's other columns are left out (so no column reaches a client by accident)."""
    fields = {name: getattr(row, name) for name in kind.__struct_fields__ if name not in values}
    return kind(**fields, **values)


def given(value: T | msgspec.UnsetType) -> T | None:
    """A patch field's value, None when the patch left it out (``UNSET``): what the update queries
    take for "keep as it is". A patch's fields that every resource has default to ``UNSET``, so a
    JSON ``null`` for one is refused (RFC 7396 reads it as "remove", which they cannot be), where a
    default of None took it for "left out" and changed nothing."""
    return None if isinstance(value, msgspec.UnsetType) else value
