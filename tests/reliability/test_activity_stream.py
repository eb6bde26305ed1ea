"""The live feed on the real server: HTTP mutation → outbox → relay → SAQ ``feed`` batch job → change
notice on Valkey → Server-Sent Events, all in a served app (granian, in-process workers).

- A member removed from a project while their stream is open gets nothing more from it (the
  removal itself included), while the other project's activity keeps arriving.
- Reconnecting with ``Last-Event-ID`` replays exactly the groups the client missed and may see, once
  each, in their current state; nothing from the project they left.
- When the client goes, the server's generator ends (its Valkey subscription is released).
- A stream lives while its access token does: it ends, delivering nothing more, after a logout, a
  deactivation, and when the token expires (a token minted with a near ``exp``).
- An account holds at most ``FEED_STREAM_MAX_PER_USER`` live streams (429 beyond), counted in Valkey
  with leases renewed at each heartbeat, so a dead worker's streams stop counting.
- SIGTERM with a stream open: the stream ends, and the server shuts down gracefully (its lifespan
  shutdown runs: the in-process SAQ workers stop) instead of waiting on the stream forever.

Waiting is always on something observable (an SSE message, a row count, the subscriber count, the
end of a response or of the process), with a generous deadline; a heartbeat every second bounds
"nothing more arrived".
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import load_settings
from app.core.modules import QUEUE_NAMES
from app.core.security import AccessTokens
from app.domains.activity.live import slots_key
from app.domains.activity.services import CHANNEL
from tests.factories import assert_problem, wait_until
from tests.faults import SECRET_KEY
from tests.served import ServerProcess

WAIT_S = 60.0
PASSWORD = "stream-password-123"
MAX_STREAMS = 2
ENV = {
    "SECRET_KEY": SECRET_KEY,
    "FEED_STREAM_MAX_PER_USER": str(MAX_STREAMS),
    "WORKER_IN_PROCESS": "true",
    "OUTBOX_POLL_INTERVAL_S": "0.1",
    "FEED_STREAM_HEARTBEAT_S": "1",
    "RATE_LIMIT_AUTH_PER_MINUTE": "10000",
    "RATE_LIMIT_DEFAULT_PER_MINUTE": "100000",
}


@dataclass
class Message:
    event: str  # "comment" for a heartbeat line; "end" when the response ended, "error" if it broke
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
        try:
            await self._parse()
        except httpx.HTTPError as error:
            await self.queue.put(Message("error", None, repr(error)))
        else:
            await self.queue.put(Message("end", None, None))

    async def _parse(self) -> None:
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

    async def until(self, *events: str) -> list[Message]:
        """Every message up to and including the first of one of ``events``."""
        seen = []
        while True:
            message = await self.next()
            seen.append(message)
            if message.event in events:
                return seen

    async def ended_with_nothing_new(self) -> None:
        """The response ends (cleanly) before any group arrives."""
        messages = await asyncio.wait_for(self.until("end", "group", "error"), WAIT_S)
        assert [m.event for m in messages if m.event not in ("comment",)] == ["end"], messages


@pytest.fixture
def server_env() -> Mapping[str, str]:
    return ENV


@pytest.fixture
def server(
    database_url: str,
    valkey_url: str,
    tmp_path: Path,
    db: AsyncConnection[Any],
    server_env: Mapping[str, str],
) -> Iterator[ServerProcess]:
    served = ServerProcess(database_url, valkey_url, tmp_path / "server", workers=1, env=dict(server_env))
    with served.running():
        yield served


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
        yield client


async def account(http: httpx.AsyncClient, name: str) -> dict[str, str]:
    email, password = f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com", PASSWORD
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


async def member_of_a_project(
    http: httpx.AsyncClient, db: AsyncConnection[Any]
) -> tuple[dict[str, str], dict[str, str], int]:
    """Ana, owner of a project, Ben, its member, and the project, with the set-up's events in the feed."""
    ana, ben = await account(http, "Ana"), await account(http, "Ben")
    apollo = (await call(http, "POST", "/api/projects", ana, {"name": "Apollo"}))["id"]
    invitation = await call(
        http, "POST", f"/api/projects/{apollo}/invitations", ana, {"email": ben["X-Email"]}
    )
    await call(
        http, "POST", f"/api/me/invitations/{invitation['id']}/accept", ben, {"token": invitation["token"]}
    )
    await wait_until(lambda: settled(db), WAIT_S, "the set-up's events are in the feed")
    return ana, ben, int(apollo)


async def refused(http: httpx.AsyncClient, who: dict[str, str]) -> bool:
    return (await http.get("/api/feed", headers={"Authorization": who["Authorization"]})).status_code == 401


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
        await call(
            http,
            "POST",
            f"/api/me/invitations/{invitation['id']}/accept",
            ben,
            {"token": invitation["token"]},
        )
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


# -- the stream lives while its session does ---------------------------------------------------------


async def end_session(
    http: httpx.AsyncClient, db: AsyncConnection[Any], ben: dict[str, str], how: str
) -> None:
    if how == "logout":
        response = await http.post("/api/auth/logout", headers={"Authorization": ben["Authorization"]})
        assert response.status_code == 204, response.text
        return
    root = await account(http, "Root")
    await db.execute("update users set role = 'admin' where id = %s", (int(root["X-User-Id"]),))
    login = await http.post("/api/auth/login", json={"email": root["X-Email"], "password": PASSWORD})
    assert login.status_code == 200, login.text
    root["Authorization"] = f"Bearer {login.json()['access_token']}"
    await call(http, "PATCH", f"/api/admin/users/{ben['X-User-Id']}", root, {"is_active": False})


