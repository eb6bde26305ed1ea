"""Domain events: what changed, who did it, to which object, in which project.

Every mutation of the product domains calls ``emit`` inside its transaction; the event reaches the
activity feed through the outbox, so an event exists exactly when its change was committed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.core.db import UnitOfWork
from app.core.outbox import enqueue

RECORD_ACTIVITY_TASK = "record_activity"


async def emit(
    uow: UnitOfWork,
    *,
    actor: int,
    verb: str,
    obj: tuple[str, int],
    project_id: int | None,
    data: dict[str, Any] | None = None,
) -> int:
    """Write ``actor verb obj (in project)`` to the outbox; returns the outbox id."""
    object_type, object_id = obj
    return await enqueue(
        uow,
        "feed",
        RECORD_ACTIVITY_TASK,
        {
            "actor_id": actor,
            "verb": verb,
            "object_type": object_type,
            "object_id": object_id,
            "project_id": project_id,
            "data": data or {},
            "occurred_at": datetime.now(UTC).isoformat(),
        },
    )
