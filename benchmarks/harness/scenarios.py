"""The scenario table, and how one wrk scenario is measured.

Adding a scenario is one entry in ``SCENARIOS``: which server answers it (``project``, the bare
Litestar reference ``bare``, the seed's design ``seed``), which wrk script drives it, and the URL
path those generic scripts send to (``get.lua``: a GET, with the bench account's bearer token when
``auth``; ``view.lua``: one page view per POST). A path may name ``{project_id}``: the project with
``--tasks`` tasks made for the pass. A placeholder carries ``pending`` (why it cannot run yet) and
is listed as not measured until that line is deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness.model import Options, Result
from benchmarks.harness.procfs import CpuMeter
from benchmarks.harness.provision import Site, count_rows, settled_count
from benchmarks.harness.wrk import ERROR_KINDS, run_wrk

ServerName = Literal["project", "bare", "seed", "in-process"]


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str  # may name {batch_size}, {batch_connections}, {tasks}
    server: ServerName
    script: str = ""
    path: str = ""  # URL_PATH for get.lua / view.lua
    auth: bool = False  # send the bench account's bearer token
    stores: bool = False  # rows go to a site of its own, counted for the consistency check
    batch: bool = False  # --batch-size views per request over --batch-connections connections
    env: Mapping[str, str] = field(default_factory=dict)
    default: bool = True  # part of a run without --only
    pending: str | None = None  # a placeholder: why it cannot run yet
    feed_data: bool = False  # measures the feed's data set (``benchmarks/feed_data.py``): refused without

    @property
    def needs_project(self) -> bool:
        return "{project_id}" in self.path

    def title(self, options: Options) -> str:
        return self.label.format(
            batch_size=options.batch_size, batch_connections=options.batch_connections, tasks=options.tasks
        )


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("bare-get", "bare Litestar GET /hello", "bare", "get.lua", "/hello"),
    Scenario("health", "GET /health/live", "project", "health.lua"),
    Scenario("bare-decode", "bare Litestar POST /decode (decode only)", "bare", "view.lua", "/decode"),
    Scenario("noop", "POST /bench/noop (decode only)", "project", "noop.lua"),
    Scenario("ingest", "POST /api/page-views (sink, event ids)", "project", "ingest.lua", stores=True),
    Scenario(
        "seed",
        "seed design: FastAPI + uvicorn + asyncpg, INSERT per request",
        "seed",
        "view.lua",
        "/api/page-views",
        stores=True,
    ),
    Scenario(
        "batch",
        "POST /api/page-views/batch ({batch_size} views with event ids, {batch_connections} conn.)",
        "project",
        "batch.lua",
        stores=True,
        batch=True,
    ),
    Scenario(
        "batch-no-ids",
        "POST /api/page-views/batch ({batch_size} views without event ids, {batch_connections} conn.)",
        "project",
        "batch.lua",
        stores=True,
        batch=True,
        env={"EVENT_IDS": "0"},
    ),
    Scenario(
        "tasks",
        "GET /api/projects/{{id}}/tasks (bearer token, {tasks} tasks)",
        "project",
        "get.lua",
        "/api/projects/{project_id}/tasks",
        auth=True,
    ),
    Scenario("naive", "POST /bench/naive (INSERT per request)", "project", "naive.lua", stores=True),
    Scenario("copy", "COPY through the sink's writers (in-process)", "in-process"),
    Scenario(
        "bare-decode-data",
        "bare Litestar POST /decode-data (`data: JSONBody[Struct]`)",
        "bare",
        "view.lua",
        "/decode-data",
        default=False,
    ),
    # The feed's data set (1,000,000 events, 1,000 projects, the bench account in 50 of them) is made
    # by `python -m benchmarks.feed_data --harness --only data` (same DATA_DIR as --data-dir): only
    # with --only, and refused without the data set (an empty feed measured nothing under this label).
    Scenario(
        "feed",
        "GET /api/feed (bearer token, 20 groups of 1M events, reader in 50 of 1,000 projects)",
        "project",
        "get.lua",
        "/api/feed",
        auth=True,
        default=False,
        feed_data=True,
    ),
    Scenario(
        "feed-unread",
        "GET /api/feed/unread-count (bearer token, same data)",
        "project",
        "get.lua",
        "/api/feed/unread-count",
        auth=True,
        default=False,
        feed_data=True,
    ),
)
BY_KEY = {scenario.key: scenario for scenario in SCENARIOS}


def select(only: tuple[str, ...]) -> list[Scenario]:
    """The scenarios of a run in table order: ``only`` when given, else the default set."""
    unknown = [key for key in only if key not in BY_KEY]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(BY_KEY)}")
    return [s for s in SCENARIOS if (s.key in only if only else s.default)]


@dataclass(frozen=True)
class PassFixtures:
    """Made once per pass: a fresh token (they live 15 minutes), one site per storing scenario plus
    one for warm-ups, and the project of the task-list scenario."""

    token: str
    sites: dict[str, Site]
    project_id: int | None

    def site(self, key: str) -> Site:
        return self.sites.get(key, self.sites["warmup"])


def run_wrk_scenario(
    scenario: Scenario,
    options: Options,
    base: str,
    fixtures: PassFixtures,
    database_url: str,
    meter: CpuMeter,
    profile: Callable[[float], Callable[[], dict[str, object]]] | None = None,
) -> Result:
    """Warm up against the warm-up site, then measure; count stored rows for a storing scenario.

    ``profile(seconds)``, when given, starts a profiler for the measured seconds and returns what
    collects its summary afterwards (``detail["profile"]``)."""
    connections = options.batch_connections if scenario.batch else options.connections
    rows_per_request = options.batch_size if scenario.batch else 1
    env = {"BATCH_SIZE": str(rows_per_request), **scenario.env}
    if scenario.path:
        env["URL_PATH"] = scenario.path.format(project_id=fixtures.project_id)
    if scenario.auth:
        env["BEARER_TOKEN"] = fixtures.token
    site = fixtures.site(scenario.key)

    def wrk(seconds: float, site_key: str) -> dict[str, Any]:
        return run_wrk(
            scenario.script,
            base,
            duration=seconds,
            connections=connections,
            threads=options.threads,
            env={**env, "SITE_KEY": site_key},
        )

    print(f"  {scenario.title(options)}: warm-up {options.warmup:g}s, then {options.duration:g}s", flush=True)
    if options.warmup > 0:
        wrk(options.warmup, fixtures.sites["warmup"].key)
    before = count_rows(database_url, site.id) if scenario.stores else 0
    sink_before = sink_writes(base) if scenario.stores and scenario.server == "project" else None
    collect_profile = profile(options.duration) if profile else None
    cpu_before = meter.sample()
    stats = wrk(options.duration, site.key)
    cpu_after = meter.sample()
    sink_after = sink_writes(base) if sink_before is not None else None
    requests: int = stats["requests"]
    ok = requests - stats["errors_status"]
    units = ok * rows_per_request
    per_unit = 1e6 / units if units else None  # no answer succeeded: CPU per unit means nothing ("—")
    result = Result(
        key=scenario.key,
        label=scenario.title(options),
        unit="rows/s" if scenario.batch else "req/s",
        rate=ok * rows_per_request / (stats["duration_us"] / 1e6),
        server=scenario.server,
        requests=requests,
        p50_ms=stats["latency_p50_us"] / 1000,
        p99_ms=stats["latency_p99_us"] / 1000,
        errors=sum(stats[kind] for kind in ERROR_KINDS),
        server_cpu_us=(cpu_after["server"] - cpu_before["server"]) * per_unit if per_unit else None,
        postgres_cpu_us=(cpu_after["postgres"] - cpu_before["postgres"]) * per_unit if per_unit else None,
        valkey_cpu_us=(cpu_after["valkey"] - cpu_before["valkey"]) * per_unit if per_unit else None,
        wrk_cpu_us=stats["wrk_cpu_s"] * per_unit if per_unit else None,
        detail={**stats, "connections": connections, "rows_per_request": rows_per_request},
    )
    if collect_profile is not None:
        result.detail["profile"] = collect_profile()
    if sink_before is not None and sink_after is not None and sink_after[1] > sink_before[1]:
        result.sink_writes = sink_after[1] - sink_before[1]
        result.sink_rows_per_write = (sink_after[0] - sink_before[0]) / result.sink_writes
    if scenario.stores:
        result.rows_acknowledged = ok * rows_per_request
        result.rows_stored = settled_count(database_url, site.id) - before
        result.in_flight_bound = connections * rows_per_request
    return result


def sink_writes(base: str) -> tuple[float, float] | None:
    """(views, writes) the project's page-view sink has committed so far, over every worker: the
    ``app_page_view_batch_rows`` histogram of its ``/metrics`` (None if it cannot be read). How many
    views a write carries is what its fixed cost (a round trip, a commit) is divided by."""
    try:
        text = httpx.get(f"{base}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    views = writes = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "app_page_view_batch_rows":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    views += sample.value
                elif sample.name.endswith("_count"):
                    writes += sample.value
    return views, writes
