"""Report every bad field of a request body, not only the first, from structure, not message text.

msgspec stops at the first error and says where only inside its message. When a body fails, the
problem handler re-checks the decoded JSON against the handler's Struct by walking the *types*:
fields of Structs, items of lists, values of dicts, down to the value that fails on its own. The
path of every error is built from that walk, and a leaf's message is what msgspec says about that
value alone (so it carries no location to parse). Texts we know better (``NO_NUL``, ``NON_BLANK``
patterns) are worded from the declared constraint, not from msgspec's wording.

A refused body is the client's to make as large as the route admits, so the walk's work is bounded
by what the answer shows, not by the body: it is lazy and stops at the first error past the
``MAX_REPORTED_ERRORS`` listed, it does not descend into a list or object that breaks its own length
limit (that is the one error), and what it needs of each type is worked out once per type.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Callable, Iterator
from types import UnionType
from typing import Annotated, Any, NamedTuple, TypeVar, Union

import msgspec

from app.core.types import NO_NUL, NON_BLANK, ONE_LINE

PATTERN_MEANINGS = {
    NO_NUL: "must not contain NUL characters",
    NON_BLANK: "must contain a visible character and no NUL",
    ONE_LINE: "must be one line with a visible character: no control character (a newline, an escape)"
    " and no character that turns the direction of the text after it (U+202A-U+202E, U+2066-U+2069)",
}
"""Declared patterns with a human meaning: the message names the rule instead of the regex."""


MAX_REPORTED_ERRORS = 20
"""Bad fields listed in one validation problem; the walk stops at the first one past them."""
UNKNOWN_FIELD = "Unknown field"

T = TypeVar("T")


class BodyErrors(NamedTuple):
    """The first bad fields of a body, and how many more were found."""

    listed: list[tuple[str, str]]
    """(field path, message), at most the limit asked for."""
    unlisted: int
    """Errors found past ``listed``."""
    counted: bool
    """Whether ``unlisted`` counts every one (the walk finished), or only those found before it stopped."""


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
    """Whether arrays and objects nest more than ``limit`` levels (level by level: no recursion)."""
    for index, level in enumerate(_levels(value)):
        if index >= limit:
            return any(type(item) is list or type(item) is dict for item in level)
    return False


def whole_numbers(value: Any) -> Any:
    """``value`` (decoded JSON) with every integral float as an int: ``2.0`` is the integer 2 in JSON
    Schema, so a body the schema admits must decode, while msgspec refuses a float for an ``int``.
    ``value`` itself when it holds none (the usual case: one quick look, no copy)."""
    if not any(_whole_float_in(level) for level in _levels(value)):
        return value
    return _with_whole_numbers(value)


def _with_whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_with_whole_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _with_whole_numbers(item) for key, item in value.items()}
    return value


def _whole_float_in(values: list[Any]) -> bool:
    return float in set(map(type, values)) and any(type(v) is float and v.is_integer() for v in values)


def _levels(value: Any) -> Iterator[list[Any]]:
    """The values inside ``value`` level by level: ``[value]``, then its items, then theirs. No
    recursion and no frame or tuple per value: on a large body four to six times faster than a
    recursive walk or a stack of (value, depth) pairs."""
    level = [value]
    while level:
        yield level
        children: list[Any] = []
        for item in level:
            if type(item) is list:
                children.extend(item)
            elif type(item) is dict:
                children.extend(item.values())
        level = children


def struct_field_errors(
    struct_type: type[msgspec.Struct], value: Any, prefix: str = "", limit: int = MAX_REPORTED_ERRORS + 1
) -> list[tuple[str, str]]:
    """(field path, message) for the first ``limit`` fields of ``value`` that do not fit ``struct_type``
    (by default one more than a problem lists: enough to tell that there are more).

    Paths read like the JSON: ``address.city``, ``lines[2].quantity``; ``prefix`` is prepended.
    ``body_errors`` also says how many more there are, when that was cheap to count.
    """
    return body_errors(struct_type, value, prefix, limit).listed


def body_errors(
    struct_type: Any, value: Any, prefix: str = "", limit: int = MAX_REPORTED_ERRORS
) -> BodyErrors:
    """The first ``limit`` bad fields of ``value`` against ``struct_type`` (a Struct, or a union of
    Structs told apart by a tag: ``tagged_union``), and how many more.

    The walk is lazy and stops at the first error found once ``limit`` are listed, so its work is
    bounded by the errors listed, not by the body (a batch of 20,000 bad views cost 12 s of CPU when
    every error was named and all but 20 dropped). Unknown keys are the exception that costs nothing:
    they come from the object already in hand, all at once, and are counted in full.
    """
    if not isinstance(value, dict):
        return BodyErrors([], 0, counted=True)
    union = tagged_union(struct_type)
    if union is not None:  # the variant its tag names, walked without the tag
        tag_field, variants = union
        tag = value.get(tag_field)
        chosen = variants.get(tag) if isinstance(tag, str) else None
        if chosen is None:
            expected = ", ".join(f"`{name}`" for name in variants)
            message = "Field is required" if tag is None else f"Expected one of {expected}"
            return BodyErrors([(_join(prefix.removesuffix("."), tag_field), message)], 0, counted=True)
        struct_type, value = chosen, {key: item for key, item in value.items() if key != tag_field}
    elif not _is_struct(struct_type):
        return BodyErrors([], 0, counted=True)
    listed: list[tuple[str, str]] = []
    unlisted = 0
    for found in _struct_errors(struct_type, whole_numbers(value), prefix.removesuffix(".")):
        full = len(listed) >= limit
        if isinstance(found, UnknownFields):
            room = max(limit - len(listed), 0)
            listed.extend((_join(found.path, name), UNKNOWN_FIELD) for name in found.names[:room])
            unlisted += len(found.names) - min(room, len(found.names))
        elif full:
            unlisted += 1
        else:
            listed.append(found)
        if full:
            return BodyErrors(listed, unlisted, counted=False)
    return BodyErrors(listed, unlisted, counted=True)


def pattern_meaning(pattern: str | None) -> str | None:
    """The human rule behind a declared pattern, if we word it (see ``PATTERN_MEANINGS``)."""
    return PATTERN_MEANINGS.get(pattern) if pattern is not None else None


class UnknownFields(NamedTuple):
    """The keys of one object that its Struct does not declare (reported as ``Unknown field``)."""

    path: str
    names: list[str]


Found = tuple[str, str] | UnknownFields


def _struct_errors(kind: type[msgspec.Struct], value: dict[str, Any], path: str) -> Iterator[Found]:
    shape = _struct_shape(kind)
    unknown = [name for name in value if name not in shape.known] if shape.forbid_unknown_fields else []
    if unknown:
        yield UnknownFields(path, unknown)
    found = bool(unknown)
    for name, required, field_type in shape.fields:
        where = _join(path, name)
        if name not in value:
            if required:
                found = True
                yield where, "Field is required"
            continue
        for error in _value_errors(field_type, value[name], where):
            found = True
            yield error
    if not found:
        # Every field is fine alone: the Struct's own ``__post_init__`` check refused it. A Struct
        # names the field that check is about with ``post_init_field`` (a ClassVar).
        try:
            msgspec.convert(value, kind)
        except msgspec.ValidationError as exc:
            field_name = shape.post_init_field
            yield (_join(path, field_name) if field_name is not None else path or "body"), str(exc)


def _value_errors(kind: Any, value: Any, path: str) -> Iterator[Found]:
    """The errors of one value: inside it where its type has parts, else the value's own. A list or
    an object that breaks its own length limit is that one error: its items are not looked at."""
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        shape = _value_shape(kind)
        if shape.length_broken(value):
            yield path, str(exc)  # msgspec checks an array's or object's length before its items
            return
        inner = False
        for error in _inner_errors(shape, value, path):
            inner = True
            yield error
        if not inner:
            yield path, _leaf_message(shape, value, str(exc))


def _inner_errors(shape: ValueShape, value: Any, path: str) -> Iterator[Found]:
    """Errors of the parts of ``value`` (struct fields, list items, dict values), if any fail alone."""
    if shape.struct is not None and isinstance(value, dict):
        yield from _struct_errors(shape.struct, value, path)
    elif shape.item is not None and isinstance(value, list):
        for index, element in enumerate(value):
            yield from _value_errors(shape.item, element, f"{path}[{index}]")
    elif shape.dict_value is not None and isinstance(value, dict):
        for key, element in value.items():
            yield from _value_errors(shape.dict_value, element, _join(path, str(key)))


def _leaf_message(shape: ValueShape, value: Any, message: str) -> str:
    """msgspec's message about this value, unless it broke a declared pattern we can word."""
    if isinstance(value, str) and shape.pattern is not None:
        meaning = pattern_meaning(shape.pattern)
        if meaning is not None and re.search(shape.pattern, value) is None:
            return meaning
    return message


