"""HTTP for tasks and comments."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from litestar import Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, QueryParameter
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.core.auth import Caller, requires_user
from app.core.idempotency import (
    IDEMPOTENCY_DESCRIPTION,
    DocumentsLocatedCreation,
    DocumentsVersionedCreation,
    Idempotent,
    OptionalIdempotencyKey,
    at_location,
    with_etag,
)
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, IdCursor, Page, PageSize, cursor_query, decode_cursor, paginate
from app.core.preconditions import (
    ETAG_FORMS,
    ETAG_HEADER,
    DocumentsConditionalRead,
    DocumentsIfMatch,
    IfMatchHeader,
    IfNoneMatchHeader,
    answer_unless_held,
    etag,
    not_modified,
    parse_preconditions,
    precondition_failed,
)
from app.core.responses import JSONBytesResponse
from app.core.routing import Controller
from app.core.types import MAX_ID, NO_NUL, RFC3339_MOMENT, IdPath, moment_of
from app.db.models import TaskPriority, TaskStatus
from app.domains.tasks.schemas import (
    CommentCreate,
    CommentOut,
    TaskCreate,
    TaskCursor,
    TaskOut,
    TaskPage,
    TaskSort,
    TaskUpdate,
)
from app.domains.tasks.services import DEFAULT_PAGE, DEFAULT_SORT, TaskFilters, TaskService

Tasks = NamedDependency[TaskService]


class ProjectTasksController(Controller):
    path = "/api/projects/{project_id:int}/tasks"
    tags = ["tasks"]
    guards = [requires_user]
    security = BEARER

    @get(
        "/",
        summary="Tasks of a project: filter, search, sort, page",
        description=(
            "Keyset pagination: pass `next_cursor` back as `cursor` with the same `sort` (a cursor of "
            "another sort is a 400 `invalid-cursor`).\n\n"
            "A walk through the pages reads the list as of one moment: `as_of`, the database's clock "
            "when the first page was read, which every page of the walk carries (a first page served "
            "from the cache carries the moment it was read, not the moment it was served). With "
            "`sort=due`, `priority` or `updated`, a task edited during the walk would move across the "
            "cursor, so the later pages leave out every task whose `updated_at` is after `as_of` "
            "(edited or created meanwhile): the walk lists every other task exactly once, in order. "
            "With `sort=created` (keys never change) a walk keeps tasks edited meanwhile in place.\n\n"
            "Nothing is lost silently. To get what changed during a walk: walk to the end "
            "(`next_cursor` null), then list `?updated_after=<as_of>`, the walk's `as_of` as it came "
            "(e.g. `2026-12-02T04:44:35.942248Z`), with the walk's other filters and any `sort`, and "
            "walk that list too: it holds every task whose `updated_at` is after `as_of`, so every "
            "task a `due`, `priority` or `updated` walk left out (a task deleted meanwhile is in "
            "neither). Its own `as_of` continues from there. "
            "Known limit: `updated_at` is the start of the edit's transaction, so an edit whose "
            "transaction started before `as_of` and committed after the first page's read can still "
            "move a task during a walk (a window of one transaction's duration)."
        ),
        responses={
            **problems(400, 401, 404, 429),
            200: ResponseSpec(
                TaskPage,
                description="A page of tasks, and the moment its walk reads the list as of",
            ),
        },
    )
    async def list_tasks(
        self,
        project_id: IdPath,
        tasks: Tasks,
        current_user: Caller,
        status: Annotated[TaskStatus | None, QueryParameter(description="Only tasks in this status")] = None,
        priority: Annotated[
            TaskPriority | None, QueryParameter(description="Only tasks of this priority")
        ] = None,
        assignee_id: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_ID, description="Only tasks assigned to this member")
        ] = None,
        due_before: Annotated[
            date | None,
            QueryParameter(
                description="Only tasks due on or before this day (inclusive); undated ones never"
            ),
        ] = None,
        due_after: Annotated[
            date | None,
            QueryParameter(description="Only tasks due on or after this day (inclusive); undated ones never"),
        ] = None,
        updated_after: Annotated[
            str | None,
            QueryParameter(
                description="Only tasks changed after this moment (exclusive: `updated_at` > it), "
                "RFC 3339 (without an offset: UTC). Pass a walk's `as_of` to list what changed during it.",
                pattern=RFC3339_MOMENT,
                max_length=40,
                schema_extra={"examples": ["2026-12-01T09:30:00Z"]},
            ),
        ] = None,
        q: Annotated[
            str | None,
            QueryParameter(
                min_length=1,
                max_length=200,
                pattern=NO_NUL,
                schema_extra={"examples": ['"release notes" -draft']},
                description="Full-text search in titles and descriptions, web-search syntax: "
                '`"a phrase"`, `or`, `-excluded` (pairs of `-` cancel: `--a` is `a`). Whole words, '
                "case and Unicode form ignored (a decomposed or full-width letter matches its plain "
                "form); words are split at spaces and punctuation, so a run of Chinese or Japanese "
                "text without spaces is one word, found only whole.",
            ),
        ] = None,
        sort: Annotated[
            TaskSort,
            QueryParameter(
                description="created · due (soonest, undated last) · "
                "priority (urgent first) · updated (newest)"
            ),
        ] = DEFAULT_SORT,
        cursor: Annotated[
            str | None, cursor_query(TaskCursor, example="created.1764806400000000.42.1764892800000000")
        ] = None,
        limit: PageSize = DEFAULT_PAGE,
    ) -> ASGIResponse:
        filters = TaskFilters(
            status=status,
            priority=priority,
            assignee_id=assignee_id,
            due_before=due_before,
            due_after=due_after,
            search=q,
            updated_after=moment_of("updated_after", updated_after),
        )
        position = decode_cursor(cursor, TaskCursor) if cursor else None
        page = await tasks.page_in_project(
            current_user.id, project_id, filters=filters, sort=sort, cursor=position, limit=limit
        )
        return JSONBytesResponse(page)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a task (editors)",
        description=f"Answers the new task and its `ETag`, {ETAG_FORMS}, as its GET does: send it as "
        "`If-Match` with a change. " + IDEMPOTENCY_DESCRIPTION,
        operation_class=DocumentsVersionedCreation,
        responses={
            **problems(400, 401, 403, 404, 409, 422, 429),
            201: ResponseSpec(TaskOut, description="Created"),
        },
    )
    async def create_task(
        self,
        request: Request[Any, Any, Any],
        project_id: IdPath,
        data: JSONBody[TaskCreate],
        tasks: Tasks,
        idempotency: Idempotent,
        current_user: Caller,
        idempotency_key: OptionalIdempotencyKey = None,
    ) -> Response[bytes]:
        created = await idempotency.respond(
            request,
            current_user.id,
            idempotency_key,
            data,
            lambda claim: tasks.create(current_user.id, project_id, data, claim=claim),
            TaskOut.from_row,
        )
        return at_location(with_etag(created), "/api/tasks/{id}")


class TasksController(Controller):
    path = "/api/tasks/{task_id:int}"
    tags = ["tasks"]
    guards = [requires_user]
    security = BEARER

    @get(
        "/",
        summary="A task",
        description=f"Answers the task's `ETag`, {ETAG_FORMS}: send it as `If-Match` with a change, or "
        "as `If-None-Match` to read it only if it changed (304 otherwise: every change of the task, "
        "whoever makes it, takes a new version).",
        response_headers=[ETAG_HEADER],
        responses=problems(400, 401, 404, 429) | not_modified() | precondition_failed(),
        operation_class=DocumentsConditionalRead,
    )
    async def get_task(
        self,
        request: Request[Any, Any, Any],
        task_id: IdPath,
        tasks: Tasks,
        current_user: Caller,
        if_none_match: IfNoneMatchHeader = None,
        if_match: IfMatchHeader = None,
    ) -> Response[TaskOut]:
        task = await tasks.get(current_user.id, task_id)
        accept_encoding = request.headers.get("accept-encoding", "")
        return answer_unless_held(
            TaskOut.from_row(task), task.version, if_none_match, accept_encoding, if_match=if_match
        )

    @patch(
        "/",
        summary="Change a task (editors); null clears assignee or due date",
        description="With `If-Match` (the `ETag` of the task as the client last read it), the change is "
        "applied only if nobody has changed the task since: otherwise 412 `precondition-failed` and "
        "nothing changes (of two changes sent with the same `ETag`, one is applied). A change that "
        "changes nothing keeps the version. Answers the task and its new `ETag`.",
        response_headers=[ETAG_HEADER],
        responses={**problems(400, 401, 403, 404, 422, 429), **precondition_failed()},
        operation_class=DocumentsIfMatch,
    )
    async def update_task(
        self,
        task_id: IdPath,
        data: JSONBody[TaskUpdate],
        tasks: Tasks,
        current_user: Caller,
        if_match: IfMatchHeader = None,
        if_none_match: IfNoneMatchHeader = None,
    ) -> Response[TaskOut]:
        conditions = parse_preconditions(if_match, if_none_match)
        task = await tasks.update(current_user.id, task_id, data, conditions=conditions)
        return Response(TaskOut.from_row(task), headers={"ETag": etag(task.version)})

    @delete(
        "/",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a task (editors)",
        description="With `If-Match`, only if the task is still at a version it names (else 412 "
        "`precondition-failed`, nothing deleted).",
        responses={**problems(400, 401, 403, 404, 429), **precondition_failed()},
        operation_class=DocumentsIfMatch,
    )
    async def delete_task(
        self,
        task_id: IdPath,
        tasks: Tasks,
        current_user: Caller,
        if_match: IfMatchHeader = None,
        if_none_match: IfNoneMatchHeader = None,
    ) -> None:
        await tasks.delete(current_user.id, task_id, conditions=parse_preconditions(if_match, if_none_match))

    @get("/comments", summary="Comments on a task", responses=problems(400, 401, 404, 429))
    async def list_comments(
        self,
        task_id: IdPath,
        tasks: Tasks,
        current_user: Caller,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[CommentOut]:
        after_id = decode_cursor(cursor, IdCursor).id if cursor else 0
        rows = await tasks.list_comments(current_user.id, task_id, after_id=after_id, row_limit=limit + 1)
        return paginate(rows, limit, lambda row: IdCursor(row.id))

    @post(
        "/comments",
        status_code=HTTP_201_CREATED,
        summary="Comment on a task (editors)",
        description=IDEMPOTENCY_DESCRIPTION,
        operation_class=DocumentsLocatedCreation,
        responses={
            **problems(400, 401, 403, 404, 409, 422, 429),
            201: ResponseSpec(CommentOut, description="Created"),
        },
    )
    async def add_comment(
        self,
        request: Request[Any, Any, Any],
        task_id: IdPath,
        data: JSONBody[CommentCreate],
        tasks: Tasks,
        idempotency: Idempotent,
        current_user: Caller,
        idempotency_key: OptionalIdempotencyKey = None,
    ) -> Response[bytes]:
        created = await idempotency.respond(
            request,
            current_user.id,
            idempotency_key,
            data,
            lambda claim: tasks.add_comment(current_user.id, task_id, data.body, claim=claim),
            CommentOut.from_row,
        )
        return at_location(created, f"/api/tasks/{task_id}/comments/{{id}}")

    @patch(
        "/comments/{comment_id:int}", summary="Edit your comment", responses=problems(400, 401, 403, 404, 429)
    )
    async def edit_comment(
        self,
        task_id: IdPath,
        comment_id: IdPath,
        data: JSONBody[CommentCreate],
        tasks: Tasks,
        current_user: Caller,
    ) -> CommentOut:
        comment = await tasks.edit_comment(current_user.id, task_id, comment_id, data.body)
        return CommentOut.from_row(comment)

    @delete(
        "/comments/{comment_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a comment (its author, or a project owner)",
        responses=problems(401, 403, 404, 429),
    )
    async def delete_comment(
        self, task_id: IdPath, comment_id: IdPath, tasks: Tasks, current_user: Caller
    ) -> None:
        await tasks.delete_comment(current_user.id, task_id, comment_id)


class MyTasksController(Controller):
    path = "/api/me/tasks"
    tags = ["tasks"]
    guards = [requires_user]
    security = BEARER

    @get("/", summary="Tasks assigned to the caller, across projects", responses=problems(400, 401, 429))
    async def my_tasks(
        self,
        tasks: Tasks,
        current_user: Caller,
        status: Annotated[TaskStatus | None, QueryParameter(description="Only tasks in this status")] = None,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[TaskOut]:
        after_id = decode_cursor(cursor, IdCursor).id if cursor else 0
        rows = await tasks.list_assigned(
            current_user.id, status=status, after_id=after_id, row_limit=limit + 1
        )
        return paginate(rows, limit, lambda row: IdCursor(row.id), TaskOut.from_row)
