"""Tasks and comments inside projects; every change is an activity event.

Access follows project membership (``ProjectService``): viewers read, editors change tasks and
comment, comment authors edit their own comments, owners may delete any comment.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple, TypedDict

import msgspec
from psycopg import AsyncConnection

from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, ForbiddenError, NotFoundError, UnprocessableError
from app.core.idempotency import IdempotencyClaim
from app.core.pagination import InvalidCursorError, Page, paginate
from app.core.preconditions import Preconditions, require_match
from app.core.types import CALENDAR_END
from app.core.wire import from_row, given
from app.db import comments as comment_queries
from app.db import tasks as queries
from app.db.models import Comment, ProjectRole, Task, TaskPriority, TaskStatus
from app.domains.activity.events import emit
from app.domains.projects.services import ProjectService
from app.domains.tasks.cache import TaskListCache
from app.domains.tasks.schemas import (
    MAX_POSITION,
    CommentOut,
    TaskCreate,
    TaskCursor,
    TaskOut,
    TaskPage,
    TaskSort,
    TaskUpdate,
)
from app.domains.tasks.search import search_text

UNDATED_KEY = 2**31 - 1
"""The ``due`` key of a task without a due date: after every date's (days since the epoch)."""

PRIORITIES: tuple[TaskPriority, ...] = tuple(TaskPriority)
"""``task_priority``'s values in the enum's order (sqlc's, from the migrations): ``priority`` lists
them backwards, urgent first."""

LAST_ID = 2**63 - 1
"""An id after every task's (the largest ``bigint``)."""

TaskRow = (
    queries.ListProjectTasksByCreatedRow
    | queries.ListProjectTasksByDueRow
    | queries.ListProjectTasksByPriorityRow
    | queries.ListProjectTasksByUpdatedRow
)
"""A row of a project's task list, whatever its sort (the same columns)."""

MUTABLE_SORTS: frozenset[TaskSort] = frozenset({"due", "priority", "updated"})
"""Sorts whose keys change when a task is edited (``created``'s, the id order, never do)."""

DEFAULT_PAGE = 50
"""The task list's page size when the client names none (the controller's ``limit`` default)."""

DEFAULT_SORT: TaskSort = "created"
"""The task list's order when the client names none (the controller's ``sort`` default)."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (PostgreSQL's and Python's resolution)."""
    return (moment - EPOCH) // MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + micros * MICROSECOND


EPOCH_DAY = EPOCH.date()
DAYS = (date.min - EPOCH_DAY).days, (date.max - EPOCH_DAY).days
"""The ``due`` keys of Python's first and last dates (every due date a task can have)."""


def sort_key(sort: TaskSort, row: TaskRow) -> int:
    """The cursor's key of ``row`` in ``sort``: an integer that grows along the list (the key the
    list's statement computed per row before it had one statement per sort; cursors keep it)."""
    if sort == "due":
        return UNDATED_KEY if row.due_date is None else (row.due_date - EPOCH_DAY).days
    if sort == "priority":
        return -(PRIORITIES.index(row.priority) + 1)
    if sort == "updated":
        return -to_micros(row.updated_at)
    return 0


class DueAfter(NamedTuple):
    """Where a ``due`` page starts: the dated tasks after (``due``, ``id``) (none when ``due`` is
    None), then the undated tasks after ``undated_id``."""

    due: date | None
    id: int
    undated_id: int


def due_after(cursor: TaskCursor | None) -> DueAfter:
    if cursor is None:
        return DueAfter(date.min, 0, 0)
    if cursor.key < DAYS[0]:  # before every date: every task after it
        return DueAfter(date.min, 0, 0)
    if cursor.key > DAYS[1]:  # after every date: only undated tasks (none after an undated key)
        undated_id = cursor.id if cursor.key == UNDATED_KEY else 0 if cursor.key < UNDATED_KEY else LAST_ID
        return DueAfter(None, 0, undated_id)
    return DueAfter(EPOCH_DAY + timedelta(days=cursor.key), cursor.id, 0)


def created_after(cursor: TaskCursor | None) -> int:
    """Where a ``created`` page starts: after this id (every ``created`` key is 0; a cursor with
    another key is before or after every task, as it was when the key was compared)."""
    if cursor is None or cursor.key < 0:
        return 0
    return LAST_ID if cursor.key > 0 else cursor.id


