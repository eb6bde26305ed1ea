"""Ingest bodies to Structs, with every bad field named (``url``, ``views[3].title``).

The handlers decode the body themselves instead of taking a ``data`` parameter. The fast path is a
cached msgspec decoder of ``PageView`` (the contract's limits without its per-field NUL regex) and a
NUL check with ``in``; only a body that fails either is examined again against the strict contract
(``PageViewIn``), which names every bad field. Both accept exactly the same bodies (checked by
``tests/property/test_pageviews_decoding.py``). The site key's pattern is checked once per distinct
key rather than once per view (a batch usually carries one key).

A refused body is anonymous and as large as the route admits (4 MiB: two million items, or half a
million members of one object), so its examination costs about what the fast decoding of a valid
body does, whatever its shape: it is scanned in C (well formed? an object? how many views, up to
``MAX_BATCH`` + 1: a longer list is that one error, its items never looked at), then its views are
examined one by one, each with the fast decoder first, and the examination stops one error past the
``MAX_REPORTED_ERRORS`` listed (as the generic walk, ``app.core.validation.body_errors``, does).
Nothing is decoded into Python objects but what the walk looks at: a known field whose value is an
array or an object (never its kind: every field of a view is a scalar) is checked as an empty one,
an unknown field only by its name. An object's members are read one by one (a name and a ``Raw``
each) only up to ``MAX_MEMBERS_READ``; past it, its names are not all read (``_read_members``).

What is not looked at is not decoded: a batch whose first views are bad is answered with their
errors even if a later view, or an unknown field, holds what only decoding finds (nesting deeper
than ``MAX_JSON_DEPTH`` but within msgspec's recursion, a number out of a float's range), which
whole-body decoding answered as malformed JSON: a 400 either way.

The answers are the generic walk's, listed errors and all, except for an object of more than
``MAX_MEMBERS_READ`` members (a 400 either way, with the same bodies accepted):

- its unknown members past the first ones read are not counted: the problem says there are more
  errors, not how many (the walk counts every unknown name);
- if its first members repeat names (``{"url":…,"url":…}``: a dict keeps the last) and hold fewer
  unknown names than there are errors left to list, the errors are those names and msgspec's
  message about the next unknown one, on the object (``views[3]``: "Object contains unknown field
  `x`"), not the walk's list of every unknown name then the known fields' errors.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgspec

from app.core.errors import FieldError, InvalidFieldsError, UnprocessableError
from app.core.validation import (
    MAX_JSON_DEPTH,
    MAX_REPORTED_ERRORS,
    UNKNOWN_FIELD,
    BodyErrors,
    body_errors,
    whole_numbers,
)
from app.domains.pageviews.derive import Page, parse_page, referrer_source
from app.domains.pageviews.schemas import (
    MAX_BATCH,
    MAX_URL_BYTES,
    SITE_KEY,
    PageView,
    PageViewBatch,
    PageViewBatchIn,
    PageViewIn,
)

SINGLE = msgspec.json.Decoder(PageView)
BATCH = msgspec.json.Decoder(PageViewBatch)
WELL_FORMED = msgspec.json.Decoder(msgspec.Raw)
"""Scans a whole body for its syntax (in C) without building anything."""
_NOT_SENT = msgspec.Raw(b"")
_BatchItems = msgspec.defstruct(
    "_BatchItems",
    [(f"item{index}", msgspec.Raw, _NOT_SENT) for index in range(MAX_BATCH)],
    array_like=True,
    forbid_unknown_fields=True,
    gc=False,
)
BATCH_ITEMS = msgspec.json.Decoder(_BatchItems)
"""The items of an array of at most ``MAX_BATCH``, undecoded; refuses a longer one at its item
``MAX_BATCH`` + 1, without scanning the rest (a ``list[Raw]`` builds an object per item first)."""


class _MemberName(str):
    """A member's name as ``_read_members`` reads it: a type of our own, so msgspec hands each name
    to the scan's hook, which counts them."""

    __slots__ = ()


class _TooManyMembersError(Exception):
    """Raised by ``_NameScan`` at the member past its limit (msgspec lets it through as it is)."""


