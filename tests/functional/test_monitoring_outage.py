"""A PostgreSQL outage reaches Telegram while it lasts, around the database (``outage.py``).

PostgreSQL is made unreachable for the monitoring service only (its ``db`` raises the pool's timeout,
as the real pool does after ``DATABASE_POOL_TIMEOUT``); Valkey and the fake Telegram stay real.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import psycopg.errors
import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout
from valkey.asyncio import Valkey

from app.config import Settings
from app.db.models import MonitoringGroupKind
from app.domains.monitoring.capture import RawEvent
from app.domains.monitoring.fingerprint import RawException, fixed_fingerprint
from app.domains.monitoring.groups import Aggregate
from app.domains.monitoring.latency import RouteCounts
from app.domains.monitoring.monitors import CheckInsNotAppliedError
from app.domains.monitoring.outage import CLAIM_KEY, NOTICE_INTERVAL_S, WAIT_KEY, OutageNotifier
from app.domains.monitoring.services import MonitoringService
from app.domains.monitoring.telegram import TelegramClient
from tests.factories import captured_logs, scalar, wait_until
from tests.fakes.telegram import FakeTelegramServer, Scripted, serve_fake_telegram
from tests.functional.test_monitoring_alerts import PRIVATE_CHAT, TOKEN, with_telegram
from tests.functional.test_monitoring_groups import open_monitoring, tuned
from tests.served import free_port

ROUTE = {"type": "http", "path_template": "/api/projects", "method": "GET"}
OLD_GROUP = "-4001"
SUPERGROUP = "-1004001"


@pytest.fixture
def telegram() -> Iterator[FakeTelegramServer]:
    with serve_fake_telegram(TOKEN) as server:
        yield server


class DownDatabase:
    """What the pool answers while PostgreSQL is unreachable."""

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        raise PoolTimeout("couldn't get a connection after 5.00 sec")
        yield

    read = transaction

    def exhausted(self) -> None:
        """Its connections failed: the pool is not full."""
        return None


@contextlib.contextmanager
def database_down(service: MonitoringService) -> Iterator[None]:
    pool = service.ingest.db
    service.ingest.db = DownDatabase()  # type: ignore[assignment]
    try:
        yield
    finally:
        service.ingest.db = pool


def requests_answered_503(service: MonitoringService, count: int) -> None:
    for _ in range(count):
        try:
            raise psycopg.OperationalError("connection refused")
        except psycopg.OperationalError as exc:
            service.capture_exception(exc, {**ROUTE, "state": {"request_id": uuid.uuid4().hex}})  # type: ignore[arg-type]


async def failing_flushes(service: MonitoringService, rounds: int) -> None:
    for _ in range(rounds):
        with pytest.raises(PoolTimeout):
            await service.flush(force=True)


def texts(telegram: FakeTelegramServer) -> list[str]:
    return [message.text for message in telegram.fake.messages(accepted_only=True)]


async def test_an_outage_is_told_once_while_it_lasts_and_once_when_it_is_over(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        with database_down(service):
            requests_answered_503(service, 50)
            await failing_flushes(service, 3)
            requests_answered_503(service, 5)
            await failing_flushes(service, 2)
        [notice] = texts(telegram)
        assert notice.startswith(
            f"🚨 Outage · test · {service.release}\nPostgreSQL is unreachable (PoolTimeout"
        )
        assert "50 requests answered 503 since" in notice
        assert "• Dependency unavailable: OperationalError: 50\n" in notice
        assert 0 < await valkey.ttl(CLAIM_KEY) <= NOTICE_INTERVAL_S
        assert [message.parse_mode for message in telegram.fake.messages()] == [None], "plain text"

        telegram.fake.reset()  # the fake's one-message-a-second pacing of the chat starts again
        assert await service.flush(force=True) == 1
        [over] = texts(telegram)
        assert over.startswith(f"✅ Outage over · test · {service.release}\nPostgreSQL answers again")
        assert await valkey.exists(CLAIM_KEY) == 0
        assert await service.flush(force=True) == 0
    held = await scalar(db, "select sum(events) from monitoring_groups where kind = 'unavailable'")
    assert held == 55, "the held events are written once the database is back"
    assert len(texts(telegram)) == 1


async def notice_of_a_taken_connection(
    settings: Settings, telegram: FakeTelegramServer, **changes: Any
) -> str:
    """The outage notice (past its first line) of a flush that timed out waiting while the pool's one
    connection was taken; the notice that the outage is over follows once it is given back."""
    changes = with_telegram(telegram, [PRIVATE_CHAT], database_pool_min=1, database_timeout_s=0.5, **changes)
    async with open_monitoring(settings, **changes) as service:
        async with service.ingest.db.read():
            requests_answered_503(service, 3)
            await failing_flushes(service, 1)
        [notice] = texts(telegram)
        telegram.fake.reset()
        assert await service.flush(force=True) == 1
        [over] = texts(telegram)
        assert over.startswith(f"✅ Outage over · test · {service.release}\nPostgreSQL answers again")
    return notice.split("\n", 1)[1]


async def test_a_notice_for_an_exhausted_pool_says_so_not_that_postgresql_is_unreachable(
    settings: Settings, db: AsyncConnection[Any], telegram: FakeTelegramServer
) -> None:
    """PostgreSQL is up; the pool's one connection is taken: the flush times out waiting for it."""
    notice = await notice_of_a_taken_connection(settings, telegram, database_pool_max=1)
    assert notice.startswith(
        "No PostgreSQL connection to be had: all 1 of the pool's connections are in use (PoolTimeout, "
    ), notice


