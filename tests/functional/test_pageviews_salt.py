"""The day's visitor-hash salt: created once whichever process asks first, and loaded once per
process however many requests need a new day's salt at the same moment (midnight UTC under load)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.domains.pageviews.services import DailySalt, PageViewService
from app.modules import MODULES

DAY = date(2026, 1, 2)


@pytest.fixture
async def pageviews(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[PageViewService]:
    async with open_services(settings, MODULES) as services:
        yield services[PageViewService]


async def test_requests_that_need_a_new_days_salt_at_once_share_one_load(
    pageviews: PageViewService, db: AsyncConnection[Any]
) -> None:
    salt = pageviews.salt
    salts = await asyncio.gather(*(salt.for_day(DAY) for _ in range(50)))
    assert salt.loads == 1
    assert len(set(salts)) == 1
    stored = await (await db.execute("select salt from analytics_salts where day = %s", (DAY,))).fetchall()
    assert stored == [(salts[0],)]
    assert await salt.for_day(DAY) == salts[0]
    assert salt.loads == 1


async def test_another_process_gets_the_salt_the_first_one_created(pageviews: PageViewService) -> None:
    first = await pageviews.salt.for_day(DAY)
    other = DailySalt(pageviews.db)
    assert await other.for_day(DAY) == first
    assert other.loads == 1


async def test_a_cancelled_request_does_not_cancel_the_load_the_others_wait_for(
    pageviews: PageViewService,
) -> None:
    salt = pageviews.salt
    leaving = asyncio.ensure_future(salt.for_day(DAY))
    staying = asyncio.ensure_future(salt.for_day(DAY))
    await asyncio.sleep(0)  # one turn of the loop: both have joined the load (no timing involved)
    leaving.cancel()
    assert len(await staying) == 32
    assert leaving.cancelled()
    assert salt.loads == 1
