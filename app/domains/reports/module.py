"""The reports domain: a site's reports, read from rollups plus the raw rows not rolled up yet."""

from app.core.modules import Cron, Module
from app.domains.reports.controllers import SiteReportsController
from app.domains.reports.jobs import purge_rollups, rollup_page_views
from app.domains.reports.services import ReportService
from app.domains.reports.turns import ReportTurns
from app.domains.sites.services import SiteService

module = Module(
    name="reports",
    controllers=[SiteReportsController],
    service=lambda s: ReportService(
        s.db,
        s.cache.namespace("reports"),
        s.settings.report_cache_ttl_s,
        s[SiteService],
        retention_days=s.settings.analytics_retention_days,
        turns=ReportTurns(
            s.settings.report_loads_at_once,
            s.settings.report_loads_per_account,
            wait_s=s.settings.database_timeout_s,
        ),
    ),
    cron=[
        Cron(function=rollup_page_views, schedule="* * * * *", timeout_s=600),
        Cron(function=purge_rollups, schedule="37 3 * * *", timeout_s=600),
    ],
)