class _NameScan:
    """The dec_hook of one bounded read of an object's members: records their names in order and
    stops the read past ``limit`` (a repeated name counts each time)."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.names: list[str] = []

    def __call__(self, kind: type, name: Any) -> _MemberName:
        if self.left <= 0:
            raise _TooManyMembersError
        self.left -= 1
        self.names.append(name)
        return _MemberName(name)


class _Contract(NamedTuple):
    """What ``_read_members`` needs of a Struct of the contract."""

    names: tuple[str, ...]
    """Its members' names, in the order of ``known_members``' fields."""
    fields: frozenset[str]
    known_members: msgspec.json.Decoder[Any]
    """The known members' values, undecoded; unknown ones skipped (in C, nothing built for them)."""


def _contract(names: list[str]) -> _Contract:
    return _Contract(tuple(names), frozenset(names), msgspec.json.Decoder(_raw_members(names, strict=False)))


def _raw_members(names: list[str], *, strict: bool) -> type[msgspec.Struct]:
    """A Struct whose fields are the members ``names`` as ``Raw`` (``_NOT_SENT`` when absent);
    ``strict``: any other member refused."""
    attributes = [f"member{index}" for index in range(len(names))]
    return msgspec.defstruct(
        "_RawMembers",
        [(attribute, msgspec.Raw, _NOT_SENT) for attribute in attributes],
        rename=dict(zip(attributes, names, strict=True)),
        forbid_unknown_fields=strict,
        gc=False,
    )


VIEW_NAMES = [field.encode_name for field in msgspec.structs.fields(PageViewIn)]
BATCH_NAMES = [field.encode_name for field in msgspec.structs.fields(PageViewBatchIn)]
MAX_MEMBERS_READ = max(len(VIEW_NAMES), len(BATCH_NAMES)) + MAX_REPORTED_ERRORS + 1
"""Members of an object read one by one (a name and a ``Raw`` each) by ``_read_members``: an object
of more members whose names do not repeat holds more unknown ones than a problem lists."""
VIEW = _contract(VIEW_NAMES)
BATCH_SHAPE = _contract(BATCH_NAMES)
_CONTAINERS = (
    msgspec.inspect.ListType,
    msgspec.inspect.SetType,
    msgspec.inspect.FrozenSetType,
    msgspec.inspect.VarTupleType,
    msgspec.inspect.TupleType,
    msgspec.inspect.DictType,
    msgspec.inspect.StructType,
    msgspec.inspect.TypedDictType,
    msgspec.inspect.DataclassType,
    msgspec.inspect.NamedTupleType,
)


def _holds_a_container(info: msgspec.inspect.Type) -> bool:
    options = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    return any(isinstance(option, _CONTAINERS) for option in options)


if any(_holds_a_container(msgspec.inspect.type_info(f.type)) for f in msgspec.structs.fields(PageViewIn)):
    raise TypeError(
        "a view's fields must be scalars: _member_value checks an array or object as an empty one"
    )

_key_format = re.compile(SITE_KEY).search  # as msgspec applies a Meta pattern: re.search
NO_PAGE = Page(host="", path="/", utm_source="", utm_medium="", utm_campaign="")
TOO_LONG = f"Longer than {MAX_URL_BYTES} bytes (UTF-8)"


def decode_view(body: bytes) -> PageView:
    """One view from a request body; ``InvalidFieldsError`` (400) names every bad field."""
    try:
        view = SINGLE.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _examine_view(body, exc)
    if _holds_nul(view):
        return _examine_view(body, ValueError("NUL in a text field"))
    if _key_format(view.site_key) is None:
        return _examine_view(body, ValueError("malformed site key"))
    return view


def decode_batch(body: bytes) -> PageViewBatch:
    """A batch from a request body; bad fields are named ``views[i].<field>``."""
    try:
        batch = BATCH.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _examine_batch(body, exc)
    keys: set[str] = set()
    for view in batch.views:
        # _holds_nul, inline: a call per view of a thousand-view batch costs the hot path
        if "\x00" in view.url or "\x00" in view.referrer or "\x00" in view.title:
            return _examine_batch(body, ValueError("NUL in a text field"))
        keys.add(view.site_key)
    if any(_key_format(key) is None for key in keys):
        return _examine_batch(body, ValueError("malformed site key"))
    return batch


def _holds_nul(view: PageView) -> bool:
    """Whether a text field holds NUL (the contract's pattern, checked with ``in``: faster)."""
    return "\x00" in view.url or "\x00" in view.referrer or "\x00" in view.title


