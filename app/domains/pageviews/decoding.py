"""Ingest bodies to Structs, with every bad field named (``url``, ``views[3].title``).

The handlers decode the body themselves instead of taking a ``data`` parameter. The fast path is a
cached msgspec decoder of ``PageView`` (the contract's limits without its per-field NUL regex) and a
NUL check with ``in``; only a body that fails either is examined again against the strict contract
(``PageViewIn``), which names every bad field. Both accept exactly the same bodies (checked by
``tests/property/test_pageviews_decoding.py``). The site key's pattern is checked once per distinct
key rather than once per view (a batch usually carries one key).

A refused body is anonymous and as large as the route admits (4 MiB: two million items), so its
examination costs about what the fast decoding of a valid body does, whatever its shape: it is
scanned in C (well formed? an object? how many views, up to ``MAX_BATCH`` + 1: a longer list is that
one error, its items never looked at), then its views are examined one by one, each with the fast
decoder first, and the examination stops one error past the ``MAX_REPORTED_ERRORS`` listed (as the
generic walk, ``app.core.validation.body_errors``, does). Nothing is decoded into Python objects but
what the walk looks at: a known field whose value is an array or an object (never its kind: every
field of a view is a scalar) is checked as an empty one, an unknown field only by its name.

What is not looked at is not decoded: a batch whose first views are bad is answered with their
errors even if a later view, or an unknown field, holds what only decoding finds (nesting deeper
than ``MAX_JSON_DEPTH`` but within msgspec's recursion, a number out of a float's range), which
whole-body decoding answered as malformed JSON: a 400 either way.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

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
MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
"""An object's members, their values left undecoded."""
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

VIEW_FIELDS = frozenset(field.encode_name for field in msgspec.structs.fields(PageViewIn))
BATCH_FIELDS = frozenset(field.encode_name for field in msgspec.structs.fields(PageViewBatchIn))
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
    if "\x00" in view.url or "\x00" in view.referrer or "\x00" in view.title:
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
        if "\x00" in view.url or "\x00" in view.referrer or "\x00" in view.title:
            return _examine_batch(body, ValueError("NUL in a text field"))
        keys.add(view.site_key)
    if any(_key_format(key) is None for key in keys):
        return _examine_batch(body, ValueError("malformed site key"))
    return batch


def _examine_view(body: bytes, refused: Exception) -> PageView:
    """A body the fast path refused, checked against the strict contract: accepted after all if its
    only fault was a number like ``1440.0`` where an integer is expected (an integer to JSON Schema,
    so to the published contract); otherwise ``InvalidFieldsError`` naming its bad fields (msgspec
    stops at the first). Invalid UTF-8 comes out of msgspec as a ``UnicodeDecodeError``, not a
    ``DecodeError`` (msgspec issue 714)."""
    try:
        members = _body_members(body)
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
        members = _body_members(body)
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


def _body_members(body: bytes) -> dict[str, msgspec.Raw] | None:
    """The members of the JSON object ``body``, undecoded; None when it is JSON but not an object.
    A ``msgspec.DecodeError`` or ``UnicodeDecodeError`` unless it is JSON in UTF-8; nesting that
    overflows msgspec's recursion is one (worded as ``decode_any`` does)."""
    try:
        try:
            members: dict[str, msgspec.Raw] | None = MEMBERS.decode(body)
        except msgspec.ValidationError:  # not an object: it may still be malformed past that point
            members = None
            WELL_FORMED.decode(body)
    except RecursionError:
        raise msgspec.DecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    body.decode()  # the scans skip the contents of strings: their UTF-8 is checked here
    return members


def _object_members(raw: bytes | msgspec.Raw) -> dict[str, msgspec.Raw] | None:
    """The members of a well-formed JSON object, undecoded; None when ``raw`` is not an object."""
    try:
        members: dict[str, msgspec.Raw] = MEMBERS.decode(raw)
    except msgspec.ValidationError:
        return None
    return members


def _checked_batch(members: dict[str, msgspec.Raw]) -> PageViewBatch | BodyErrors:
    """The batch of a body refused by the fast path, or its errors as the generic walk would list
    them (unknown members, then ``views``, then each view's), found in work bounded by those."""
    shape, left_out = _known_and_first_unknown(members, BATCH_FIELDS, MAX_REPORTED_ERRORS)
    views = members.get("views")
    items = _batch_items(views) if views is not None else None
    if not items:
        if views is not None:
            shape["views"] = _views_stand_in(views, items)
        return _with_left_out(body_errors(PageViewBatchIn, shape), left_out)
    unknown = [name for name in shape if name not in BATCH_FIELDS]
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
        item_members = _object_members(item)
        if item_members is None:
            found = BodyErrors([(path, _not_an_object(item))], 0, counted=True)
            if room <= 0:
                found = BodyErrors([], 1, counted=False)
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
        return BodyErrors(listed, unlisted, counted=True)
    return PageViewBatch(views=accepted)


def _fast_view(raw: msgspec.Raw) -> PageView | None:
    """One view of a batch as ``decode_view``'s fast path takes it, or None if it refuses it."""
    try:
        view = SINGLE.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if "\x00" in view.url or "\x00" in view.referrer or "\x00" in view.title:
        return None
    return view if _key_format(view.site_key) is not None else None


def _checked_view(members: dict[str, msgspec.Raw], path: str, room: int) -> PageView | BodyErrors:
    """The view of an object's ``members`` if the contract accepts it (a number like ``1440.0``
    where an integer is expected is one), else its first ``room`` errors (named under ``path``)."""
    value, left_out = _known_and_first_unknown(members, VIEW_FIELDS, room)
    try:
        msgspec.convert(value, PageViewIn)
    except msgspec.ValidationError:
        return _with_left_out(body_errors(PageViewIn, value, path, limit=room), left_out)
    return msgspec.convert(value, PageView)


def _known_and_first_unknown(
    members: dict[str, msgspec.Raw], known: frozenset[str], room: int
) -> tuple[dict[str, Any], int]:
    """``members`` as the walk needs them: the known ones decoded (``_member_value``), the first
    unknown ones by name only, enough to fill ``room`` and tell that there are more; and how many
    unknown ones were left out (counted, never listed)."""
    value = {name: _member_value(members[name]) for name in known if name in members}
    unknown_count = len(members) - len(value)
    wanted = max(room, 0) + 1
    value.update((name, None) for name in itertools.islice((n for n in members if n not in known), wanted))
    return value, unknown_count - min(unknown_count, wanted)


def _with_left_out(found: BodyErrors, left_out: int) -> BodyErrors:
    return found._replace(unlisted=found.unlisted + left_out) if left_out else found


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
    every field the Struct cannot check: a URL or referrer that cannot be split, a URL longer than
    ``MAX_URL_BYTES`` in UTF-8; failing none of these, ``PageWithoutHostError`` naming every URL
    without a host."""
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
