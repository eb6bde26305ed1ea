"""One run: the embedded services, the servers under test, then every selected scenario, pass after
pass, against the same servers; the project's worker memory after each pass."""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from app.config import Settings, load_settings
from app.core.migrate import migrate
from app.core.runtime import resolve_services
from benchmarks.harness import procfs, servers
from benchmarks.harness.copy import run_copy_cases
from benchmarks.harness.model import BUSY_MACHINE, Options, Result, Run
from benchmarks.harness.profile import Profiler
from benchmarks.harness.provision import (
    bench_token,
    create_project_with_tasks,
    create_site,
    has_feed_data,
    prepare_database,
)
from benchmarks.harness.scenarios import PassFixtures, Scenario, run_wrk_scenario, select
from benchmarks.harness.servers import BenchError, ServerProcess
from benchmarks.harness.wrk import wrk_version

UNLIMITED = "1000000000"


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    print(f"{title} ...", flush=True)
    started = datetime.now(UTC)
    yield
    print(f"  done in {(datetime.now(UTC) - started).total_seconds():.1f}s", flush=True)


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def project_env(options: Options, services: Settings) -> dict[str, str]:
    """Production-like settings with logs at WARNING (an access-log line per request is a real cost
    at these rates) and limits no scenario reaches (the limiter still runs: its cost is measured).
    ``APP_ENV=test`` because production mode refuses the embedded services. The workers share a
    fresh ``PROMETHEUS_MULTIPROC_DIR``, as deployed (``deploy/compose.yaml``): their metrics cost
    what they cost there, and one ``/metrics`` scrape adds them all up (``sink_writes``). Everything
    else in the environment (``SINK_FLUSHERS``, ``SINK_BATCH_SIZE``, ...) passes through, to try a
    setting."""
    assert services.database_url and services.valkey_url
    metrics = options.data_dir.resolve() / "metrics" / "bench"
    shutil.rmtree(metrics, ignore_errors=True)  # prometheus_client needs it empty at the start
    metrics.mkdir(parents=True)
    return {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "APP_ENV": "test",
        "DATA_DIR": str(options.data_dir),
        "DATABASE_URL": services.database_url,
        "VALKEY_URL": services.valkey_url,
        "HOST": "127.0.0.1",
        "WORKERS": str(options.workers),
        "LOG_LEVEL": "WARNING",
        "BENCH_ROUTES": "true",
        "WORKER_IN_PROCESS": "false",
        "RATE_LIMIT_INGEST_PER_MINUTE": UNLIMITED,
        "RATE_LIMIT_INGEST_PER_HOUR": UNLIMITED,
        "INGEST_SITE_VIEWS_PER_MINUTE": UNLIMITED,
        "INGEST_SITE_VIEWS_PER_DAY": UNLIMITED,
        "SITES_PER_USER_MAX": UNLIMITED,  # each run adds sites to the same bench account
        "PROJECTS_PER_USER_MAX": UNLIMITED,  # and a project
        "MEMBERSHIPS_PER_USER_MAX": UNLIMITED,  # whose owner the bench account becomes
        "RATE_LIMIT_DEFAULT_PER_MINUTE": UNLIMITED,
        "RATE_LIMIT_DEFAULT_PER_HOUR": UNLIMITED,
        "SINK_DRIVER": options.sink_driver or os.environ.get("SINK_DRIVER", Settings().sink_driver),
    }


class Servers:
    """The servers of a run, each started the first time a scenario needs it and kept to the end."""

    def __init__(self, options: Options, services: Settings, env: dict[str, str]) -> None:
        assert services.database_url
        self.options = options
        self.database_url = services.database_url
        self.env = env
        self.log_dir = options.data_dir / "logs"
        self.running: dict[str, ServerProcess] = {}

    def _make(self, name: str) -> ServerProcess:
        workers, log_dir, inherited = self.options.workers, self.log_dir, dict(os.environ)
        if name == "project":
            return servers.project_server({**inherited, **self.env}, workers, log_dir)
        if name == "bare":
            return servers.bare_litestar_server(inherited, workers, log_dir)
        if name == "seed":
            return servers.seed_fastapi_server(inherited, self.database_url, workers, log_dir)
        raise ValueError(f"no server named {name!r}")

    def get(self, name: str) -> ServerProcess:
        if name not in self.running:
            server = self._make(name)
            with step(f"starting {server.name} on {server.base} ({self.options.workers} workers)"):
                self.running[name] = server  # stopped at the end even if it never gets ready
                server.start()
                server.wait_ready()
                print(f"  {server.name}: main pid {server.pid}, workers {server.workers()}", flush=True)
        return self.running[name]

    def stop(self) -> None:
        for server in self.running.values():
            server.stop()


