"""A demo site for the administrator, ready to receive page views with its ingest key (idempotent:
created once per administrator, by its domain)."""

from __future__ import annotations

from app.core.services import Services
from app.domains.accounts.services import AccountService
from app.domains.sites.schemas import SiteCreate
from app.domains.sites.services import SiteLimitError, SiteService

DEMO_DOMAIN = "demo.example.com"


async def seed_sites(services: Services) -> list[str]:
    admin = await services[AccountService].find_by_email(services.settings.admin_email)
    if admin is None or await services[SiteService].owns_domain(admin.id, DEMO_DOMAIN):
        return []
    try:
        await services[SiteService].create(admin.id, SiteCreate(domain=DEMO_DOMAIN))
    except SiteLimitError:  # the administrator's sites fill the quota: theirs, not the demo's
        return []
    return [f"demo site: {DEMO_DOMAIN}, the admin's (GET /api/sites shows its ingest key)"]
