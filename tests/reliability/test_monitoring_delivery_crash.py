"""A worker killed (SIGKILL) while Telegram holds its request never leads to a second send; one stopped
(SIGTERM) finishes that request and claims no other (the end of this file).

The real worker (``python -m workers``) delivers alerts to the fake Telegram, which records the first
message (for Telegram it is sent) and holds its answer; the worker is killed before it learns the
answer. A second worker takes over: it finds the delivery still claimed by the dead sender, marks it
``uncertain`` instead of resending it, and delivers the other alerts once each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.db.models import MonitoringGroupKind
from app.domains.monitoring.capture import RawEvent
from app.domains.monitoring.fingerprint import RawException
from tests.factories import wait_until
from tests.fakes.telegram import FakeTelegramServer, serve_fake_telegram
from tests.functional.test_monitoring_groups import open_monitoring

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "123456:TEST-TOKEN-not-a-real-one"
CHAT = "4242"


@pytest.fixture
def telegram() -> Iterator[FakeTelegramServer]:
    with serve_fake_telegram(TOKEN) as server:
        yield server


class Workers:
    """``python -m workers`` subprocesses; each one still running is killed at the end."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with (self.directory / f"worker-{len(self.started)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "workers"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob("worker-*.log"))
        )

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(10)


@pytest.fixture
def workers(tmp_path: Path, settings: Settings, telegram: FakeTelegramServer) -> Iterator[Workers]:
    assert settings.database_url and settings.valkey_url
    env = {
        **os.environ,
        "APP_ENV": "test",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": settings.database_url,
        "VALKEY_URL": settings.valkey_url,
        "DATABASE_POOL_MIN": "1",
        "DATABASE_POOL_MAX": "5",
        "OUTBOX_POLL_INTERVAL_S": "0.1",
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_CHAT_ID": CHAT,
        "TELEGRAM_API_URL": telegram.url,
        "TELEGRAM_TIMEOUT_S": "20",  # the held request outlives the worker (killed once Telegram has it)
        "JOB_TIMEOUT_S": "60",  # the job queued with an alert fits a delivery's worst case (2 x 20 s + 1.1 s)
        "MONITORING_CHECK_INTERVAL_S": "1",
        "MONITORING_DELIVERY_FALLBACK_S": "1",
    }
    running = Workers(tmp_path, env)
    try:
        yield running
    finally:
        running.close()


def alert_event(marker: str) -> RawEvent:
    return RawEvent(
        kind=MonitoringGroupKind.ERROR,
        occurred_at=time.time(),
        chain=(RawException(f"CrashTest{marker}", f"crash marker {marker}", ()),),
        context={"source": "request"},
    )


async def deliveries(db: AsyncConnection[Any]) -> dict[str, str]:
    """Status of each crash-test alert's delivery, by marker (other alerts, e.g. the daily report the
    worker sends, are left out)."""
    rows = await (
        await db.execute(
            "select substring(a.summary from 'CrashTest([a-z]+)'), d.status::text"
            " from monitoring_deliveries d join monitoring_alerts a on a.id = d.alert_id"
            " where a.summary like '%CrashTest%'"
        )
    ).fetchall()
    return dict(rows)


async def test_a_worker_killed_mid_send_never_sends_twice(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
    workers: Workers,
) -> None:
    telegram.fake.hold("crash marker one", seconds=120)
    changes = {"telegram_bot_token": TOKEN, "telegram_chat_id": [CHAT], "telegram_api_url": telegram.url}
    async with open_monitoring(settings, **changes) as service:  # records, never sends (fallback: a day)
        for marker in ("one", "two", "three"):
            await service.write_now([alert_event(marker)])
    assert set((await deliveries(db)).values()) == {"pending"}

    first = workers.start()

    def received(marker: str) -> list[Any]:
        return [m for m in telegram.fake.messages() if f"crash marker {marker}" in m.text]

    async def held() -> bool:
        assert first.poll() is None, workers.logs()
        return bool(received("one"))

    await wait_until(held, 60, "the first alert reached Telegram (held there)")
    assert (await deliveries(db))["one"] == "sending", "claimed before the request left"
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    second = workers.start()

    async def settled() -> bool:
        assert second.poll() is None, workers.logs()
        return (await deliveries(db)) == {
            "one": "uncertain",
            "two": "sent",
            "three": "sent",
        }

    await wait_until(settled, 90, "the second worker settled every delivery")
    assert len(received("one")) == 1, "the alert Telegram already had was not sent again"
    assert len(received("two")) == 1 and len(received("three")) == 1
    assert all(m.accepted for m in telegram.fake.messages()), "paced: no 429 either"
    note = await (
        await db.execute("select last_error from monitoring_deliveries where status = 'uncertain'")
    ).fetchone()
    assert note is not None and "not resent" in note[0]


# -- a graceful stop (SIGTERM) ---------------------------------------------------------------------

# A worker stopped gracefully (SIGTERM: any deploy) while it delivers alerts: its sender hears of the
# stop when the signal arrives, not after the shutdown grace. It lets the request in flight finish and
# records its answer, claims no new delivery, and leaves the others ``pending`` for the next worker:
# none is started and then cut by the grace (which would leave it ``uncertain``, never resent).
#
# The real worker (``python -m workers``) against the fake Telegram, which holds the first message's
# answer for a few seconds (less than the grace).

HELD_S = 4
"""How long the fake Telegram holds the first answer: well within ``WORKER_SHUTDOWN_GRACE_S`` (10 s)."""


async def test_a_sigterm_lets_the_request_in_flight_finish_and_claims_no_other_delivery(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
    workers: Workers,
) -> None:
    telegram.fake.hold("crash marker one", seconds=HELD_S)
    changes: dict[str, Any] = {
        "telegram_bot_token": TOKEN,
        "telegram_chat_id": [CHAT],
        "telegram_api_url": telegram.url,
    }
    async with open_monitoring(settings, **changes) as service:  # records, never sends (fallback: a day)
        for marker in ("one", "two", "three"):
            await service.write_now([alert_event(marker)])
    first = workers.start()

    def received(marker: str) -> list[Any]:
        return [m for m in telegram.fake.messages() if f"crash marker {marker}" in m.text]

    async def in_flight() -> bool:
        assert first.poll() is None, workers.logs()
        return bool(received("one"))

    await wait_until(in_flight, 60, "the first alert reached Telegram (its answer held)")
    first.send_signal(signal.SIGTERM)
    assert first.wait(40) == 0, workers.logs()
    assert await deliveries(db) == {"one": "sent", "two": "pending", "three": "pending"}, (
        "the request in flight finished and was recorded; no delivery was claimed after the SIGTERM"
    )
    assert not received("two") and not received("three")

    second = workers.start()

    async def settled() -> bool:
        assert second.poll() is None, workers.logs()
        return await deliveries(db) == {"one": "sent", "two": "sent", "three": "sent"}

    await wait_until(settled, 90, "the next worker delivered the rest")
    assert [len(received(marker)) for marker in ("one", "two", "three")] == [1, 1, 1]
