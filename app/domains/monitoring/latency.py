"""Per-route latency: fixed-bucket histograms in process memory, merged across processes in SQL.

Only answers whose duration is the route's latency are counted: not the operational routes (a
readiness probe's own timeout during an outage paged as "slow route /health/ready"), nor streamed
answers (Server-Sent Events last as long as their client listens: every feed stream opened a "slow
route" group and its alert).

The request observer only bumps one counter (``observe`` is a dict lookup, a bisect over 50 bounds and
an increment); the service ships the counts every ``MONITORING_SHIP_INTERVAL_S`` into per-minute rows
that every process adds to. Percentiles over any window come from the merged buckets: the bounds grow
by 25 %, so a percentile is reported as its bucket's upper bound (at most 25 % above the true value).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from litestar.response import Stream
from litestar.types import Scope

BOUNDS_S: tuple[float, ...] = tuple(0.001 * 1.25**k for k in range(50))
"""Upper bounds of the buckets: 1 ms, 1.25 ms ... about 55 s; one more bucket holds the rest."""
BUCKETS = len(BOUNDS_S) + 1

UNTIMED_PREFIXES = ("/health", "/metrics", "/saq")
"""Operational routes: their answers time a probe or a page, not the API."""


def _timed(template: str, handler: object) -> bool:
    """Whether the answers of ``handler`` (serving ``template``) measure its latency: not an
    operational route's, nor a streamed one's (a handler that returns a ``Stream``, Server-Sent Events
    among them)."""
    if template.startswith(UNTIMED_PREFIXES):
        return False
    signature = getattr(handler, "parsed_fn_signature", None)
    returned = getattr(getattr(signature, "return_type", None), "annotation", None)
    return not (isinstance(returned, type) and issubclass(returned, Stream))


class RouteCounts:
    __slots__ = ("counts", "slowest_request", "slowest_s", "slowest_status")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.slowest_s = -1.0
        self.slowest_request: str | None = None
        self.slowest_status = 0


class LatencyRecorder:
    """The request observer's target: counts per route template and method since the last drain."""

    __slots__ = ("_routes", "_untimed")

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, RouteCounts]] = {}
        self._untimed: set[tuple[str, str]] = set()
        """(template, method) of the routes whose answers are not counted (``_timed``), as seen."""

    def observe(self, scope: Scope, status: int, duration_s: float) -> None:
        template = scope.get("path_template")
        if not template:
            return  # unmatched paths (404s) would grow the table without bound
        method: str = scope["method"]  # type: ignore[typeddict-item]  # an HTTP scope
        methods = self._routes.get(template)
        if methods is None:
            methods = self._routes[template] = {}
        counts = methods.get(method)
        if counts is None:
            if (template, method) in self._untimed:
                return
            if not _timed(template, scope.get("route_handler")):
                self._untimed.add((template, method))
                return
            counts = methods[method] = RouteCounts()
        counts.counts[bisect_left(BOUNDS_S, duration_s)] += 1
        if duration_s > counts.slowest_s:
            counts.slowest_s = duration_s
            counts.slowest_request = scope["state"].get("request_id")
            counts.slowest_status = status

    def held_requests(self) -> int:
        """Requests timed since the last drain (what a failed last ship loses)."""
        return sum(sum(counts.counts) for methods in self._routes.values() for counts in methods.values())

    def drain(self) -> dict[str, dict[str, RouteCounts]]:
        drained, self._routes = self._routes, {}
        return drained

    def restore(self, drained: dict[str, dict[str, RouteCounts]]) -> None:
        """Add back counts drained for a ship that failed (bounded as ``observe`` is: one entry
        per route template and method)."""
        for template, methods in drained.items():
            mine = self._routes.setdefault(template, {})
            for method, counts in methods.items():
                current = mine.get(method)
                if current is None:
                    mine[method] = counts
                    continue
                current.counts = [a + b for a, b in zip(current.counts, counts.counts, strict=True)]
                if counts.slowest_s > current.slowest_s:
                    current.slowest_s = counts.slowest_s
                    current.slowest_request = counts.slowest_request
                    current.slowest_status = counts.slowest_status


def bucket_upper_ms(bucket: int) -> float:
    return (BOUNDS_S[bucket] if bucket < len(BOUNDS_S) else BOUNDS_S[-1] * 1.25) * 1000


@dataclass(frozen=True, slots=True)
class Percentiles:
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


def quantile_ms(counts: Sequence[int], q: float) -> float:
    """The upper bound (ms) of the bucket holding the ``q`` quantile of ``counts``."""
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for bucket, count in enumerate(counts):
        seen += count
        if seen >= rank and count:
            return bucket_upper_ms(bucket)
    return bucket_upper_ms(len(counts) - 1)


def percentiles(counts: Sequence[int]) -> Percentiles:
    return Percentiles(
        requests=sum(counts),
        p50_ms=quantile_ms(counts, 0.50),
        p95_ms=quantile_ms(counts, 0.95),
        p99_ms=quantile_ms(counts, 0.99),
    )
