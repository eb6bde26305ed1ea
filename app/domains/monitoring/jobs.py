"""SAQ jobs of monitoring: thin, they call the service."""

from __future__ import annotations

import math
from typing import Any

from saq.types import Context

from app.config import Settings
from app.core.services import services_of
from app.domains.monitoring.delivery import MIN_INTERVAL_S
from app.domains.monitoring.services import MonitoringService

DELIVERY_MARGIN_S = 5
"""What the job keeps for the sender's bookkeeping (claims, records, its lock connection): the sender
starts no delivery whose worst case outlives the budget, so the requests themselves need no margin."""


def delivery_timeout_s(settings: Settings) -> int:
    """The timeout of a delivery job the outbox queues with an alert: ``JOB_TIMEOUT_S``, or more when
    that would not fit one message at its worst (``Sender.worst_case_s``: two requests of
    ``TELEGRAM_TIMEOUT_S`` and the pause between them) and ``DELIVERY_MARGIN_S``; such a job would
    deliver nothing, and the alert would wait for the per-minute cron."""
    worst_case_s = 2 * settings.telegram_timeout_s + MIN_INTERVAL_S
    return max(settings.job_timeout_s, math.ceil(worst_case_s) + DELIVERY_MARGIN_S)


async def deliver_alerts(ctx: Context, **_: Any) -> int:
    """Send the Telegram deliveries that are due (queued by the outbox when alerts are recorded, and
    every minute by cron for digests and retries); stops in time to finish within the job's timeout."""
    job = ctx.get("job")
    timeout = job.timeout if job is not None and job.timeout else 60
    return await services_of(ctx)[MonitoringService].deliver(budget_s=max(1, timeout - DELIVERY_MARGIN_S))


async def run_monitoring_checks(ctx: Context) -> bool:
    """Cron monitors, slow routes, expired ignores, the daily report and retention (at most once per
    check slot across every process: the web processes run them too, so a stopped worker is noticed)."""
    return await services_of(ctx)[MonitoringService].run_periodic()