# -- what the walk needs to know of a type, worked out once per type -------------------------------


class StructShape(NamedTuple):
    known: frozenset[str]
    forbid_unknown_fields: bool
    fields: tuple[tuple[str, bool, Any], ...]
    """(encode name, required, type) of every field."""
    post_init_field: str | None


class ValueShape(NamedTuple):
    struct: type[msgspec.Struct] | None
    """The one Struct the value may be (``T``, ``T | None``, ``Annotated[T, ...]``)."""
    item: Any
    """The item type of a list, tuple or set type (None: not one)."""
    dict_value: Any
    """The value type of a dict type (None: not one)."""
    sized: type[list[Any]] | type[dict[Any, Any]] | None
    """The JSON kind a length limit applies to (``list`` or ``dict``), when the type declares one."""
    min_length: int | None
    max_length: int | None
    pattern: str | None

    def length_broken(self, value: Any) -> bool:
        if self.sized is None or not isinstance(value, self.sized):
            return False
        size = len(value)
        return (self.min_length is not None and size < self.min_length) or (
            self.max_length is not None and size > self.max_length
        )


def _struct_shape(kind: type[msgspec.Struct]) -> StructShape:
    return _cached(_cached_struct_shape, _work_out_struct_shape, kind)


def _value_shape(kind: Any) -> ValueShape:
    return _cached(_cached_value_shape, _work_out_value_shape, kind)


