"""The mixed load of ``benchmarks/locustfile.py`` driven from locust's web UI in a real browser, as
benchmarks/README.md tells a person to: start a swarm from the form, watch every kind of simulated
user's requests reach the statistics without a failure, stop it.

The app is served with the limits the README gives for a load test, on the seeded demo data (what
``just serve`` seeds); locust gets the same credentials through the variables the README names.
The page is watched like every other (``watched_page``): locust's UI must not fetch anything from
outside 127.0.0.1, nor log a script error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import expect
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import open_services
from app.modules import MODULES
from app.seed import run_seeders
from tests.browser.conftest import WatchedPage
from tests.factories import wait_until
from tests.served import ROOT, ServerProcess, free_port

LOAD_TEST_LIMITS = {  # benchmarks/README.md, "locust"
    "RATE_LIMIT_AUTH_PER_MINUTE": "1000",
    "RATE_LIMIT_AUTH_PER_HOUR": "100000",
    "RATE_LIMIT_DEFAULT_PER_MINUTE": "100000",
    "RATE_LIMIT_DEFAULT_PER_HOUR": "1000000",
}
STATS = "fetch('/stats/requests').then((answer) => answer.json())"
"""locust's statistics and its failures' messages, as its page reads them."""
RENDER_TIMEOUT_MS = 60_000
"""Generous: the simulated users wait 0.2-6 s between their requests, on a shared machine."""
EVERY_KIND_OF_USER = (
    "/api/auth/login",  # members and the analyst
    "/api/projects/",  # members
    "/api/sites/[id]/summary",  # the analyst
    "/api/page-views",  # visitors
)


@pytest.fixture
async def seeded(db: AsyncConnection[Any], valkey: Valkey, settings: Settings) -> Settings:
    """The demo data, on an empty database and an emptied Valkey: the swarm logs every simulated user
    in from 127.0.0.1, and the Schemathesis run before it leaves the login throttle's counters there
    (11 attempts for ana@example.com, the schema's example address, from 127.0.0.1: every member
    log-in of the swarm that picked ana was a 429 for the next quarter of an hour)."""
    async with open_services(settings, MODULES) as services:
        await run_seeders(services)
    return settings


@pytest.fixture
def load_test_server(
    database_url: str, valkey_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        database_url, valkey_url, tmp_path_factory.mktemp("locust-server"), env=LOAD_TEST_LIMITS
    )
    with server.running():
        yield server


def start_locust(host: str, port: int, settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """The README's ``locust --host …`` with its web UI on ``port``: the locustfile and the UI's
    address come from pyproject.toml's ``[tool.locust]``, as they do for a person."""
    env = {
        **os.environ,
        "ADMIN_EMAIL": settings.admin_email,
        "ADMIN_PASSWORD": settings.admin_password,
        "DEMO_PASSWORD": settings.demo_password,
    }
    command = ["-m", "locust", "--host", host]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, *command, "--web-port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
async def locust_ui(seeded: Settings, load_test_server: ServerProcess, tmp_path: Path) -> AsyncIterator[str]:
    """locust's web UI against the load-test server, with the seed's credentials: its URL."""
    port = free_port()
    log_path = tmp_path / "locust.log"
    process = start_locust(load_test_server.base, port, seeded, log_path)
    url = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        assert process.poll() is None, log_path.read_text(errors="replace")
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(url)).status_code == 200
        except httpx.TransportError:
            return False

    try:
        await wait_until(answers, 60, "locust's web UI answers")
        said = log_path.read_text(errors="replace")
        assert f"Starting web interface at {url}" in said, f"the UI listens beyond this machine:\n{said}"
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_a_swarm_started_from_the_web_ui_runs_every_user_without_a_failure(
    locust_ui: str, watched_page: WatchedPage
) -> None:
    watch = await watched_page()
    page = watch.page
    opened = await page.goto(locust_ui)
    assert opened is not None and opened.status == 200

    await page.get_by_label("Number of users (peak concurrency)").fill("10")
    await page.get_by_label("Ramp up (users started/second)").fill("10")
    await page.get_by_role("button", name="Start").click()

    statistics = page.get_by_role("table")
    for name in EVERY_KIND_OF_USER:
        row = statistics.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))
        try:
            await expect(row).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        except AssertionError as missing:
            stats = await page.evaluate(STATS)
            raise AssertionError(f"no row {name!r}; locust's errors: {stats['errors']}") from missing
    stats = await page.evaluate(STATS)
    await page.get_by_role("button", name="Stop").click()
    await expect(page.get_by_text("stopped", exact=True)).to_be_visible(timeout=RENDER_TIMEOUT_MS)

    by_name = {row["name"]: row for row in stats["stats"]}
    assert all(by_name[name]["num_requests"] > 0 for name in EVERY_KIND_OF_USER), by_name
    failed = {name: row["num_failures"] for name, row in by_name.items() if row["num_failures"]}
    assert not failed and not stats["errors"], (failed, stats["errors"])
    watch.assert_clean()
