"""The page-view ingest path (the hot path): decode, derive, hand to the sink, answer 202.

Kept off the generic stack on purpose: the body is decoded with a cached msgspec decoder instead of
a ``data`` parameter, the handler has no dependencies, and the per-request Valkey rate limiter is
replaced by an in-process token bucket per client address (one Valkey round trip per view would cap
ingest below the HTTP ceiling). The bucket is per process, so N workers admit up to N times the
configured rate.
"""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, post
from litestar.exceptions import ValidationException
from litestar.openapi import ResponseSpec
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.core.db import transaction
from app.core.errors import TooManyRequestsError, UnprocessableError
from app.core.openapi import problems
from app.db import analytics as queries
from app.domains.analytics.derive import (
    clamp_timestamp,
    classify_agent,
    device_class,
    parse_page,
    referrer_source,
    visitor_id,
)
from app.domains.analytics.sink import PageViewSink, Row

MAX_BATCH = 1000


class PageViewIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    site_key: Annotated[str, msgspec.Meta(min_length=16, max_length=64)]
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    referrer: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    title: Annotated[str, msgspec.Meta(max_length=500)] = ""
    screen_width: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None
    ts: datetime | None = None
    event_id: uuid.UUID | None = None


class PageViewBatchIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    views: Annotated[list[PageViewIn], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class Accepted(msgspec.Struct, frozen=True):
    accepted: int


SINGLE = msgspec.json.Decoder(PageViewIn)
BATCH = msgspec.json.Decoder(PageViewBatchIn)
ACCEPTED_ONE = msgspec.json.encode(Accepted(accepted=1))


def decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included: the problem handler names the field
        raise ValidationException(detail=str(exc)) from exc


class SiteKeys:
    """Ingest key → site id, cached in-process (keys never change); unknown keys are remembered
    for a short while so a flood of bogus keys does not become a flood of queries."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], negative_ttl_s: float = 30.0) -> None:
        self._pool = pool
        self._known: dict[str, int] = {}
        self._unknown: dict[str, float] = {}
        self._negative_ttl_s = negative_ttl_s

    async def site_id(self, key: str) -> int:
        site = self._known.get(key)
        if site is not None:
            return site
        if self._unknown.get(key, 0.0) > time.monotonic():
            raise UnprocessableError("Unknown site key.")
        async with transaction(self._pool) as uow:
            found = await queries.get_site_by_key(uow.conn, ingest_key=key)
        if found is None:
            if len(self._unknown) > 10_000:
                self._unknown.clear()
            self._unknown[key] = time.monotonic() + self._negative_ttl_s
            raise UnprocessableError("Unknown site key.")
        self._known[key] = found
        return found


class DailySalt:
    """The visitor-hash salt of the current UTC day: created once (first writer wins), then cached."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self._pool = pool
        self._day: date | None = None
        self._salt = b""

    async def for_day(self, day: date) -> bytes:
        if day != self._day:
            async with transaction(self._pool) as uow:
                await queries.insert_salt(uow.conn, day=day, salt=secrets.token_bytes(32))
                salt = await queries.get_salt(uow.conn, day=day)
            assert salt is not None
            self._day, self._salt = day, salt
        return self._salt


class LocalRateLimiter:
    """A token bucket per client address, in process memory."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, tokens: int = 1) -> float:
        """0 if admitted, else the seconds until ``tokens`` are available."""
        now = time.monotonic()
        level, stamp = self._buckets.get(key, (self.capacity, now))
        level = min(self.capacity, level + (now - stamp) * self.rate)
        if level >= tokens:
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            self._buckets[key] = (level - tokens, now)
            return 0.0
        self._buckets[key] = (level, now)
        return (tokens - level) / self.rate


class Ingest:
    """Everything the ingest handlers need, built once per app."""

    def __init__(
        self, sink: PageViewSink, keys: SiteKeys, salt: DailySalt, limiter: LocalRateLimiter
    ) -> None:
        self.sink = sink
        self.keys = keys
        self.salt = salt
        self.limiter = limiter

    async def rows(self, views: list[PageViewIn], client_ip: str, user_agent: str) -> list[Row]:
        """Derive the stored rows. Everything that depends only on the request (agent, salt, the
        visitor of a site) is computed once per request, not once per view of a batch."""
        now = datetime.now(UTC)
        salt = await self.salt.for_day(now.date())
        agent = classify_agent(user_agent)
        sites: dict[str, tuple[int, int]] = {}
        rows: list[Row] = []
        for view in views:
            if len(view.url) > 500 and len(view.url.encode()) > 2000:
                raise ValidationException(detail="url: longer than 2000 bytes")
            known = sites.get(view.site_key)
            if known is None:
                site_id = await self.keys.site_id(view.site_key)
                known = sites[view.site_key] = (site_id, visitor_id(salt, site_id, client_ip, user_agent))
            site_id, visitor = known
            page = parse_page(view.url)
            referrer_host, source = referrer_source(view.referrer, page.host)
            rows.append(
                (
                    site_id,
                    clamp_timestamp(view.ts, now),
                    now,
                    view.event_id,
                    visitor,
                    page.path,
                    view.title,
                    referrer_host,
                    source,
                    page.utm_source,
                    page.utm_medium,
                    page.utm_campaign,
                    view.screen_width,
                    device_class(agent, view.screen_width),
                    agent.browser,
                    agent.os,
                    agent.is_bot,
                )
            )
        return rows

    def admit(self, client_ip: str, count: int) -> None:
        wait = self.limiter.take(client_ip, count)
        if wait:
            raise TooManyRequestsError(
                "Too many page views from this address.", headers={"Retry-After": str(max(1, round(wait)))}
            )


def _client(request: Request[Any, Any, Any]) -> tuple[str, str]:
    return request.scope["state"].get("client_ip") or "", request.headers.get("user-agent", "")


@post(
    "/api/page-views",
    status_code=202,
    tags=["analytics"],
    summary="Record one page view",
    description="Answered 202 only after the view is committed. A repeated `event_id` is stored once. "
    "`ts` is clamped: never in the future, never older than 24 hours.",
    opt={"rate_limit": None},
    responses={**problems(400, 413, 422, 429, 503), 202: ResponseSpec(Accepted, description="Stored")},
)
async def ingest_page_view(request: Request[Any, Any, Any]) -> Response[bytes]:
    ingest: Ingest = request.app.state.ingest
    view = decode(SINGLE, await request.body())
    client_ip, user_agent = _client(request)
    ingest.admit(client_ip, 1)
    await ingest.sink.submit(await ingest.rows([view], client_ip, user_agent))
    return Response(ACCEPTED_ONE, status_code=202, media_type=MediaType.JSON)


@post(
    "/api/page-views/batch",
    status_code=202,
    tags=["analytics"],
    summary=f"Record up to {MAX_BATCH} page views",
    description="All or nothing: answered 202 once every view of the batch is committed.",
    opt={"rate_limit": None},
    request_max_body_size=4 * 1024 * 1024,
    responses={**problems(400, 413, 422, 429, 503), 202: ResponseSpec(Accepted, description="Stored")},
)
async def ingest_page_view_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
    ingest: Ingest = request.app.state.ingest
    batch = decode(BATCH, await request.body())
    client_ip, user_agent = _client(request)
    ingest.admit(client_ip, len(batch.views))
    await ingest.sink.submit(await ingest.rows(batch.views, client_ip, user_agent))
    return Response(
        msgspec.json.encode(Accepted(accepted=len(batch.views))), status_code=202, media_type=MediaType.JSON
    )
