"""Liveness and readiness probes (exempt from rate limits, never cached).

Each answers ``HEAD`` as well as ``GET`` (RFC 9110 9.1): load balancers' probes often send ``HEAD``
(HAProxy's ``option httpchk HEAD``), and a 405 there reads as "down" whatever the service's state."""

from __future__ import annotations

import math

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


LIVE = ASGIResponse(body=msgspec.json.encode(Liveness(status="ok")), media_type=MediaType.JSON)
"""The one answer of ``/health/live``, built once (probes call it several times a second)."""


def _answer(readiness: Readiness, health: Health) -> tuple[int, dict[str, str]]:
    """200, or 503 with ``Retry-After``: when the next probe may get a fresh answer (one answer
    serves every probe for ``HEALTH_READY_SHARED_S``), as every other 503 of the API says."""
    if readiness.status != "unavailable":
        return 200, {}
    return 503, {"Retry-After": str(max(1, math.ceil(health.shared_s)))}


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
        return Response(None, media_type=MediaType.JSON)

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
            503: ResponseSpec(
                data_container=Readiness,
                description="Not ready: a required check failed",
            ),
        },
    )
    async def readiness(self, health: Health) -> Response[Readiness]:
        readiness = await health.readiness()
        status, headers = _answer(readiness, health)
        return Response(readiness, status_code=status, headers=headers)

    @head(
        "/ready",
        summary="Ready or not (the status alone: 200, or 503 when a required check failed)",
        responses={
            **problems(),
            503: ResponseSpec(None, description="Not ready: a required check failed"),
        },
    )
    async def readiness_head(self, health: Health) -> Response[None]:
        status, headers = _answer(await health.readiness(), health)
        return Response(None, status_code=status, headers=headers, media_type=MediaType.JSON)
