"""Metrics across processes: a granian worker that died leaves no in-flight count behind, the GitHub
gauges are one series whatever the number of workers, and what the separate worker process measures
(the relay, the jobs, the queues) reaches Prometheus through its own port."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.metrics import sweep_dead_processes
from app.db import outbox as outbox_queries
from tests.factories import create_user, make_site, serve_in_loop, wait_until
from tests.faults import Worker

ROOT = Path(__file__).resolve().parents[2]
WORKER_METRICS_PORT = 18975

GRANIAN_WORKERS = textwrap.dedent(
    """
    import json, os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    from app.core.metrics import RequestMetrics
    from app.domains.github.governor import RATELIMIT_REMAINING

    def worker(body):
        pid = os.fork()
        if pid == 0:
            body()
            os._exit(1)  # killed mid-request (a segfault, an OOM kill): no clean-up runs
        os.waitpid(pid, 0)

    def request_in_flight():
        RequestMetrics("monolith").in_progress("GET", "/api/projects").inc()

    def github_answer(remaining):
        return lambda: RATELIMIT_REMAINING.labels(token="t1", resource="core").set(remaining)

    worker(request_in_flight)
    worker(github_answer(4999))
    worker(github_answer(4998))
    if sys.argv[2] == "respawn":
        worker(lambda: RequestMetrics("monolith"))  # the respawned worker starts
    else:  # no worker starts again: the scrape itself forgets the dead ones
        import asyncio
        from app.main import _forget_dead_workers
        asyncio.run(_forget_dead_workers(None))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    text = generate_latest(registry).decode()
    print(json.dumps([line for line in text.splitlines() if line and not line.startswith("#")]))
    """
)


@pytest.mark.parametrize("sweeper", ["respawn", "scrape"])
def test_a_dead_workers_in_flight_gauge_is_swept_and_github_gauges_are_one_series(
    tmp_path: Path, sweeper: str
) -> None:
    """Swept when another worker starts, and by the scrape (``MetricsController``'s hook) when none
    does."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    done = subprocess.run(  # this interpreter, a fixed script
        [sys.executable, "-c", GRANIAN_WORKERS, str(directory), sweeper],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    samples: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    in_flight = [line for line in samples if line.startswith("app_requests_in_progress{")]
    assert in_flight == [], f"a dead worker's request is still in flight: {in_flight}"
    github = [line for line in samples if line.startswith("github_ratelimit_remaining{")]
    assert github == ['github_ratelimit_remaining{resource="core",token="t1"} 4998.0'], github


def total(text: str, name: str, **labels: str) -> float:
    found = 0.0
    for line_labels, value in re.findall(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.MULTILINE):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', line_labels))
        if all(pairs.get(key) == wanted for key, wanted in labels.items()):
            found += float(value)
    return found


async def test_the_worker_process_serves_its_relay_job_and_queue_metrics(
    database_url: str, valkey_url: str, db: AsyncConnection[Any], tmp_path: Path
) -> None:
    """Production layout (compose): the API does not run the jobs; the worker process publishes
    the outbox, runs the jobs and serves what it measured on ``WORKER_METRICS_PORT``."""
    worker = Worker(tmp_path, database_url, valkey_url, WORKER_METRICS_PORT=str(WORKER_METRICS_PORT))
    worker.start()
    url = f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics"
    try:
        ids = [
            await outbox_queries.insert_outbox(
                db, queue="default", task="purge_outbox", payload={}, request_id=None
            )
            for _ in range(3)
        ]
        async with httpx.AsyncClient(timeout=5) as http:

            async def measured() -> bool:
                try:
                    text = (await http.get(url)).text
                except httpx.HTTPError:
                    assert worker.alive(), worker.log_tail()
                    return False
                return (
                    total(text, "app_outbox_published_total", queue="default") >= len(ids)
                    and total(text, "app_jobs_total", function="purge_outbox", status="complete") >= len(ids)
                    and all(
                        f'app_queue_jobs{{queue="{queue}",state="{state}"}}' in text
                        for queue in ("default", "orders", "feed", "github")
                        for state in ("queued", "active")
                    )
                    and total(text, "app_worker_heartbeat_timestamp_seconds") > 0
                    and total(text, "app_db_pool_connections", state="size") > 0
                    and "app_outbox_oldest_unpublished_age_seconds " in text
                    and "app_outbox_unpublished " in text
                )

            await wait_until(
                measured,
                60,
                "the worker's metrics show the relay, the jobs, the queues, its pool and heartbeat",
            )
            text = (await http.get(url)).text
        assert total(text, "app_job_duration_seconds_count", function="purge_outbox") >= len(ids)
        assert abs(total(text, "app_worker_heartbeat_timestamp_seconds") - time.time()) < 300
        assert abs(total(text, "app_outbox_gauges_read_timestamp_seconds") - time.time()) < 300
    finally:
        code = worker.stop(signal.SIGTERM)
    assert code == 0, worker.log_tail()


def test_a_sweep_tolerates_another_process_removing_the_same_file_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: a respawned worker and a scrape in another worker sweep the same dead pid at once;
    ``mark_process_dead`` raised FileNotFoundError in the loser (a worker that failed to start, a 500
    scrape: 62 of 12,000 sweeps of six processes)."""
    dead = 4_000_000  # above pid_max: never alive
    gauge = tmp_path / f"gauge_livesum_{dead}.db"
    gauge.write_bytes(b"\0" * 16)
    remove = os.remove

    def another_process_first(path: str) -> None:
        remove(path)  # the other sweep wins
        remove(path)

    monkeypatch.setattr(os, "remove", another_process_first)
    assert sweep_dead_processes(tmp_path) == [dead]
    assert not gauge.exists()


async def test_the_api_reports_its_pool_and_the_ingest_backlog(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """An operator saw the sink's backlog only once 503s began, and no pool usage at all (the
    operability reviewer): each granian worker sets ``app_db_pool_connections`` every few seconds, and
    the sink ``app_page_view_sink_pending_rows`` at each write."""
    site = await make_site(db, await create_user(db), domain="gauges.example")
    async with serve_in_loop(settings) as served:
        view = {"site_key": site.ingest_key, "url": "https://gauges.example/"}
        assert (await served.client.post("/api/page-views", json=view)).status_code == 202

        async def measured() -> bool:
            text = (await served.client.get("/metrics")).text
            return total(text, "app_db_pool_connections", state="size") > 0 and (
                "app_page_view_sink_pending_rows " in text
            )

        await wait_until(measured, 30, "the pool and sink gauges are on /metrics")
