"""Routes that exist only for the load-test harness (``BENCH_ROUTES=true``), never in production.

``/bench/noop`` decodes the same body into the same Struct as the ingest route and answers 202
without storing it: the ceiling for ingest. ``/bench/naive`` stores one row per request with one
INSERT through the psycopg pool: the baseline the sink must beat. Like the ingest handlers they
measure, they take no injected dependencies, obtain ``PageViewService`` from the app's registry and
answer 202 as the ingest route does (one ``ASGIResponse`` built once): the no-op costs what the
ingest costs minus storing the view.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, post
from litestar.response.base import ASGIResponse

from app.core.services import services_of_app
from app.domains.pageviews.schemas import ACCEPTED_ONE_JSON
from app.domains.pageviews.services import PageViewService

ACCEPTED_ONE = ASGIResponse(body=ACCEPTED_ONE_JSON, status_code=202, media_type=MediaType.JSON)


def _pageviews(request: Request[Any, Any, Any]) -> PageViewService:
    return services_of_app(request.app)[PageViewService]


@post("/bench/noop", status_code=202, opt={"rate_limit": None}, include_in_schema=False)
async def bench_noop(request: Request[Any, Any, Any]) -> ASGIResponse:
    PageViewService.decode_view(await request.body())
    return ACCEPTED_ONE


@post("/bench/naive", status_code=202, opt={"rate_limit": None}, include_in_schema=False)
async def bench_naive(request: Request[Any, Any, Any]) -> ASGIResponse:
    pageviews = _pageviews(request)
    view = pageviews.decode_view(await request.body())
    client_ip = request.scope["state"].get("client_ip") or ""
    await pageviews.record_naively(view, client_ip, request.headers.get("user-agent", ""))
    return ACCEPTED_ONE
