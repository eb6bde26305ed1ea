"""Building wire shapes (msgspec Structs) from generated row types."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)


def from_row(kind: type[S], row: Any, **values: Any) -> S:
    """``kind`` with every field taken from the same-named attribute of ``row`` unless given in
    ``values``; the row's other columns are left out (so no column reaches a client by accident)."""
    fields = {name: getattr(row, name) for name in kind.__struct_fields__ if name not in values}
    return kind(**fields, **values)
