"""Jobs of the ``feed`` queue."""

from __future__ import annotations

from typing import Any

from saq.types import Context

from app.core.db import transaction
from app.domains.activity import services
from workers.context import pool_of


async def record_activity(ctx: Context, *, outbox_id: int, **event: Any) -> bool:
    async with transaction(pool_of(ctx)) as uow:
        return await services.record_activity(uow, outbox_id=outbox_id, **event)
