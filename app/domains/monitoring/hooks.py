"""The hooks the application and the workers call: they find the process's ``MonitoringService`` in
the registry and hand it the event (all synchronous, in memory)."""

from __future__ import annotations

from typing import Any

from litestar.types import Scope

from app.core.services import Services
from app.domains.monitoring.services import MonitoringService


def _service(registry: Services | None) -> MonitoringService | None:
    """The process's monitoring, if it has a registry with the module enabled."""
    return registry.get(MonitoringService) if registry is not None else None


_last_app: tuple[object, MonitoringService | None] = (None, None)
"""The last app seen and its service: the request observer runs on every request, so the registry
lookup is done once per app (a process holds one; tests build several)."""


def _of_scope(scope: Scope) -> MonitoringService | None:
    global _last_app
    app = scope.get("litestar_app")
    if app is None:
        return None
    if _last_app[0] is not app:
        _last_app = (app, _service(app.state.get("services")))
    return _last_app[1]


async def capture_request_exception(exc: Exception, scope: Scope) -> None:
    """Litestar ``after_exception`` hook (awaited before the problem answer: it only buffers)."""
    service = _of_scope(scope)
    if service is not None:
        service.capture_exception(exc, scope)


def observe_request(scope: Scope, status: int, duration_s: float) -> None:
    """Request observer: one histogram bucket bump per request."""
    service = _of_scope(scope)
    if service is not None:
        service.latency.observe(scope, status, duration_s)


async def before_job(ctx: Any) -> None:
    service = _service(ctx.get("services"))
    if service is not None:
        service.job_started(ctx)


async def after_job(ctx: Any) -> None:
    service = _service(ctx.get("services"))
    if service is not None:
        service.job_finished(ctx)
