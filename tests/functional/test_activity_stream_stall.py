"""A live feed stream whose client stops reading.

The server's ``send`` then waits on the client (granian applies backpressure), so the generator
stays suspended at a ``yield``. Here a task stands in for the server's response task: it iterates
``FeedStream.messages()`` and, once "stalled", never returns from its ``send``. Notices come from a
fake channel the test feeds (every batch in the system is published on the one channel); the
slots, the scope and the changes are the real service's, on PostgreSQL and Valkey.

- However many notices arrive meanwhile, the stalled stream holds constant memory, and loses none:
  once the client reads again, the notice that concerned it is sent.
- A stalled stream keeps its slot while it lasts and is cut (its response task cancelled, its
  subscription and slot released, one log line) after three heartbeats without a message sent: one
  account never holds more live streams than ``FEED_STREAM_MAX_PER_USER``.
- A stalled stream ends when its token expires.
- A stream whose response never starts holds no slot.
- A stalled stream ends as soon as the process stops (``LiveStreams.stop``), well before granian's
  kill timeout, and without a stall warning.
- A client that goes while a send is pending (its response task cancelled at the send, the generator
  suspended at its yield) gives back the subscription and the slot at once, without a stall warning.
- A stream whose slot was lost while it queried keeps its keeper: stalling on the changes it was
  about to send, it is still cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import structlog
from litestar.response import ServerSentEventMessage
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.services import open_services
from app.db.models import UserRole
from app.domains.activity import live
from app.domains.activity import stream as stream_module
from app.domains.activity.live import TooManyStreamsError, slots_key
from app.domains.activity.module import module as activity_module
from app.domains.activity.services import ActivityService, Notice
from app.domains.activity.stream import FeedStream
from tests.factories import Team, hold_slot_takes, make_project, serve_in_loop, wait_until
from tests.functional.test_activity_feed_cost import record

WAIT_S = 30.0
FLOOD = 20_000


class Subscriber:
    """The channel's subscriber: what the test puts in ``queue``, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def iter_events(self) -> AsyncIterator[bytes]:
        while True:
            yield await self.queue.get()


class Channels:
    """Litestar's ``ChannelsPlugin`` as a stream uses it; counts the subscriptions open."""

    def __init__(self) -> None:
        self.subscriber = Subscriber()
        self.open = 0

    @contextlib.asynccontextmanager
    async def start_subscription(self, channels: list[str]) -> AsyncIterator[Subscriber]:
        self.open += 1
        try:
            yield self.subscriber
        finally:
            self.open -= 1


class Client:
    """The server's response task for one stream: takes its messages, and once ``stall`` is set,
    its ``send`` does not return until ``resume`` is set."""

    def __init__(self, messages: AsyncIterator[ServerSentEventMessage], *, stall: bool = True) -> None:
        self.received: list[ServerSentEventMessage] = []
        self.resume = asyncio.Event()
        if not stall:
            self.resume.set()
        self.task = asyncio.create_task(self._serve(messages))

    async def _serve(self, messages: AsyncIterator[ServerSentEventMessage]) -> None:
        async for message in messages:
            self.received.append(message)
            await self.resume.wait()  # the send: blocked while the client does not read

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.contextmanager
def stalled_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The stream module's log entries meanwhile (through a logger of its own: the app caches its
    loggers' processors on first use)."""
    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(stream_module, "log", structlog.get_logger("app.activity.stream"))
        yield logs


def caller_of(user_id: int, expires_in_s: int = 3600) -> CurrentUser:
    return CurrentUser(user_id, UserRole.MEMBER, uuid.uuid4(), "t", int(time.time()) + expires_in_s)


def encoded(seq: int, projects: list[int]) -> bytes:
    return msgspec.json.encode(Notice(seq=seq, projects=projects, audiences=[], users=[]))