async def test_a_notice_for_a_pool_postgresql_refuses_more_says_so(
    settings: Settings, db: AsyncConnection[Any], telegram: FakeTelegramServer, limited_url: str
) -> None:
    """Review: PostgreSQL lets the pool have one connection (a role's limit here; the server's
    ``max_connections`` alike), and it is taken: neither "unreachable" nor "the pool is too small"."""
    notice = await notice_of_a_taken_connection(
        settings, telegram, database_url=limited_url, database_pool_max=4
    )
    assert notice.startswith(
        "No PostgreSQL connection to be had: all 1 of the pool's connections are in use; it may open 4, "
        "PostgreSQL gave it no more (PoolTimeout, "
    ), notice


async def test_processes_of_one_deployment_send_one_notice_between_them(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    changes = with_telegram(telegram, [PRIVATE_CHAT])
    async with open_monitoring(settings, **changes) as web, open_monitoring(settings, **changes) as other:
        with database_down(web), database_down(other):
            for service in (web, other, web, other):
                requests_answered_503(service, 3)
                await failing_flushes(service, 1)
        assert len(texts(telegram)) == 1
        telegram.fake.reset()
        assert await web.flush(force=True) == 1
        assert await other.flush(force=True) == 1
        [over] = texts(telegram)
        assert over.startswith("✅ Outage over")


async def test_no_notice_for_an_error_of_a_statement(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """A deadlock is the database answering: it is up. (A flush failing because it is down is news
    whatever the flush held: test_monitoring_worker_outage.py.)"""
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])):
        notifier = notifier_for(settings, telegram, valkey)
        deadlock = psycopg.errors.DeadlockDetected("deadlock detected")
        assert not await notifier.flush_failed(deadlock, [outage_aggregate()])
        assert texts(telegram) == [], "the database answered: it is up"
        await notifier.telegram.close()


