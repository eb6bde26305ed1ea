"""HTTP for the page-view ingest (``POST /api/page-views``, ``/api/page-views/batch``).

The one documented exception to "handlers take services by name" (CONVENTIONS.md): these are the
hot path, so they are plain function handlers without dependency injection (no ``data`` parameter,
no injected service: Litestar's per-request dependency resolution costs measurable throughput at
these rates). Each handler obtains ``PageViewService`` once per request from the app's registry
(``services_of_app``), checks the address's limit before the body is received
(``admit_reading``), then reads the body itself through it (``read_view``/``read_batch``:
``decode_view``/``decode_batch``). Every body received is charged to the address for its size: when
accepted (a token per 4 KiB when that is more than a token per view: the body passed on to
``record_one``/``record``), and when refused for its content (400), for its views (429, ``admit``),
for its size (413: ``refuse_oversized``, then the same 413). The single view's answer is built once (an
``ASGIResponse`` holds no per-request state). Their access-log lines leave out the client's address
(``LOG_CLIENT_IP_OPT``): the clients are a site's visitors.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import MediaType, Request, post
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi import ResponseSpec
from litestar.response.base import ASGIResponse

from app.core.errors import Problem
from app.core.middleware import LOG_CLIENT_IP_OPT
from app.core.openapi import documents_json_body, problems
from app.core.responses import JSONBytesResponse
from app.core.routing import JSON, declares_utf8, unsupported_media_type
from app.core.services import services_of_app
from app.domains.pageviews.schemas import (
    ACCEPTED_ONE_JSON,
    MAX_BATCH,
    Accepted,
    PageViewBatchIn,
    PageViewIn,
)
from app.domains.pageviews.services import BODY_BYTES_PER_TOKEN, PageViewService

BATCH_MAX_BODY = 4 * 1024 * 1024
"""The batch's body limit in bytes. A batch valid under the schema can exceed it (1000 views near
their longest fields): the limit is documented instead of raised, because the longest schema-valid
batch (escaped non-ASCII text counts up to 12 bytes per character) is tens of megabytes held in
memory per request."""
BATCH_BODY_LIMIT = f"The body may hold at most {BATCH_MAX_BODY:,} bytes (4 MiB)"
BODIES_CHARGED = (
    "A request takes one token of the address's limit per view, or per "
    f"{BODY_BYTES_PER_TOKEN:,} bytes of its body, begun, when that is more (never more than the limit's "
    "whole bucket). A body read and then refused (400, 413, or 429 for more tokens than the address has "
    f"left) takes one token per {BODY_BYTES_PER_TOKEN:,} bytes read, begun; an address without a token "
    "left is answered 429 before its body is read."
)
NOT_TAKEN = ResponseSpec(
    Problem,
    description="The body's `Content-Type` is neither JSON nor text in UTF-8 (send `application/json` or "
    "`text/plain`, charset utf-8 or none; `Accept-Post` says so), or its `Content-Encoding` is one the "
    "server does not decode (send it uncoded)",
    media_type="application/problem+json",
)
ACCEPTED_ONE = ASGIResponse(body=ACCEPTED_ONE_JSON, status_code=202, media_type=MediaType.JSON)


def _service(request: Request[Any, Any, Any]) -> PageViewService:
    return services_of_app(request.app)[PageViewService]


def _body_limit(request: Request[Any, Any, Any]) -> int:
    """The route's body limit (``MAX_BODY_BYTES`` for the single view), read on a 413 only."""
    return request.route_handler.resolve_request_max_body_size() or BATCH_MAX_BODY


INGEST_BODIES = (JSON, b"text/plain")
"""What a body may be declared as (with a UTF-8 ``charset`` or none; undeclared is read as JSON):
JSON, or text, which ``navigator.sendBeacon`` sends a string as (a type of its own would make the
beacon a CORS preflighted request, which it cannot be)."""
_USUAL_TYPES = (
    JSON,
    b"text/plain;charset=UTF-8",
    b"application/json; charset=utf-8",
    b"application/json;charset=UTF-8",
    b"text/plain",
    b"",
)
"""Declared types taken on a bytes comparison, without parsing: what fetch, sendBeacon and most
clients send."""


