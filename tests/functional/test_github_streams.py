"""Live refresh streams (``GET /api/github/refreshes/{id}/events``) are capped per account.

Each one polls Valkey every second for up to two minutes, so an account holds at most
``GITHUB_STREAM_MAX_PER_USER`` of them at once (leased slots in Valkey, ``app/core/slots.py``);
one more is a 429, another account is unaffected, and a stream that ends gives its slot back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.domains.github.schemas import RefreshOut
from tests.factories import (
    assert_problem,
    bearer,
    captured_logs,
    create_user,
    hold_slot_takes,
    http_scope,
    login,
    make_user,
    serve_in_loop,
    wait_until,
)
from tests.valkey_control import ControlledValkey

CAP = 3


class OpenStream:
    """A refresh stream held open over raw ASGI (httpx's ASGI transport buffers a whole answer)."""

    def __init__(self, app: Litestar, path: str, token: str, *, gone: bool = False) -> None:
        """``gone``: the client has left before the server reads anything (a disconnect at once)."""
        self.status: int | None = None
        self.ended = False
        """The response's last body message was sent (the server ended the stream)."""
        self._leave = asyncio.Event()
        if gone:
            self._leave.set()
        scope = http_scope("GET", path, token, (b"accept", b"text/event-stream"))
        self.task = asyncio.create_task(app(scope, self._receive, self._send))  # type: ignore[arg-type]

    async def _receive(self) -> dict[str, Any]:
        await self._leave.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True

    async def started(self) -> bool:
        return self.status is not None

    async def leave(self) -> None:
        self._leave.set()
        await asyncio.wait_for(self.task, 30)


def running_refresh() -> RefreshOut:
    refresh_id = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    return RefreshOut(
        id=refresh_id,
        username="octocat",
        status="running",
        requested_at=now,
        started_at=now,
        events_url=f"/api/github/refreshes/{refresh_id}/events",
        state_url=f"/api/github/refreshes/{refresh_id}",
    )


async def test_a_refresh_stream_ends_when_its_session_is_logged_out(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, password_hash: str
) -> None:
    """Like the activity stream, a refresh stream checks its caller at each keep-alive: a logout ends
    it there (before, it went on for up to SSE_MAX_S, two minutes, for a revoked session), and its
    slot is given back."""
    async with serve_in_loop(settings) as served:
        user = await create_user(db, password_hash)
        session = await login(served.client, user.email)
        # Started "an hour from now": the check for an abandoned job (30 s after the start) never
        # fails the refresh during the test, so only the session's end can end its stream early.
        running = msgspec.structs.replace(
            running_refresh(), started_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        )
        await valkey.set(f"github:refresh:{running.id}", msgspec.json.encode(running), ex=600)
        stream = OpenStream(served.app, running.events_url, session["access_token"])
        try:
            await wait_until(stream.started, 30, "the stream has started")
            assert stream.status == 200
            logout = await served.client.post("/api/auth/logout", headers=bearer(session["access_token"]))
            assert logout.status_code == 204, logout.text

            async def ended() -> bool:
                return stream.ended

            # The first keep-alive comes 15 s (SSE_KEEPALIVE_S) after the stream began; its end, 120 s.
            await wait_until(ended, 60, "the logged-out session's stream has ended")

            async def slot_given_back() -> bool:
                return await valkey.zcard(f"github:streams:{user.id}") == 0

            await wait_until(slot_given_back, 30, "the stream's slot is given back")
        finally:
            await stream.leave()


async def test_an_account_holds_at_most_its_cap_of_refresh_streams(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    async with serve_in_loop(settings, github_stream_max_per_user=CAP) as served:
        app, client = served.app, served.client
        owner = await make_user(db, app, name="Streamer")
        other = await make_user(db, app, name="Other")
        running = running_refresh()
        refresh_id = running.id
        await valkey.set(f"github:refresh:{refresh_id}", msgspec.json.encode(running), ex=600)
        path = running.events_url

        streams = [OpenStream(app, path, owner.token) for _ in range(CAP)]
        for stream in streams:
            await wait_until(stream.started, 30, "the stream has started")
        assert [stream.status for stream in streams] == [200] * CAP

        refused = await client.get(path, headers=owner.headers)
        assert_problem(refused, 429, "github-refresh-streams")
        assert int(refused.headers["retry-after"]) >= 1

        elsewhere = OpenStream(app, path, other.token)  # another account's slots are its own
        await wait_until(elsewhere.started, 30, "the other account's stream has started")
        assert elsewhere.status == 200

        await streams[0].leave()  # a stream that ends gives its slot back
        again = OpenStream(app, path, owner.token)
        await wait_until(again.started, 30, "the stream has started")
        assert again.status == 200

        for stream in [*streams[1:], elsewhere, again]:
            await stream.leave()
        assert await valkey.zcard(f"github:streams:{owner.id}") == 0


async def test_streams_whose_client_left_before_they_started_hold_no_slot(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The handler took the slot and only the body's ``finally`` gave it back: a client gone before
    the body started left it held for its whole lease (30 s of 429s for the account)."""
    async with serve_in_loop(settings, github_stream_max_per_user=CAP) as served:
        owner = await make_user(db, served.app, name="Streamer")
        running = running_refresh()
        await valkey.set(f"github:refresh:{running.id}", msgspec.json.encode(running), ex=600)
        gone = [OpenStream(served.app, running.events_url, owner.token, gone=True) for _ in range(CAP)]
        for stream in gone:
            await stream.leave()
        assert await valkey.zcard(f"github:streams:{owner.id}") == 0
        again = OpenStream(served.app, running.events_url, owner.token)
        await wait_until(again.started, 30, "the stream has started")
        assert again.status == 200
        await again.leave()


async def test_a_client_gone_while_the_body_takes_its_slot_gives_it_back(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client leaves as the body takes its slot (Valkey has the lease): the body is cancelled there,
    before the ``try`` that gave the slot back, and it stayed held for its whole lease (the soak
    review found it in the feed's stream, the same code as this one). The take is held after Valkey
    answered."""
    taken = hold_slot_takes(monkeypatch)
    async with serve_in_loop(settings, github_stream_max_per_user=CAP) as served:
        owner = await make_user(db, served.app, name="Streamer")
        running = running_refresh()
        await valkey.set(f"github:refresh:{running.id}", msgspec.json.encode(running), ex=600)
        stream = OpenStream(served.app, running.events_url, owner.token)

        async def slot_taken() -> bool:
            return taken.is_set()

        await wait_until(slot_taken, 30, "the body took its slot")
        assert await valkey.zcard(f"github:streams:{owner.id}") == 1
        await stream.leave()

        async def given_back() -> bool:
            return int(await valkey.zcard(f"github:streams:{owner.id}")) == 0

        await wait_until(given_back, 3, "the slot is given back")


async def test_a_refresh_stream_ends_when_the_process_stops(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """At SIGTERM (``Services.stream_stops``), not up to SSE_MAX_S later: until then granian would not
    stop the worker (``tests/reliability/test_github_stream_sigterm.py`` sends the signal)."""
    async with serve_in_loop(settings) as served:
        owner = await make_user(db, served.app, name="Streamer")
        running = msgspec.structs.replace(
            running_refresh(), started_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        )
        await valkey.set(f"github:refresh:{running.id}", msgspec.json.encode(running), ex=600)
        stream = OpenStream(served.app, running.events_url, owner.token)
        try:
            await wait_until(stream.started, 30, "the stream has started")
            served.app.state.services.stream_stops.stop()

            async def ended() -> bool:
                return stream.ended

            # Its first keep-alive comes 15 s (SSE_KEEPALIVE_S) after it began; its own end, 120 s.
            await wait_until(ended, 60, "the stream has ended at the stop")
            assert await valkey.zcard(f"github:streams:{owner.id}") == 0
        finally:
            await stream.leave()


async def test_the_cap_is_documented_as_a_429(settings: Settings) -> None:
    async with serve_in_loop(settings) as served:
        schema = (await served.client.get("/schema/openapi.json")).json()
    route = schema["paths"]["/api/github/refreshes/{refresh_id}/events"]["get"]
    assert "429" in route["responses"]
    assert "github-refresh-streams" in route["description"]


async def test_a_refresh_stream_ends_cleanly_when_valkey_goes_away(
    settings: Settings, db: AsyncConnection[Any], password_hash: str, controlled_valkey: ControlledValkey
) -> None:
    """The stream re-reads the refresh's state in Valkey every second, after its answer started: a
    Valkey gone then raised through the application, which granian could only cut with a plain-text
    error and no request id. It now ends the stream, with one ``github_refresh_stream_ended`` line."""
    async with serve_in_loop(settings, valkey_url=controlled_valkey.url) as served:
        user = await create_user(db, password_hash)
        session = await login(served.client, user.email)
        running = running_refresh()
        own = Valkey.from_url(controlled_valkey.url)
        try:
            await own.set(f"github:refresh:{running.id}", msgspec.json.encode(running), ex=600)
        finally:
            await own.aclose()
        stream = OpenStream(served.app, running.events_url, session["access_token"])
        with captured_logs(logging.WARNING) as logs:
            try:
                await wait_until(stream.started, 30, "the stream has started")
                assert stream.status == 200
                controlled_valkey.stop()

                async def ended() -> bool:
                    return stream.ended

                await wait_until(ended, 30, "the stream has ended")
            finally:
                controlled_valkey.start()
                await stream.leave()  # raises what the application raised
        assert len(logs.events("github_refresh_stream_ended")) == 1
