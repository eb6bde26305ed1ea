"""What the scenarios need, made through the project's API (an account, sites, a project with
tasks) and read from its database (row counts for the consistency check)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from app.config import Settings, load_settings
from app.core.migrate import migrate
from app.core.runtime import release_services, resolve_services
from benchmarks.harness.servers import BenchError

BENCH_EMAIL = "bench@example.com"
BENCH_PASSWORD = "bench-password-not-secret"  # noqa: S105 - a throwaway account in the bench database


@dataclass(frozen=True)
class Site:
    id: int
    key: str


@contextmanager
def migrated_embedded(data_dir: Path) -> Iterator[Settings]:
    """Test settings on the embedded PostgreSQL and Valkey under ``data_dir`` (started unless already
    running), the migrations applied; the embedded services are released after."""
    settings = resolve_services(load_settings({"APP_ENV": "test", "DATA_DIR": str(data_dir)}))
    try:
        assert settings.database_url
        migrate(settings.database_url)
        yield settings
    finally:
        release_services()


def _expect(response: httpx.Response, status: int, what: str) -> httpx.Response:
    if response.status_code != status:
        raise BenchError(f"{what} failed: {response.status_code} {response.text[:300]}")
    return response


def bench_token(client: httpx.Client) -> str:
    """Register the bench account (201, or 409 when an earlier run made it) and log in. Access
    tokens live 15 minutes at most: log in once per pass."""
    client.post(
        "/api/auth/register",
        json={"email": BENCH_EMAIL, "password": BENCH_PASSWORD, "display_name": "Benchmark"},
    )
    response = client.post("/api/auth/login", json={"email": BENCH_EMAIL, "password": BENCH_PASSWORD})
    token: str = _expect(response, 200, "log-in").json()["access_token"]
    return token


def create_site(client: httpx.Client, token: str, domain: str) -> Site:
    response = client.post(
        "/api/sites/", json={"domain": domain}, headers={"Authorization": f"Bearer {token}"}
    )
    body = _expect(response, 201, "POST /api/sites").json()
    return Site(int(body["id"]), str(body["ingest_key"]))


def create_project_with_tasks(client: httpx.Client, token: str, name: str, tasks: int) -> int:
    """A project owned by the bench account with ``tasks`` tasks (varied status and priority)."""
    headers = {"Authorization": f"Bearer {token}"}
    response = client.post("/api/projects/", json={"name": name, "description": "benchmark"}, headers=headers)
    project_id = int(_expect(response, 201, "POST /api/projects").json()["id"])
    statuses, priorities = ("todo", "in_progress", "done"), ("low", "medium", "high", "urgent")
    for i in range(tasks):
        body = {
            "title": f"Benchmark task {i}",
            "description": "A task of the authenticated-read scenario.",
            "status": statuses[i % len(statuses)],
            "priority": priorities[i % len(priorities)],
        }
        response = client.post(f"/api/projects/{project_id}/tasks/", json=body, headers=headers)
        _expect(response, 201, f"POST /api/projects/{project_id}/tasks")
    return project_id


DATA_DIR_MARKER = ".bench-data-dir"
"""The file that marks a directory as a benchmark's own data directory (``claim_data_dir``)."""


def claim_data_dir(path: Path, *, default: Path, setting: str = "--data-dir") -> str | None:
    """Why ``path`` may not be a benchmark's data directory, else None (it is claimed: marked). Every
    pass empties the page views of the PostgreSQL under it, so a ``just serve`` ``DATA_DIR`` given by
    mistake lost every view it held (the harness review). Refused: a directory that holds anything and
    no marker, but the default (made by the releases before the marker). ``setting``: what names
    ``path`` to the person running it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        marker = path / DATA_DIR_MARKER
        if not marker.exists() and any(path.iterdir()) and path.resolve() != default.resolve():
            return (
                f"{setting} {path} holds data that is not a benchmark's (no {DATA_DIR_MARKER} in it): "
                "each pass empties the page views of its database; give the benchmark a directory of "
                "its own (an empty or new one)"
            )
        marker.touch()
    except OSError as exc:
        return f"{setting} {path} cannot be used: {exc}"
    return None


def has_feed_data(database_url: str) -> bool:
    """Whether the feed's data set is in the database (``python -m benchmarks.feed_data --harness``)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("select exists (select 1 from activity_groups)").fetchone()
    return bool(row and row[0])


def prepare_database(database_url: str) -> None:
    """Empty the page-view tables of the bench database and make sure today's partitions exist."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
        conn.execute("truncate page_views, page_view_event_ids")


def count_rows(database_url: str, site_id: int) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("select count(*) from page_views where site_id = %s", (site_id,)).fetchone()
    assert row is not None
    return int(row[0])


def settled_count(database_url: str, site_id: int, timeout_s: float = 15.0) -> int:
    """The row count once the server has finished the requests wrk abandoned when it stopped
    (polled until two reads half a second apart agree)."""
    deadline = time.monotonic() + timeout_s
    last = count_rows(database_url, site_id)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = count_rows(database_url, site_id)
        if now == last:
            return now
        last = now
    return last
