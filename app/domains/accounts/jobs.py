"""Jobs of the accounts domain (queue ``default``)."""

from __future__ import annotations

from saq.types import Context

from app.core.services import services_of
from app.domains.accounts.services import AccountService


async def purge_expired_sessions(ctx: Context) -> int:
    """Daily: refresh tokens of ended sessions are deleted (a live session keeps its spent tokens)."""
    return await services_of(ctx)[AccountService].purge_expired_sessions()