@contextlib.contextmanager
def ignoring_stop_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP ignored while the servers stop, then as they were."""
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def fixtures_for(client: httpx.Client, selected: list[Scenario], options: Options, tag: str) -> PassFixtures:
    token = bench_token(client)
    keys = ["warmup", "copy", *(s.key for s in selected if s.stores)]
    sites = {key: create_site(client, token, f"{key}-{tag}.bench.example") for key in keys}
    project_id = None
    if any(s.needs_project for s in selected if not s.pending):
        project_id = create_project_with_tasks(client, token, f"Benchmark {tag}", options.tasks)
    return PassFixtures(token, sites, project_id)


def worker_memory(server: ServerProcess) -> list[procfs.Memory]:
    found = [procfs.memory(pid) for pid in server.workers()]
    return [m for m in found if m is not None]


def describe(options: Options, env: dict[str, str]) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f} before the run: other work shares the CPUs")
    return {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "server": {k: v for k, v in env.items() if k not in ("DATABASE_URL", "VALKEY_URL")},
        "machine": {"cpus": os.cpu_count(), "load_before": load_before, "platform": platform.platform()},
        "versions": {
            "python": platform.python_version(),
            **{name: version(name) for name in ("granian", "litestar", "asyncpg", "psycopg")},
            **{name: version(name) for name in ("fastapi", "uvicorn", "httptools", "uvloop", "msgspec")},
            "wrk": wrk_version(),
        },
    }


def run_pass(
    number: int,
    selected: list[Scenario],
    options: Options,
    running: Servers,
    postmaster: int | None,
    valkey: int | None,
    profiler: Profiler | None,
) -> list[Result]:
    """Every selected scenario once, on fresh fixtures and empty page-view tables."""
    database_url = running.database_url
    prepare_database(database_url)
    with httpx.Client(base_url=running.get("project").base, timeout=30) as client:
        fixtures = fixtures_for(client, selected, options, f"{number}-{secrets.token_hex(3)}")
    results: list[Result] = []
    for scenario in selected:
        if scenario.pending:
            continue
        waited, quiet = procfs.settle()
        if not quiet:
            print(f"  (the machine did not become quiet within {waited:.0f}s: other work shares the CPUs)")
        elif waited > 1:
            print(f"  (waited {waited:.1f}s for the machine to become quiet)", flush=True)
        if scenario.server == "in-process":
            measured = run_copy_cases(database_url, fixtures.site("copy"), options.copy_seconds, postmaster)
        else:
            server = running.get(scenario.server)
            meter = procfs.CpuMeter(server.pid, postmaster, valkey)
            profile = profiler.bind(server, f"pass{number}-{scenario.key}") if profiler else None
            measured = [
                run_wrk_scenario(scenario, options, server.base, fixtures, database_url, meter, profile)
            ]
            server.check_alive()
        for result in measured:
            if not quiet:
                result.detail[BUSY_MACHINE] = round(waited, 1)
        results += measured
    return results


def run(options: Options) -> Run:
    """Measure; raise ``BenchError`` when a server or a setup step fails. Servers are stopped on
    every exit."""
    selected = select(options.only)
    with step(f"starting embedded PostgreSQL and Valkey in {options.data_dir}, applying migrations"):
        services = resolve_services(load_settings({"APP_ENV": "test", "DATA_DIR": str(options.data_dir)}))
        assert services.database_url
        migrate(services.database_url)
    if any(s.feed_data for s in selected) and not has_feed_data(services.database_url):
        raise BenchError(
            "the feed scenarios measure the feed's data set, which this --data-dir does not hold: make "
            f"it with `DATA_DIR={options.data_dir} uv run python -m benchmarks.feed_data --harness "
            "--only data` (a few minutes), then run them again"
        )
    env = project_env(options, services)
    record = Run(describe(options, env))
    record.pending = {s.title(options): s.pending for s in selected if s.pending}
    postmaster = procfs.postmaster_pid(options.data_dir)
    valkey = procfs.valkey_pid(options.data_dir)
    profiler = Profiler(options.data_dir / "profiles") if options.profile else None
    running = Servers(options, services, env)
    try:
        project = running.get("project")  # provisioning goes through its API
        record.memory_at_start = worker_memory(project)
        for number in range(1, options.repeat + 1):
            with step(f"pass {number} of {options.repeat}"):
                record.passes.append(
                    run_pass(number, selected, options, running, postmaster, valkey, profiler)
                )
                project.check_alive()
                record.memory.append(worker_memory(project))
    finally:
        with ignoring_stop_signals(), step("stopping the servers"):  # a second Ctrl-C left them running
            running.stop()
    record.meta["logs"] = {name: str(server.log_path) for name, server in running.running.items()}
    return record
