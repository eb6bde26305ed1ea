"""Tasks and comments inside projects; every change is an activity event."""

from __future__ import annotations

from datetime import date

import msgspec

from app.core.db import UnitOfWork
from app.core.errors import ForbiddenError, NotFoundError, UnprocessableError
from app.core.wire import from_row
from app.db import comments as comment_queries
from app.db import projects as project_queries
from app.db import tasks as queries
from app.db.models import Comment, ProjectRole, Task, TaskPriority, TaskStatus
from app.domains.activity.events import emit
from app.domains.projects.permissions import RANK, require_role
from app.domains.tasks.schemas import CommentOut, TaskCreate, TaskCursor, TaskSort, TaskUpdate


class TaskFilters(msgspec.Struct, frozen=True):
    status: TaskStatus | None = None
    priority: TaskPriority | None = None
    assignee_id: int | None = None
    due_before: date | None = None
    due_after: date | None = None
    search: str | None = None


async def _require_assignable(uow: UnitOfWork, project_id: int, assignee_id: int | None) -> None:
    if assignee_id is None:
        return
    if await project_queries.get_member_role(uow.conn, project_id=project_id, user_id=assignee_id) is None:
        raise UnprocessableError("The assignee must be a member of the project.")


async def create_task(uow: UnitOfWork, actor: int, project_id: int, data: TaskCreate) -> Task:
    await require_role(uow, actor, project_id, ProjectRole.EDITOR)
    await _require_assignable(uow, project_id, data.assignee_id)
    task = await queries.create_task(
        uow.conn,
        project_id=project_id,
        title=data.title.strip(),
        description=data.description,
        status=data.status,
        priority=data.priority,
        assignee_id=data.assignee_id,
        due_date=data.due_date,
        created_by=actor,
    )
    assert task is not None
    await emit(
        uow,
        actor=actor,
        verb="task.created",
        obj=("task", task.id),
        project_id=project_id,
        data={"title": task.title},
    )
    if task.assignee_id is not None:
        await emit(
            uow,
            actor=actor,
            verb="task.assigned",
            obj=("task", task.id),
            project_id=project_id,
            data={"assignee_id": task.assignee_id, "title": task.title},
        )
    return task


async def get_task(
    uow: UnitOfWork, actor: int, task_id: int, at_least: ProjectRole = ProjectRole.VIEWER
) -> queries.GetTaskWithRoleRow:
    """The task if the caller is a member of its project (else 404) with at least ``at_least`` (else 403)."""
    task = await queries.get_task_with_role(uow.conn, user_id=actor, task_id=task_id)
    if task is None:
        raise NotFoundError("No such task.")
    if RANK[task.my_role] < RANK[at_least]:
        raise ForbiddenError(f"This needs the {at_least.value} role in the project.")
    return task


async def update_task(uow: UnitOfWork, actor: int, task_id: int, data: TaskUpdate) -> Task:
    before = await get_task(uow, actor, task_id, ProjectRole.EDITOR)
    set_assignee = data.assignee_id is not msgspec.UNSET
    set_due = data.due_date is not msgspec.UNSET
    new_assignee = data.assignee_id if set_assignee else None
    if set_assignee:
        await _require_assignable(uow, before.project_id, new_assignee)  # type: ignore[arg-type]
    task = await queries.update_task(
        uow.conn,
        title=data.title.strip() if data.title else None,
        description=data.description,
        status=data.status,
        priority=data.priority,
        set_assignee=set_assignee,
        assignee_id=new_assignee,  # type: ignore[arg-type]
        set_due_date=set_due,
        due_date=data.due_date if set_due else None,  # type: ignore[arg-type]
        position=data.position,
        updated_by=actor,
        id=task_id,
    )
    assert task is not None
    project_id = task.project_id
    changed = [
        name
        for name in ("title", "description", "priority", "due_date", "position")
        if getattr(task, name) != getattr(before, name)
    ]
    if changed:
        await emit(
            uow,
            actor=actor,
            verb="task.updated",
            obj=("task", task_id),
            project_id=project_id,
            data={"fields": changed, "title": task.title},
        )
    if task.status != before.status:
        await emit(
            uow,
            actor=actor,
            verb="task.status_changed",
            obj=("task", task_id),
            project_id=project_id,
            data={"from": before.status.value, "to": task.status.value, "title": task.title},
        )
    if task.assignee_id != before.assignee_id:
        await emit(
            uow,
            actor=actor,
            verb="task.assigned",
            obj=("task", task_id),
            project_id=project_id,
            data={"assignee_id": task.assignee_id, "title": task.title},
        )
    return task