def outage_aggregate(
    count: int = 3, dependency: str = "postgresql", name: str = "PoolTimeout", first: float = 1_764_633_600.0
) -> Aggregate:
    sample = RawEvent(
        kind=MonitoringGroupKind.UNAVAILABLE,
        occurred_at=first,
        chain=(RawException(name, "down", ()),),
        context={"source": "request"},
        fixed=(dependency, name),
    )
    return Aggregate(
        kind=MonitoringGroupKind.UNAVAILABLE,
        fingerprint=fixed_fingerprint("unavailable", dependency, name),
        title=f"Dependency unavailable: {name}",
        culprit="/api/projects",
        held_since=0.0,
        count=count,
        first=first,
        last=first + 60,
        samples=[sample],
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def notifier_for(
    settings: Settings, telegram: FakeTelegramServer, valkey: Valkey, clock: Clock | None = None
) -> OutageNotifier:
    return OutageNotifier(
        TelegramClient(TOKEN, telegram.url, 2.0),
        [PRIVATE_CHAT],
        valkey,
        environment="test",
        release="1.2.3",
        clock=clock or time.time,
        monotonic=clock or Clock(),
    )


async def test_without_valkey_each_process_tells_once_per_interval(
    settings: Settings, telegram: FakeTelegramServer
) -> None:
    clock = Clock()
    unreachable = Valkey.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1.0)
    notifier = notifier_for(settings, telegram, unreachable, clock)
    down = PoolTimeout("couldn't get a connection after 5.00 sec")
    try:
        assert await notifier.flush_failed(down, [outage_aggregate()])
        clock.now += NOTICE_INTERVAL_S - 1
        assert not await notifier.flush_failed(down, [outage_aggregate()])
        assert len(telegram.fake.messages()) == 1
        telegram.fake.reset()
        clock.now += 1
        assert await notifier.flush_failed(down, [outage_aggregate()])
        telegram.fake.reset()
        assert await notifier.flush_succeeded(), "the process that told it tells it is over"
        assert texts(telegram)[0].startswith("✅ Outage over")
    finally:
        await notifier.telegram.close()
        await unreachable.aclose()


