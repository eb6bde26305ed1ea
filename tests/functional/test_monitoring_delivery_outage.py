"""Telegram deliveries across an outage: a delivery that certainly did not reach Telegram is tried
again for as long as its alert is younger than ``MONITORING_DELIVERY_MAX_AGE_S``, however many tries
that takes; and a chat blocked by a long ``retry_after`` never hides another chat's due alerts."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.domains.monitoring.services import MonitoringService
from tests.fakes.telegram import FakeTelegramServer, Scripted, serve_fake_telegram
from tests.functional.test_monitoring_alerts import PRIVATE_CHAT, TOKEN, storm_event, with_telegram
from tests.functional.test_monitoring_groups import open_monitoring

OLD_ATTEMPTS = 12
"""How many tries a delivery used to get (some 23.5 minutes of backoff): the outages below outlast it."""


@pytest.fixture
def telegram() -> Iterator[FakeTelegramServer]:
    with serve_fake_telegram(TOKEN) as server:
        yield server


class Clock:
    """The monitoring service's clock, moved by hand: a test fast-forwards through an outage."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def delivery(db: AsyncConnection[Any]) -> tuple[str, int, float]:
    """(status, attempts, seconds until not_before on the real clock) of the one delivery."""
    row = await (
        await db.execute(
            "select status::text, attempts, extract(epoch from not_before)::float8 from monitoring_deliveries"
        )
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


async def try_when_due(service: MonitoringService, clock: Clock, db: AsyncConnection[Any]) -> int:
    """Move the clock to the delivery's ``not_before`` (what the cron does minute after minute) and
    run a sender whose budget fits one delivery; returns how many messages it delivered."""
    _, _, not_before = await delivery(db)
    clock.now = max(clock.now, not_before) + 0.5
    return await service.deliver(budget_s=service.sender.worst_case_s + 1.5)


def closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused (Telegram unreachable)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_alert_survives_an_outage_longer_than_the_old_attempts_and_is_sent_once(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """Telegram refuses the bot (401, nothing delivered) for 30 tries spread over more than two
    hours, then answers again: the alert is delivered, once, on the next try."""
    outage = 30
    telegram.fake.script(*[Scripted(401, "Unauthorized") for _ in range(outage)])
    clock = Clock()
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        service.clock = clock
        await service.write_now([storm_event(1, clock.now)])
        start = clock.now
        for attempt in range(1, outage + 1):
            assert await try_when_due(service, clock, db) == 0
            status, attempts, _ = await delivery(db)
            assert (status, attempts) == ("pending", attempt), f"after {attempt} refusals"
        assert clock.now - start > 3600, "the outage outlasted the old 12 tries (23.5 minutes) by far"
        assert await try_when_due(service, clock, db) == 1
    status, attempts, _ = await delivery(db)
    assert (status, attempts) == ("sent", outage + 1)
    answers = [message.status for message in telegram.fake.messages()]
    assert answers == [401] * outage + [200], "one message reached the chat"


async def test_a_delivery_is_tried_until_its_alert_is_max_age_old_then_failed(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Telegram unreachable (connection refused) for good: the delivery stays ``pending``, tried at
    most ``MAX_BACKOFF_S`` apart, until its alert is ``MONITORING_DELIVERY_MAX_AGE_S`` old; the first
    failed try past that makes it ``failed``, saying why."""
    max_age = 3 * 3600.0
    clock = Clock()
    async with open_monitoring(
        settings,
        telegram_bot_token=TOKEN,
        telegram_chat_id=[PRIVATE_CHAT],
        telegram_api_url=f"http://127.0.0.1:{closed_port()}",
        telegram_timeout_s=1.0,
        monitoring_delivery_max_age_s=max_age,
    ) as service:
        service.clock = clock
        await service.write_now([storm_event(1, clock.now)])
        created = clock.now
        tries = 0
        while True:
            _, _, not_before = await delivery(db)
            if not_before + 0.5 >= created + max_age:
                break
            assert not_before - max(clock.now, created) <= 300.0 + 1.0, "tried again within 300 s"
            assert await try_when_due(service, clock, db) == 0
            tries += 1
            status, attempts, _ = await delivery(db)
            assert (status, attempts) == ("pending", tries), f"{clock.now - created:.0f} s into the outage"
        assert tries > OLD_ATTEMPTS
        clock.now = max(not_before, created + max_age) + 1.0
        assert await service.deliver(budget_s=service.sender.worst_case_s + 1.5) == 0
    status, attempts, _ = await delivery(db)
    assert (status, attempts) == ("failed", tries + 1)
    error = await (await db.execute("select last_error from monitoring_deliveries")).fetchone()
    assert error is not None and "given up after" in error[0] and "ConnectError" in error[0]


async def test_a_chat_blocked_by_a_long_retry_after_does_not_starve_the_other_chat(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """A hundred older deliveries to a chat Telegram blocked for an hour (429 ``retry_after``) fill
    what one look at the pending deliveries used to read: the other chat's due alert is sent."""
    other = "4343"
    async with open_monitoring(
        settings, **with_telegram(telegram, [PRIVATE_CHAT, other]), monitoring_alert_budget=10_000
    ) as service:
        await db.execute(
            "insert into monitoring_alerts (key, kind, rule, summary, text_html, text_plain, created_at)"
            " select 'blocked'||g, 'alert', 't', 's', 'for the blocked chat '||g, 'x', now()"
            " from generate_series(1, 150) g"
        )
        await db.execute(
            "insert into monitoring_deliveries (alert_id, chat_id, not_before)"
            " select id, %s, now() - interval '10 minutes' from monitoring_alerts",
            (PRIVATE_CHAT,),
        )
        await db.execute(
            "insert into monitoring_telegram_chats (chat_id, blocked_until)"
            " values (%s, now() + interval '1 hour')",
            (PRIVATE_CHAT,),
        )
        await db.execute(
            "insert into monitoring_alerts (key, kind, rule, summary, text_html, text_plain, created_at)"
            " values ('other', 'alert', 't', 's', 'for the other chat', 'x', now())"
        )
        await db.execute(
            "insert into monitoring_deliveries (alert_id, chat_id, not_before)"
            " select id, %s, now() from monitoring_alerts where key = 'other'",
            (other,),
        )
        assert await service.deliver(budget_s=30) == 1
    assert [(m.chat_id, m.text) for m in telegram.fake.messages()] == [(other, "for the other chat")]
    # Counted among the test's own alerts: one of the process's (a group its close flushed, for an
    # error another component logged meanwhile) once made it 151 in a full run.
    pending = await (
        await db.execute(
            "select count(*) from monitoring_deliveries d join monitoring_alerts a on a.id = d.alert_id"
            " where d.status = 'pending' and a.key like 'blocked%'"
        )
    ).fetchone()
    assert pending == (150,), "the blocked chat's deliveries wait for its block to end"
