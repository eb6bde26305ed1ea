"""Alerting that cannot send says so: a warning at start-up in production, and a count of alerts
recorded with no delivery."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from tests.factories import captured_logs, scalar
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.unit.test_monitoring_fingerprint import raise_bug

TOKEN = "123456:TEST-TOKEN-not-a-real-one-abcdefghij"


def undeliverable() -> float:
    return REGISTRY.get_sample_value("app_monitoring_alerts_undeliverable_total") or 0.0


@pytest.mark.parametrize(
    ("token", "chats", "missing"),
    [
        pytest.param(TOKEN, [], ["TELEGRAM_CHAT_ID"], id="token-without-chat"),
        pytest.param("", ["-1001"], ["TELEGRAM_BOT_TOKEN"], id="chat-without-token"),
        pytest.param("", [], ["TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID"], id="neither"),
    ],
)
async def test_production_that_cannot_send_alerts_warns_at_start_naming_the_missing_setting(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    token: str,
    chats: list[str],
    missing: list[str],
) -> None:
    with captured_logs() as logs:
        async with open_monitoring(
            settings, app_env="production", telegram_bot_token=token, telegram_chat_id=chats
        ):
            pass
    [warning] = logs.events("alerts_undeliverable")
    assert warning["level"] == "warning"
    assert warning["missing"] == missing
    assert TOKEN not in logs.text


@pytest.mark.parametrize(
    ("app_env", "token", "chats"),
    [
        pytest.param("production", TOKEN, ["-1001"], id="production-configured"),
        pytest.param("development", "", [], id="development-without-telegram"),
    ],
)
async def test_no_warning_when_alerts_can_be_sent_or_outside_production(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, app_env: str, token: str, chats: list[str]
) -> None:
    with captured_logs() as logs:
        async with open_monitoring(
            settings, app_env=app_env, telegram_bot_token=token, telegram_chat_id=chats
        ):
            pass
    assert logs.events("alerts_undeliverable") == []


async def test_alerts_recorded_without_any_delivery_are_counted(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    before = undeliverable()
    async with open_monitoring(settings, telegram_bot_token=TOKEN, telegram_chat_id=[]) as service:
        [result] = await service.write_now([error_event(raise_bug(0))])
        assert result.alert_id is not None
    assert await scalar(db, "select count(*) from monitoring_deliveries") == 0
    assert undeliverable() == before + 1