def priority_after(cursor: TaskCursor | None) -> tuple[TaskPriority, int]:
    """Where a ``priority`` page starts: after (priority, id), urgent first."""
    if cursor is None or cursor.key < -len(PRIORITIES):  # before every priority: every task after it
        return PRIORITIES[-1], 0
    if cursor.key >= 0:  # after every priority: no task
        return PRIORITIES[0], LAST_ID
    return PRIORITIES[-cursor.key - 1], cursor.id


def updated_after(cursor: TaskCursor | None) -> tuple[datetime, int]:
    """Where an ``updated`` page starts: after (updated_at, id), most recent first (the first page:
    after the last moment Python has, later than any task's)."""
    if cursor is None:
        return CALENDAR_END, 0
    return from_micros(-cursor.key), cursor.id


class TaskLimitError(ConflictError):
    slug = "task-limit"
    title = "Too many tasks in the project"


class CommentLimitError(ConflictError):
    slug = "comment-limit"
    title = "Too many comments on the task"


class TaskFilters(msgspec.Struct, frozen=True):
    """``search``: web-search syntax, as a client sent it (``search_text`` shapes it for PostgreSQL).
    ``updated_after``: tasks changed after it (exclusive), e.g. during a walk that read as of it."""

    status: TaskStatus | None = None
    priority: TaskPriority | None = None
    assignee_id: int | None = None
    due_before: date | None = None
    due_after: date | None = None
    search: str | None = None
    updated_after: datetime | None = None


NO_FILTERS = TaskFilters()
"""The task list's filters when the client names none."""


class TaskListing(NamedTuple):
    """Rows of a project's task list and the moment the walk they belong to reads the list as of."""

    rows: Sequence[TaskRow]
    as_of: datetime


_PAGE = msgspec.json.Encoder()


