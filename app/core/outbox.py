"""Writing to the transactional outbox: background work leaves with the change that caused it."""

from __future__ import annotations

from typing import Any

from app.core.db import UnitOfWork
from app.core.logging import current_request_id
from app.core.modules import QueueName
from app.db import outbox as outbox_queries


async def enqueue(uow: UnitOfWork, queue: QueueName, task: str, payload: dict[str, Any]) -> int:
    """Add a job to the outbox in ``uow``'s transaction; the relay publishes it after commit.

    The task receives ``payload`` as keyword arguments plus ``outbox_id`` (for idempotency). The
    request being served (``current_request_id``) goes with the row: the lines its job logs carry it
    (``app.core.queues.bind_job_context``), unless the task is taken in batches (one job, many rows).
    """
    outbox_id = await outbox_queries.insert_outbox(
        uow.conn, queue=queue, task=task, payload=payload, request_id=current_request_id()
    )
    assert outbox_id is not None
    return outbox_id
