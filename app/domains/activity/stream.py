"""The live feed: Server-Sent Events of new and changed groups.

Pub/sub only wakes a stream; what it sends always comes from PostgreSQL (``ActivityService.changes``,
the same permission query as every read), as "the groups with visible activity after the last id
sent". So:

- every message's ``id`` is the newest event it counts, and a reconnect with ``Last-Event-ID``
  replays exactly what the client missed and may see, each group once, in its current state (more
  than ``FEED_STREAM_REPLAY_MAX`` groups: a ``reset`` event, then the stream goes on from now);
- a notice lost or dropped (pub/sub keeps nothing; a slow subscriber's backlog drops its oldest)
  loses nothing: the next notice, or the heartbeat's check, sends it;
- membership is re-checked by every query: a member removed from a project gets nothing more from
  it, on this stream or after reconnecting. Notices are only pre-filtered against the reader's
  projects, refreshed at every heartbeat and whenever a notice concerns the reader's membership;
- a heartbeat comment every ``FEED_STREAM_HEARTBEAT_S`` (however many notices arrive meanwhile)
  keeps proxies from closing the connection;
- the stream lives while the access token it was opened with does: it ends when the token expires
  (its ``exp``; the client reconnects with a fresh token and its Last-Event-ID), and, on the first
  wake-up or heartbeat after, when the request's own check (``ActivityService.session_valid``) would
  refuse its caller: a logout, the account deactivated or demoted, its password changed;
- it ends at once when the client goes (Litestar cancels the generator on disconnect) and when the
  process stops (``live.py``); an account holds at most ``FEED_STREAM_MAX_PER_USER`` live streams
  (``live.py``: one more is a 429);
- a client that does not ask for ``text/event-stream`` (EventSource always does) gets a poll: the
  ``ready`` event and the replay, then the response ends. So a plain HTTP client, or a contract
  fuzzer, never waits on an open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
from litestar.channels import ChannelsPlugin
from litestar.channels.subscriber import Subscriber
from litestar.response import ServerSentEventMessage

from app.core.auth import CurrentUser
from app.core.valkey import VALKEY_DOWN
from app.domains.activity.live import Slot
from app.domains.activity.services import CHANNEL, ActivityService, Notice

PAGE = 100
RETRY_MS = 2000
_notice = msgspec.json.Decoder(Notice)


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
        """The caller's stream; a live one first takes one of the account's slots (429 when the
        account's other streams hold them all)."""
        stream = cls(service, channels, caller, last_event_id, live=live)
        if live:
            stream.slot = await service.streams.claim(caller.id)
        return stream

    async def messages(self) -> AsyncIterator[ServerSentEventMessage]:
        if not self.live:  # a poll: nothing to wait for
            async for message in self._run([], asyncio.Event()):
                yield message
            return
        wake = asyncio.Event()
        self.service.streams.watch(wake)
        try:
            async with self.channels.start_subscription([CHANNEL]) as subscriber:
                notices: list[Notice] = []
                listener = asyncio.create_task(self._listen(subscriber, notices, wake))
                try:
                    async for message in self._run(notices, wake):
                        yield message
                finally:
                    listener.cancel()
        finally:
            self.service.streams.unwatch(wake)
            if self.slot is not None:
                await self.slot.release()

    async def _run(self, notices: list[Notice], wake: asyncio.Event) -> AsyncIterator[ServerSentEventMessage]:
        await self._refresh_scope()
        latest = await self.service.latest_seq()
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
        while not self.service.streams.stopping:
            timeout = min(beat - time.monotonic(), self.expires_at - time.time())
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
            if self._over() or not await self.service.session_valid(self.caller):
                return
            if time.monotonic() >= beat:
                beat = time.monotonic() + self.heartbeat_s
                if not await self._keep_slot():
                    return
                wake.clear()
                notices.clear()  # what they announced, the check below sends
                yield ServerSentEventMessage(comment="keep-alive", data=None)
                await self._refresh_scope()
                async for message in self._send_changes():
                    yield message
                continue
            wake.clear()
            pending, notices[:] = notices[:], []
            if any(self.reader_id in notice.users for notice in pending):
                await self._refresh_scope()
            if any(self._concerns(notice) for notice in pending):
                async for message in self._send_changes():
                    yield message

    def _over(self) -> bool:
        """The process is stopping or the access token has expired."""
        return self.service.streams.stopping or time.time() >= self.expires_at

    async def _keep_slot(self) -> bool:
        """Renew the stream's lease; False when it lapsed and the account's other streams took it."""
        if self.slot is None:
            return True
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

    async def _send_changes(self, limit: int | None = None) -> AsyncIterator[ServerSentEventMessage]:
        """Everything visible after the cursor, page by page; past ``limit`` groups, a ``reset``
        (exactly ``limit`` missed groups need none)."""
        sent = 0
        while True:
            room = PAGE if limit is None else min(PAGE, limit - sent)
            groups, reached, more = await self.service.changes(self.reader_id, self.cursor, room)
            for group in groups:
                yield ServerSentEventMessage(
                    event="group", id=group.last_event_id, data=msgspec.json.encode(group).decode()
                )
            self.cursor = max(self.cursor, reached)
            sent += room
            if not more:
                return
            if limit is not None and sent >= limit:
                self.cursor = await self.service.latest_seq()
                yield ServerSentEventMessage(
                    event="reset", id=self.cursor, data=_json({"last_event_id": self.cursor})
                )
                return

    async def _refresh_scope(self) -> None:
        self.is_admin, self.projects = await self.service.reader_scope(self.reader_id)

    @staticmethod
    async def _listen(subscriber: Subscriber, notices: list[Notice], wake: asyncio.Event) -> None:
        async for raw in subscriber.iter_events():
            try:
                notices.append(_notice.decode(raw))
            except msgspec.DecodeError:
                continue
            wake.set()


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()