def _examine_view(body: bytes, refused: Exception) -> PageView:
    """A body the fast path refused, checked against the strict contract: accepted after all if its
    only fault was a number like ``1440.0`` where an integer is expected (an integer to JSON Schema,
    so to the published contract); otherwise ``InvalidFieldsError`` naming its bad fields (msgspec
    stops at the first). Invalid UTF-8 comes out of msgspec as a ``UnicodeDecodeError``, not a
    ``DecodeError`` (msgspec issue 714)."""
    try:
        members = _body_members(body, VIEW)
        if members is None:
            raise InvalidFieldsError([FieldError(field="body", message=str(refused))]) from refused
        checked = _checked_view(members, "", MAX_REPORTED_ERRORS)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _malformed(exc) from refused
    if isinstance(checked, PageView):
        return checked
    raise InvalidFieldsError.of_body(checked, FieldError(field="body", message=str(refused))) from refused


def _examine_batch(body: bytes, refused: Exception) -> PageViewBatch:
    """``_examine_view`` for a batch: its shape first (an object whose ``views`` is an array of 1 to
    ``MAX_BATCH`` items), then its views in order, until one error past those a problem lists."""
    otherwise = FieldError(field="body", message=str(refused))
    try:
        members = _body_members(body, BATCH_SHAPE)
        if members is None:
            raise InvalidFieldsError([otherwise]) from refused
        checked = _checked_batch(members)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _malformed(exc) from refused
    if isinstance(checked, PageViewBatch):
        return checked
    raise InvalidFieldsError.of_body(checked, otherwise) from refused


def _malformed(exc: Exception) -> InvalidFieldsError:
    return InvalidFieldsError([FieldError(field="body", message=f"Malformed JSON: {exc}")])


class _Members(NamedTuple):
    """An object's members as the walk needs them, read in work bounded by what it can list."""

    known: dict[str, msgspec.Raw]
    """The contract's members it holds, undecoded (a repeated name: its last value, as a dict);
    none when ``unknown`` already holds more names than the errors left to list, or ``fault``."""
    unknown: list[str]
    """The names the contract does not know, in order: all of them when ``complete``, else the
    first ones, at least one more than the errors left to list (unless names repeat: ``fault``)."""
    complete: bool
    fault: str | None = None
    """msgspec's message about an unknown name past those read, when the first members read
    repeat names and hold fewer unknown ones than the errors left to list."""


def _body_members(body: bytes, contract: _Contract) -> _Members | None:
    """The members of the JSON object ``body`` (``_read_members``); None when it is JSON but not
    an object. A ``msgspec.DecodeError`` or ``UnicodeDecodeError`` unless it is JSON in UTF-8;
    nesting that overflows msgspec's recursion is one (worded as ``decode_any`` does)."""
    try:
        WELL_FORMED.decode(body)
    except RecursionError:
        raise msgspec.DecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not body.isascii():
        body.decode()  # the scan skips the contents of strings: their UTF-8 is checked here
    return _read_members(body, contract, MAX_REPORTED_ERRORS)


def _read_members(raw: bytes | msgspec.Raw, contract: _Contract, room: int) -> _Members | None:
    """The members of a well-formed JSON object, undecoded, as far as errors listing at most
    ``room`` of them need (None when ``raw`` is not an object), never a str and a ``Raw`` per member
    of a large object (4 MiB of ``"a":0`` is half a million members). Every member when it has at
    most ``MAX_MEMBERS_READ`` (a repeated name counted each time); otherwise the names of those
    first members only: when they hold more unknown names than ``room``, those fill the errors
    (nothing else is read); else (names repeat) the known members, read in C with the others
    skipped, and whether any other unknown name follows (``_unknown_past``)."""
    scan = _NameScan(MAX_MEMBERS_READ)
    try:
        members = msgspec.json.Decoder(dict[_MemberName, msgspec.Raw], dec_hook=scan).decode(raw)
    except msgspec.ValidationError:
        return None
    except _TooManyMembersError:
        unknown = [name for name in dict.fromkeys(scan.names) if name not in contract.fields]
        if len(unknown) > max(room, 0):
            return _Members({}, unknown, complete=False)
        fault = _unknown_past(raw, [*contract.fields, *unknown])
        if fault is not None:
            return _Members({}, unknown, complete=False, fault=fault)
        known = msgspec.structs.astuple(contract.known_members.decode(raw))
        sent = {name: value for name, value in zip(contract.names, known, strict=True) if value}
        return _Members(sent, unknown, complete=True)
    named = {str(name): value for name, value in members.items()}
    unknown = [name for name in named if name not in contract.fields]
    return _Members({name: named[name] for name in contract.fields if name in named}, unknown, complete=True)


