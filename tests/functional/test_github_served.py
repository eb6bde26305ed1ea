"""The served app (granian, two worker processes, in-process SAQ workers) against the fake GitHub:
a cold username under concurrent load costs one fetch chain; a refresh's completion arrives over SSE.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection

from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo, repos_named
from tests.served import ServerProcess

ACCOUNT = {
    "email": "github-watcher@example.com",
    "password": "watcher-password-123",
    "display_name": "Watcher",
}
STREAM_DEADLINE_S = 60.0


@pytest.fixture
def server(
    database_url: str,
    valkey_url: str,
    tmp_path: Path,
    fake_server: FakeGitHubServer,
    db: object,
    valkey: object,
) -> Iterator[ServerProcess]:
    served = ServerProcess(
        database_url,
        valkey_url,
        tmp_path / "server",
        workers=2,
        env={
            "GITHUB_API_URL": fake_server.url,
            "GITHUB_LANGUAGE_REPOS": "2",
            "GITHUB_RETRY_WAIT_S": "0.01",
            "WORKER_IN_PROCESS": "true",
            "RATE_LIMIT_DEFAULT_PER_MINUTE": "100000",
        },
    )
    with served.running():
        yield served


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.base, timeout=30, limits=httpx.Limits(max_connections=200)
    ) as client:
        assert (await client.post("/api/auth/register", json=ACCOUNT)).status_code == 202
        login = await client.post(
            "/api/auth/login", json={"email": ACCOUNT["email"], "password": ACCOUNT["password"]}
        )
        client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        yield client


async def test_100_concurrent_requests_for_a_cold_username_cause_exactly_one_fetch_chain(
    fake: FakeGitHub, http: httpx.AsyncClient
) -> None:
    fake.add_user("cold", repos_named(150, language="Go", languages={"Go": 100}))
    fake.latency_s = 0.05  # every GitHub answer takes a while: the requests surely overlap

    responses = await asyncio.gather(*(http.get("/api/github/users/cold") for _ in range(100)))

    assert [r.status_code for r in responses] == [200] * 100
    assert len({r.json()["fetched_at"] for r in responses}) == 1
    assert all(r.json()["total_stars"] == 0 and r.json()["repositories"]["scanned"] == 150 for r in responses)
    paths = [r.path for r in fake.recorded()]
    assert paths.count("/users/cold") == 1
    assert len([p for p in paths if p.endswith("/repos")]) == 2
    assert len([p for p in paths if p.endswith("/languages")]) == 2
    assert len(paths) == 5


async def read_events(http: httpx.AsyncClient, url: str) -> list[dict[str, object]]:
    """Every ``refresh`` event of the stream until the server ends it."""
    events: list[dict[str, object]] = []
    async with asyncio.timeout(STREAM_DEADLINE_S), http.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        # nginx passes each event on, nobody keeps the stream (as the feed's)
        headers = response.headers
        assert (headers["x-accel-buffering"], headers["cache-control"]) == ("no", "no-store")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:").strip()))
    return events


async def test_a_refresh_completion_is_pushed_over_sse_and_replayed_to_a_late_subscriber(
    fake: FakeGitHub, http: httpx.AsyncClient, db: AsyncConnection[Any]
) -> None:
    user = fake.add_user("pushed", [FakeRepo(name="r", stars=3, language="Go", languages={"Go": 1})])
    assert (await http.get("/api/github/users/pushed")).status_code == 200
    # Not fetched moments ago (a refresh of such a profile fetches nothing and queues no job).
    await db.execute("update github_profiles set fetched_at = fetched_at - interval '10 minutes'")
    user.followers = 99
    fake.latency_s = 0.3  # the refresh runs long enough for the stream to see it under way

    accepted = await http.post("/api/github/users/pushed/refresh")
    assert accepted.status_code == 202
    refresh = accepted.json()
    events = await read_events(http, refresh["events_url"])

    assert events[-1]["status"] == "succeeded"
    assert all(event["id"] == refresh["id"] for event in events)
    statuses = [event["status"] for event in events]
    assert statuses == sorted(statuses, key=["queued", "running", "succeeded"].index)
    late = await read_events(http, refresh["events_url"])
    assert [event["status"] for event in late] == ["succeeded"]
    profile = (await http.get("/api/github/users/pushed")).json()
    assert profile["profile"]["followers"] == 99
    missing = await http.get("/api/github/refreshes/00000000-0000-0000-0000-000000000000/events")
    assert missing.status_code == 404
