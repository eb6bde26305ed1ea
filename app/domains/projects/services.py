"""Projects and their members: who may see and change what (see ``permissions``)."""

from __future__ import annotations

from app.core.db import UnitOfWork
from app.core.errors import ConflictError, NotFoundError
from app.core.wire import from_row
from app.db import accounts as account_queries
from app.db import projects as queries
from app.db import tasks as task_queries
from app.db.models import Project, ProjectRole
from app.domains.activity.events import emit
from app.domains.projects.permissions import require_role
from app.domains.projects.schemas import MemberAdd, MemberOut, ProjectCreate, ProjectUpdate


async def create_project(uow: UnitOfWork, actor: int, data: ProjectCreate) -> Project:
    """The creator becomes the project's first owner."""
    project = await queries.create_project(
        uow.conn, name=data.name.strip(), description=data.description, owner_id=actor
    )
    assert project is not None
    await queries.add_member(uow.conn, project_id=project.id, user_id=actor, role=ProjectRole.OWNER)
    await emit(
        uow,
        actor=actor,
        verb="project.created",
        obj=("project", project.id),
        project_id=project.id,
        data={"name": project.name},
    )
    return project


async def get_project(uow: UnitOfWork, actor: int, project_id: int) -> tuple[Project, ProjectRole]:
    role = await require_role(uow, actor, project_id, ProjectRole.VIEWER)
    project = await queries.get_project(uow.conn, id=project_id)
    if project is None:
        raise NotFoundError("No such project.")
    return project, role


async def update_project(
    uow: UnitOfWork, actor: int, project_id: int, data: ProjectUpdate
) -> tuple[Project, ProjectRole]:
    """Editors rename and describe; archiving is the owners' call."""
    needed = ProjectRole.OWNER if data.archived is not None else ProjectRole.EDITOR
    role = await require_role(uow, actor, project_id, needed)
    project = await queries.update_project(
        uow.conn,
        name=data.name.strip() if data.name else None,
        description=data.description,
        archived=data.archived,
        id=project_id,
    )
    if project is None:
        raise NotFoundError("No such project.")
    changed = [field for field in ("name", "description", "archived") if getattr(data, field) is not None]
    if changed:
        await emit(
            uow,
            actor=actor,
            verb="project.updated",
            obj=("project", project_id),
            project_id=project_id,
            data={"fields": changed},
        )
    return project, role


async def delete_project(uow: UnitOfWork, actor: int, project_id: int) -> None:
    """The event names no project: the project (and its feed) is gone with it."""
    project, _ = await get_project(uow, actor, project_id)
    await require_role(uow, actor, project_id, ProjectRole.OWNER)
    await queries.delete_project(uow.conn, id=project_id)
    await emit(
        uow,
        actor=actor,
        verb="project.deleted",
        obj=("project", project_id),
        project_id=None,
        data={"name": project.name},
    )


async def list_projects(
    uow: UnitOfWork, actor: int, *, archived: bool | None, after_id: int, limit: int
) -> list[queries.ListMemberProjectsRow]:
    return await queries.list_member_projects(
        uow.conn, user_id=actor, archived=archived, after_id=after_id, row_limit=limit
    )


async def list_members(
    uow: UnitOfWork, actor: int, project_id: int, *, after_user_id: int, limit: int
) -> list[MemberOut]:
    await require_role(uow, actor, project_id, ProjectRole.VIEWER)
    rows = await queries.list_members(
        uow.conn, project_id=project_id, after_user_id=after_user_id, row_limit=limit
    )
    return [from_row(MemberOut, row) for row in rows]


async def add_member(uow: UnitOfWork, actor: int, project_id: int, data: MemberAdd) -> MemberOut:
    await require_role(uow, actor, project_id, ProjectRole.OWNER)
    user = await account_queries.get_user_by_id(uow.conn, id=data.user_id)
    if user is None or not user.is_active:
        raise NotFoundError("No such user.")
    member = await queries.add_member(uow.conn, project_id=project_id, user_id=data.user_id, role=data.role)
    if member is None:
        raise ConflictError("The user is already a member of this project.")
    await emit(
        uow,
        actor=actor,
        verb="member.added",
        obj=("user", data.user_id),
        project_id=project_id,
        data={"role": data.role.value, "name": user.display_name},
    )
    return MemberOut(
        user_id=user.id,
        role=member.role,
        display_name=user.display_name,
        email=user.email,
        added_at=member.added_at,
    )


async def change_member_role(
    uow: UnitOfWork, actor: int, project_id: int, user_id: int, role: ProjectRole
) -> ProjectRole:
    await require_role(uow, actor, project_id, ProjectRole.OWNER)
    current = await queries.get_member_role(uow.conn, project_id=project_id, user_id=user_id)
    if current is None:
        raise NotFoundError("No such member.")
    if current == role:
        return role
    if current == ProjectRole.OWNER:
        await _keep_an_owner(uow, project_id)
    await queries.update_member_role(uow.conn, role=role, project_id=project_id, user_id=user_id)
    await emit(
        uow,
        actor=actor,
        verb="member.role_changed",
        obj=("user", user_id),
        project_id=project_id,
        data={"from": current.value, "to": role.value},
    )
    return role


async def remove_member(uow: UnitOfWork, actor: int, project_id: int, user_id: int) -> None:
    """Owners remove anyone; any member may leave. The last owner cannot go."""
    if actor != user_id:
        await require_role(uow, actor, project_id, ProjectRole.OWNER)
    current = await queries.get_member_role(uow.conn, project_id=project_id, user_id=user_id)
    if current is None:
        raise NotFoundError("No such member." if actor != user_id else "No such project.")
    if current == ProjectRole.OWNER:
        await _keep_an_owner(uow, project_id)
    await queries.remove_member(uow.conn, project_id=project_id, user_id=user_id)
    await task_queries.clear_assignee_in_project(uow.conn, project_id=project_id, user_id=user_id)
    await emit(uow, actor=actor, verb="member.removed", obj=("user", user_id), project_id=project_id)


async def _keep_an_owner(uow: UnitOfWork, project_id: int) -> None:
    await queries.lock_project(uow.conn, id=project_id)
    owners = await queries.count_owners(uow.conn, project_id=project_id)
    if (owners or 0) <= 1:
        raise ConflictError("A project keeps at least one owner: promote another member first.")