async def test_a_stalled_stream_holds_constant_memory_and_loses_no_notice(
    settings: Settings, db: AsyncConnection[Any], team: Team
) -> None:
    slow = msgspec.structs.replace(settings, feed_stream_heartbeat_s=300.0)  # only notices wake it
    async with open_services(slow, (activity_module,)) as services:
        feed = services[ActivityService]
        channels = Channels()
        stream = await FeedStream.open(feed, channels, caller_of(team.viewer.id), None, live=True)  # type: ignore[arg-type]
        client = Client(stream.messages())
        try:
            await wait_until(lambda: _true(bool(client.received)), WAIT_S, "the stream is ready")
            assert client.received[0].event == "ready"
            elsewhere = await make_project(db, team.owner.id)
            await record(feed, [(team.editor.id, team.project)], 4_000_000)
            seq = await feed.latest_seq()

            tracemalloc.start()
            try:
                for i in range(FLOOD):  # the rest of the system's activity, none of it the reader's
                    channels.subscriber.queue.put_nowait(encoded(seq + 1 + i, [elsewhere]))
                channels.subscriber.queue.put_nowait(encoded(seq, [team.project]))
                await wait_until(
                    lambda: _true(channels.subscriber.queue.empty()), WAIT_S, "every notice is taken"
                )
                snapshot = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            kept = snapshot.filter_traces([tracemalloc.Filter(True, stream_module.__file__)])
            held = sum(stat.size for stat in kept.statistics("filename"))
            assert held < 64_000, f"{held} bytes held for {FLOOD + 1} notices by one stalled stream"

            client.resume.set()  # the client reads again: the notice that concerned it is sent
            await wait_until(
                lambda: _true(any(m.event == "group" for m in client.received)), WAIT_S, "the group is sent"
            )
            assert [m.id for m in client.received if m.event == "group"] == [seq]
        finally:
            await client.close()


async def test_a_stalled_stream_keeps_its_slot_until_it_is_cut(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "MIN_LEASE_S", 0.0)  # a lease of three heartbeats, as in production
    quick = msgspec.structs.replace(settings, feed_stream_heartbeat_s=0.3, feed_stream_max_per_user=1)
    async with open_services(quick, (activity_module,)) as services:
        feed = services[ActivityService]
        channels = Channels()
        reader = team.viewer.id
        with stalled_logs(monkeypatch) as logs:
            stream = await FeedStream.open(feed, channels, caller_of(reader), None, live=True)  # type: ignore[arg-type]
            stalled = Client(stream.messages())
            try:
                await wait_until(lambda: _true(bool(stalled.received)), WAIT_S, "the stream is ready")

                async def another_opens() -> bool:
                    try:
                        await feed.streams.reserve(reader)
                    except TooManyStreamsError:
                        return False
                    return True

                await wait_until(another_opens, WAIT_S, "the account may open a stream again")
                # Its slot was free only once the stalled stream was cut: never two at once.
                assert stalled.task.done() or stalled.task.cancelling()
                assert channels.open == 0
            finally:
                await stalled.close()
        cut = [entry for entry in logs if entry["event"] == "feed_stream_stalled"]
        assert len(cut) == 1 and cut[0]["user_id"] == reader


