"""The live feed: Server-Sent Events of new and changed groups.

Pub/sub only wakes a stream; what it sends always comes from PostgreSQL (``ActivityService.changes``,
the same permission query as every read), as "the groups with visible activity after the last id
sent". So:

- every message's ``id`` is the newest event it counts, and a reconnect with ``Last-Event-ID``
  replays exactly what the client missed and may see, each group once, in its current state (more
  than ``FEED_STREAM_REPLAY_MAX`` groups: a ``reset`` event, then the stream goes on from now);
- a notice lost (pub/sub keeps nothing) loses nothing: the next notice, or the heartbeat's check,
  sends it. Notices are taken as they arrive and folded into two flags (``_listen``), so a stream
  whose client stops reading holds constant memory however much the system publishes meanwhile;
- a stream asks at most once per ``CHANGES_INTERVAL_S`` (the notices of a burst answered by one
  query), and the streams of one reader woken by one notice share one read
  (``ActivityService.changes``): one write woke every stream of every member into a query of its own;
- membership is re-checked by every query: a member removed from a project gets nothing more from
  it, on this stream or after reconnecting. Notices are only pre-filtered against the reader's
  projects, refreshed at every heartbeat and whenever a notice concerns the reader's membership;
- a heartbeat comment every ``FEED_STREAM_HEARTBEAT_S`` (however many notices arrive meanwhile)
  keeps proxies from closing the connection;
- the stream lives while the access token it was opened with does: it ends when the token expires
  (its ``exp``; the client reconnects with a fresh token and its Last-Event-ID), and, on the first
  wake-up or heartbeat after, when the request's own check (``ActivityService.session_valid``) would
  refuse its caller: a logout, the account deactivated or demoted, its password changed;
- it ends at once when the client goes (Litestar cancels the response's task on disconnect: the
  generator is cancelled with it, or, suspended at a yield while that task waited on its ``send``,
  closed by the stream's keeper task as soon as the response's task is done) and when the process
  stops (``live.py``; a stream whose ``send`` waits then is cut by its keeper at once); an account
  holds at most ``FEED_STREAM_MAX_PER_USER`` live streams (``live.py``: one more is a 429);
- a client that stops reading without going (the server's ``send`` waits on it, the generator with
  it) is cut by the stream's keeper task, which runs meanwhile, until the stream ends: it renews the
  slot every heartbeat, and once no message was sent for ``STALL_HEARTBEATS`` heartbeats, or the
  token expired, the session ended or the slot was lost during a send, cancels the response's task
  and closes the generator (the slot and the subscription are given back; one
  ``feed_stream_stalled`` log line). So a stalled stream outlives neither its token, nor a logout,
  nor its account's cap, nor the process's stop;
- a client that does not ask for ``text/event-stream`` (EventSource always does) gets a poll: the
  ``ready`` event and the replay, then the response ends. So a plain HTTP client, or a contract
  fuzzer, never waits on an open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import types
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
import msgspec
import structlog
from litestar.channels import ChannelsPlugin
from litestar.channels.subscriber import Subscriber
from litestar.response import ServerSentEventMessage

from app.core.auth import CurrentUser
from app.core.errors import ending_on_outage
from app.core.responses import KEEP_ALIVE
from app.core.valkey import VALKEY_DOWN
from app.domains.activity.live import Slot
from app.domains.activity.services import CHANNEL, ActivityService, Notice

PAGE = 100
RETRY_MS = 2000
STALL_HEARTBEATS = 3
CHANGES_INTERVAL_S = 0.5
"""A stream asks for the changes at most once per interval, however fast notices come: notices that
arrive meanwhile are answered together by the next query. Every write of a project woke every stream
of every member into a query of its own (the cost review: one task written, about 1.7 queries per
open stream), so a burst of writes cost streams x writes queries; now streams x bursts."""
_notice = msgspec.json.Decoder(Notice)
log = structlog.get_logger("app.activity.stream")


T = TypeVar("T")


async def _finished(query: Awaitable[T]) -> T:
    """``query``'s answer, even when the client leaves meanwhile (the stream ends right after).

    The response's task group (anyio) cancels the stream, and again at every await until it ends.
    psycopg answers a running query's first cancellation by cancelling it on the server and waiting
    for that; the second one interrupted the wait, and psycopg closed the pooled connection: a new
    backend for every client that left or reconnected mid-query. The stream's queries are short
    and bounded by the statement timeout."""
    with anyio.CancelScope(shield=True):
        answer = await query
    return answer


class FeedStream:
    def __init__(
        self,
        service: ActivityService,
        channels: ChannelsPlugin,
        caller: CurrentUser,
        last_event_id: int | None,
        *,
        live: bool = True,
    ) -> None:
        """``caller``: who opened the stream (its session checked again at every wake-up and
        heartbeat while live; the stream ends at its token's ``exp``)."""
        settings = service.settings
        self.service = service
        self.channels = channels
        self.caller = caller
        self.reader_id = caller.id
        self.last_event_id = last_event_id
        self.live = live
        self.expires_at = caller.expires_at
        self.heartbeat_s = settings.feed_stream_heartbeat_s
        self.replay_max = settings.feed_stream_replay_max
        self.slot: Slot | None = None
        self.is_admin = False
        self.projects: frozenset[int] = frozenset()
        self.cursor = 0
        self._messages: AsyncGenerator[ServerSentEventMessage, None] | None = None
        self._touched = False  # a notice since the last look named the reader's membership
        self._concerned = False  # a notice since the last look may concern the reader
        self._sending = False  # a message is out, its send not yet done
        self._sent_at = time.monotonic()  # when the last send completed (or the stream started)
        self._slot_lost = False
        self._noticed: int | None = None  # the newest seq of the notices since the last look that concern it
        self._asked_at = float("-inf")  # when the changes were last asked for

    @classmethod
    async def open(
        cls,
        service: ActivityService,
        channels: ChannelsPlugin,
        caller: CurrentUser,
        last_event_id: int | None,
        *,
        live: bool,
    ) -> FeedStream:
        """The caller's stream; a live one needs one of the account's slots free (429 when the
        account's other streams hold them all). The slot is taken for good by the stream's body,
        before its first message, so a response that never starts (its client gone) holds none; one
        taken meanwhile by another stream of the account ends the body at once (the client retries
        and gets the 429).

        The reader's scope and the feed's last event are read here, before the response starts, so
        a PostgreSQL that cannot answer is the usual 503 problem: read in the body, it was a 500 or a
        200 cut off after its headers."""
        stream = cls(service, channels, caller, last_event_id, live=live)
        await stream._refresh_scope()
        stream.cursor = await _finished(service.latest_seq())
        if live:
            stream.slot = await service.streams.reserve(caller.id)
        return stream

    def messages(self) -> AsyncIterator[ServerSentEventMessage]:
        self._messages = self._messages_of()
        return self._messages

    async def _messages_of(self) -> AsyncGenerator[ServerSentEventMessage, None]:
        if not self.live:  # a poll: nothing to wait for
            async for message in self._run(asyncio.Event()):
                yield message
            return
        response = asyncio.current_task()  # the task sending this response: cut if it stalls
        wake = asyncio.Event()  # the loop's: a notice, or the process stopping
        alarm = asyncio.Event()  # the keeper's: the process stopping, the response done, a send then

        def response_done(_: object) -> None:
            alarm.set()

        try:
            # Inside the try: a client that leaves while the slot is being taken cancels this body
            # after Valkey took it, and only the finally gives it back (it stayed taken for its whole
            # lease, 45 s: five such drops and the account's every stream was a 429; the soak review).
            if not await self._take_slot():
                return
            if response is not None:
                response.add_done_callback(response_done)
            with self.service.streams.stops.watching(wake, alarm):
                async with self.channels.start_subscription([CHANNEL]) as subscriber:
                    listener = asyncio.create_task(self._listen(subscriber, wake))
                    listener.add_done_callback(self._listener_ended)
                    keeper = asyncio.create_task(self._keep(response, wake, alarm))
                    try:
                        self._sent_at = time.monotonic()
                        async for message in self._run(wake):
                            self._sending = True
                            if self.service.streams.stops.stopping:
                                alarm.set()  # a replay sent after the stop: the keeper cuts it if it stalls
                            yield message
                            self._sending = False
                            self._sent_at = time.monotonic()
                    finally:
                        listener.cancel()
                        if keeper is not asyncio.current_task():  # else the keeper is closing the stream
                            keeper.cancel()
        finally:
            if response is not None:
                response.remove_done_callback(response_done)
            if self.slot is not None:
                await self.slot.release()

    async def _take_slot(self) -> bool:
        return self.slot is None or await self.slot.take()

    async def _run(self, wake: asyncio.Event) -> AsyncIterator[ServerSentEventMessage]:
        """The stream's messages; it ends (one ``feed_stream_ended`` line) when PostgreSQL or Valkey
        stops answering, and the client reconnects after ``RETRY_MS`` with its ``Last-Event-ID``: an
        error after the response started could only cut it, and was logged as an unexplained one."""
        with ending_on_outage("feed-stream", "feed_stream_ended", user_id=self.reader_id):
            async for message in self._run_until_down(wake):
                yield message

    async def _run_until_down(self, wake: asyncio.Event) -> AsyncIterator[ServerSentEventMessage]:
        latest = self.cursor  # read by ``open``
        replay = self.last_event_id is not None
        self.cursor = min(self.last_event_id, latest) if self.last_event_id is not None else latest
        yield ServerSentEventMessage(
            event="ready", id=self.cursor, data=_json({"last_event_id": self.cursor}), retry=RETRY_MS
        )
        if replay:
            async for message in self._send_changes(limit=self.replay_max):
                yield message
        if not self.live:
            return
        beat = time.monotonic() + self.heartbeat_s
        while not self._over():
            timeout = min(beat - time.monotonic(), self.expires_at - time.time())
            if timeout > 0:
                await _wait(wake, timeout)
            if self._over() or not await _finished(self.service.session_valid(self.caller)):
                return
            if time.monotonic() >= beat:
                beat = time.monotonic() + self.heartbeat_s
                wake.clear()
                self._touched = self._concerned = False  # what they announced, the check below sends
                self._noticed = None  # the check reads alone (``ActivityService.changes``)
                yield KEEP_ALIVE
                await self._refresh_scope()
                async for message in self._send_changes():
                    yield message
                continue
            if (pause := self._asked_at + CHANGES_INTERVAL_S - time.monotonic()) > 0:
                await asyncio.sleep(pause)  # the notices of the pause are answered by one query
                if self._over():
                    return
            wake.clear()
            touched, concerned = self._touched, self._concerned
            self._touched = self._concerned = False
            noticed, self._noticed = self._noticed, None
            if touched:
                # Notices folded during the refresh were checked against the old scope; the query
                # below, made after it, covers them.
                await self._refresh_scope()
            if touched or concerned:
                async for message in self._send_changes(notice=noticed):
                    yield message

    def _over(self) -> bool:
        """The process is stopping, the access token has expired or the slot was lost."""
        return self.service.streams.stops.stopping or time.time() >= self.expires_at or self._slot_lost

    async def _keep(
        self, response: asyncio.Task[Any] | None, wake: asyncio.Event, alarm: asyncio.Event
    ) -> None:
        """Runs beside the stream, even while its generator waits on a ``send`` that does not return
        (a client that stopped reading), until the generator's ``finally`` cancels it or it closes
        the generator itself. Woken by ``alarm`` (the process stopping, the response's task done, a
        message sent while stopping) and every heartbeat:

        - the response's task is done while the generator is suspended at a yield (the client went
          during a send, the task cancelled there): the generator is closed at once, so the slot and
          the subscription are given back now (nothing logged: the client went, nothing stalled);
        - the process is stopping while a send waits: the stream is cut at once (the loop ends the
          others itself), so a client that stopped reading does not hold up the server's shutdown;
        - every heartbeat: the slot is renewed, and the stream cut (its response task cancelled, so
          the send ends, and the generator closed, so its ``finally`` gives back the slot and the
          subscription; one ``feed_stream_stalled`` line) once no message was sent for
          ``STALL_HEARTBEATS`` heartbeats or, while a send waits, its token expired, its session
          ended (``session_valid``) or its slot was lost."""
        beat = time.monotonic() + self._beat_s()
        while True:
            timeout = beat - time.monotonic()
            if timeout > 0:
                await _wait(alarm, timeout)
            alarm.clear()
            if response is not None and response.done():
                await self._close()
                return
            if self.service.streams.stops.stopping and self._sending:
                log.info("feed_stream_cut", user_id=self.reader_id, reason="stopping")
                await self._cut(response)
                return
            if time.monotonic() < beat:
                continue
            beat = time.monotonic() + self._beat_s()
            try:
                reason = await self._verdict(wake)
            except Exception:  # PostgreSQL unreachable for the session check: again at the next beat
                log.warning("feed_stream_check_failed", user_id=self.reader_id, exc_info=True)
                continue
            if reason is not None:
                idle_s = round(time.monotonic() - self._sent_at, 1)
                log.warning("feed_stream_stalled", user_id=self.reader_id, reason=reason, idle_s=idle_s)
                await self._cut(response)
                return

    def _beat_s(self) -> float:
        """Until the keeper's next look: a heartbeat, or less when the token expires sooner."""
        until_expiry = self.expires_at - time.time()
        return self.heartbeat_s if until_expiry <= 0 else min(self.heartbeat_s, until_expiry)

    async def _verdict(self, wake: asyncio.Event) -> str | None:
        """Why the stream must be cut now; None: it goes on (its slot renewed, or, lost while no send
        waits, the loop told to end it: the keeper stays, in case the loop's next send stalls)."""
        if time.monotonic() - self._sent_at >= STALL_HEARTBEATS * self.heartbeat_s:
            return "stalled"
        if self._sending and time.time() >= self.expires_at:
            return "expired"
        if self._sending and not await self.service.session_valid(self.caller):
            return "session ended"
        if await self._keep_slot():
            return None
        if self._sending:
            return "slot lost"
        self._slot_lost = True  # taken by the account's other streams: the loop ends this one
        wake.set()
        return None

    async def _cut(self, response: asyncio.Task[Any] | None) -> None:
        if response is not None:
            response.cancel()
        await self._close()

    async def _close(self) -> None:
        """Close the generator if it is suspended at a yield, in a send that its (cancelled or
        finished) response task no longer drives: cancelling that task does not reach it, so its
        ``finally`` runs here, in the keeper's task."""
        generator = self._messages
        if not isinstance(generator, types.AsyncGeneratorType) or generator.ag_running:
            return
        try:
            await generator.aclose()
        except Exception:  # its ``finally`` failed (Valkey unreachable for the unsubscribe)
            log.warning("feed_stream_close_failed", user_id=self.reader_id, exc_info=True)

    async def _keep_slot(self) -> bool:
        """Renew the stream's lease; False when it lapsed and the account's other streams took it."""
        if self.slot is None:
            return True
        if self._slot_lost:
            return False  # the stream is ending: its lease is not taken again
        try:
            return await self.slot.renew()
        except VALKEY_DOWN:
            return True  # renewed at the next heartbeat; the lease outlasts a short outage

    def _concerns(self, notice: Notice) -> bool:
        if notice.seq <= self.cursor:
            return False
        return (
            self.is_admin
            or self.reader_id in notice.audiences
            or self.reader_id in notice.users
            or not self.projects.isdisjoint(notice.projects)
        )

    async def _send_changes(
        self, limit: int | None = None, notice: int | None = None
    ) -> AsyncIterator[ServerSentEventMessage]:
        """Everything visible after the cursor, page by page; past ``limit`` groups, a ``reset``
        (exactly ``limit`` missed groups need none)."""
        sent = 0
        while True:
            room = PAGE if limit is None else min(PAGE, limit - sent)
            self._asked_at = time.monotonic()
            answer = self.service.changes(self.reader_id, self.cursor, room, notice=notice)
            groups, reached, more = await _finished(answer)
            for group in groups:
                yield ServerSentEventMessage(
                    event="group", id=group.last_event_id, data=msgspec.json.encode(group).decode()
                )
            self.cursor = max(self.cursor, reached)
            sent += room
            if not more:
                return
            if limit is not None and sent >= limit:
                self.cursor = await _finished(self.service.latest_seq())
                yield ServerSentEventMessage(
                    event="reset", id=self.cursor, data=_json({"last_event_id": self.cursor})
                )
                return

    async def _refresh_scope(self) -> None:
        self.is_admin, self.projects = await _finished(self.service.reader_scope(self.reader_id))

    def _listener_ended(self, listener: asyncio.Task[None]) -> None:
        """A listener that died (its subscription failed) leaves the stream to its heartbeat's
        checks: said once, in the log, rather than as an exception never retrieved."""
        if not listener.cancelled() and (error := listener.exception()) is not None:
            log.warning("feed_stream_listener_failed", user_id=self.reader_id, error=repr(error)[:200])

    async def _listen(self, subscriber: Subscriber, wake: asyncio.Event) -> None:
        """Takes every notice as it arrives (so the subscriber's backlog never fills) and folds it
        into two flags, whatever the generator is doing: the reader's membership was touched (their
        scope is refreshed), something may concern the reader (the changes are queried). Constant
        memory however long the stream waits on its client, and nothing lost: a query sends
        everything after the cursor."""
        async for raw in subscriber.iter_events():
            try:
                notice = _notice.decode(raw)
            except msgspec.DecodeError:
                continue
            touched = self.reader_id in notice.users
            if touched or self._concerns(notice):
                self._touched = self._touched or touched
                self._concerned = True
                self._noticed = max(self._noticed or 0, notice.seq)
                wake.set()


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Until ``event`` is set or ``timeout_s`` passed. Not ``asyncio.wait_for``: on Python 3.11 it
    swallows a cancel that arrives as the wait completes (the stop wakes a stream's loop and its
    keeper at once, and the loop's ``finally`` cancels the keeper, which then lived on)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()
