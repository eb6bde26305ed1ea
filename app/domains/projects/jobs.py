"""Jobs of the projects domain (queue ``default``)."""

from __future__ import annotations

from saq.types import Context

from app.core.services import services_of
from app.domains.projects.services import ProjectService


async def purge_expired_invitations(ctx: Context) -> int:
    """Daily: the invitations older than ``INVITATION_TTL_S`` are deleted
    (``ProjectService.purge_expired_invitations``)."""
    return await services_of(ctx)[ProjectService].purge_expired_invitations()
