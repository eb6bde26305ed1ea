"""Report every bad field of a request body, not only the first.

msgspec stops at the first error. When a body fails, the problem handler re-checks the decoded
JSON field by field against the handler's Struct, so the client learns all mistakes at once.
"""

from __future__ import annotations

import typing
from types import UnionType
from typing import Any, Union

import msgspec


def whole_numbers(value: Any) -> Any:
    """``value`` (decoded JSON) with every integral float as an int: ``2.0`` is the integer 2 in JSON
    Schema, so a body the schema admits must decode, while msgspec refuses a float for an ``int``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    return value


def struct_field_errors(
    struct_type: type[msgspec.Struct], value: Any, prefix: str = ""
) -> list[tuple[str, str]]:
    """(field path, message) for every field of ``value`` that does not fit ``struct_type``."""
    if not isinstance(value, dict):
        return []
    value = whole_numbers(value)
    info = msgspec.inspect.type_info(struct_type)
    if not isinstance(info, msgspec.inspect.StructType):
        return []
    errors: list[tuple[str, str]] = []
    known = {field.encode_name for field in info.fields}
    if struct_type.__struct_config__.forbid_unknown_fields:
        errors.extend((f"{prefix}{name}", "Unknown field") for name in value if name not in known)
    for field in msgspec.structs.fields(struct_type):
        path = f"{prefix}{field.encode_name}"
        if field.encode_name not in value:
            if field.required:
                errors.append((path, "Field is required"))
            continue
        try:
            msgspec.convert(value[field.encode_name], field.type)
        except msgspec.ValidationError as exc:
            nested = _nested_struct(field.type)
            inner = struct_field_errors(nested, value[field.encode_name], f"{path}.") if nested else []
            errors.extend(inner or [_located(path, str(exc))])
    return errors


def _nested_struct(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct type of a field typed ``S`` or ``S | None``; otherwise None."""
    candidates = (
        typing.get_args(annotation) if typing.get_origin(annotation) in (Union, UnionType) else (annotation,)
    )
    structs = [c for c in candidates if isinstance(c, type) and issubclass(c, msgspec.Struct)]
    return structs[0] if len(structs) == 1 else None


def _located(path: str, message: str) -> tuple[str, str]:
    """msgspec's ``... - at `$[0].x``` location, relative to the field, joins the field's path."""
    text, _, location = message.partition(" - at `$")
    return path + location.rstrip("`"), text
