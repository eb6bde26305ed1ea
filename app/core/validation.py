"""Report every bad field of a request body, not only the first, from structure, not message text.

msgspec stops at the first error and says where only inside its message. When a body fails, the
problem handler re-checks the decoded JSON against the handler's Struct by walking the *types*:
fields of Structs, items of lists, values of dicts, down to the value that fails on its own. The
path of every error is built from that walk, and a leaf's message is what msgspec says about that
value alone (so it carries no location to parse). Texts we know better (``NO_NUL``, ``NON_BLANK``
patterns) are worded from the declared constraint, not from msgspec's wording.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from types import UnionType
from typing import Annotated, Any, Union

import msgspec

from app.core.types import NO_NUL, NON_BLANK

PATTERN_MEANINGS = {
    NO_NUL: "must not contain NUL characters",
    NON_BLANK: "must contain a visible character and no NUL",
}
"""Declared patterns with a human meaning: the message names the rule instead of the regex."""


MAX_JSON_DEPTH = 64
"""Deeper than any contract of the API: the slow paths below walk a decoded body recursively."""


def decode_any(body: bytes) -> Any:
    """``body`` as plain JSON values for the slow paths that name every bad field; a body nested
    deeper than ``MAX_JSON_DEPTH`` is a ``msgspec.DecodeError`` (a 400 naming the body), where a few
    KB of brackets overflowed the stack (``RecursionError``: a 500 and an alert)."""
    try:
        value = msgspec.json.decode(body)
    except RecursionError:
        raise msgspec.DecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise msgspec.DecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item if isinstance(item, list) else item.values() if isinstance(item, dict) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


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
    """(field path, message) for every field of ``value`` that does not fit ``struct_type``.

    Paths read like the JSON: ``address.city``, ``lines[2].quantity``; ``prefix`` is prepended.
    """
    if not isinstance(value, dict) or not _is_struct(struct_type):
        return []
    return list(_struct_errors(struct_type, whole_numbers(value), prefix.removesuffix(".")))


def pattern_meaning(pattern: str | None) -> str | None:
    """The human rule behind a declared pattern, if we word it (see ``PATTERN_MEANINGS``)."""
    return PATTERN_MEANINGS.get(pattern) if pattern is not None else None


def _struct_errors(kind: type[msgspec.Struct], value: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    known = {field.encode_name for field in info.fields}
    unknown = (
        [name for name in value if name not in known] if kind.__struct_config__.forbid_unknown_fields else []
    )
    yield from ((_join(path, name), "Unknown field") for name in unknown)
    found = bool(unknown)
    for field in msgspec.structs.fields(kind):
        where = _join(path, field.encode_name)
        if field.encode_name not in value:
            if field.required:
                found = True
                yield where, "Field is required"
            continue
        for error in _value_errors(field.type, value[field.encode_name], where):
            found = True
            yield error
    if not found:
        # Every field is fine alone: the Struct's own ``__post_init__`` check refused it. A Struct
        # names the field that check is about with ``post_init_field`` (a ClassVar).
        try:
            msgspec.convert(value, kind)
        except msgspec.ValidationError as exc:
            field_name = getattr(kind, "post_init_field", None)
            yield (_join(path, field_name) if isinstance(field_name, str) else path or "body"), str(exc)


def _value_errors(kind: Any, value: Any, path: str) -> Iterator[tuple[str, str]]:
    """The errors of one value: inside it where its type has parts, else the value's own."""
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        inner = list(_inner_errors(kind, value, path))
        if inner:
            yield from inner
        else:
            yield path, _leaf_message(kind, value, str(exc))


def _inner_errors(kind: Any, value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Errors of the parts of ``value`` (struct fields, list items, dict values), if any fail alone."""
    base = _unwrap(kind)
    struct = _only_struct(base)
    if struct is not None and isinstance(value, dict):
        yield from _struct_errors(struct, value, path)
        return
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin in (list, tuple, set, frozenset) and isinstance(value, list) and args:
        item = args[0]
        for index, element in enumerate(value):
            yield from _value_errors(item, element, f"{path}[{index}]")
    elif origin is dict and isinstance(value, dict) and len(args) == 2:
        for key, element in value.items():
            yield from _value_errors(args[1], element, _join(path, str(key)))


def _leaf_message(kind: Any, value: Any, message: str) -> str:
    """msgspec's message about this value, unless it broke a declared pattern we can word."""
    if isinstance(value, str):
        info = msgspec.inspect.type_info(_without_none(kind))
        pattern = getattr(info, "pattern", None)
        meaning = pattern_meaning(pattern)
        if meaning is not None and isinstance(pattern, str) and re.search(pattern, value) is None:
            return meaning
    return message


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _unwrap(kind: Any) -> Any:
    """``Annotated[T, ...]`` → ``T``; ``T | None`` → ``T`` (a None value never reaches here failing)."""
    kind = _without_none(kind)
    return typing.get_args(kind)[0] if typing.get_origin(kind) is Annotated else kind


def _without_none(kind: Any) -> Any:
    if typing.get_origin(kind) in (Union, UnionType):
        options = [option for option in typing.get_args(kind) if option is not type(None)]
        if len(options) == 1:
            return options[0]
    return kind


def _only_struct(kind: Any) -> type[msgspec.Struct] | None:
    candidates = typing.get_args(kind) if typing.get_origin(kind) in (Union, UnionType) else (kind,)
    structs = [c for c in candidates if _is_struct(c)]
    return structs[0] if len(structs) == 1 else None


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)
