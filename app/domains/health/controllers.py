"""Liveness and readiness probes (exempt from rate limits, never cached).

Each answers ``HEAD`` as well as ``GET``, as every ``GET`` route does (``app.core.head``): load
balancers' probes often send ``HEAD`` (HAProxy's ``option httpchk HEAD``), and a 405 there reads as
"down" whatever the service's state. Handlers of their own for it, answering ``Response(None)``,
sent ``Content-Length: 4`` (the length of ``null``) for a ``GET`` of 15 or ~330 bytes."""

from __future__ import annotations

import math

import msgspec
from litestar import MediaType, get
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


def _answer(readiness: Readiness, health: Health) -> tuple[int, bytes, dict[str, str]]:
    """200, or 503 with ``Retry-After``: when the next probe may get a fresh answer (one answer
    serves every probe for ``HEALTH_READY_SHARED_S``), as every other 503 of the API says. The body
    is encoded once, here."""
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

    @get(
        "/ready",
        summary="PostgreSQL, its schema, Valkey and the job queue answer",
        description=(
            "One entry per check (`postgres`, `schema`, `valkey`, `queue`) with its latency. 503 "
            "(`unavailable`) when a required one is down: `postgres` or `schema`. Valkey and the queue "
            "are reported but not required: without them the instance still serves (`degraded`, 200), "
            "and every replica shares them. `schema` is down while the database lacks migrations this "
            "release needs (a newer schema is fine). A failed check's `detail` is only `timeout`, `busy` "
            "(no pooled connection of the instance came free within the deadline) or `error`: "
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