def _unknown_past(raw: bytes | msgspec.Raw, names: list[str]) -> str | None:
    """What msgspec says of the first member of ``raw`` not named in ``names``; None if none is."""
    try:
        msgspec.json.Decoder(_raw_members(names, strict=True)).decode(raw)
    except msgspec.ValidationError as exc:
        return str(exc)
    return None


def _checked_batch(members: _Members) -> PageViewBatch | BodyErrors:
    """The batch of a body refused by the fast path, or its errors as the generic walk would list
    them (unknown members, then ``views``, then each view's), found in work bounded by those."""
    if members.fault is not None:
        return _unknown_past_errors(members, "", MAX_REPORTED_ERRORS)
    shape, left_out = _known_and_first_unknown(members, MAX_REPORTED_ERRORS)
    views = members.known.get("views")
    items = _batch_items(views) if views is not None else None
    if not items:
        if views is not None:
            shape["views"] = _views_stand_in(views, items)
        return _with_left_out(body_errors(PageViewBatchIn, shape), left_out, members.complete)
    unknown = [name for name in shape if name not in BATCH_SHAPE.fields]
    listed: list[tuple[str, str]] = [(name, UNKNOWN_FIELD) for name in unknown[:MAX_REPORTED_ERRORS]]
    unlisted = len(unknown) - len(listed) + left_out
    accepted: list[PageView] = []
    for index, item in enumerate(items):
        view = _fast_view(item)
        if view is not None:
            accepted.append(view)
            continue
        room = MAX_REPORTED_ERRORS - len(listed)
        path = f"views[{index}]"
        item_members = _read_members(item, VIEW, room)
        if item_members is None:
            listed_here = [(path, _not_an_object(item))] if room > 0 else []
            found = BodyErrors(listed_here, 0 if room > 0 else 1, counted=room > 0)
        else:
            checked = _checked_view(item_members, path, room)
            if isinstance(checked, PageView):
                accepted.append(checked)
                continue
            found = checked
        listed.extend(found.listed)
        unlisted += found.unlisted
        if not found.counted:
            return BodyErrors(listed, unlisted, counted=False)
    if listed or unlisted:
        return BodyErrors(listed, unlisted, counted=members.complete)
    return PageViewBatch(views=accepted)


def _fast_view(raw: msgspec.Raw) -> PageView | None:
    """One view of a batch as ``decode_view``'s fast path takes it, or None if it refuses it."""
    try:
        view = SINGLE.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if _holds_nul(view):
        return None
    return view if _key_format(view.site_key) is not None else None


def _checked_view(members: _Members, path: str, room: int) -> PageView | BodyErrors:
    """The view of an object's ``members`` if the contract accepts it (a number like ``1440.0``
    where an integer is expected is one), else its first ``room`` errors (named under ``path``)."""
    if members.fault is not None:
        return _unknown_past_errors(members, path, room)
    value, left_out = _known_and_first_unknown(members, room)
    try:
        msgspec.convert(value, PageViewIn)
    except msgspec.ValidationError:
        return _with_left_out(body_errors(PageViewIn, value, path, limit=room), left_out, members.complete)
    return msgspec.convert(value, PageView)


def _known_and_first_unknown(members: _Members, room: int) -> tuple[dict[str, Any], int]:
    """``members`` as the walk needs them: the known ones decoded (``_member_value``), the first
    unknown ones by name only, enough to fill ``room`` and tell that there are more; and how many
    unknown ones were left out (never listed; all of them only when ``members.complete``)."""
    value = {name: _member_value(raw) for name, raw in members.known.items()}
    wanted = max(room, 0) + 1
    value.update((name, None) for name in members.unknown[:wanted])
    return value, len(members.unknown) - min(len(members.unknown), wanted)


def _unknown_past_errors(members: _Members, path: str, room: int) -> BodyErrors:
    """The errors of an object whose first members repeat names and whose unknown ones could not
    all be named in bounded work: those named, then msgspec's message of the first one past them
    (on the object), and more errors, not counted."""
    found = [(f"{path}.{name}" if path else name, UNKNOWN_FIELD) for name in members.unknown]
    found.append((path or "body", members.fault or ""))
    listed = found[: max(room, 0)]
    return BodyErrors(listed, len(found) - len(listed) + 1, counted=False)


