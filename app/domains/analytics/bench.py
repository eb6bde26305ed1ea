"""Routes that exist only for the load-test harness (``BENCH_ROUTES=true``), never in production.

``/bench/noop`` decodes the same body into the same Struct as the ingest route and answers 202
without storing it: the ceiling for ingest. ``/bench/naive`` stores one row per request with one
INSERT through the psycopg pool: the baseline the sink must beat.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, post

from app.core.db import transaction
from app.db import analytics as queries
from app.domains.analytics.ingest import ACCEPTED_ONE, SINGLE, Ingest, _client, decode
from app.domains.analytics.sink import COLUMNS


@post("/bench/noop", status_code=202, opt={"rate_limit": None}, include_in_schema=False)
async def bench_noop(request: Request[Any, Any, Any]) -> Response[bytes]:
    decode(SINGLE, await request.body())
    return Response(ACCEPTED_ONE, status_code=202, media_type=MediaType.JSON)


@post("/bench/naive", status_code=202, opt={"rate_limit": None}, include_in_schema=False)
async def bench_naive(request: Request[Any, Any, Any]) -> Response[bytes]:
    ingest: Ingest = request.app.state.ingest
    view = decode(SINGLE, await request.body())
    client_ip, user_agent = _client(request)
    (row,) = await ingest.rows([view], client_ip, user_agent)
    async with transaction(request.app.state.db_pool) as uow:
        await queries.insert_page_view(uow.conn, **dict(zip(COLUMNS, row, strict=True)))
    return Response(ACCEPTED_ONE, status_code=202, media_type=MediaType.JSON)
