"""The sites domain: the sites a user tracks, each with its public ingest key."""

from app.core.modules import Module
from app.domains.accounts.services import AccountService
from app.domains.sites.controllers import SitesController
from app.domains.sites.seed import seed_sites
from app.domains.sites.services import SiteService

module = Module(
    name="sites",
    controllers=[SitesController],
    service=lambda s: SiteService(s.db, s.settings, s[AccountService]),
    seed=seed_sites,
)
