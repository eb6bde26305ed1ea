"""Jobs of the pageviews domain (queue ``default``): partitions and the retention of ingest state."""

from __future__ import annotations

import msgspec
from saq.types import Context

from app.core.services import services_of
from app.domains.pageviews.services import PageViewService


async def maintain_partitions(ctx: Context) -> dict[str, int]:
    """Hourly: daily partitions from yesterday to three days ahead; drop those past retention."""
    upkeep = await services_of(ctx)[PageViewService].maintain_partitions()
    return msgspec.structs.asdict(upkeep)


async def purge_ingest_state(ctx: Context) -> dict[str, int]:
    """Daily: claimed event ids (2 days); visitor-hash salts once no view can use them (a view's ``ts``
    is at most 24 hours old, so a day's salt serves until the next day ends and goes at the first run
    after, about 52 hours after its day began); deleted sites' raw data."""
    return await services_of(ctx)[PageViewService].purge_ingest_state()
