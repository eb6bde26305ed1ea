"""The alert group is upgraded to a supergroup: Telegram refuses the old chat id with 400 and
``parameters.migrate_to_chat_id``. Alerts follow the group to its new id at once and from then on, and
the operator is told once to update TELEGRAM_CHAT_ID."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from tests.factories import captured_logs
from tests.fakes.telegram import FakeTelegramServer, serve_fake_telegram
from tests.functional.test_monitoring_alerts import TOKEN, storm_event, with_telegram
from tests.functional.test_monitoring_groups import open_monitoring

OLD_CHAT = "-4242424242"
NEW_CHAT = "-1004242424242"


@pytest.fixture
def upgraded_group() -> Iterator[FakeTelegramServer]:
    with serve_fake_telegram(TOKEN) as server:
        server.fake.migrate(OLD_CHAT, NEW_CHAT)
        yield server


async def deliveries(db: AsyncConnection[Any], alert_ids: list[int | None]) -> list[tuple[str, str, str]]:
    rows = await (
        await db.execute(
            "select chat_id, status::text, coalesce(last_error, '') from monitoring_deliveries"
            " where alert_id = any(%s) order by id",
            (alert_ids,),
        )
    ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


async def test_alerts_follow_a_group_upgraded_to_a_supergroup(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, upgraded_group: FakeTelegramServer
) -> None:
    with captured_logs() as logs:
        async with open_monitoring(settings, **with_telegram(upgraded_group, [OLD_CHAT])) as service:
            results = await service.write_now([storm_event(901, time.time()), storm_event(902, time.time())])
            await service.deliver(budget_s=20)
    received = upgraded_group.fake.messages()
    assert [(r.chat_id, r.status) for r in received] == [(OLD_CHAT, 400), (NEW_CHAT, 200), (NEW_CHAT, 200)]
    rows = await deliveries(db, [r.alert_id for r in results])
    assert [(chat, status) for chat, status, _ in rows] == [(OLD_CHAT, "sent"), (OLD_CHAT, "sent")]
    assert NEW_CHAT in rows[0][2], "the delivery says where it went"
    mapping = await (
        await db.execute(
            "select chat_id, migrated_to from monitoring_telegram_chats where migrated_to is not null"
        )
    ).fetchall()
    assert mapping == [(OLD_CHAT, NEW_CHAT)]
    [warning] = logs.events("monitoring_telegram_chat_migrated")
    assert warning["level"] == "warning"
    assert (warning["chat_id"], warning["migrated_to"]) == (OLD_CHAT, NEW_CHAT)
    assert "TELEGRAM_CHAT_ID" in warning["detail"]


async def test_a_later_sender_goes_to_the_new_chat_straight_away(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, upgraded_group: FakeTelegramServer
) -> None:
    changes = with_telegram(upgraded_group, [OLD_CHAT])
    async with open_monitoring(settings, **changes) as service:
        await service.write_now([storm_event(903, time.time())])
        await service.deliver(budget_s=20)
    upgraded_group.fake.reset()  # forgets the migration too: the old id would now be accepted
    with captured_logs() as logs:
        async with open_monitoring(settings, **changes) as restarted:
            [later] = await restarted.write_now([storm_event(904, time.time())])
            await restarted.deliver(budget_s=20)
    assert [(r.chat_id, r.status) for r in upgraded_group.fake.messages()] == [(NEW_CHAT, 200)]
    assert [(chat, status) for chat, status, _ in await deliveries(db, [later.alert_id])] == [
        (OLD_CHAT, "sent")
    ]
    assert logs.events("monitoring_telegram_chat_migrated") == [], "told once, when Telegram said so"
