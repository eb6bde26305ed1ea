"""Jobs of the pageviews domain (queue ``default``): partitions and the retention of ingest state."""

from __future__ import annotations

import msgspec
import structlog
from saq.types import Context

from app.core.services import services_of
from app.domains.pageviews.services import PageViewService

log = structlog.get_logger("app.pageviews")


async def maintain_partitions(ctx: Context) -> dict[str, int]:
    """Hourly: daily partitions from yesterday to three days ahead; drop those past retention."""
    upkeep = await services_of(ctx)[PageViewService].maintain_partitions()
    return msgspec.structs.asdict(upkeep)


async def purge_ingest_state(ctx: Context) -> dict[str, int]:
    """Daily: claimed event ids (2 days), visitor-hash salts (1 day), deleted sites' raw data.

    The two purges are independent: one failing does not skip the other; the job still fails
    (with the first error) once both have run."""
    pageviews = services_of(ctx)[PageViewService]
    done: dict[str, int] = {}
    errors: list[Exception] = []
    try:
        done["event_ids"], done["salts"] = await pageviews.purge()
    except Exception as exc:
        log.exception("purge_ingest_state_failed", step="purge")
        errors.append(exc)
    try:
        done["deleted_sites_views"] = await pageviews.purge_deleted_sites()
    except Exception as exc:
        log.exception("purge_ingest_state_failed", step="purge_deleted_sites")
        errors.append(exc)
    if errors:
        raise errors[0]
    return done
