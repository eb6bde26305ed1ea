"""Ingest bodies to Structs, with every bad field named (``url``, ``views[3].title``).

The handlers decode the body themselves instead of taking a ``data`` parameter. The fast path is a
cached msgspec decoder of ``PageView`` (the contract's limits without its per-field NUL regex) and a
NUL check with ``in``; only a body that fails either is decoded again against the strict contract
(``PageViewIn``), which names every bad field. Both accept exactly the same bodies (checked by
``tests/property/test_pageviews_decoding.py``). The site key's pattern is checked once per distinct
key rather than once per view (a batch usually carries one key).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, TypeVar

import msgspec

from app.core.errors import FieldError, InvalidFieldsError, UnprocessableError
from app.core.validation import decode_any, struct_field_errors, whole_numbers
from app.domains.pageviews.derive import Page, parse_page, referrer_source
from app.domains.pageviews.schemas import (
    MAX_URL_BYTES,
    SITE_KEY,
    PageView,
    PageViewBatch,
    PageViewBatchIn,
    PageViewIn,
)

T = TypeVar("T")
SINGLE = msgspec.json.Decoder(PageView)
BATCH = msgspec.json.Decoder(PageViewBatch)

_key_format = re.compile(SITE_KEY).search  # as msgspec applies a Meta pattern: re.search
NO_PAGE = Page(host="", path="/", utm_source="", utm_medium="", utm_campaign="")
TOO_LONG = f"Longer than {MAX_URL_BYTES} bytes (UTF-8)"


def decode_view(body: bytes) -> PageView:
    """One view from a request body; ``InvalidFieldsError`` (400) names every bad field."""
    try:
        view = SINGLE.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _decode_slowly(PageViewIn, PageView, body, exc)
    if "\x00" in view.url or "\x00" in view.referrer or "\x00" in view.title:
        return _decode_slowly(PageViewIn, PageView, body, ValueError("NUL in a text field"))
    if _key_format(view.site_key) is None:
        return _decode_slowly(PageViewIn, PageView, body, ValueError("malformed site key"))
    return view


def decode_batch(body: bytes) -> PageViewBatch:
    """A batch from a request body; bad fields are named ``views[i].<field>``."""
    try:
        batch = BATCH.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _decode_slowly(PageViewBatchIn, PageViewBatch, body, exc)
    keys: set[str] = set()
    for view in batch.views:
        if "\x00" in view.url or "\x00" in view.referrer or "\x00" in view.title:
            return _decode_slowly(PageViewBatchIn, PageViewBatch, body, ValueError("NUL in a text field"))
        keys.add(view.site_key)
    if any(_key_format(key) is None for key in keys):
        return _decode_slowly(PageViewBatchIn, PageViewBatch, body, ValueError("malformed site key"))
    return batch


def _decode_slowly(contract: Any, fast: type[T], body: bytes, refused: Exception) -> T:
    """A body the fast path refused, checked against the strict ``contract``: accepted after all if
    its only fault was a number like ``1440.0`` where an integer is expected (an integer to JSON
    Schema, so to the published contract); otherwise ``InvalidFieldsError`` naming every bad field
    (msgspec stops at the first). Invalid UTF-8 comes out of msgspec as a ``UnicodeDecodeError``,
    not a ``DecodeError`` (msgspec issue 714)."""
    try:
        value = whole_numbers(decode_any(body))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidFieldsError([FieldError(field="body", message=f"Malformed JSON: {exc}")]) from refused
    with contextlib.suppress(msgspec.ValidationError):
        msgspec.convert(value, contract)
        return msgspec.convert(value, fast)
    errors = [
        FieldError(field=field, message=message) for field, message in struct_field_errors(contract, value)
    ]
    raise InvalidFieldsError(errors or [FieldError(field="body", message=str(refused))]) from refused


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
