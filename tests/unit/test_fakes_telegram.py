"""The fake Telegram holds a chat to the window a 429 announced, as the Bot API does: a request before
``retry_after`` has passed is refused again with the seconds still left. Driven over HTTP (ASGI, no
server) on a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.fakes.clock import FakeClock
from tests.fakes.telegram import FakeTelegram, Scripted

TOKEN = "123456:TEST-TOKEN-not-a-real-one"
PRIVATE_CHAT = "4242"
OTHER_CHAT = "4343"
GROUP_CHAT = "-1001234567890"


@dataclass
class Bot:
    fake: FakeTelegram
    clock: FakeClock
    http: httpx.AsyncClient

    def at(self, seconds: float) -> None:
        """Move the clock to ``seconds`` after the test's start."""
        self.clock.now = START + timedelta(seconds=seconds)

    async def send(self, chat_id: str = PRIVATE_CHAT, text: str = "hello") -> tuple[int, Any]:
        response = await self.http.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": chat_id, "text": text})
        body = response.json()
        return response.status_code, (body.get("parameters") or {}).get("retry_after")


START = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    clock = FakeClock(START)
    fake = FakeTelegram(token=TOKEN, clock=lambda: clock().timestamp())
    transport = httpx.ASGITransport(app=fake)
    async with httpx.AsyncClient(transport=transport, base_url="http://telegram.test") as http:
        yield Bot(fake, clock, http)


async def test_a_scripted_429_refuses_the_chat_until_its_retry_after_has_passed(bot: Bot) -> None:
    bot.fake.script(Scripted(429, "Too Many Requests: retry after 3", retry_after=3))
    assert await bot.send() == (429, 3)
    bot.at(0.5)
    assert await bot.send() == (429, 3), "2.5 s left: whole seconds, rounded up"
    assert await bot.send(OTHER_CHAT) == (200, None), "the window is the chat's"
    bot.fake.script(Scripted(502))
    bot.at(2.2)
    assert await bot.send() == (429, 1)
    bot.at(2.999)
    assert await bot.send() == (429, 1), "at least 1"
    bot.at(3.0)
    assert await bot.send() == (502, None), "over: the script goes on where the window held it"
    assert await bot.send() == (200, None)
    statuses = [(r.status, r.inside_window) for r in bot.fake.messages() if r.chat_id == PRIVATE_CHAT]
    assert statuses == [(429, False), (429, True), (429, True), (429, True), (502, False), (200, False)]
    assert len(bot.fake.refused_inside_window()) == 3


async def test_flood_controls_429_opens_its_window_too(bot: Bot) -> None:
    assert await bot.send() == (200, None)
    bot.at(0.2)
    assert await bot.send() == (429, 1), "one message a second"
    bot.at(1.1)
    assert await bot.send() == (429, 1), "a second after the last accepted, but inside the announced window"
    bot.at(1.2)
    assert await bot.send() == (200, None)
    assert len(bot.fake.refused_inside_window()) == 1


async def test_a_groups_minute_limit_holds_it_for_the_whole_seconds_announced(bot: Bot) -> None:
    for second in range(20):
        bot.at(second + 0.5)
        assert await bot.send(GROUP_CHAT) == (200, None)
    bot.at(21)
    assert await bot.send(GROUP_CHAT) == (429, 40), "20 a minute: the first of them leaves it at 60.5 s"
    bot.at(45.5)
    assert await bot.send(GROUP_CHAT) == (429, 16)
    bot.at(60.6)
    assert await bot.send(GROUP_CHAT) == (429, 1), "under the limit again, but 40 s were announced"
    bot.at(61)
    assert await bot.send(GROUP_CHAT) == (200, None)


async def test_reset_forgets_the_windows(bot: Bot) -> None:
    bot.fake.script(Scripted(429, "Too Many Requests: retry after 30", retry_after=30))
    assert await bot.send() == (429, 30)
    bot.fake.reset()
    assert await bot.send() == (200, None)
