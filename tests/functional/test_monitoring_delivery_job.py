"""The delivery job the outbox queues with an alert has time for at least one message.

The sender starts a delivery only when its worst case fits the job's budget (its timeout less
``DELIVERY_MARGIN_S``): two requests of ``TELEGRAM_TIMEOUT_S`` and the pause between them. With the
default ``JOB_TIMEOUT_S`` (30 s) and a ``TELEGRAM_TIMEOUT_S`` of 12 s or more (the settings allow 25),
a job of ``JOB_TIMEOUT_S`` would deliver nothing and the alert would wait for the per-minute cron.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection
from saq.types import Context
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.relay import batching_of, job_key, relay_once, timeouts_of
from app.core.services import open_services
from app.domains.monitoring.jobs import deliver_alerts
from app.domains.monitoring.module import module as monitoring_module
from app.domains.monitoring.services import MonitoringService
from tests.factories import saq_queues
from tests.fakes.telegram import FakeTelegramServer, serve_fake_telegram
from tests.functional.test_monitoring_alerts import PRIVATE_CHAT, TOKEN, storm_event, with_telegram
from tests.functional.test_monitoring_groups import tuned

MODULES = (monitoring_module,)


@pytest.fixture
def telegram() -> Iterator[FakeTelegramServer]:
    with serve_fake_telegram(TOKEN) as server:
        yield server


@pytest.mark.parametrize("telegram_timeout_s", [12.0, 25.0])
async def test_the_job_queued_with_an_alert_delivers_it(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
    telegram_timeout_s: float,
) -> None:
    changes = with_telegram(telegram, [PRIVATE_CHAT], telegram_timeout_s=telegram_timeout_s)
    job_settings = tuned(settings, **changes)
    assert job_settings.job_timeout_s == 30, "the default"
    assert msgspec.convert({"telegram_timeout_s": 25.0}, Settings).telegram_timeout_s == 25.0, "allowed"
    async with open_services(job_settings, MODULES) as services:
        [result] = await services[MonitoringService].write_now([storm_event(1, time.time())])
        assert result.alert_id is not None
        assert job_settings.valkey_url is not None
        async with saq_queues(job_settings.valkey_url) as queues:
            published = await relay_once(
                services.db.pool,
                queues,
                job_settings,
                batching_of(MODULES, job_settings),
                timeouts_of(MODULES, job_settings),
            )
            assert published == 1
            row = await (await db.execute("select id from outbox where task = 'deliver_alerts'")).fetchone()
            assert row is not None
            job = await queues["default"].job(job_key(row[0]))
            assert job is not None and job.function == "deliver_alerts"
            ctx: Context = {"job": job, "services": services}  # type: ignore[typeddict-unknown-key]
            delivered = await deliver_alerts(ctx)
    assert delivered == 1, "the job had time for the alert"
    assert [message.chat_id for message in telegram.fake.messages(accepted_only=True)] == [PRIVATE_CHAT]