class TaskService:
    def __init__(
        self,
        db: Database,
        projects: ProjectService,
        cache: TaskListCache,
        *,
        tasks_per_project_max: int,
        comments_per_task_max: int,
    ) -> None:
        self.db = db
        self.projects = projects
        self.cache = cache
        self.tasks_per_project_max = tasks_per_project_max
        self.comments_per_task_max = comments_per_task_max

    # -- tasks ----------------------------------------------------------------------------------

    async def create(
        self, actor: int, project_id: int, data: TaskCreate, *, claim: IdempotencyClaim[Task] | None = None
    ) -> Task:
        """The new task goes last: its position is the project's next. Creations in one project take
        turns for it (``lock_task_positions``, after the project and the assignee's membership, in
        a deletion's order), so tasks created at the same time get distinct positions; creations in
        other projects, and every other change, do not wait. ``claim``: the request's idempotency
        key, completed in this transaction."""
        async with self.db.transaction() as uow:
            await self.projects.require_role(uow, actor, project_id, ProjectRole.EDITOR, keep_project=True)
            if data.assignee_id is not None:
                self._require_assignable(await self.projects.keep_member(uow, data.assignee_id, project_id))
            await queries.lock_task_positions(uow.conn, project_id=project_id)
            held = await queries.count_project_tasks(uow.conn, project_id=project_id) or 0
            if held >= self.tasks_per_project_max:
                raise TaskLimitError(
                    f"This project holds {self.tasks_per_project_max:,} tasks, its most: delete some first."
                )
            task = await queries.create_task(
                uow.conn,
                project_id=project_id,
                title=data.title.strip(),
                description=data.description,
                status=data.status,
                priority=data.priority,
                assignee_id=data.assignee_id,
                due_date=data.due_date,
                max_position=MAX_POSITION,
                created_by=actor,
            )
            assert task is not None
            uow.after_commit(partial(self.cache.tasks_changed, project_id))
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
            if claim is not None:
                await claim.complete(uow, task, resource_id=task.id)
            return task

    async def get(self, actor: int, task_id: int) -> queries.GetTaskWithRoleRow:
        async with self.db.transaction() as uow:
            return await self._get(uow, actor, task_id, ProjectRole.VIEWER)

    async def update(
        self, actor: int, task_id: int, data: TaskUpdate, *, conditions: Preconditions | None = None
    ) -> Task:
        """The task changed as ``data`` says. A change that changes nothing (every field given as it
        is) is no change: the task as it is, its ``updated_at``, ``updated_by`` and ``version`` kept (a
        walk of the lists would take it for moved), no event, the lists' stored pages still current.

        ``conditions``: only at a version they allow (else 412, nothing changed),
        compared with the version read under the task's lock, which this change holds until it
        commits: of two changes based on one version, the second is refused. Checked after access
        (404, 403) and before the content (the assignee's 422), as RFC 9110 13.2.1 orders them."""
        set_assignee = data.assignee_id is not msgspec.UNSET
        set_due = data.due_date is not msgspec.UNSET
        new_assignee = data.assignee_id if isinstance(data.assignee_id, int) else None
        new_due = data.due_date if isinstance(data.due_date, date) else None
        async with self.db.transaction() as uow:
            assignable = True
            if new_assignee is not None:
                # Held before the task: a member's removal locks the membership, then their tasks.
                project_id = await queries.task_project(uow.conn, id=task_id)
                assignable = project_id is not None and await self.projects.keep_member(
                    uow, new_assignee, project_id
                )
            before = await self._get(uow, actor, task_id, ProjectRole.EDITOR, lock=True)
            require_match(conditions, before.version)
            self._require_assignable(assignable)
            task = await queries.update_task(
                uow.conn,
                title=title.strip() if (title := given(data.title)) else None,
                description=given(data.description),
                status=given(data.status),
                priority=given(data.priority),
                set_assignee=set_assignee,
                assignee_id=new_assignee,
                set_due_date=set_due,
                due_date=new_due,
                position=given(data.position),
                updated_by=actor,
                id=task_id,
            )
            if task is None:  # nothing to change
                return from_row(Task, before)
            uow.after_commit(partial(self.cache.tasks_changed, task.project_id))
            await self._emit_changes(uow, actor, before, task)
            return task

    async def _emit_changes(
        self, uow: UnitOfWork, actor: int, before: queries.GetTaskWithRoleRow, task: Task
    ) -> None:
        changed = [
            name
            for name in ("title", "description", "priority", "due_date", "position")
            if getattr(task, name) != getattr(before, name)
        ]
        events: list[tuple[str, dict[str, object]]] = []
        if changed:
            events.append(("task.updated", {"fields": changed, "title": task.title}))
        if task.status != before.status:
            events.append(
                (
                    "task.status_changed",
                    {"from": before.status.value, "to": task.status.value, "title": task.title},
                )
            )
        if task.assignee_id != before.assignee_id:
            events.append(("task.assigned", {"assignee_id": task.assignee_id, "title": task.title}))
        for verb, data in events:
            await emit(
                uow, actor=actor, verb=verb, obj=("task", task.id), project_id=task.project_id, data=data
            )

    async def delete(self, actor: int, task_id: int, *, conditions: Preconditions | None = None) -> None:
        """``conditions``: only at a version they allow (else 412), compared under
        the task's lock."""
        async with self.db.transaction() as uow:
            task = await self._get(uow, actor, task_id, ProjectRole.EDITOR, lock=True)
            require_match(conditions, task.version)
            await queries.delete_task(uow.conn, id=task_id)
            uow.after_commit(partial(self.cache.tasks_changed, task.project_id))
            await emit(
                uow,
                actor=actor,
                verb="task.deleted",
                obj=("task", task_id),
                project_id=task.project_id,
                data={"title": task.title},
            )

    async def page_in_project(
        self,
        actor: int,
        project_id: int,
        *,
        filters: TaskFilters,
        sort: TaskSort,
        cursor: TaskCursor | None,
        limit: int,
    ) -> bytes:
        """A page of the project's tasks as JSON (a ``TaskPage``), from the cache when the actor is a
        member and the page has not changed since it was stored.

        A walk reads the list as of one moment, ``as_of``: the database's clock when the first page
        was read (taken at the start of the statement that read it, so before its snapshot), carried
        by every cursor of the walk. A ``due``, ``priority`` or ``updated`` key changes when a task is
        edited, so a task edited between two page reads would move across the cursor (seen twice, or
        never): the later pages of those sorts leave out the tasks whose ``updated_at`` is after
        ``as_of``. Every other task is where the first page's snapshot put it, so the walk lists each
        of them once, in order; the ones left out (edited or created meanwhile) are exactly what
        ``updated_after=<as_of>`` lists once the walk ends. ``created`` keys never change: its walks
        keep the tasks edited meanwhile, in place (and list the tasks created meanwhile, at the end).

        Known race, not closed: ``updated_at`` is the editing transaction's start time (``now()``), not
        its commit's. A transaction that started before ``as_of`` and commits after the first page's
        snapshot was taken changes a task that page did not see changed, with an ``updated_at`` not
        after ``as_of``: the later pages take the task for unchanged and keep it at its new place (it
        may be listed twice or not at all, and the catch-up does not list it). The window is one such
        transaction's duration: milliseconds for a task's update, longer if it waited on a lock.

        Only the project's opening page is cached (``is_opening_page``): the list as every member
        opens it, the default sort and size, no filter and no cursor, one entry per project shared by
        its members (the feed's rule: only the default-size first page is cached). Every other page
        is read from PostgreSQL each time: another size or filter is one reader's choice, a page after
        a cursor one reader's walk, a search or a catch-up (``updated_after``) one reader's query.
        The sorts and statuses are few, but each is a page of its own (four sorts, sixteen with a
        status or none): what one user can make their projects hold in Valkey, which has no eviction
        and holds the queues, the rate limits and the revocations, is the bound that matters, and
        nothing the project ships asks for them at the default size (the benchmark's ``tasks`` reads
        the opening page; the locust members read 20-task pages of each sort).

        The bound: a project holds one page of at most ``STORED_BYTES_MAX`` (256 KiB,
        ``app/core/stamped.py``; a larger page is served, not stored). A user who owns
        ``PROJECTS_PER_USER_MAX`` (100) projects makes them hold at most 1 x 256 KiB x 100 = 25 MiB,
        however many queries, accounts or readers they use (it was 16 x 256 KiB x 100 = 400 MiB when
        every first page was stored); a project they are invited to counts against its owner's. At
        the usual page size (50 tasks, ~16 KB) it is ~1.6 MiB. Valkey itself keeps a project's pages
        to ``PAGES_PER_PROJECT`` (2, ``app/domains/tasks/cache.py``: room for another release's name
        of the opening page during a rolling deploy), so 50 MiB whatever releases run side by side.

        A cached opening page keeps the ``as_of`` of the read that loaded it, which is still an exact
        moment for a walk however late it is served: the page is the list as the database held it at
        that read (the stamp decides when a stored page stops being served, not what it holds), and
        the catch-up (``updated_after=<as_of>``) lists whatever changed after that moment, whether
        before or after the page was served, so an older page only means a longer catch-up. (Were a
        page of a ``due``, ``priority`` or ``updated`` walk cached, its cursor would make the later
        pages leave those changes out by the same moment.) The serving moment would not do: a change
        that committed after the load, its version not yet replaced (``uow.after_commit``), is in
        neither the page served nor the catch-up, as ``updated_at`` is before the serving moment."""

        async def load() -> bytes:
            listing = await self._listing(
                actor, project_id, filters=filters, sort=sort, cursor=cursor, row_limit=limit + 1
            )
            as_of = to_micros(listing.as_of)
            page: Page[TaskOut] = paginate(
                listing.rows,
                limit,
                lambda row: TaskCursor(sort=sort, key=sort_key(sort, row), id=row.id, as_of=as_of),
                TaskOut.from_row,
            )
            return _PAGE.encode(
                TaskPage(items=page.items, next_cursor=page.next_cursor, as_of=from_micros(as_of))
            )

        if is_opening_page(filters, sort, cursor, limit):
            return await self.cache.read(actor, project_id, OPENING_PAGE_QUERY, load)
        return await load()

    async def list_in_project(
        self,
        actor: int,
        project_id: int,
        *,
        filters: TaskFilters,
        sort: TaskSort,
        cursor: TaskCursor | None,
        row_limit: int,
    ) -> Sequence[TaskRow]:
        listing = await self._listing(
            actor, project_id, filters=filters, sort=sort, cursor=cursor, row_limit=row_limit
        )
        return listing.rows

    async def _listing(
        self,
        actor: int,
        project_id: int,
        *,
        filters: TaskFilters,
        sort: TaskSort,
        cursor: TaskCursor | None,
        row_limit: int,
    ) -> TaskListing:
        """Up to ``row_limit`` rows after ``cursor`` and the walk's ``as_of`` (``page_in_project``): the
        cursor's, else the clock of the statement that read the rows, which precedes its snapshot."""
        if cursor is not None and cursor.sort != sort:
            raise InvalidCursorError("The cursor continues another sort order: pass the sort it came with.")
        walk_as_of = from_micros(cursor.as_of) if cursor else None
        async with self.db.read() as uow:

            async def read() -> Sequence[TaskRow]:
                return await read_list(
                    uow.conn,
                    project_id,
                    actor,
                    filters,
                    sort=sort,
                    cursor=cursor,
                    as_of=walk_as_of if sort in MUTABLE_SORTS else None,
                    limit=row_limit,
                )

            rows = await read()
            if rows:
                return TaskListing(rows, rows[0].read_at if walk_as_of is None else walk_as_of)
            # an empty page, or not a member (404): only then ask
            await self.projects.require_role(uow, actor, project_id, ProjectRole.VIEWER)
            if walk_as_of is not None:
                return TaskListing(rows, walk_as_of)
            # An empty first page has no row to carry its statement's clock: read the clock, then the
            # list again (its snapshot follows the clock, so nothing changed since is missed).
            clock = await queries.database_clock(uow.conn)
            assert clock is not None
            return TaskListing(await read(), clock)

    async def list_assigned(
        self, actor: int, *, status: TaskStatus | None, after_id: int, row_limit: int
    ) -> list[Task]:
        async with self.db.read() as uow:
            return await queries.list_assigned_tasks(
                uow.conn, user_id=actor, status=status, after_id=after_id, row_limit=row_limit
            )

    async def _get(
        self, uow: UnitOfWork, actor: int, task_id: int, at_least: ProjectRole, *, lock: bool = False
    ) -> queries.GetTaskWithRoleRow:
        """The task if the caller is a member of its project (else 404) with at least ``at_least``.
        ``lock``: for a change of the task or its comments, read after locking the row (a concurrent
        deletion that came first is a 404, one that comes later waits)."""
        if lock:
            await queries.lock_task(uow.conn, id=task_id)
        task = await queries.get_task_with_role(uow.conn, user_id=actor, task_id=task_id)
        self.projects.check_role(task.my_role if task else None, at_least, missing="No such task.")
        assert task is not None
        return task

    @staticmethod
    def _require_assignable(is_member: bool) -> None:
        if not is_member:
            raise UnprocessableError("The assignee must be a member of the project.")

    # -- comments -------------------------------------------------------------------------------

    async def list_comments(
        self, actor: int, task_id: int, *, after_id: int, row_limit: int
    ) -> list[CommentOut]:
        async with self.db.read() as uow:
            await self._get(uow, actor, task_id, ProjectRole.VIEWER)
            rows = await comment_queries.list_comments(
                uow.conn, task_id=task_id, after_id=after_id, row_limit=row_limit
            )
            return [from_row(CommentOut, row) for row in rows]

    async def add_comment(
        self, actor: int, task_id: int, body: str, *, claim: IdempotencyClaim[Comment] | None = None
    ) -> Comment:
        """``claim``: the request's idempotency key, completed in this transaction."""
        async with self.db.transaction() as uow:
            task = await self._get(uow, actor, task_id, ProjectRole.EDITOR, lock=True)
            held = await comment_queries.count_task_comments(uow.conn, task_id=task_id) or 0
            if held >= self.comments_per_task_max:
                raise CommentLimitError(
                    f"This task holds {self.comments_per_task_max:,} comments, its most: delete some first."
                )
            comment = await comment_queries.create_comment(
                uow.conn, task_id=task_id, author_id=actor, body=body
            )
            assert comment is not None
            await emit(
                uow,
                actor=actor,
                verb="comment.added",
                obj=("comment", comment.id),
                project_id=task.project_id,
                data={"task_id": task_id, "title": task.title},
            )
            if claim is not None:
                await claim.complete(uow, comment, resource_id=comment.id)
            return comment

    async def edit_comment(self, actor: int, task_id: int, comment_id: int, body: str) -> Comment:
        """Authors edit their own comments only, while they may still write (an author demoted to
        viewer no longer may)."""
        async with self.db.transaction() as uow:
            task, comment = await self._get_comment(uow, actor, task_id, comment_id)
            if comment.author_id != actor:
                raise ForbiddenError("Only the author can edit a comment.")
            if task.my_role == ProjectRole.VIEWER:
                raise ForbiddenError("Editing a comment needs the editor role in the project.")
            updated = await comment_queries.update_comment(uow.conn, body=body, id=comment_id)
            assert updated is not None
            await self._emit_comment(uow, actor, "comment.edited", task, comment_id)
            return updated

    async def delete_comment(self, actor: int, task_id: int, comment_id: int) -> None:
        """Authors who may still write delete their own comments; project owners delete any."""
        async with self.db.transaction() as uow:
            task, comment = await self._get_comment(uow, actor, task_id, comment_id)
            role = task.my_role
            if role != ProjectRole.OWNER and (comment.author_id != actor or role == ProjectRole.VIEWER):
                raise ForbiddenError(
                    "Only the author (with the editor role) or a project owner can delete a comment."
                )
            await comment_queries.delete_comment(uow.conn, id=comment_id)
            await self._emit_comment(uow, actor, "comment.deleted", task, comment_id)

    async def _get_comment(
        self, uow: UnitOfWork, actor: int, task_id: int, comment_id: int
    ) -> tuple[queries.GetTaskWithRoleRow, Comment]:
        task = await self._get(uow, actor, task_id, ProjectRole.VIEWER)
        comment = await comment_queries.lock_comment(uow.conn, id=comment_id, task_id=task_id)
        if comment is None:
            raise NotFoundError("No such comment.")
        return task, comment

    @staticmethod
    async def _emit_comment(
        uow: UnitOfWork, actor: int, verb: str, task: queries.GetTaskWithRoleRow, comment_id: int
    ) -> None:
        await emit(
            uow,
            actor=actor,
            verb=verb,
            obj=("comment", comment_id),
            project_id=task.project_id,
            data={"task_id": task.id, "title": task.title},
        )


