"""Alerts lost on the way to Telegram are told in the chat: a delivery that ended ``uncertain`` (a 5xx,
a sender cut mid-request) or ``failed`` (refused, or given up after ``MONITORING_DELIVERY_MAX_AGE_S``)
is never resent, so the chat's next delivered message is followed by one notice that says how many
may not have arrived and when they were raised. Each loss is told once; a lost notice is not told
again (no notice loop); losses from before the deploy are not told."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.db import transaction
from app.domains.monitoring import alerts
from app.domains.monitoring.services import MonitoringService
from app.domains.monitoring.telegram import Rendered
from tests.factories import scalar
from tests.fakes.telegram import FakeTelegramServer, Scripted, parse_html, serve_fake_telegram
from tests.functional.test_monitoring_alerts import PRIVATE_CHAT, TOKEN, with_telegram
from tests.functional.test_monitoring_groups import open_monitoring

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@pytest.fixture
def telegram() -> Iterator[FakeTelegramServer]:
    with serve_fake_telegram(TOKEN) as server:
        yield server


def settings_for(telegram: FakeTelegramServer, **changes: Any) -> dict[str, Any]:
    return with_telegram(telegram, [PRIVATE_CHAT], monitoring_alert_budget=10_000, **changes)


async def record(service: MonitoringService, text: str, at: float | None = None) -> None:
    """An alert whose text is ``text``, recorded (and queued for the chat) as the writers do."""
    moment = datetime.fromtimestamp(service.clock() if at is None else at, UTC)
    async with transaction(service.db.pool) as uow:
        await alerts.record_alert(
            uow,
            service.channel,
            key=text,
            rule="test",
            group_id=None,
            summary=text,
            rendered=Rendered(html=text, plain=text),
            now=moment,
        )


async def created_at(db: AsyncConnection[Any], key: str) -> str:
    """When the alert ``key`` was recorded, as the notice writes it."""
    moment = await scalar(db, "select created_at from monitoring_alerts where key = %s", key)
    assert isinstance(moment, datetime)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def statuses(db: AsyncConnection[Any]) -> dict[str, str]:
    rows = await (
        await db.execute(
            "select a.key, d.status::text from monitoring_deliveries d"
            " join monitoring_alerts a on a.id = d.alert_id order by d.id"
        )
    ).fetchall()
    return {key: status for key, status in rows}


async def notices(db: AsyncConnection[Any]) -> int:
    return int(await scalar(db, "select count(*) from monitoring_alerts where kind = 'notice'"))


def texts(telegram: FakeTelegramServer) -> list[tuple[int, str]]:
    return [(message.status, parse_html(message.text)[0]) for message in telegram.fake.messages()]


async def test_alerts_lost_to_bad_gateways_are_told_once_after_the_next_delivered_message(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    telegram.fake.script(Scripted(502, "Bad Gateway"), Scripted(502, "Bad Gateway"))
    async with open_monitoring(settings, **settings_for(telegram)) as service:
        start = time.time()
        await record(service, "lost one", start)
        await record(service, "lost two", start + 1)
        assert await service.deliver(budget_s=30) == 0
        assert await statuses(db) == {"lost one": "uncertain", "lost two": "uncertain"}
        await record(service, "back again")
        assert await service.deliver(budget_s=30) == 2, "the alert, then the notice"
        await record(service, "later")
        assert await service.deliver(budget_s=30) == 1, "no second notice"
    received = texts(telegram)
    assert [status for status, _ in received] == [502, 502, 200, 200, 200]
    assert received[2][1] == "back again" and received[4][1] == "later"
    notice = received[3][1]
    assert "2 alerts" in notice, notice
    assert await created_at(db, "lost one") in notice and await created_at(db, "lost two") in notice
    assert "/api/admin/monitoring/alerts" in notice
    assert await notices(db) == 1
    told = await statuses(db)
    assert [status for key, status in told.items() if key.startswith("notice:")] == ["sent"]


async def test_failed_deliveries_refused_or_given_up_are_told(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """One delivery Telegram refuses for good (400), one tried until its alert is
    ``MONITORING_DELIVERY_MAX_AGE_S`` old (401, not delivered): both ``failed``, both told."""
    max_age = 60.0
    async with open_monitoring(
        settings, **settings_for(telegram, monitoring_delivery_max_age_s=max_age)
    ) as service:
        start = time.time()
        await record(service, "refused", start)
        await record(service, "given up", start + 1)
        service.clock = lambda: time.time() + max_age + 30  # both alerts are past their age
        telegram.fake.script(Scripted(400, "Bad Request: chat not found"), Scripted(401, "Unauthorized"))
        assert await service.deliver(budget_s=30) == 0
        assert await statuses(db) == {"refused": "failed", "given up": "failed"}
        given_up = await scalar(db, "select last_error from monitoring_deliveries order by id desc limit 1")
        assert "given up after" in given_up
        await record(service, "back again")
        assert await service.deliver(budget_s=30) == 2
    received = texts(telegram)
    assert [status for status, _ in received] == [400, 401, 200, 200]
    notice = received[3][1]
    assert "2 alerts" in notice, notice
    assert await created_at(db, "refused") in notice and await created_at(db, "given up") in notice
    assert await notices(db) == 1


async def test_a_lost_notice_is_not_told_again(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    telegram.fake.script(Scripted(502, "Bad Gateway"), Scripted(502, "Bad Gateway"))
    async with open_monitoring(settings, **settings_for(telegram)) as service:
        await record(service, "lost one")
        await record(service, "lost two")
        assert await service.deliver(budget_s=30) == 0
        await record(service, "back again")
        service.clock = lambda: time.time() + 5  # the chat's pacing interval after the 502s has passed
        # a budget for one delivery: the notice, due a pacing interval later, waits for the next sender
        assert await service.deliver(budget_s=service.sender.worst_case_s + 0.5) == 1
        assert await notices(db) == 1
        telegram.fake.script(Scripted(502, "Bad Gateway"))
        assert await service.deliver(budget_s=30) == 0, "the notice itself is lost"
        await record(service, "later")
        assert await service.deliver(budget_s=30) == 1
        await record(service, "even later")
        assert await service.deliver(budget_s=30) == 1
    received = texts(telegram)
    assert [status for status, _ in received] == [502, 502, 200, 502, 200, 200]
    assert "2 alerts" in received[3][1]
    assert [text for _, text in received[4:]] == ["later", "even later"], "the lost notice is not told"
    assert await notices(db) == 1


async def test_losses_from_before_the_deploy_are_not_told(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """The deployed database has old losses and no chat row saying they were told: the migration's
    backfill (run here as written in its file) marks them told; a loss after it is still told."""
    telegram.fake.script(Scripted(502, "Bad Gateway"), Scripted(502, "Bad Gateway"))
    async with open_monitoring(settings, **settings_for(telegram)) as service:
        await record(service, "old loss one")
        await record(service, "old loss two")
        assert await service.deliver(budget_s=30) == 0
        await db.execute("delete from monitoring_telegram_chats")  # as before the column existed
        [backfill] = MIGRATIONS.glob("*_monitoring_told_through_backfill.sql")
        up = backfill.read_text().split("-- migrate:up", 1)[1].split("-- migrate:down", 1)[0]
        async with db.transaction():
            await db.execute(up)
        await record(service, "after the deploy")
        assert await service.deliver(budget_s=30) == 1, "no notice of the old losses"
        telegram.fake.script(Scripted(502, "Bad Gateway"))
        await record(service, "new loss")
        assert await service.deliver(budget_s=30) == 0
        await record(service, "back again")
        assert await service.deliver(budget_s=30) == 2
    received = texts(telegram)
    assert [status for status, _ in received] == [502, 502, 200, 502, 200, 200]
    notice = received[5][1]
    assert "1 alert " in notice, notice
    assert await created_at(db, "new loss") in notice
    assert await notices(db) == 1


async def test_a_delivery_still_being_tried_is_told_if_it_is_lost_after_a_newer_loss_was(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """An older delivery still pending (backing off, or a digest waiting for its period's end) when a
    newer loss could be told: the notice waits until it is settled, so its own loss is told too."""
    async with open_monitoring(settings, **settings_for(telegram)) as service:
        await record(service, "still tried")
        await db.execute(  # Telegram refused it as not delivered: it is tried again later
            "update monitoring_deliveries set attempts = 1, not_before = now() + interval '1 hour'"
        )
        telegram.fake.script(Scripted(502, "Bad Gateway"))
        await record(service, "lost")
        assert await service.deliver(budget_s=30) == 0
        await record(service, "back again")
        assert await service.deliver(budget_s=30) == 1, "no notice while an older delivery may be lost"
        await db.execute(
            "update monitoring_deliveries set not_before = now()"
            " where alert_id = (select id from monitoring_alerts where key = 'still tried')"
        )
        telegram.fake.script(Scripted(400, "Bad Request: chat not found"))
        assert await service.deliver(budget_s=30) == 0
        await record(service, "later")
        assert await service.deliver(budget_s=30) == 2, "the alert, then the notice of both losses"
    received = texts(telegram)
    assert [status for status, _ in received] == [502, 200, 400, 200, 200]
    notice = received[4][1]
    assert "2 alerts" in notice, notice
    assert await created_at(db, "still tried") in notice and await created_at(db, "lost") in notice
    assert await notices(db) == 1
