"""SAQ jobs of monitoring: thin, they call the service."""

from __future__ import annotations

from typing import Any

from saq.types import Context

from app.core.services import services_of
from app.domains.monitoring.services import MonitoringService

DELIVERY_MARGIN_S = 5
"""What the job keeps for the sender's bookkeeping (claims, records, its lock connection): the sender
starts no delivery whose worst case outlives the budget, so the requests themselves need no margin."""


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
