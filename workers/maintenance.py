"""Housekeeping jobs on the ``default`` queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from saq.types import Context

from app.core.db import transaction
from app.db import outbox as outbox_queries
from workers.context import pool_of


async def purge_outbox(ctx: Context, outbox_id: int | None = None) -> int:
    """Delete outbox rows published longer ago than ``OUTBOX_RETENTION_DAYS``."""
    settings = ctx["resources"].settings
    cutoff = datetime.now(UTC) - timedelta(days=settings.outbox_retention_days)
    async with transaction(pool_of(ctx)) as uow:
        return await outbox_queries.purge_published_outbox(uow.conn, published_before=cutoff)
