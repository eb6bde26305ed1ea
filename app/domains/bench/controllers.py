"""Routes that exist only for the load-test harness (``BENCH_ROUTES=true``), never in production.

``/bench/noop`` decodes the same body into the same Struct as the ingest route and answers 202
without storing it: the ceiling for ingest. ``/bench/naive`` stores one row per request with one
INSERT through the psycopg pool: the baseline the sink must beat. Like the ingest handlers they
measure, they take no injected dependencies and obtain ``PageViewService`` from the app's registry.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import MediaType, Request, Response, post

from app.core.services import Services
from app.domains.pageviews.schemas import Accepted
from app.domains.pageviews.services import PageViewService

ACCEPTED_ONE = msgspec.json.encode(Accepted(accepted=1))


def _pageviews(request: Request[Any, Any, Any]) -> PageViewService:
    services: Services = request.app.state.services
    return services[PageViewService]


@post("/bench/noop", status_code=202, opt={"rate_limit": None}, include_in_schema=False)
async def bench_noop(request: Request[Any, Any, Any]) -> Response[bytes]:
    PageViewService.decode_view(await request.body())
    return Response(ACCEPTED_ONE, status_code=202, media_type=MediaType.JSON)


@post("/bench/naive", status_code=202, opt={"rate_limit": None}, include_in_schema=False)
async def bench_naive(request: Request[Any, Any, Any]) -> Response[bytes]:
    pageviews = _pageviews(request)
    view = pageviews.decode_view(await request.body())
    client_ip = request.scope["state"].get("client_ip") or ""
    await pageviews.record_naively(view, client_ip, request.headers.get("user-agent", ""))
    return Response(ACCEPTED_ONE, status_code=202, media_type=MediaType.JSON)
