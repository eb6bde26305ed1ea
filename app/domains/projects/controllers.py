"""HTTP for projects and members (``/api/projects``)."""

from __future__ import annotations

from typing import Annotated

from litestar import delete, get, patch, post
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.core.db import Uow
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, Page, PageSize, decode_cursor, paginate
from app.core.routing import Controller
from app.core.types import IdPath
from app.core.wire import from_row
from app.db.models import ProjectRole
from app.domains.accounts.guards import Caller, requires_user
from app.domains.projects import services
from app.domains.projects.schemas import (
    MemberAdd,
    MemberCursor,
    MemberOut,
    MemberUpdate,
    ProjectCreate,
    ProjectCursor,
    ProjectOut,
    ProjectUpdate,
)


class ProjectsController(Controller):
    path = "/api/projects"
    tags = ["projects"]
    guards = [requires_user]
    security = BEARER

    @get("/", summary="Projects the caller is a member of", responses=problems(400, 401, 429))
    async def list_projects(
        self,
        uow: Uow,
        current_user: Caller,
        archived: Annotated[bool | None, QueryParameter(description="Only archived (true) or active")] = None,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[ProjectOut]:
        after_id = decode_cursor(cursor, ProjectCursor).after_id if cursor else 0
        rows = await services.list_projects(
            uow, current_user.id, archived=archived, after_id=after_id, limit=limit + 1
        )
        return paginate(
            rows,
            limit,
            lambda row: ProjectCursor(row.id),
            lambda row: from_row(ProjectOut, row),
        )

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a project (the caller becomes its owner)",
        responses=problems(400, 401, 429),
    )
    async def create_project(
        self, data: JSONBody[ProjectCreate], uow: Uow, current_user: Caller
    ) -> ProjectOut:
        project = await services.create_project(uow, current_user.id, data)
        return ProjectOut.from_row(project, ProjectRole.OWNER)

    @get("/{project_id:int}", summary="A project", responses=problems(401, 404, 429))
    async def get_project(self, project_id: IdPath, uow: Uow, current_user: Caller) -> ProjectOut:
        project, role = await services.get_project(uow, current_user.id, project_id)
        return ProjectOut.from_row(project, role)

    @patch(
        "/{project_id:int}",
        summary="Rename, describe (editors) or archive (owners) a project",
        responses=problems(400, 401, 403, 404, 429),
    )
    async def update_project(
        self, project_id: IdPath, data: JSONBody[ProjectUpdate], uow: Uow, current_user: Caller
    ) -> ProjectOut:
        project, role = await services.update_project(uow, current_user.id, project_id, data)
        return ProjectOut.from_row(project, role)

    @delete(
        "/{project_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a project (owners)",
        responses=problems(401, 403, 404, 429),
    )
    async def delete_project(self, project_id: IdPath, uow: Uow, current_user: Caller) -> None:
        await services.delete_project(uow, current_user.id, project_id)


class MembersController(Controller):
    path = "/api/projects/{project_id:int}/members"
    tags = ["projects"]
    guards = [requires_user]
    security = BEARER

    @get("/", summary="Members of a project", responses=problems(400, 401, 404, 429))
    async def list_members(
        self,
        project_id: IdPath,
        uow: Uow,
        current_user: Caller,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[MemberOut]:
        after = decode_cursor(cursor, MemberCursor).after_user_id if cursor else 0
        rows = await services.list_members(
            uow, current_user.id, project_id, after_user_id=after, limit=limit + 1
        )
        return paginate(rows, limit, lambda row: MemberCursor(row.user_id))

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Add a member (owners)",
        responses=problems(400, 401, 403, 404, 409, 429),
    )
    async def add_member(
        self, project_id: IdPath, data: JSONBody[MemberAdd], uow: Uow, current_user: Caller
    ) -> MemberOut:
        return await services.add_member(uow, current_user.id, project_id, data)

    @patch(
        "/{user_id:int}",
        summary="Change a member's role (owners)",
        responses=problems(400, 401, 403, 404, 409, 429),
    )
    async def change_role(
        self,
        project_id: IdPath,
        user_id: IdPath,
        data: JSONBody[MemberUpdate],
        uow: Uow,
        current_user: Caller,
    ) -> MemberUpdate:
        return MemberUpdate(
            role=await services.change_member_role(uow, current_user.id, project_id, user_id, data.role)
        )

    @delete(
        "/{user_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Remove a member (owners) or leave the project (yourself)",
        responses=problems(401, 403, 404, 409, 429),
    )
    async def remove_member(
        self, project_id: IdPath, user_id: IdPath, uow: Uow, current_user: Caller
    ) -> None:
        await services.remove_member(uow, current_user.id, project_id, user_id)
