"""Storing domain events for the feed (idempotent: delivery is at least once)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.core.db import UnitOfWork
from app.db import activity as queries


async def record_activity(
    uow: UnitOfWork,
    *,
    outbox_id: int,
    actor_id: int,
    verb: str,
    object_type: str,
    object_id: int,
    project_id: int | None,
    data: dict[str, Any],
    occurred_at: str,
) -> bool:
    """Store one event; False when this outbox event was already stored."""
    stored = await queries.record_activity(
        uow.conn,
        outbox_id=outbox_id,
        actor_id=actor_id,
        verb=verb,
        object_type=object_type,
        object_id=object_id,
        project_id=project_id,
        data=data,
        occurred_at=datetime.fromisoformat(occurred_at),
    )
    return stored == 1
