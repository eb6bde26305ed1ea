"""Jobs of the reports domain (queue ``default``): the rollups and their retention."""

from __future__ import annotations

from saq.types import Context

from app.core.services import services_of
from app.domains.reports.services import ReportService


async def rollup_page_views(ctx: Context) -> int:
    """Every minute: roll up the complete steps of five minutes not rolled up yet (a no-op within one)."""
    return await services_of(ctx)[ReportService].rollup()


async def purge_rollups(ctx: Context) -> dict[str, int]:
    """Daily: rollups (visitor-level ones included) older than the raw data's retention, and those of
    deleted sites."""
    return await services_of(ctx)[ReportService].purge_all()
