"""The sites domain: the sites a user tracks, each with its public ingest key."""

from app.core.modules import Module
from app.core.services import Services
from app.domains.accounts.services import AccountService
from app.domains.sites.controllers import SitesController
from app.domains.sites.seed import seed_sites
from app.domains.sites.services import SiteService


def build_service(s: Services) -> SiteService:
    """The service, and its part of an account's erasure (``SiteService.refuse_erasing_an_owner``)."""
    accounts = s[AccountService]
    accounts.before_erasure(SiteService.refuse_erasing_an_owner)
    return SiteService(s.db, s.settings, accounts)


module = Module(
    name="sites",
    controllers=[SitesController],
    service=build_service,
    seed=seed_sites,
)
