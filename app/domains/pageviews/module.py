"""The pageviews domain: the page-view ingest path, its sink, and the upkeep of the raw data."""

from app.core.modules import Cron, Module
from app.domains.pageviews.controllers import ingest_page_view, ingest_page_view_batch
from app.domains.pageviews.jobs import maintain_partitions, purge_ingest_state
from app.domains.pageviews.outcomes import count_not_accepted
from app.domains.pageviews.services import PageViewService
from app.domains.sites.services import SiteService

module = Module(
    name="pageviews",
    controllers=[ingest_page_view, ingest_page_view_batch],
    service=lambda s: PageViewService(s.db, s.settings, s[SiteService], s.valkey),
    cron=[
        Cron(function=maintain_partitions, schedule="7 * * * *", timeout_s=300),
        Cron(function=purge_ingest_state, schedule="37 3 * * *", timeout_s=600),
    ],
    request_observers=[count_not_accepted],
)