async def read_list(
    conn: AsyncConnection[Any],
    project_id: int,
    member_id: int,
    filters: TaskFilters,
    *,
    sort: TaskSort,
    cursor: TaskCursor | None,
    as_of: datetime | None,
    limit: int,
) -> Sequence[TaskRow]:
    """Up to ``limit`` tasks of the project after ``cursor`` in ``sort``: the statement of that sort
    (one per sort: each reads its page from one index range, ``sql/queries/tasks.sql``)."""
    common = _ListArguments(
        project_id=project_id,
        member_id=member_id,
        status=filters.status,
        priority=filters.priority,
        assignee_id=filters.assignee_id,
        due_before=filters.due_before,
        due_after=filters.due_after,
        updated_after=filters.updated_after,
        as_of=as_of,
        search=search_text(filters.search),
        row_limit=limit,
    )
    if sort == "due":
        after = due_after(cursor)
        return await queries.list_project_tasks_by_due(
            conn, after_due=after.due, after_id=after.id, after_undated_id=after.undated_id, **common
        )
    if sort == "priority":
        after_priority, after_id = priority_after(cursor)
        return await queries.list_project_tasks_by_priority(
            conn, after_priority=after_priority, after_id=after_id, **common
        )
    if sort == "updated":
        after_updated, after_id = updated_after(cursor)
        return await queries.list_project_tasks_by_updated(
            conn, after_updated=after_updated, after_id=after_id, **common
        )
    return await queries.list_project_tasks_by_created(conn, after_id=created_after(cursor), **common)


class _ListArguments(TypedDict):
    """The arguments every sort's statement takes (the project, the reader, the filters, the page)."""

    project_id: int
    member_id: int
    status: TaskStatus | None
    priority: TaskPriority | None
    assignee_id: int | None
    due_before: date | None
    due_after: date | None
    updated_after: datetime | None
    as_of: datetime | None
    search: str | None
    row_limit: int


def is_opening_page(filters: TaskFilters, sort: TaskSort, cursor: TaskCursor | None, limit: int) -> bool:
    """The page every member of a project reads as they open its list, the only one cached
    (``TaskService.page_in_project``): the default sort and size, no filter, no cursor."""
    return cursor is None and limit == DEFAULT_PAGE and sort == DEFAULT_SORT and filters == NO_FILTERS


OPENING_PAGE_QUERY = "opening"
"""The cache's name of the opening page, the only page cached (the release that stored it is part of
its key: ``StampedCache.entry_key``)."""
