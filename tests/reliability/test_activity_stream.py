"""The live feed on the real server: HTTP mutation → outbox → relay → SAQ ``feed`` batch job → change
notice on Valkey → Server-Sent Events, all in a served app (granian, in-process workers).

- A member removed from a project while their stream is open gets nothing more from it (the
  removal itself included), while the other project's activity keeps arriving.
- Reconnecting with ``Last-Event-ID`` replays exactly the groups the client missed and may see, once
  each, in their current state; nothing from the project they left.
- When the client goes, the server's generator ends (its Valkey subscription is released).

Waiting is always on something observable (an SSE message, a row count, the subscriber count),
with a generous deadline; a heartbeat every second bounds "nothing more arrived".
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.domains.activity.services import CHANNEL
from tests.factories import wait_until
from tests.served import ServerProcess

WAIT_S = 60.0
ENV = {
    "WORKER_IN_PROCESS": "true",
    "OUTBOX_POLL_INTERVAL_S": "0.1",
    "FEED_STREAM_HEARTBEAT_S": "1",
    "RATE_LIMIT_AUTH_PER_MINUTE": "10000",
    "RATE_LIMIT_DEFAULT_PER_MINUTE": "100000",
}


@dataclass
class Message:
    event: str  # "comment" for a heartbeat line
    id: int | None
    data: Any


class Stream:
    """An open SSE response read by a background task into a queue (so waiting can time out
    without cancelling the response's iterator)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        event, ident, data = "message", None, list[str]()
        async for line in self.response.aiter_lines():
            if line.startswith(":"):
                await self.queue.put(Message("comment", None, line[1:].strip()))
            elif line == "":
                if data:
                    await self.queue.put(Message(event, ident, msgspec.json.decode("\n".join(data))))
                event, ident, data = "message", None, list[str]()
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "id":
                    ident = int(value)
                elif name == "data":
                    data.append(value)

    async def next(self) -> Message:
        return await asyncio.wait_for(self.queue.get(), WAIT_S)

    async def until(self, event: str) -> list[Message]:
        """Every message up to and including the first ``event`` one."""
        seen = []
        while True:
            message = await self.next()
            seen.append(message)
            if message.event == event:
                return seen


@pytest.fixture
def server(
    database_url: str, valkey_url: str, tmp_path: Path, db: AsyncConnection[Any]
) -> Iterator[ServerProcess]:
    served = ServerProcess(database_url, valkey_url, tmp_path / "server", workers=1, env=ENV)
    served.start()
    try:
        served.wait_ready_sync()
        yield served
    finally:
        served.kill(signal.SIGTERM)


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
        yield client


async def account(http: httpx.AsyncClient, name: str) -> dict[str, str]:
    email, password = f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com", "stream-password-123"
    registered = await http.post(
        "/api/auth/register", json={"email": email, "password": password, "display_name": name}
    )
    assert registered.status_code in (201, 202), registered.text
    login = await http.post("/api/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    return {
        "Authorization": f"Bearer {login.json()['access_token']}",
        "X-User-Id": str(login.json()["user"]["id"]),
        "X-Email": email,
    }


async def call(http: httpx.AsyncClient, method: str, url: str, who: dict[str, str], body: Any = None) -> Any:
    response = await http.request(method, url, json=body, headers={"Authorization": who["Authorization"]})
    assert response.status_code in (200, 201, 204), response.text
    return response.json() if response.content else None


async def settled(db: AsyncConnection[Any]) -> bool:
    """Every activity event in the outbox has been published and stored by the feed."""
    row = await (
        await db.execute(
            "select (select count(*) from outbox where task = 'record_activity'),"
            " (select count(*) from outbox where task = 'record_activity' and published_at is null),"
            " (select count(*) from activity_events)"
        )
    ).fetchone()
    assert row is not None
    return bool(row[1] == 0 and row[0] == row[2])


@contextlib.asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient, who: dict[str, str], last_event_id: int | None = None
) -> AsyncIterator[Stream]:
    headers = {"Authorization": who["Authorization"], "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with http.stream("GET", "/api/feed/stream", headers=headers, timeout=None) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        stream = Stream(response)
        try:
            yield stream
        finally:
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await stream.task


async def subscribers(valkey: Valkey) -> int:
    counts = await valkey.pubsub_numsub(CHANNEL)
    return int(counts[0][1]) if counts else 0


async def test_removal_stops_the_stream_and_a_reconnect_replays_exactly_what_was_missed(
    http: httpx.AsyncClient, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    ana, ben = await account(http, "Ana"), await account(http, "Ben")
    apollo = (await call(http, "POST", "/api/projects", ana, {"name": "Apollo"}))["id"]
    gemini = (await call(http, "POST", "/api/projects", ana, {"name": "Gemini"}))["id"]
    for project in (apollo, gemini):
        invitation = await call(
            http, "POST", f"/api/projects/{project}/invitations", ana, {"email": ben["X-Email"]}
        )
        await call(http, "POST", f"/api/me/invitations/{invitation['id']}/accept", ben)
    await wait_until(lambda: settled(db), WAIT_S, "the set-up's events are in the feed")

    async with open_stream(http, ben) as stream:
        ready = await stream.next()
        assert ready.event == "ready" and ready.id == ready.data["last_event_id"]

        await call(http, "POST", f"/api/projects/{apollo}/tasks", ana, {"title": "a1"})
        arrived = [m for m in await stream.until("group") if m.event == "group"]
        assert [m.data["text"] for m in arrived] == ["Ana created task 'a1' in Apollo"]
        assert arrived[0].id == arrived[0].data["last_event_id"]

        await call(http, "DELETE", f"/api/projects/{apollo}/members/{ben['X-User-Id']}", ana)
        await call(http, "POST", f"/api/projects/{apollo}/tasks", ana, {"title": "a2"})
        await call(http, "POST", f"/api/projects/{gemini}/tasks", ana, {"title": "g1"})
        # Commit order is event order: anything from Apollo would have come before Gemini's task.
        messages = await stream.until("group")
        groups = [m.data for m in messages if m.event == "group"]
        assert [(g["project"]["name"], g["text"]) for g in groups] == [
            ("Gemini", "Ana created task 'g1' in Gemini")
        ]
        await wait_until(lambda: settled(db), WAIT_S, "the removal's events are in the feed")
        quiet = await stream.until("comment")  # a heartbeat: the stream is idle
        assert [m for m in quiet if m.event == "group"] == []
        last_seen = groups[-1]["last_event_id"]
        gemini_group = groups[-1]["key"]

    await wait_until(lambda: _none(valkey), WAIT_S, "the server's stream ended with the client")

    # While Ben is away: Gemini's group grows, a new Gemini group starts, Apollo goes on without him.
    await call(http, "POST", f"/api/projects/{gemini}/tasks", ana, {"title": "g2"})
    task = (await call(http, "POST", f"/api/projects/{apollo}/tasks", ana, {"title": "a3"}))["id"]
    await call(http, "PATCH", f"/api/tasks/{task}", ana, {"status": "done"})
    await call(http, "PATCH", f"/api/projects/{gemini}", ana, {"description": "moon"})
    await wait_until(lambda: settled(db), WAIT_S, "the missed events are in the feed")

    expected = [
        g
        for g in (await call(http, "GET", "/api/feed?limit=100", ben))["items"]
        if g["last_event_id"] > last_seen
    ]
    assert sorted(g["text"] for g in expected) == [
        "Ana created 'g1' and 'g2' in Gemini",
        "Ana updated project Gemini",
    ]

    async with open_stream(http, ben, last_event_id=last_seen) as stream:
        replay = await stream.until("comment")
        assert replay[0].event == "ready" and replay[0].id == last_seen
        groups = [m.data for m in replay if m.event == "group"]
        assert sorted(g["key"] for g in groups) == sorted(g["key"] for g in expected), (
            "exactly the missed groups"
        )
        assert len({g["key"] for g in groups}) == len(groups), "each once"
        assert gemini_group in {g["key"] for g in groups} and all(
            g["project"]["id"] == gemini for g in groups
        )
        assert [m.id for m in replay if m.event == "group"] == sorted(g["last_event_id"] for g in groups)
        grown = next(g for g in groups if g["key"] == gemini_group)
        assert grown["count"] == 2, "a group in its current state"


async def _none(valkey: Valkey) -> bool:
    return await subscribers(valkey) == 0
