"""Tracked sites: owned by a user; reports are for the owner and admins (others get 404)."""

from __future__ import annotations

import secrets

from app.core.db import UnitOfWork
from app.core.errors import NotFoundError
from app.db import analytics as queries
from app.db.models import Site
from app.domains.accounts.services import CurrentUser


async def get_site_for(uow: UnitOfWork, caller: CurrentUser, site_id: int) -> Site:
    """The site if the caller owns it or is an admin; 404 otherwise (existence is not revealed)."""
    site = await queries.get_site(uow.conn, id=site_id)
    if site is None or (site.owner_id != caller.id and not caller.is_admin):
        raise NotFoundError("No such site.")
    return site


async def create_site(uow: UnitOfWork, owner_id: int, domain: str, timezone: str) -> Site:
    site = await queries.create_site(
        uow.conn,
        owner_id=owner_id,
        domain=domain.strip().lower(),
        ingest_key=secrets.token_urlsafe(24),
        timezone=timezone,
    )
    assert site is not None
    return site


async def list_sites(uow: UnitOfWork, caller: CurrentUser, *, after_id: int, limit: int) -> list[Site]:
    return await queries.list_sites(
        uow.conn, owner_id=None if caller.is_admin else caller.id, after_id=after_id, row_limit=limit
    )


async def delete_site(uow: UnitOfWork, caller: CurrentUser, site_id: int) -> None:
    await get_site_for(uow, caller, site_id)
    await queries.delete_site(uow.conn, id=site_id)
