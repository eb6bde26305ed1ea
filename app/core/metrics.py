"""Prometheus request metrics, recorded by the request pipeline instead of a middleware layer.

The names and labels are those Litestar's ``PrometheusMiddleware`` produced with ``prefix="app"``
and ``group_path=True`` (the Grafana dashboards in ``deploy/grafana`` query them):

- ``app_requests_total`` and ``app_request_duration_seconds`` (histogram), labels ``method``,
  ``path`` (the route template), ``status_code``, ``app_name``; ``app_requests_error_total`` for
  answers of 500 and above;
- ``app_requests_in_progress`` (gauge; ``status_code`` is always 200, as Litestar labelled it).

Only routed requests are counted (a 404 for an unknown path has no template, and counting raw paths
would let clients grow the label set without bound), and routes under ``unmeasured`` prefixes not at
all. The labelled children are looked up once per (method, route, status) and kept: recording a
request is a dict lookup and three increments, not three label resolutions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from litestar.types import Scope
from prometheus_client import Counter, Gauge, Histogram

_LABELS = ("method", "path", "status_code", "app_name")

REQUESTS = Counter("app_requests_total", "Total requests", _LABELS)
DURATION = Histogram("app_request_duration_seconds", "Request duration, in seconds", _LABELS)
ERRORS = Counter("app_requests_error_total", "Total errors in requests", _LABELS)
IN_PROGRESS = Gauge(
    "app_requests_in_progress", "Total requests currently in progress", _LABELS, multiprocess_mode="livesum"
)

_UNKNOWN = object()


class RequestMetrics:
    """The request metrics of one application (its ``app_name`` and the route prefixes it skips)."""

    __slots__ = ("_app_name", "_completed", "_in_progress", "_unmeasured")

    def __init__(self, app_name: str, unmeasured: Iterable[str] = ()) -> None:
        self._app_name = app_name
        self._unmeasured = tuple(unmeasured)
        self._completed: dict[tuple[str, str, int], Any] = {}
        self._in_progress: dict[tuple[str, str], Any] = {}

    def measures(self, template: str) -> bool:
        return not any(template == prefix or template.startswith(prefix) for prefix in self._unmeasured)

    def observe(self, scope: Scope, status: int, duration_s: float) -> None:
        """Count one answered request (called by the outer layer once the answer is sent)."""
        template = scope.get("path_template")
        if template is None:
            return
        key = (scope["method"], template, status)  # type: ignore[typeddict-item]  # an HTTP scope
        children = self._completed.get(key, _UNKNOWN)
        if children is _UNKNOWN:
            children = self._completed[key] = self._children(*key)
        if children is not None:
            count, duration, error = children
            count.inc()
            duration.observe(duration_s)
            if error is not None:
                error.inc()

    def in_progress(self, method: str, template: str) -> Gauge | None:
        """The gauge child of a route (None for an unmeasured one), for the route layer to move."""
        key = (method, template)
        gauge = self._in_progress.get(key, _UNKNOWN)
        if gauge is _UNKNOWN:
            gauge = self._in_progress[key] = (
                IN_PROGRESS.labels(method, template, "200", self._app_name)
                if self.measures(template)
                else None
            )
        return gauge  # type: ignore[no-any-return]

    def _children(self, method: str, template: str, status: int) -> tuple[Any, Any, Any] | None:
        if not self.measures(template):
            return None
        labels = (method, template, str(status), self._app_name)
        error = ERRORS.labels(*labels) if status >= 500 else None
        return REQUESTS.labels(*labels), DURATION.labels(*labels), error
