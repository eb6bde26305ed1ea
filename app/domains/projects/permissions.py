"""Project membership is the permission model of everything inside a project.

Owners manage members, editors change content, viewers read. A user who is not a member gets 404
for the project and everything in it: existence is not revealed. A member whose role is too low
gets 403 (they already know the project exists).
"""

from __future__ import annotations

from app.core.db import UnitOfWork
from app.core.errors import ForbiddenError, NotFoundError
from app.db import projects as queries
from app.db.models import ProjectRole

RANK = {ProjectRole.VIEWER: 0, ProjectRole.EDITOR: 1, ProjectRole.OWNER: 2}


async def require_role(uow: UnitOfWork, user_id: int, project_id: int, at_least: ProjectRole) -> ProjectRole:
    """The caller's role in the project, if it is at least ``at_least``; else 404 or 403."""
    role = await queries.get_member_role(uow.conn, project_id=project_id, user_id=user_id)
    if role is None:
        raise NotFoundError("No such project.")
    if RANK[role] < RANK[at_least]:
        raise ForbiddenError(f"This needs the {at_least.value} role in the project.")
    return role