async def test_a_stalled_response_of_the_app_is_cut_and_gives_its_slot_back(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through the app: Litestar's SSE response, the real channels; the server's ``send``
    returns for the headers and the first message, then never again."""
    async with serve_in_loop(settings, feed_stream_heartbeat_s=0.3) as served:
        sent: list[dict[str, Any]] = []
        blocked = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                blocked.set()
                await asyncio.Event().wait()  # the client stopped reading

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # nor does it go
            raise AssertionError("unreachable")

        headers = [(b"host", b"testserver"), (b"accept", b"text/event-stream")]
        headers += [(k.lower().encode(), v.encode()) for k, v in team.viewer.headers.items()]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/feed/stream",
            "raw_path": b"/api/feed/stream",
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("testserver", 80),
        }
        with stalled_logs(monkeypatch) as logs:
            call = asyncio.create_task(served.app(scope, receive, send))  # type: ignore[arg-type]
            try:
                await wait_until(lambda: _true(blocked.is_set()), WAIT_S, "the first message is sent")
                assert sent[0]["status"] == 200
                await wait_until(lambda: _true(call.done()), WAIT_S, "the stalled response is cut")
                assert not call.cancelled() and call.exception() is None
                await wait_until(
                    lambda: _valkey_zero(valkey, slots_key(team.viewer.id)), WAIT_S, "its slot is given back"
                )
            finally:
                call.cancel()
        assert [entry["reason"] for entry in logs if entry["event"] == "feed_stream_stalled"] == ["stalled"]


async def test_a_stalled_stream_ends_when_its_token_expires(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, team: Team
) -> None:
    slow = msgspec.structs.replace(settings, feed_stream_heartbeat_s=300.0)
    async with open_services(slow, (activity_module,)) as services:
        feed = services[ActivityService]
        channels = Channels()
        caller = caller_of(team.viewer.id, expires_in_s=2)
        stream = await FeedStream.open(feed, channels, caller, None, live=True)  # type: ignore[arg-type]
        stalled = Client(stream.messages())
        try:
            await wait_until(lambda: _true(stalled.task.done()), WAIT_S, "the expired stream is cut")
            assert time.time() >= caller.expires_at
            await wait_until(lambda: _true(channels.open == 0), WAIT_S, "its subscription is released")
            assert await valkey.zcard(slots_key(team.viewer.id)) == 0
        finally:
            await stalled.close()


async def test_a_stream_whose_response_never_starts_holds_no_slot(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, team: Team
) -> None:
    one = msgspec.structs.replace(settings, feed_stream_max_per_user=1)
    async with open_services(one, (activity_module,)) as services:
        feed = services[ActivityService]
        never = await FeedStream.open(feed, Channels(), caller_of(team.viewer.id), None, live=True)  # type: ignore[arg-type]
        del never  # the client left before the response started: its generator never runs
        assert await valkey.zcard(slots_key(team.viewer.id)) == 0
        opened = await FeedStream.open(feed, Channels(), caller_of(team.viewer.id), None, live=True)  # type: ignore[arg-type]
        client = Client(opened.messages(), stall=False)
        try:
            await wait_until(lambda: _true(bool(client.received)), WAIT_S, "the stream is ready")
            assert await valkey.zcard(slots_key(team.viewer.id)) == 1
            with pytest.raises(TooManyStreamsError):  # the handler still answers 429 past the cap
                await FeedStream.open(feed, Channels(), caller_of(team.viewer.id), None, live=True)  # type: ignore[arg-type]
        finally:
            await client.close()
        await wait_until(
            lambda: _valkey_zero(valkey, slots_key(team.viewer.id)), WAIT_S, "the slot is given back"
        )


async def test_only_the_default_first_page_is_cached(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, team: Team
) -> None:
    """One entry per reader, not one per page size: other limits read through."""
    from app.domains.activity.schemas import FeedFilters
    from app.domains.activity.services import DEFAULT_PAGE

    async with open_services(settings, (activity_module,)) as services:
        feed = services[ActivityService]
        await record(feed, [(team.editor.id, team.project)] * 3, 5_000_000)
        reader = team.viewer.id
        for limit in (1, 2, 7, 100):
            assert len((await feed.feed(reader, FeedFilters(), None, limit)).items) == min(limit, 3)
        assert await valkey.keys(f"feed:entry:*:page*:{reader}") == []
        assert len((await feed.feed(reader, FeedFilters(), None, DEFAULT_PAGE)).items) == 3
        assert len(await valkey.keys(f"feed:entry:*:page*:{reader}")) == 1


async def test_a_stalled_stream_ends_when_the_process_stops(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default heartbeat the stall verdict comes after 45 s, past granian's kill timeout:
    the stop must end a stream stalled in its send without waiting for it."""
    default = msgspec.structs.replace(settings, feed_stream_heartbeat_s=15.0)
    async with open_services(default, (activity_module,)) as services:
        feed = services[ActivityService]
        channels = Channels()
        with stalled_logs(monkeypatch) as logs:
            stream = await FeedStream.open(feed, channels, caller_of(team.viewer.id), None, live=True)  # type: ignore[arg-type]
            stalled = Client(stream.messages())
            try:
                await wait_until(lambda: _true(bool(stalled.received)), WAIT_S, "the stream is ready")
                feed.streams.stops.stop()  # SIGTERM
                await wait_until(lambda: _true(stalled.task.done()), 5, "the stalled stream ends at the stop")
                await wait_until(lambda: _true(channels.open == 0), 5, "its subscription is released")
                assert await valkey.zcard(slots_key(team.viewer.id)) == 0
            finally:
                await stalled.close()
        assert [entry for entry in logs if entry["event"] == "feed_stream_stalled"] == []


async def test_every_keeper_is_cancelled_with_its_stream_at_the_stop(
    settings: Settings, db: AsyncConnection[Any], team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop wakes a stream's loop and its keeper at once; the loop's ``finally`` cancels the
    keeper. Python 3.11's ``asyncio.wait_for`` swallowed a cancel arriving as its wait completed, so
    the keeper lived on past its stream (and could renew the slot the stream had just given back)."""
    streams = 12
    quick = msgspec.structs.replace(settings, feed_stream_heartbeat_s=5.0, feed_stream_max_per_user=streams)
    ends: list[str] = []
    keep = FeedStream._keep

    async def observed_keep(self: FeedStream, *args: Any) -> None:
        try:
            await keep(self, *args)
        except asyncio.CancelledError:
            ends.append("cancelled")
            raise
        ends.append("returned")

    monkeypatch.setattr(FeedStream, "_keep", observed_keep)
    async with open_services(quick, (activity_module,)) as services:
        feed = services[ActivityService]
        clients = []
        for _ in range(streams):
            stream = await FeedStream.open(feed, Channels(), caller_of(team.viewer.id), None, live=True)  # type: ignore[arg-type]
            clients.append(Client(stream.messages(), stall=False))
        for client in clients:
            await wait_until(
                lambda client=client: _true(bool(client.received)), WAIT_S, "the stream is ready"
            )
        feed.streams.stops.stop()  # SIGTERM
        for client in clients:
            await wait_until(lambda client=client: _true(client.task.done()), WAIT_S, "the stream ends")
        await wait_until(lambda: _true(len(ends) == streams), WAIT_S, "every keeper ends")
    assert ends == ["cancelled"] * streams


async def test_a_client_gone_during_a_send_gives_back_its_slot_at_once(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The response task is cancelled at its send (the client went): the generator, suspended at its
    yield, is closed at once, not at the stall verdict three heartbeats later (the account's slot
    held meanwhile: a reconnect at the cap would get a 429, after which EventSource never retries)."""
    hb = msgspec.structs.replace(settings, feed_stream_heartbeat_s=5.0, feed_stream_max_per_user=1)
    async with open_services(hb, (activity_module,)) as services:
        feed = services[ActivityService]
        channels = Channels()
        with stalled_logs(monkeypatch) as logs:
            stream = await FeedStream.open(feed, channels, caller_of(team.viewer.id), None, live=True)  # type: ignore[arg-type]
            client = Client(stream.messages())
            await wait_until(lambda: _true(bool(client.received)), WAIT_S, "the stream is ready")
            await client.close()  # the disconnect cancels the response task at its send
            await wait_until(lambda: _true(channels.open == 0), 3, "the subscription is released")
            await wait_until(
                lambda: _valkey_zero(valkey, slots_key(team.viewer.id)), 3, "the slot is given back"
            )
            # The client reconnects at once (no 429); the gone stream is still referenced here, so its
            # end owes nothing to the garbage collector.
            await FeedStream.open(feed, channels, caller_of(team.viewer.id), None, live=True)  # type: ignore[arg-type]
            assert stream.slot is not None
        assert [entry for entry in logs if entry["event"] == "feed_stream_stalled"] == []


async def test_a_client_gone_while_the_slot_is_taken_gives_it_back(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The response task is cancelled as the body takes its slot (the client left right after its
    request): Valkey has the lease, and the body must give it back (the soak review: it stayed for its
    whole lease, 45 s, and five such drops made every stream of the account a 429). The take is held
    after Valkey answered, where the cancellation came in the review's runs."""
    taken = hold_slot_takes(monkeypatch)
    one = msgspec.structs.replace(settings, feed_stream_max_per_user=1)
    async with open_services(one, (activity_module,)) as services:
        stream = await FeedStream.open(
            services[ActivityService],
            Channels(),
            caller_of(team.viewer.id),
            None,
            live=True,  # type: ignore[arg-type]
        )
        client = Client(stream.messages(), stall=False)
        await wait_until(lambda: _true(taken.is_set()), WAIT_S, "the body took its slot")
        assert await valkey.zcard(slots_key(team.viewer.id)) == 1
        await client.close()  # the client left: the response task is cancelled inside the take
        await wait_until(lambda: _valkey_zero(valkey, slots_key(team.viewer.id)), 3, "the slot is given back")


async def test_a_stream_that_lost_its_slot_while_querying_is_still_cut_when_it_stalls(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper finds the slot lost while the loop waits on its query (not sending): the loop ends
    the stream only at its next turn, after sending what the query found; a client that stalls on
    that send is still cut by the keeper."""
    monkeypatch.setattr(live, "MIN_LEASE_S", 0.0)
    quick = msgspec.structs.replace(settings, feed_stream_heartbeat_s=0.3, feed_stream_max_per_user=1)
    async with open_services(quick, (activity_module,)) as services:
        feed = services[ActivityService]
        channels = Channels()
        reader = team.viewer.id
        changes = feed.changes
        gate, entered, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def held_changes(*args: Any, **kwargs: Any) -> Any:
            if gate.is_set():
                entered.set()
                await release.wait()
            return await changes(*args, **kwargs)

        monkeypatch.setattr(feed, "changes", held_changes)
        with stalled_logs(monkeypatch) as logs:
            stream = await FeedStream.open(feed, channels, caller_of(reader), None, live=True)  # type: ignore[arg-type]
            client = Client(stream.messages(), stall=False)
            try:
                await wait_until(lambda: _true(bool(client.received)), WAIT_S, "the stream is ready")
                await record(feed, [(team.editor.id, team.project)], 4_000_000)
                gate.set()
                await wait_until(lambda: _true(entered.is_set()), WAIT_S, "the loop queries the changes")
                key = slots_key(reader)
                await valkey.delete(key)  # its lease lapsed and another stream took the only slot
                await valkey.zadd(key, {"another": 2**52})
                await wait_until(lambda: _true(stream._slot_lost), WAIT_S, "the keeper finds the slot lost")
                client.resume.clear()  # the client stops reading
                release.set()  # the query answers: its group is sent, and the send stalls
                await wait_until(lambda: _true(client.task.done()), WAIT_S, "the stalled stream is cut")
                await wait_until(lambda: _true(channels.open == 0), WAIT_S, "its subscription is released")
                assert any(m.event == "group" for m in client.received)
            finally:
                await client.close()
                await valkey.delete(slots_key(reader))
        cut = [entry["reason"] for entry in logs if entry["event"] == "feed_stream_stalled"]
        assert cut == ["slot lost"]


class FailingChannels(Channels):
    """Channels whose unsubscribe fails (Valkey unreachable as the stream ends)."""

    @contextlib.asynccontextmanager
    async def start_subscription(self, channels: list[str]) -> AsyncIterator[Subscriber]:
        self.open += 1
        try:
            yield self.subscriber
        finally:
            self.open -= 1
            raise ConnectionError("unsubscribe: Valkey unreachable")


async def test_a_cut_whose_close_fails_is_logged_and_gives_back_the_slot(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper closes the stalled stream and its ``finally`` fails: a warning, not a keeper task
    dead with an exception nobody retrieves; the slot is given back all the same."""
    monkeypatch.setattr(live, "MIN_LEASE_S", 0.0)
    quick = msgspec.structs.replace(settings, feed_stream_heartbeat_s=0.3)
    async with open_services(quick, (activity_module,)) as services:
        feed = services[ActivityService]
        channels = FailingChannels()
        with stalled_logs(monkeypatch) as logs:
            stream = await FeedStream.open(feed, channels, caller_of(team.viewer.id), None, live=True)  # type: ignore[arg-type]
            stalled = Client(stream.messages())
            try:
                await wait_until(lambda: _true(stalled.task.done()), WAIT_S, "the stalled stream is cut")
                await wait_until(
                    lambda: _true(any(e["event"] == "feed_stream_close_failed" for e in logs)),
                    WAIT_S,
                    "the failed close is logged",
                )
                assert await valkey.zcard(slots_key(team.viewer.id)) == 0
            finally:
                await stalled.close()


async def _true(value: bool) -> bool:
    return value


async def _valkey_zero(valkey: Valkey, key: str) -> bool:
    return int(await valkey.zcard(key)) == 0
