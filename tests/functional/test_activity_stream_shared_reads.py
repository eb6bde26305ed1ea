"""The streams of one reader woken by one notice share one read of the changes (the cost review: one
task written woke every stream of every member into a query of its own, about 1.7 transactions per
open stream), and a stream never takes a read begun before its notice arrived for its answer."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.db import activity as activity_queries
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService
from app.domains.activity.stream import FeedStream
from tests.factories import Team, wait_until
from tests.functional.test_activity_feed_cost import record
from tests.functional.test_activity_stream_stall import WAIT_S, Channels, Client, _true, caller_of, encoded

STREAMS = 3


async def test_the_streams_of_one_reader_woken_by_one_notice_share_one_read(
    settings: Settings, db: AsyncConnection[Any], team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet = msgspec.structs.replace(settings, feed_stream_heartbeat_s=300.0, feed_stream_max_per_user=STREAMS)
    async with open_services(quiet, (activity_module,)) as services:
        feed = services[ActivityService]
        asked, reads, answer = 0, 0, asyncio.Event()
        ask, read = feed.changes, activity_queries.feed_changes

        async def counted_ask(*args: Any, **kwargs: Any) -> Any:
            nonlocal asked
            asked += 1
            return await ask(*args, **kwargs)

        async def counted_read(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            await answer.wait()  # until every stream has asked
            return await read(*args, **kwargs)

        monkeypatch.setattr(feed, "changes", counted_ask)
        monkeypatch.setattr(activity_queries, "feed_changes", counted_read)
        channels = [Channels() for _ in range(STREAMS)]
        clients = []
        for channel in channels:
            stream = await FeedStream.open(feed, channel, caller_of(team.viewer.id), None, live=True)  # type: ignore[arg-type]
            clients.append(Client(stream.messages(), stall=False))
        try:
            for client in clients:
                await wait_until(lambda c=client: _true(bool(c.received)), WAIT_S, "the stream is ready")
            await record(feed, [(team.editor.id, team.project)], 4_000_000)
            seq = await feed.latest_seq()
            for channel in channels:
                channel.subscriber.queue.put_nowait(encoded(seq, [team.project]))
            await wait_until(lambda: _true(asked == STREAMS), WAIT_S, "every stream asks for the changes")
            answer.set()
            for client in clients:
                await wait_until(
                    lambda c=client: _true(any(m.event == "group" for m in c.received)), WAIT_S, "its group"
                )
        finally:
            for client in clients:
                await client.close()
    assert reads == 1


async def test_a_stream_woken_by_a_later_notice_reads_again(
    settings: Settings, db: AsyncConnection[Any], team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read under way for an earlier notice may have read before the commit a later one tells of:
    a stream woken by the later notice does not take its answer."""
    quiet = msgspec.structs.replace(settings, feed_stream_heartbeat_s=300.0)
    async with open_services(quiet, (activity_module,)) as services:
        feed = services[ActivityService]
        reader, after = team.viewer.id, await feed.latest_seq()
        read, queried, answer = activity_queries.feed_changes, asyncio.Event(), asyncio.Event()

        async def held_after_reading(*args: Any, **kwargs: Any) -> Any:
            rows = await read(*args, **kwargs)
            if not answer.is_set():
                queried.set()
                await answer.wait()
            return rows

        monkeypatch.setattr(activity_queries, "feed_changes", held_after_reading)
        early = asyncio.ensure_future(feed.changes(reader, after, 10, notice=after))
        await queried.wait()  # it has read, before the write
        await record(feed, [(team.editor.id, team.project)], 4_000_000)
        later = await feed.latest_seq()  # the notice of the write
        answer.set()
        groups, _, _ = await feed.changes(reader, after, 10, notice=later)
        assert (await early)[0] == [], "the early read did not see the write"
    assert len(groups) == 1