def _cached(cached: Callable[[Any], T], uncached: Callable[[Any], T], kind: Any) -> T:
    """``cached(kind)``, or ``uncached(kind)`` for a type that cannot be a cache key (unhashable)."""
    try:
        hash(kind)
    except TypeError:
        return uncached(kind)
    return cached(kind)


def _work_out_struct_shape(kind: type[msgspec.Struct]) -> StructShape:
    fields = msgspec.structs.fields(kind)
    post_init_field = getattr(kind, "post_init_field", None)
    return StructShape(
        known=frozenset(field.encode_name for field in fields),
        forbid_unknown_fields=bool(kind.__struct_config__.forbid_unknown_fields),
        fields=tuple((field.encode_name, field.required, field.type) for field in fields),
        post_init_field=post_init_field if isinstance(post_init_field, str) else None,
    )


SIZED: dict[type, type[list[Any]] | type[dict[Any, Any]]] = {
    msgspec.inspect.ListType: list,
    msgspec.inspect.SetType: list,
    msgspec.inspect.FrozenSetType: list,
    msgspec.inspect.VarTupleType: list,
    msgspec.inspect.DictType: dict,
}
"""msgspec's types with a length limit that the walk would otherwise descend into, by JSON kind."""


def _work_out_value_shape(kind: Any) -> ValueShape:
    base = _unwrap(kind)
    origin, args = typing.get_origin(base), typing.get_args(base)
    try:
        info: Any = msgspec.inspect.type_info(_without_none(kind))
    except (TypeError, ValueError):  # a type msgspec converts through a hook: no constraint to read
        info = None
    if isinstance(info, msgspec.inspect.Metadata):  # a Meta with examples or a description wraps it
        info = info.type
    sized = SIZED.get(type(info))
    pattern = getattr(info, "pattern", None)
    return ValueShape(
        struct=_only_struct(base),
        item=args[0] if origin in (list, tuple, set, frozenset) and args else None,
        dict_value=args[1] if origin is dict and len(args) == 2 else None,
        sized=sized,
        min_length=getattr(info, "min_length", None) if sized else None,
        max_length=getattr(info, "max_length", None) if sized else None,
        pattern=pattern if isinstance(pattern, str) else None,
    )


_cached_struct_shape = functools.cache(_work_out_struct_shape)
_cached_value_shape = functools.cache(_work_out_value_shape)


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


@functools.cache
def tagged_union(kind: Any) -> tuple[str, dict[str, type[msgspec.Struct]]] | None:
    """(tag field, variant by tag) of a union of Structs told apart by one string tag field (a body
    such as monitoring's ``ResolveIn``), else None."""
    if typing.get_origin(kind) not in (Union, UnionType):
        return None
    variants: dict[str, type[msgspec.Struct]] = {}
    fields = set()
    for option in typing.get_args(kind):
        config = option.__struct_config__ if _is_struct(option) else None
        if config is None or not isinstance(config.tag, str) or config.tag_field is None:
            return None
        fields.add(config.tag_field)
        variants[config.tag] = option
    return (fields.pop(), variants) if len(fields) == 1 else None


def walks(kind: Any) -> bool:
    """Whether ``body_errors`` names the bad fields of a body of this type."""
    return _is_struct(kind) or tagged_union(kind) is not None