@pytest.mark.parametrize("how", ["logout", "deactivation"])
async def test_a_stream_ends_with_its_session(
    http: httpx.AsyncClient, db: AsyncConnection[Any], how: str
) -> None:
    """Logging out, or an administrator deactivating the account, ends the open stream at its next
    wake-up or heartbeat: a task created after it is never delivered."""
    ana, ben, apollo = await member_of_a_project(http, db)
    async with open_stream(http, ben) as stream:
        assert (await stream.next()).event == "ready"
        await end_session(http, db, ben, how)
        assert await refused(http, ben)
        await call(http, "POST", f"/api/projects/{apollo}/tasks", ana, {"title": "After the session"})
        await stream.ended_with_nothing_new()


async def test_a_stream_ends_when_its_access_token_expires(
    http: httpx.AsyncClient, db: AsyncConnection[Any]
) -> None:
    """The stream ends at the token's own ``exp``, not a token lifetime after it opened: once the
    API refuses the token, what happens next is never delivered."""
    ana, ben, apollo = await member_of_a_project(http, db)
    tokens = AccessTokens(load_settings({"APP_ENV": "test", "SECRET_KEY": SECRET_KEY}))
    tokens.ttl_s = 10  # the server's own tokens live ACCESS_TOKEN_TTL_S (at least 30 s)
    token, _ = tokens.issue(int(ben["X-User-Id"]), "member", uuid.uuid4())
    short = {**ben, "Authorization": f"Bearer {token}"}
    async with open_stream(http, short) as stream:
        assert (await stream.next()).event == "ready"
        await wait_until(lambda: refused(http, short), WAIT_S, "the minted token has expired")
        await call(http, "POST", f"/api/projects/{apollo}/tasks", ana, {"title": "After expiry"})
        await stream.ended_with_nothing_new()


# -- at most FEED_STREAM_MAX_PER_USER live streams per account --------------------------------------


async def valkey_now_ms(valkey: Valkey) -> int:
    seconds, micros = await valkey.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_an_account_holds_at_most_the_configured_number_of_live_streams(
    http: httpx.AsyncClient, valkey: Valkey
) -> None:
    ben = await account(http, "Ben")
    slots = slots_key(int(ben["X-User-Id"]))
    live = {"Authorization": ben["Authorization"], "Accept": "text/event-stream"}
    async with contextlib.AsyncExitStack() as held:
        streams = [await held.enter_async_context(open_stream(http, ben)) for _ in range(MAX_STREAMS)]
        for stream in streams:
            assert (await stream.next()).event == "ready"

        refused_one = await one_more(http, live)
        assert refused_one.status_code == 429, f"stream {MAX_STREAMS + 1} of one account was let in"
        body = assert_problem(refused_one, 429, "too-many-streams")
        assert str(MAX_STREAMS) in body["detail"]
        assert int(refused_one.headers["retry-after"]) >= 1
        poll = await http.get("/api/feed/stream", headers={**live, "Accept": "*/*"})
        assert poll.status_code == 200, "a poll ends at once: it holds no slot"

        leased = await lease_ends(valkey, slots)
        assert len(leased) == MAX_STREAMS

        async def renewed() -> bool:
            return max(await lease_ends(valkey, slots)) > max(leased)

        await wait_until(renewed, WAIT_S, "a heartbeat renewed a lease")

        await held.aclose()
    await wait_until(lambda: _zero(valkey, slots), WAIT_S, "the closed streams gave their slots back")

    # Another worker's stream holds a slot until its lease ends; a dead worker's lease lapses.
    await valkey.zadd(slots, {"another-worker": await valkey_now_ms(valkey) + 600_000})
    async with open_stream(http, ben) as stream:
        assert (await stream.next()).event == "ready"
        assert_problem(await one_more(http, live), 429, "too-many-streams")
        await valkey.zadd(slots, {"another-worker": await valkey_now_ms(valkey) - 1})
        async with open_stream(http, ben) as another:
            assert (await another.next()).event == "ready"
        assert await valkey.zscore(slots, "another-worker") is None


async def one_more(http: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    """The answer to one more live stream, read whole unless it is a stream (then closed at once)."""
    async with http.stream("GET", "/api/feed/stream", headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
    return response


async def lease_ends(valkey: Valkey, key: str) -> list[float]:
    return [score for _, score in await valkey.zrange(key, 0, -1, withscores=True)]


async def _zero(valkey: Valkey, key: str) -> bool:
    return bool(await valkey.zcard(key) == 0)


# -- the server stops with streams open -------------------------------------------------------------


@pytest.mark.parametrize("server_env", [{**ENV, "LOG_LEVEL": "INFO"}])
async def test_sigterm_ends_open_streams_and_the_server_shuts_down_gracefully(
    http: httpx.AsyncClient, server: ServerProcess
) -> None:
    """granian runs the application's shutdown only once every connection has ended (and, with a
    kill timeout, kills a worker that takes longer): an open stream must end on SIGTERM."""
    ben = await account(http, "Ben")
    async with open_stream(http, ben) as stream:
        assert (await stream.next()).event == "ready"
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)  # as a container stop does: to the main process
        ended = await asyncio.wait_for(stream.until("end", "error"), WAIT_S)  # heartbeats until then
        assert ended[-1].event == "end", ended
    assert await asyncio.to_thread(server.process.wait, WAIT_S) == 0
    log = server.log_path.read_text(errors="replace")
    assert "refused to gracefully stop" not in log
    shut_down = [line for line in log.splitlines() if '"Working shutting down"' in line]
    assert len(shut_down) == len(QUEUE_NAMES), "the lifespan shutdown stopped every in-process SAQ worker"
