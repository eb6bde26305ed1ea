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
- a heartbeat comment every ``FEED_STREAM_HEARTBEAT_S`` keeps proxies from closing the connection;
- the stream ends after the access-token lifetime (the client reconnects with a fresh token and its
  Last-Event-ID), and at once when the client goes (Litestar cancels the generator on disconnect);
- a client that does not ask for ``text/event-stream`` (EventSource always does) gets a poll: the
  ``ready`` event and the replay, then the response ends. So a plain HTTP client, or a contract
  fuzzer, never waits on an open stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
from litestar.channels import ChannelsPlugin
from litestar.channels.subscriber import Subscriber
from litestar.response import ServerSentEventMessage

from app.domains.activity.services import CHANNEL, ActivityService, Notice

PAGE = 100
RETRY_MS = 2000
_notice = msgspec.json.Decoder(Notice)


class FeedStream:
    def __init__(
        self,
        service: ActivityService,
        channels: ChannelsPlugin,
        reader_id: int,
        last_event_id: int | None,
        *,
        live: bool = True,
    ) -> None:
        settings = service.settings
        self.service = service
        self.channels = channels
        self.reader_id = reader_id
        self.last_event_id = last_event_id
        self.live = live
        self.heartbeat_s = settings.feed_stream_heartbeat_s
        self.replay_max = settings.feed_stream_replay_max
        self.lifetime_s = float(settings.access_token_ttl_s)
        self.is_admin = False
        self.projects: frozenset[int] = frozenset()
        self.cursor = 0

    async def messages(self) -> AsyncIterator[ServerSentEventMessage]:
        if not self.live:  # a poll: nothing to wait for
            async for message in self._run([], asyncio.Event()):
                yield message
            return
        async with self.channels.start_subscription([CHANNEL]) as subscriber:
            notices: list[Notice] = []
            wake = asyncio.Event()
            listener = asyncio.create_task(self._listen(subscriber, notices, wake))
            try:
                async for message in self._run(notices, wake):
                    yield message
            finally:
                listener.cancel()

    async def _run(self, notices: list[Notice], wake: asyncio.Event) -> AsyncIterator[ServerSentEventMessage]:
        ends_at = time.monotonic() + self.lifetime_s
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
        while (remaining := ends_at - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(wake.wait(), timeout=min(self.heartbeat_s, remaining))
            except TimeoutError:
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
        """Everything visible after the cursor, page by page; past ``limit`` groups, a ``reset``."""
        sent = 0
        while True:
            groups, reached = await self.service.changes(self.reader_id, self.cursor, PAGE)
            for group in groups:
                yield ServerSentEventMessage(
                    event="group", id=group.last_event_id, data=msgspec.json.encode(group).decode()
                )
            self.cursor = max(self.cursor, reached)
            sent += len(groups)
            if len(groups) < PAGE:
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