def _with_left_out(found: BodyErrors, left_out: int, complete: bool) -> BodyErrors:
    """``found`` with the unknown members it was not given; not counted unless they all were."""
    return found._replace(unlisted=found.unlisted + left_out, counted=found.counted and complete)


def _member_value(raw: msgspec.Raw) -> Any:
    """A member's value for the walk: a scalar decoded (an integral float as an int), an array or
    an object as an empty one (a scalar field refuses either for its kind, whatever it holds)."""
    first = _first_byte(raw)
    if first == b"[":
        return []
    if first == b"{":
        return {}
    return whole_numbers(msgspec.json.decode(raw))


def _not_an_object(raw: msgspec.Raw) -> str:
    """What msgspec says of a view that is not an object."""
    try:
        msgspec.convert(_member_value(raw), PageViewIn)
    except msgspec.ValidationError as exc:
        return str(exc)
    return "Expected `object`"  # not reached: only an object converts to a Struct


def _batch_items(views: msgspec.Raw) -> list[msgspec.Raw] | None:
    """The items of ``views`` if it is an array of at most ``MAX_BATCH``; None if it is longer (found
    at its item ``MAX_BATCH`` + 1: the rest is not even scanned) or not an array."""
    if _first_byte(views) != b"[":
        return None
    try:
        shell = BATCH_ITEMS.decode(views)
    except msgspec.ValidationError:
        return None
    return [item for item in msgspec.structs.astuple(shell) if item]


def _views_stand_in(views: msgspec.Raw, items: list[msgspec.Raw] | None) -> Any:
    """For the walk, ``views`` that break the contract on their own, by their kind or their length:
    an equivalent of the same kind and length class (an array of ``MAX_BATCH`` + 1 stands for any
    longer one: msgspec refuses it for its length before looking at its items)."""
    if items is not None:
        return []
    if _first_byte(views) == b"[":
        return [None] * (MAX_BATCH + 1)
    return _member_value(views)


def _first_byte(raw: msgspec.Raw) -> bytes:
    return bytes(memoryview(raw)[:1])  # a decoded member's value starts at its first character


class PageWithoutHostError(UnprocessableError):
    """A page URL that is a valid URI reference but names no host (``/path``, ``mailto:...``): it
    cannot be told apart from another site's page (its internal referrers would count as outside
    traffic). A 422, not the validation 400: the published contract admits any text there."""

    slug = "page-url-without-host"
    title = "The page URL names no host"

    def __init__(self, fields: list[str]) -> None:
        super().__init__("Send the page's absolute address (https://host/path).")
        self.errors = [FieldError(field=field, message=NO_HOST) for field in fields]


NO_HOST = "Not the page's absolute address (https://host/path): a page without its host has no site"


def parse_views(views: list[PageView], *, batched: bool) -> list[tuple[Page, str, str]]:
    """(page, referrer host, referrer source) of every view, or one ``InvalidFieldsError`` naming
    every field the Struct cannot check: a URL or referrer that cannot be split or names a host longer
    than DNS allows, a URL or referrer longer than ``MAX_URL_BYTES`` in UTF-8; failing none of these,
    ``PageWithoutHostError`` naming every URL without a host."""
    parsed: list[tuple[Page, str, str]] = []
    errors: list[FieldError] = []
    without_host: list[str] = []
    for index, view in enumerate(views):
        url, referrer = view.url, view.referrer
        page = NO_PAGE
        if len(url) > MAX_URL_BYTES // 4 and len(url.encode()) > MAX_URL_BYTES:
            errors.append(FieldError(field=_named("url", index, batched), message=TOO_LONG))
        else:
            try:
                page = parse_page(url)
            except ValueError as exc:
                errors.append(
                    FieldError(field=_named("url", index, batched), message=f"Not a valid URL: {exc}")
                )
            else:
                if not page.host:
                    without_host.append(_named("url", index, batched))
        if len(referrer) > MAX_URL_BYTES // 4 and len(referrer.encode()) > MAX_URL_BYTES:
            errors.append(FieldError(field=_named("referrer", index, batched), message=TOO_LONG))
            continue
        try:
            parsed.append((page, *referrer_source(referrer, page.host)))
        except ValueError as exc:
            errors.append(
                FieldError(field=_named("referrer", index, batched), message=f"Not a valid URL: {exc}")
            )
    if errors:
        raise InvalidFieldsError(errors)
    if without_host:
        raise PageWithoutHostError(without_host)
    return parsed


def _named(field: str, index: int, batched: bool) -> str:
    return f"views[{index}].{field}" if batched else field