async def delete_task(uow: UnitOfWork, actor: int, task_id: int) -> None:
    task = await get_task(uow, actor, task_id, ProjectRole.EDITOR)
    await queries.delete_task(uow.conn, id=task_id)
    await emit(
        uow,
        actor=actor,
        verb="task.deleted",
        obj=("task", task_id),
        project_id=task.project_id,
        data={"title": task.title},
    )


async def list_tasks(
    uow: UnitOfWork,
    actor: int,
    project_id: int,
    *,
    filters: TaskFilters,
    sort: TaskSort,
    cursor: TaskCursor | None,
    limit: int,
) -> list[queries.ListProjectTasksRow]:
    await require_role(uow, actor, project_id, ProjectRole.VIEWER)
    if cursor is not None and cursor.sort != sort:
        raise UnprocessableError("The cursor belongs to a different sort order.")
    return await queries.list_project_tasks(
        uow.conn,
        sort=sort,
        project_id=project_id,
        status=filters.status,
        priority=filters.priority,
        assignee_id=filters.assignee_id,
        due_before=filters.due_before,
        due_after=filters.due_after,
        search=filters.search,
        after_key=cursor.key if cursor else -(2**62),
        after_id=cursor.id if cursor else 0,
        row_limit=limit,
    )


async def list_my_tasks(
    uow: UnitOfWork, actor: int, *, status: TaskStatus | None, after_id: int, limit: int
) -> list[Task]:
    return await queries.list_assigned_tasks(
        uow.conn, user_id=actor, status=status, after_id=after_id, row_limit=limit
    )


# -- comments --------------------------------------------------------------------------------


async def list_comments(
    uow: UnitOfWork, actor: int, task_id: int, *, after_id: int, limit: int
) -> list[CommentOut]:
    await get_task(uow, actor, task_id)
    rows = await comment_queries.list_comments(uow.conn, task_id=task_id, after_id=after_id, row_limit=limit)
    return [from_row(CommentOut, row) for row in rows]


async def add_comment(uow: UnitOfWork, actor: int, task_id: int, body: str) -> Comment:
    task = await get_task(uow, actor, task_id, ProjectRole.EDITOR)
    comment = await comment_queries.create_comment(uow.conn, task_id=task_id, author_id=actor, body=body)
    assert comment is not None
    await emit(
        uow,
        actor=actor,
        verb="comment.added",
        obj=("comment", comment.id),
        project_id=task.project_id,
        data={"task_id": task_id, "title": task.title},
    )
    return comment


async def _get_comment(
    uow: UnitOfWork, actor: int, task_id: int, comment_id: int
) -> tuple[Comment, ProjectRole]:
    task = await get_task(uow, actor, task_id)
    comment = await comment_queries.get_comment(uow.conn, id=comment_id, task_id=task_id)
    if comment is None:
        raise NotFoundError("No such comment.")
    return comment, task.my_role


async def edit_comment(uow: UnitOfWork, actor: int, task_id: int, comment_id: int, body: str) -> Comment:
    """Authors edit their own comments only."""
    comment, _ = await _get_comment(uow, actor, task_id, comment_id)
    if comment.author_id != actor:
        raise ForbiddenError("Only the author can edit a comment.")
    updated = await comment_queries.update_comment(uow.conn, body=body, id=comment_id)
    assert updated is not None
    return updated


async def delete_comment(uow: UnitOfWork, actor: int, task_id: int, comment_id: int) -> None:
    """Authors delete their own comments; project owners delete any."""
    comment, role = await _get_comment(uow, actor, task_id, comment_id)
    if comment.author_id != actor and role != ProjectRole.OWNER:
        raise ForbiddenError("Only the author or a project owner can delete a comment.")
    await comment_queries.delete_comment(uow.conn, id=comment_id)
