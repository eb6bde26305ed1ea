"""Jobs of the ``feed`` queue: thin, they hand events to ``ActivityService``.

The relay (``app/core/relay.py``) publishes the feed's outbox rows claimed in one round as
``record_activities`` jobs of up to ``FEED_BATCH_SIZE`` events (the module declares the job with
``batches=RECORD_ACTIVITY_TASK``), so one job stores and groups a whole
batch in one transaction. Delivery is at least once and a batch may overlap one already stored (a
relay that crashed after enqueueing re-sends its rows, possibly in another composition): events
are stored once by outbox id, so running any batch again changes nothing.
"""

from __future__ import annotations

from typing import Any

from saq.types import Context

from app.core.services import services_of
from app.domains.activity.services import ActivityService


async def record_activities(ctx: Context, *, events: list[dict[str, Any]]) -> int:
    """Store and group a batch of outbox events; returns how many were new."""
    return await services_of(ctx)[ActivityService].record_batch(events)


async def record_activity(ctx: Context, *, outbox_id: int, **event: Any) -> int:
    """One event: jobs enqueued one per event (before batching) still run."""
    return await services_of(ctx)[ActivityService].record_batch([{**event, "outbox_id": outbox_id}])


async def purge_private_feed_groups(ctx: Context) -> int:
    """Daily: a reader's own groups past ``FEED_PRIVATE_RETENTION_DAYS`` are deleted."""
    return await services_of(ctx)[ActivityService].purge_private_groups()


async def recover_feed_events(ctx: Context) -> int:
    """Every minute: events whose jobs were lost are recorded (``recovery.py``)."""
    return await services_of(ctx)[ActivityService].recover_lost_events()
