"""The probes' answers."""

from __future__ import annotations

from typing import Literal

import msgspec


class Liveness(msgspec.Struct, frozen=True):
    status: str


CheckFailure = Literal["timeout", "busy", "error"]
"""Why a check failed, as the public answer says it: no answer within the deadline; ``busy``, no
pooled connection came free within it (the pool saturated by the instance's own work, or its
connections hung on a PostgreSQL that stopped answering: the log line has the pool's figures); or an
error (among them the pool's attempts to connect failing, refused or timed out: ``DatabaseUnreachable``,
or a check cut at the deadline waiting for a connection meanwhile).
The cause (the error's type and message, a queue's counts, the schema's version) is only logged:
the route is public."""


class DependencyStatus(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    required: bool
    latency_ms: float
    detail: CheckFailure | None = None


class Readiness(msgspec.Struct, frozen=True):
    """``ok``: every check passed. ``degraded``: Valkey or the job queue does not answer, and the
    instance still serves (limits fail open, caches are read through, jobs wait in the outbox): ready,
    since every replica shares that Valkey and taking them all out of a load balancer for it turned a
    degraded service into none. ``unavailable``: PostgreSQL or its schema is not there."""

    status: Literal["ok", "degraded", "unavailable"]
    checks: list[DependencyStatus]
