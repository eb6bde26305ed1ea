"""Liveness and readiness probes (exempt from rate limits, never cached).

Each answers ``HEAD`` as well as ``GET`` (RFC 9110 9.1): load balancers' probes often send ``HEAD``
(HAProxy's ``option httpchk HEAD``), and a 405 there reads as "down" whatever the service's state.
A ``HEAD`` answers the ``GET``'s status and headers, ``Content-Length`` included, without the body
(RFC 9110 9.3.2, 8.6): ``Response(None)`` was sent as ``Content-Length: 4``, the length of ``null``."""

from __future__ import annotations

import math
from typing import Any

import msgspec
from litestar import MediaType, Response, get, head
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.response.base import ASGIResponse

from app.core.openapi import problems
from app.core.routing import Controller
from app.domains.health.schemas import Liveness, Readiness
from app.domains.health.services import HealthService

Health = NamedDependency[HealthService]


LIVE_BODY = msgspec.json.encode(Liveness(status="ok"))
LIVE = ASGIResponse(body=LIVE_BODY, media_type=MediaType.JSON)
"""The one answer of ``/health/live``, built once (probes call it several times a second)."""


class _HeadOf(Response[None]):
    """The answer to a ``GET`` whose body is ``body``, for its ``HEAD``: the same status and headers,
    ``Content-Type`` and ``Content-Length`` of that body included, and no body. Litestar never tells a
    handler's response that it answers a ``HEAD`` (as for the files' ``_FileHead``), and
    ``is_head_response`` leaves out the headers it would derive from the body: they are given here."""

    def __init__(self, body: bytes, *, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        length = {"Content-Type": MediaType.JSON.value, "Content-Length": str(len(body))}
        super().__init__(
            None, status_code=status_code, media_type=MediaType.JSON, headers={**length, **(headers or {})}
        )

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        return super().to_asgi_response(*args, **{**kwargs, "is_head_response": True})


def _answer(readiness: Readiness, health: Health) -> tuple[int, bytes, dict[str, str]]:
    """200, or 503 with ``Retry-After``: when the next probe may get a fresh answer (one answer
    serves every probe for ``HEALTH_READY_SHARED_S``), as every other 503 of the API says. The body
    is encoded here for the ``GET`` and the ``HEAD`` alike: the ``HEAD``'s length is the ``GET``'s."""
    body = msgspec.json.encode(readiness)
    if readiness.status != "unavailable":
        return 200, body, {}
    return 503, body, {"Retry-After": str(max(1, math.ceil(health.shared_s)))}


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(
        "/live",
        summary="The process is up",
        responses={
            **problems(),
            200: ResponseSpec(Liveness, description="The process is up"),
        },
    )
    async def liveness(self) -> ASGIResponse:
        return LIVE

    @head("/live", summary="The process is up (the status alone)", responses={**problems()})
    async def liveness_head(self) -> Response[None]:
        return _HeadOf(LIVE_BODY)

    @get(
        "/ready",
        summary="PostgreSQL, its schema, Valkey and the job queue answer",
        description=(
            "One entry per check (`postgres`, `schema`, `valkey`, `queue`) with its latency. 503 "
            "(`unavailable`) when a required one is down: `postgres` or `schema`. Valkey and the queue "
            "are reported but not required: without them the instance still serves (`degraded`, 200), "
            "and every replica shares them. `schema` is down while the database lacks migrations this "
            "release needs (a newer schema is fine). A failed check's `detail` is only `timeout` or `error`: "
            "the cause is in the server's log (`readiness_check_failed`, once a minute per check). "
            "One answer serves every probe for `HEALTH_READY_SHARED_S`; a 503 says so in `Retry-After`."
        ),
        responses={
            **problems(),
            200: ResponseSpec(Readiness, description="Ready: every check passed (`ok`), or `degraded`"),
            503: ResponseSpec(
                data_container=Readiness,
                description="Not ready: a required check failed",
            ),
        },
    )
    async def readiness(self, health: Health) -> ASGIResponse:
        status, body, headers = _answer(await health.readiness(), health)
        return ASGIResponse(body=body, status_code=status, headers=headers, media_type=MediaType.JSON)

    @head(
        "/ready",
        summary="Ready or not (the status alone: 200, or 503 when a required check failed)",
        responses={
            **problems(),
            503: ResponseSpec(None, description="Not ready: a required check failed"),
        },
    )
    async def readiness_head(self, health: Health) -> Response[None]:
        status, body, headers = _answer(await health.readiness(), health)
        return _HeadOf(body, status_code=status, headers=headers)