def _client(request: Request[Any, Any, Any]) -> tuple[str, str]:
    """The client's address (``app.core.middleware``) and agent, once the body's declared type is one
    the ingest takes (``INGEST_BODIES``: the API's 415 otherwise, before the body is read, not charged
    to the address: nothing was decoded). Both are read from the raw headers in one pass:
    ``request.headers`` parses every header into a multidict first (~3.5 µs, 2 % of a view's server
    CPU)."""
    scope = request.scope
    user_agent = ""
    for name, value in scope["headers"]:
        if name == b"user-agent":
            user_agent = value.decode("latin-1")
        elif (
            name == b"content-type" and value not in _USUAL_TYPES and not declares_utf8(value, INGEST_BODIES)
        ):
            raise unsupported_media_type(value, "POST", INGEST_BODIES)
    return scope["state"].get("client_ip") or "", user_agent


@post(
    "/api/page-views",
    status_code=202,
    tags=["analytics"],
    summary="Record one page view",
    description="Answered 202 only after the view is committed. A repeated `event_id` (same site) is "
    "stored once when it arrives within two days of the first. `ts` is clamped: never in the future, "
    "never older than 24 hours. `url` is the page's absolute address (one without a host is a 422 "
    "`page-url-without-host`). "
    "Its path is stored without its query and fragment, in one spelling: escapes of unreserved ASCII "
    "and printable non-ASCII characters are decoded (`/caf%C3%A9` is `/café`), every other byte is "
    "percent-encoded in upper-case hex whether it came raw or escaped (`/a b` is `/a%20b`, `%5C` stays), "
    "case and final slash kept, at most 2000 characters. Agents crawlerdetect knows, load-testing tools, "
    "and empty agents or agents over 512 characters are counted as bots. "
    "429: the address (an IPv6 /64 counts as one) or the site's quota. " + BODIES_CHARGED,
    opt={"rate_limit": None, LOG_CLIENT_IP_OPT: False},
    operation_class=documents_json_body(PageViewIn),
    responses={
        **problems(400, 413, 422, 429, 503),
        415: NOT_TAKEN,
        202: ResponseSpec(Accepted, description="Stored"),
    },
)
async def ingest_page_view(request: Request[Any, Any, Any]) -> ASGIResponse:
    pageviews = _service(request)
    client_ip, user_agent = _client(request)
    pageviews.admit_reading(client_ip)
    try:
        body = await request.body()
    except RequestEntityTooLarge:
        pageviews.refuse_oversized(client_ip, _body_limit(request))
        raise
    view = pageviews.read_view(body, client_ip)
    await pageviews.record_one(view, client_ip, user_agent, body)
    return ACCEPTED_ONE


@post(
    "/api/page-views/batch",
    status_code=202,
    tags=["analytics"],
    summary=f"Record up to {MAX_BATCH} page views",
    description="All or nothing: answered 202 once every view of the batch is committed. Each view "
    f"takes one of its site's quota. {BODIES_CHARGED} A batch whose views average at most "
    f"{BODY_BYTES_PER_TOKEN:,} bytes takes one token per view. "
    f"{BATCH_BODY_LIMIT}, whatever the number of views: a batch of long views may have to be split to fit "
    "(413 otherwise). Where this server's limits are set below a full batch (RATE_LIMIT_INGEST_PER_MINUTE "
    "or _PER_HOUR, SINK_MAX_PENDING, INGEST_SITE_VIEWS_PER_MINUTE or _PER_DAY), a batch larger than they "
    "could ever admit is 413 `batch-too-large`, not a 429 whose wait would not help.",
    opt={"rate_limit": None, LOG_CLIENT_IP_OPT: False},
    request_max_body_size=BATCH_MAX_BODY,
    operation_class=documents_json_body(PageViewBatchIn),
    responses={
        **problems(400, 413, 422, 429, 503),
        413: ResponseSpec(
            Problem,
            description=f"{BATCH_BODY_LIMIT}, or more views than this server's limits admit at once "
            "(`batch-too-large`); nothing was stored: send the views in smaller batches",
            media_type="application/problem+json",
        ),
        415: NOT_TAKEN,
        202: ResponseSpec(Accepted, description="Stored"),
    },
)
async def ingest_page_view_batch(request: Request[Any, Any, Any]) -> ASGIResponse:
    pageviews = _service(request)
    client_ip, user_agent = _client(request)
    pageviews.admit_reading(client_ip)
    try:
        body = await request.body()
    except RequestEntityTooLarge:
        pageviews.refuse_oversized(client_ip, BATCH_MAX_BODY)
        raise
    batch = pageviews.read_batch(body, client_ip)
    await pageviews.record(batch, client_ip, user_agent, body)
    return JSONBytesResponse(msgspec.json.encode(Accepted(accepted=len(batch.views))), status_code=202)