async def test_a_429_is_skipped_until_retry_after_by_every_process_and_the_claim_released(
    settings: Settings, valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """Telegram holds the chat, not one process, to a 429's ``retry_after``: the claim is released
    (another process may tell the outage) but no process asks before the window ends."""
    clock = Clock()
    notifier = notifier_for(settings, telegram, valkey, clock)
    other_process = notifier_for(settings, telegram, valkey, clock)
    telegram.fake.clock = clock  # Telegram's time is the notifier's: its window ends when the test says
    down = PoolTimeout("couldn't get a connection after 5.00 sec")
    telegram.fake.script(Scripted(429, "Too Many Requests: retry after 30", retry_after=30))
    try:
        assert not await notifier.flush_failed(down, [outage_aggregate()])
        assert await valkey.exists(CLAIM_KEY) == 0, "released: another process may tell it"
        assert 29_000 < await valkey.pttl(WAIT_KEY) <= 30_000, "the wait is shared"
        assert not await other_process.flush_failed(down, [outage_aggregate()])
        clock.now += 29
        assert not await notifier.flush_failed(down, [outage_aggregate()])
        assert not await other_process.flush_failed(down, [outage_aggregate()])
        assert [message.status for message in telegram.fake.messages()] == [429], "no request before 30 s"
        await valkey.delete(WAIT_KEY)  # as when its TTL ends: Valkey's time does not follow the test's
        clock.now += 1
        assert await notifier.flush_failed(down, [outage_aggregate()])
        assert [message.status for message in telegram.fake.messages()] == [429, 200]
        assert telegram.fake.refused_inside_window() == []
        assert await valkey.exists(CLAIM_KEY) == 1
    finally:
        await notifier.telegram.close()
        await other_process.telegram.close()


async def test_a_failure_without_retry_after_is_asked_again_after_a_doubling_pause(
    settings: Settings, valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """A 401 (a token being rotated) is a passing failure with no ``retry_after``: the notice is asked
    again after 2 s, then 4 s, ... (at most 60 s), not at every flush; a delivery starts again at 2 s."""
    clock = Clock()
    notifier = notifier_for(settings, telegram, valkey, clock)
    down = PoolTimeout("couldn't get a connection after 5.00 sec")
    telegram.fake.script(*[Scripted(401, "Unauthorized")] * 8)
    asked: list[float] = []
    try:
        for second in range(250):  # a flush every second
            await valkey.delete(WAIT_KEY)  # the shared wait (Valkey's time) ends with this process's
            before = len(telegram.fake.messages())
            await notifier.flush_failed(down, [outage_aggregate()])
            if len(telegram.fake.messages()) > before:
                asked.append(second)
            clock.now += 1
        assert asked == [0, 2, 6, 14, 30, 62, 122, 182, 242], "pauses of 2, 4, 8, 16, 32, then 60 s"
        assert [message.status for message in telegram.fake.messages()] == [401] * 8 + [200]
        assert await valkey.exists(CLAIM_KEY) == 1, "told: the claim stays for its interval"

        telegram.fake.reset()  # the fake's pacing starts again
        assert await notifier.flush_succeeded()
        telegram.fake.reset()
        telegram.fake.script(Scripted(401, "Unauthorized"))
        asked.clear()
        for second in range(3):  # the next outage: the pause starts again at 2 s
            await valkey.delete(WAIT_KEY)
            before = len(telegram.fake.messages())
            await notifier.flush_failed(down, [outage_aggregate()])
            if len(telegram.fake.messages()) > before:
                asked.append(second)
            clock.now += 1
        assert asked == [0, 2]
    finally:
        await notifier.telegram.close()


class BrokenValkey:
    async def set(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("not a Valkey error")


async def test_a_failing_notice_never_replaces_the_flush_failure(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    unreachable_telegram = f"http://127.0.0.1:{free_port()}"
    with serve_fake_telegram(TOKEN) as telegram:
        changes = with_telegram(telegram, [PRIVATE_CHAT], telegram_api_url=unreachable_telegram)
    service = MonitoringService(db=DownDatabase(), settings=tuned(settings, **changes), valkey=valkey)  # type: ignore[arg-type]
    notifier = service.outage
    try:
        with database_down(service):
            requests_answered_503(service, 3)
            notifier.valkey = BrokenValkey()  # type: ignore[assignment]
            await failing_flushes(service, 1)  # the notifier raises: logged, the flush's error stands
            notifier.valkey = valkey
            await failing_flushes(service, 1)  # Telegram refuses the connection: the flush's error stands
            assert await valkey.exists(CLAIM_KEY) == 0
    finally:
        await service.telegram.close()


def requests_to(telegram: FakeTelegramServer) -> list[tuple[str, int]]:
    return [(message.chat_id, message.status) for message in telegram.fake.messages()]


async def stored_routes(db: AsyncConnection[Any]) -> list[tuple[str, str]]:
    rows = await (
        await db.execute(
            "select chat_id, migrated_to from monitoring_telegram_chats where migrated_to is not null"
        )
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


async def test_the_notice_follows_a_group_upgraded_to_a_supergroup_at_once(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """Telegram's 400 with ``migrate_to_chat_id`` sends the notice to the supergroup in the same flush,
    without the database; the outage's later messages go there straight away, and the move is stored
    for the sender once the database is back."""
    telegram.fake.migrate(OLD_GROUP, SUPERGROUP)
    with captured_logs() as logs:
        async with open_monitoring(settings, **with_telegram(telegram, [OLD_GROUP])) as service:
            with database_down(service):
                requests_answered_503(service, 5)
                await failing_flushes(service, 6)
            assert requests_to(telegram) == [(OLD_GROUP, 400), (SUPERGROUP, 200)], "one notice, delivered"
            assert texts(telegram)[0].startswith("🚨 Outage")
            assert await valkey.exists(CLAIM_KEY) == 1

            telegram.fake.reset()  # pacing starts again; the old id would be accepted now
            assert await service.flush(force=True) == 1
            assert requests_to(telegram) == [(SUPERGROUP, 200)], "the outage is over where the group is"
            assert texts(telegram)[0].startswith("✅ Outage over")
    assert await stored_routes(db) == [(OLD_GROUP, SUPERGROUP)], "the sender will go there too"
    [warning] = logs.events("monitoring_telegram_chat_migrated")
    assert (warning["chat_id"], warning["migrated_to"]) == (OLD_GROUP, SUPERGROUP)
    assert "TELEGRAM_CHAT_ID" in warning["detail"]


async def test_a_move_the_sender_stored_is_followed_during_an_outage(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """The routes of ``monitoring_telegram_chats`` are read while the database is reachable (here at
    start), so the notice goes to the supergroup first time."""
    await db.execute(
        "insert into monitoring_telegram_chats (chat_id, migrated_to) values (%s, %s)",
        (OLD_GROUP, SUPERGROUP),
    )
    telegram.fake.migrate(OLD_GROUP, SUPERGROUP)
    async with open_monitoring(settings, **with_telegram(telegram, [OLD_GROUP])) as service:
        with database_down(service):
            requests_answered_503(service, 5)
            await failing_flushes(service, 3)
        assert requests_to(telegram) == [(SUPERGROUP, 200)]


async def test_a_chat_that_refuses_the_notice_for_good_is_not_asked_every_flush(
    settings: Settings, valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """A 403 (the bot was blocked) is no passing failure: the claim is kept for its interval (no process
    asks again meanwhile) and this process waits the interval too, even once the claim is gone."""
    clock = Clock()
    notifier = notifier_for(settings, telegram, valkey, clock)
    down = PoolTimeout("couldn't get a connection after 5.00 sec")
    telegram.fake.script(Scripted(403, "Forbidden: bot was blocked by the user"))
    try:
        for _ in range(5):
            assert not await notifier.flush_failed(down, [outage_aggregate()])
        assert [message.status for message in telegram.fake.messages()] == [403], "asked once"
        assert await valkey.exists(CLAIM_KEY) == 1, "kept: no other process asks either"
        await valkey.delete(CLAIM_KEY)  # as when its TTL ends
        clock.now += NOTICE_INTERVAL_S - 1
        assert not await notifier.flush_failed(down, [outage_aggregate()])
        assert [message.status for message in telegram.fake.messages()] == [403]
        clock.now += 1
        assert await notifier.flush_failed(down, [outage_aggregate()]), "asked again once the interval ends"
        assert [message.status for message in telegram.fake.messages()] == [403, 200]
    finally:
        await notifier.telegram.close()


async def blocked_until(db: AsyncConnection[Any], chat_id: str) -> float | None:
    """Seconds left of the chat's stored window (None: no row, or no window)."""
    left = await scalar(
        db,
        "select (select extract(epoch from blocked_until - now()) from monitoring_telegram_chats"
        " where chat_id = %s)::float8",
        chat_id,
    )
    return None if left is None else float(left)


async def test_the_window_a_429_gave_the_notice_holds_the_sender_once_the_database_is_back(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """The notice learns Telegram's window without the database; once it is back the window is
    stored with the sender's pacing, so the held alerts do not go inside it."""
    telegram.fake.script(Scripted(429, "Too Many Requests: retry after 30", retry_after=30))
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        with database_down(service):
            requests_answered_503(service, 3)
            await failing_flushes(service, 1)  # the notice: 429, retry after 30
        assert await service.flush(force=True) >= 1  # the database is back: the held events are written
        await service.deliver(budget_s=10)
    assert [message.status for message in telegram.fake.messages()] == [429], "no alert inside the window"
    assert telegram.fake.refused_inside_window() == []
    left = await blocked_until(db, PRIVATE_CHAT)
    assert left is not None and 20 < left <= 30


async def test_the_notice_honours_the_window_the_sender_stored(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """A window the sender stored (``blocked_until``) is read while the database is reachable; the
    notice does not ask Telegram inside it."""
    await db.execute(
        "insert into monitoring_telegram_chats (chat_id, blocked_until)"
        " values (%s, now() + interval '1 hour')",
        (PRIVATE_CHAT,),
    )
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        with database_down(service):
            requests_answered_503(service, 5)
            await failing_flushes(service, 3)
    assert telegram.fake.messages() == []
    assert await valkey.exists(CLAIM_KEY) == 0


async def test_the_notice_dates_the_outage_from_its_first_failed_request_and_names_the_database_error(
    settings: Settings, valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """Review opsrev: the notice said "since" the first failed flush (tens of seconds after the
    first 503) and named the flush's own wrapper (``CheckInsNotAppliedError``), not what failed."""
    notifier = notifier_for(settings, telegram, valkey)
    held = outage_aggregate()  # its first 503 at 2025-12-02 00:00:00 UTC
    valkeys = outage_aggregate(dependency="valkey", name="TimeoutError", first=1_764_633_000.0)  # earlier
    sent = {"outcome": "sent"}
    requests = REGISTRY.get_sample_value("app_monitoring_telegram_requests_total", sent) or 0.0
    try:
        wrapped = CheckInsNotAppliedError([])
        wrapped.__cause__ = PoolTimeout("couldn't get a connection after 5.00 sec")
        assert await notifier.flush_failed(wrapped, [valkeys, held])
        [notice] = texts(telegram)
        assert "PostgreSQL is unreachable (PoolTimeout, seen from " in notice
        assert "since 2025-12-02 00:00:00 UTC" in notice
        # counted as every sendMessage is (the notice's were not)
        assert REGISTRY.get_sample_value("app_monitoring_telegram_requests_total", sent) == requests + 1
    finally:
        await notifier.telegram.close()


async def test_events_a_stopping_process_cannot_write_are_said_lost(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Review opsrev: the last flush of a process stopping while PostgreSQL is down dropped what it
    held without a line; the line now says how many events were lost, and the last ship's line how
    many requests' timings and job runs."""
    timed = RouteCounts()
    timed.counts[0] = 3
    with captured_logs(logging.WARNING) as logs:
        async with open_monitoring(settings) as service:
            service.ingest.db = DownDatabase()  # type: ignore[assignment]
            service.performance.db = DownDatabase()  # type: ignore[assignment]
            requests_answered_503(service, 4)
            service.latency.restore({"/api/things": {"GET": timed}})
            service.jobs.add("place_order", "complete", 12.0, 1)
    [lost] = logs.events("monitoring_events_lost")
    assert (lost["events"], lost["error"]) == (4, "PoolTimeout"), lost
    [latency] = logs.events("monitoring_latency_lost")
    assert (latency["requests"], latency["job_runs"], latency["error"]) == (3, 1, "PoolTimeout"), latency


async def test_a_background_flush_that_finds_the_database_down_leaves_the_rounds_to_flushing(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Review opsrev: after a flush failed on the database, each round's ship, checks and fallback
    still waited out the pool's timeout in turn, and the next flush (the outage notice's path) came
    some 25 s after the first 503; and the rounds' failures were one warning a minute across every
    step, with no metric. Each step's failures are counted (``app_monitoring_task_failures_total``),
    and once a step finds PostgreSQL down the rounds only flush for ``FLUSH_ONLY_S``."""

    def failures(task: str) -> float:
        return REGISTRY.get_sample_value("app_monitoring_task_failures_total", {"task": task}) or 0.0

    flushes, ships = failures("flush"), failures("ship")
    fast = {"monitoring_flush_interval_s": 0.01, "monitoring_ship_interval_s": 0.01}
    async with open_monitoring(settings, **fast) as service:
        async with service._round:  # the first round to come flushes the 503 with the database down
            service.ingest.db = DownDatabase()  # type: ignore[assignment]
            service.performance.db = DownDatabase()  # type: ignore[assignment]  # a ship would fail too
            requests_answered_503(service, 1)
            service.latency.observe({**ROUTE, "state": {"request_id": "r"}}, 200, 0.01)  # type: ignore[arg-type]  # to ship

        async def counted() -> bool:
            return failures("flush") > flushes

        await wait_until(counted, 30, "a background flush failed")
        for _ in range(2):  # the second round ended after this point began after the failing one ended
            since = time.time()

            async def round_ended(since: float = since) -> bool:
                return (
                    REGISTRY.get_sample_value(
                        "app_monitoring_round_timestamp_seconds", {"loop": "monitoring"}
                    )
                    or 0.0
                ) > since

            await wait_until(round_ended, 30, "a round ended")
        assert failures("ship") == ships, "no ship while the rounds only flush"
        service.ingest.db = service.performance.db = service.db  # type: ignore[assignment]
