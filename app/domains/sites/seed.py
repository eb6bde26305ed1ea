"""A demo site for the administrator, ready to receive page views with its ingest key (idempotent:
created once per administrator, by its domain)."""

from __future__ import annotations

from app.core.services import Services
from app.db import sites as queries
from app.domains.accounts.services import AccountService
from app.domains.sites.schemas import SiteCreate
from app.domains.sites.services import SiteLimitError, SiteService

DEMO_DOMAIN = "demo.example.com"
PAGE = 100


async def seed_sites(services: Services) -> list[str]:
    admin = await services[AccountService].find_by_email(services.settings.admin_email)
    if admin is None or await _owns(services, admin.id, DEMO_DOMAIN):
        return []
    try:
        await services[SiteService].create(admin.id, SiteCreate(domain=DEMO_DOMAIN))
    except SiteLimitError:  # the administrator's sites fill the quota: theirs, not the demo's
        return []
    return [f"demo site: {DEMO_DOMAIN}, the admin's (GET /api/sites shows its ingest key)"]


async def _owns(services: Services, owner_id: int, domain: str) -> bool:
    after_id = 0
    async with services.db.read() as uow:
        while page := await queries.list_own_sites(
            uow.conn, owner_id=owner_id, after_id=after_id, row_limit=PAGE
        ):
            if any(site.domain == domain for site in page):
                return True
            after_id = page[-1].id
    return False
