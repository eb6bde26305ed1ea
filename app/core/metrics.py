"""Prometheus request metrics, recorded by the request pipeline instead of a middleware layer.

The names and labels are those Litestar's ``PrometheusMiddleware`` produced with ``prefix="app"``
and ``group_path=True`` (the Grafana dashboards in ``deploy/grafana`` query them):

- ``app_requests_total`` and ``app_request_duration_seconds`` (histogram), labels ``method``,
  ``path`` (the route template), ``status_code``, ``app_name``; ``app_requests_error_total`` for
  answers of 500 and above;
- ``app_requests_in_progress`` (gauge; ``status_code`` is always 200, as Litestar labelled it).

A request that matched no route (a 404 for an unknown path has no template, and counting raw paths
would let clients grow the label set without bound) is counted under ``path="(unmatched)"`` with its
method folded to the standard ones or ``OTHER``; routes under ``unmeasured`` prefixes not at all.
The labelled children are looked up once per (method, route, status) and kept: recording a
request is a dict lookup and three increments, not three label resolutions.

With several granian workers (``PROMETHEUS_MULTIPROC_DIR``) each worker writes its values to files
of its pid, and ``/metrics`` adds them up. A live gauge (``livesum``: the in-flight count) of a
worker that died mid-request would be added for ever: every worker, when it starts (a respawned
one replaces a dead one), removes the live gauges of the processes that are gone
(``sweep_dead_processes``; counters and histograms of the dead stay, they are totals).

The worker process (``python -m workers``) records the SAQ job metrics (``app_jobs_total``,
``app_job_duration_seconds``, ``app_queue_jobs``: ``app.core.queues``) and the relay's, and serves
them on ``WORKER_METRICS_PORT`` (``serve_worker_metrics``): the API's ``/metrics`` never sees another
process's registry.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar.types import Scope
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client import start_http_server as _start_http_server

if TYPE_CHECKING:
    from app.core.pool import FailFastPool

_LABELS = ("method", "path", "status_code", "app_name")

REQUESTS = Counter("app_requests_total", "Total requests", _LABELS)
DURATION = Histogram(
    "app_request_duration_seconds",
    "Request duration, in seconds",
    _LABELS,
    # prometheus_client's defaults end at 10 s; requests run to the 15 s statement timeout, a GitHub
    # cold lookup's wait or an upload's body (all of it above 10 s was one bucket, +Inf)
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 15, 30, 60),
)
ERRORS = Counter("app_requests_error_total", "Total errors in requests", _LABELS)
IN_PROGRESS = Gauge(
    "app_requests_in_progress", "Total requests currently in progress", _LABELS, multiprocess_mode="livesum"
)

JOBS = Counter(
    "app_jobs",
    "SAQ jobs processed, by queue, function and outcome (complete, retried, failed, aborted)",
    ["queue", "function", "status"],
)
JOBS_SWEPT = Counter(
    "app_jobs_swept",
    "Jobs a queue's sweep took back from a worker gone mid-job (aborted, then retried or ended)",
    ["queue"],
)
JOB_DURATION = Histogram(
    "app_job_duration_seconds",
    "SAQ job run time from its start to its outcome, in seconds",
    ["queue", "function"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
QUEUE_JOBS = Gauge(
    "app_queue_jobs",
    "Jobs of a SAQ queue by state (queued: waiting for a worker; active: being run), as last read",
    ["queue", "state"],
    multiprocess_mode="mostrecent",
)

POOL_CONNECTIONS = Gauge(
    "app_db_pool_connections",
    "This process's PostgreSQL pool: its connections (size), those idle in it (available), and the "
    "requests waiting for one or for its check (waiting), as last read",
    ["state"],
    multiprocess_mode="livesum",
)
OUTBOX_UNPUBLISHED = Gauge(
    "app_outbox_unpublished",
    "Outbox rows committed and not yet enqueued, as last read",
    multiprocess_mode="mostrecent",
)
OUTBOX_OLDEST_AGE = Gauge(
    "app_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest outbox row not yet enqueued (0 when none), as last read: the relay's lag",
    multiprocess_mode="mostrecent",
)
OUTBOX_READ_AT = Gauge(
    "app_outbox_gauges_read_timestamp_seconds",
    "When the outbox's backlog and lag were last read (Unix time): a failed read keeps their last values, "
    "so once this is old (the database not answering) they are stale, however healthy they look",
    multiprocess_mode="mostrecent",
)
WORKER_HEARTBEAT = Gauge(
    "app_worker_heartbeat_timestamp_seconds",
    "When the worker's event loop last ran its gauge round (Unix time): an old value is a stalled worker, "
    "which its metrics thread would otherwise keep answering for; with several processes, the oldest",
    ["loop"],  # labelled: no value in a process that runs no worker (see record_process)
    multiprocess_mode="livemin",  # the most recent of them hid one process stalled among live ones
)


_PER_PROCESS = (
    "(label pid; role: web, a granian worker): the default process_* metrics are not exported when "
    "several workers share the multiprocess directory"
)
PROCESS_MEMORY = Gauge(
    "app_process_resident_memory_bytes",
    f"Resident memory of each live process {_PER_PROCESS}",
    ["role"],
    multiprocess_mode="liveall",
)
PROCESS_CPU = Gauge(
    "app_process_cpu_seconds",
    f"CPU time each live process has used {_PER_PROCESS}",
    ["role"],
    multiprocess_mode="liveall",
)
PROCESS_OPEN_FDS = Gauge(
    "app_process_open_fds",
    f"Open file descriptors of each live process {_PER_PROCESS}",
    ["role"],
    multiprocess_mode="liveall",
)
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def record_process(role: str = "web") -> None:
    """Set this process's memory, CPU and open files (read from ``/proc``; nothing where it is not).
    Labelled, so no value exists for a process until it records one (a gauge without labels starts
    at 0 in every process that imports it: the CLI's too, for ever)."""
    PROCESS_CPU.labels(role).set(time.process_time())
    with contextlib.suppress(OSError):
        with open("/proc/self/statm", "rb") as statm:
            PROCESS_MEMORY.labels(role).set(int(statm.read().split()[1]) * _PAGE_SIZE)
        PROCESS_OPEN_FDS.labels(role).set(len(os.listdir("/proc/self/fd")))


def record_pool(pool: FailFastPool) -> None:
    """Set ``app_db_pool_connections`` from the app pool's stats (in memory: no query); ``waiting``
    from its own count of borrowers waiting now (``FailFastPool.borrowers_waiting``): psycopg's also
    counts those that gave up, until a connection comes back."""
    stats = pool.get_stats()
    POOL_CONNECTIONS.labels("size").set(stats.get("pool_size", 0))
    POOL_CONNECTIONS.labels("available").set(stats.get("pool_available", 0))
    POOL_CONNECTIONS.labels("waiting").set(pool.borrowers_waiting)


_UNKNOWN = object()
UNMATCHED = "(unmatched)"
"""The ``path`` label of a request that matched no route."""
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def multiprocess_directory() -> Path | None:
    """``PROMETHEUS_MULTIPROC_DIR``, when this process writes its metrics to files there."""
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process holds the pid
    return True


def sweep_dead_processes(directory: Path | None = None) -> list[int]:
    """Remove the live gauges (``livesum``, ``livemax``...) of processes that no longer exist from the
    multiprocess directory (as ``prometheus_client.multiprocess.mark_process_dead``, tolerating a
    concurrent sweep); the pids swept.

    Nothing calls ``mark_process_dead`` when a granian worker dies (a crash, an OOM kill), so its
    in-flight count stayed in every later scrape. A recycled pid that is alive again keeps its files
    until that process is gone too."""
    directory = directory or multiprocess_directory()
    if directory is None:
        return []
    files: dict[int, list[str]] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            match = _LIVE_GAUGE_FILE.fullmatch(entry.name)
            if match is not None:
                files.setdefault(int(match.group(1)), []).append(entry.path)
    dead = sorted(pid for pid in files if pid != os.getpid() and not _alive(pid))
    for pid in dead:
        # What ``mark_process_dead`` does, minus its failure when another process (a worker starting,
        # a scrape in another worker) removed the same file first.
        for path in files[pid]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    return dead


def serve_worker_metrics(port: int, host: str) -> None:
    """Serve this process's metrics (Prometheus text on ``/metrics`` and ``/``) on ``host:port``, from
    a thread: the worker process answers no HTTP otherwise. With ``PROMETHEUS_MULTIPROC_DIR`` set,
    the files of every process writing there are added up, as the API's ``/metrics`` does."""
    registry = REGISTRY
    if multiprocess_directory() is not None:
        sweep_dead_processes()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    _start_http_server(port, addr=host, registry=registry)


class RequestMetrics:
    """The request metrics of one application (its ``app_name`` and the route prefixes it skips)."""

    __slots__ = ("_app_name", "_completed", "_in_progress", "_unmeasured")

    def __init__(self, app_name: str, unmeasured: Iterable[str] = ()) -> None:
        sweep_dead_processes()  # built once per granian worker, when it starts (see the module's doc)
        self._app_name = app_name
        self._unmeasured = tuple(unmeasured)
        self._completed: dict[tuple[str, str, int], Any] = {}
        self._in_progress: dict[tuple[str, str], Any] = {}

    def measures(self, template: str) -> bool:
        return not any(template == prefix or template.startswith(prefix) for prefix in self._unmeasured)

    def observe(self, scope: Scope, status: int, duration_s: float) -> None:
        """Count one answered request (called by the outer layer once the answer is sent). One that
        matched no route (a 404 for an unknown path, a 405, a method of its own) is counted under
        ``UNMATCHED`` and its method folded to ``KNOWN_METHODS`` or ``OTHER``: seen (a scan, a client
        calling a removed route), with labels a client cannot multiply."""
        method: str = scope["method"]  # type: ignore[typeddict-item]  # an HTTP scope
        template = scope.get("path_template")
        if template is None:
            template = UNMATCHED
            method = method if method in KNOWN_METHODS else "OTHER"
        key = (method, template, status)
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
