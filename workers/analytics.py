"""Analytics jobs on the ``default`` queue: the report rollups, partitions and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from saq.types import Context

from app.core.cache import Cache
from app.core.db import transaction
from app.db import analytics as queries
from app.domains.analytics import reports
from workers.context import pool_of

EVENT_ID_RETENTION = timedelta(days=2)
SALT_RETENTION = timedelta(days=3)


async def rollup_page_views(ctx: Context) -> int:
    """Every minute: roll up the complete hours not rolled up yet (a no-op within an hour)."""
    resources = ctx["resources"]
    assert resources.valkey is not None
    service = reports.ReportService(
        pool_of(ctx), Cache(resources.valkey).namespace("reports"), resources.settings.report_cache_ttl_s
    )
    return await service.rollup()


async def maintain_partitions(ctx: Context) -> dict[str, int]:
    """Hourly: daily partitions from yesterday to three days ahead; drop those past retention."""
    created, dropped = await reports.maintain_partitions(
        pool_of(ctx), ctx["resources"].settings.analytics_retention_days
    )
    return {"created": created, "dropped": dropped}


async def purge_analytics(ctx: Context) -> dict[str, int]:
    """Daily: claimed event ids (2 days), salts (3 days) and rollups past retention."""
    now = datetime.now(UTC)
    async with transaction(pool_of(ctx)) as uow:
        event_ids = await queries.purge_event_ids(uow.conn, before=now - EVENT_ID_RETENTION)
        salts = await queries.delete_old_salts(uow.conn, before=(now - SALT_RETENTION).date())
    rollups = await reports.purge_rollups(
        pool_of(ctx), ctx["resources"].settings.analytics_retention_days, now
    )
    return {"event_ids": event_ids, "salts": salts, "rollups": rollups}
