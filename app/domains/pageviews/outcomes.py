"""The ingest's refusals, counted by route and status.

The request metrics leave the ingest out (``app.main``: its hot path pays for no histogram), so its
400s, 415s, 422s, 429s and 503s showed in no metric at all: an ingest failing through a database
outage, or refusing a site's every view, was seen only in the access log. A request observer counts
the answers that are not a success; an accepted view costs it one comparison.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

INGEST_ROUTES = frozenset({"/api/page-views", "/api/page-views/batch"})

NOT_ACCEPTED = Counter(
    "app_page_view_requests_not_accepted",
    "Page-view ingest requests answered with an error status (nothing of them stored), by route and status",
    ["route", "status"],
)
_children: dict[tuple[str, int], Any] = {}


def count_not_accepted(scope: Any, status: int, duration_s: float) -> None:
    """Request observer: count an ingest request answered with a status of 300 or more."""
    if status < 300:
        return
    template = scope.get("path_template")
    if template not in INGEST_ROUTES:
        return
    key = (template, status)
    child = _children.get(key)
    if child is None:
        child = _children[key] = NOT_ACCEPTED.labels(template, str(status))
    child.inc()
