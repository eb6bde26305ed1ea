"""A bare Litestar app: the framework's own cost, the ceiling the project's middleware is held to.

Served by granian with the project's settings (``benchmarks/harness/servers.py``). Nothing from
``app`` is imported, so nothing the project changes can change it.

- ``GET /hello``: a small JSON answer (the reference for ``GET /health/live``).
- ``POST /decode``: decodes the ingest body the way the project's ingest and no-op routes do
  (``await request.body()`` and a cached ``msgspec.json.Decoder``), answers 202, stores nothing
  (the reference for ``POST /bench/noop``).
- ``POST /decode-data``: the same through a ``data: JSONBody[Struct]`` parameter (the idiomatic way),
  for comparison; not in the default scenario set.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.exceptions import ValidationException
from litestar.params import JSONBody


# A copy of app/domains/pageviews/schemas.py's PageViewIn: the same shape and constraints.
class PageViewIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    site_key: Annotated[str, msgspec.Meta(min_length=16, max_length=64)]
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    referrer: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    title: Annotated[str, msgspec.Meta(max_length=500)] = ""
    screen_width: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None
    ts: datetime | None = None
    event_id: uuid.UUID | None = None


class Hello(msgspec.Struct, frozen=True):
    status: str


class Accepted(msgspec.Struct, frozen=True):
    accepted: int


DECODER = msgspec.json.Decoder(PageViewIn)
ACCEPTED_ONE = msgspec.json.encode(Accepted(accepted=1))


@get("/hello")
async def hello() -> Hello:
    return Hello(status="ok")


@post("/decode", status_code=202)
async def decode(request: Request[Any, Any, Any]) -> Response[bytes]:
    try:
        DECODER.decode(await request.body())
    except msgspec.DecodeError as exc:
        raise ValidationException(detail=str(exc)) from exc
    return Response(ACCEPTED_ONE, status_code=202, media_type=MediaType.JSON)


@post("/decode-data", status_code=202)
async def decode_data(data: JSONBody[PageViewIn]) -> Accepted:
    return Accepted(accepted=1)


def create_app() -> Litestar:
    return Litestar(route_handlers=[hello, decode, decode_data])
