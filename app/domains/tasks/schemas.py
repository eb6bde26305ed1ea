"""Wire shapes of tasks and comments."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from app.core.preconditions import ETAG_FORMS
from app.core.types import MAX_INT4, Id, NonBlank, OneLine, Text
from app.core.wire import from_row
from app.db.models import Comment, TaskPriority, TaskStatus

Title = Annotated[
    str,
    OneLine,
    msgspec.Meta(
        min_length=1,
        max_length=300,
        examples=["Write the release notes"],
    ),
]
Description = Annotated[
    str,
    Text,
    msgspec.Meta(
        max_length=20_000,
        examples=["List the new features and the fixed bugs of 2.4."],
    ),
]
Body = Annotated[
    str,
    NonBlank,
    msgspec.Meta(
        min_length=1,
        max_length=10_000,
        examples=["Draft is ready, could you review it?"],
    ),
]
TaskSort = Literal["created", "due", "priority", "updated"]
MAX_POSITION = MAX_INT4
"""Positions a client may set: new tasks take max + 1, so no client value can overflow ``bigint``."""
Position = Annotated[int, msgspec.Meta(ge=0, le=MAX_POSITION, examples=[3])]


class TaskCreate(msgspec.Struct, forbid_unknown_fields=True):
    title: Title
    description: Description = ""
    status: TaskStatus = TaskStatus.TODO
    priority: TaskPriority = TaskPriority.MEDIUM
    assignee_id: Id | None = None
    due_date: date | None = None


class TaskUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Omitted fields stay; ``assignee_id``/``due_date`` set to null clear the value (the others take
    no null: every task has them)."""

    openapi_example: ClassVar[dict[str, object]] = {}  # unedited, "Try it out" changes nothing

    title: Title | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    status: TaskStatus | msgspec.UnsetType = msgspec.UNSET
    priority: TaskPriority | msgspec.UnsetType = msgspec.UNSET
    assignee_id: Id | msgspec.UnsetType | None = msgspec.UNSET
    due_date: date | msgspec.UnsetType | None = msgspec.UNSET
    position: Position | msgspec.UnsetType = msgspec.UNSET


TaskVersion = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        description="Taken by every change of the task (none by a change that changes nothing): its `ETag` "
        f"is {ETAG_FORMS}, for `If-Match`.",
    ),
]


class TaskOut(msgspec.Struct, frozen=True):
    id: int
    project_id: int
    title: str
    description: str
    status: TaskStatus
    priority: TaskPriority
    assignee_id: int | None
    due_date: date | None
    position: int
    created_by: int
    updated_by: int
    created_at: datetime
    updated_at: datetime
    version: TaskVersion

    @classmethod
    def from_row(cls, row: Any) -> TaskOut:
        """From any generated task row (they share these columns)."""
        return from_row(cls, row)


class TaskCursor(msgspec.Struct, frozen=True):
    """``<sort>.<sort key>.<id>.<as_of>``: the sort it continues, the last row's key and id, and the
    moment the walk reads the list as of (the first page's ``as_of``, in microseconds since the epoch)."""

    sort: TaskSort
    key: int
    id: Annotated[int, msgspec.Meta(ge=0)]
    as_of: Annotated[int, msgspec.Meta(ge=0)]


class TaskPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a project's tasks. ``as_of``: the database's clock when the walk's first page was
    read (every page of a walk carries its first page's): the later pages of a ``due``, ``priority`` or
    ``updated`` walk leave out the tasks changed after it; ``?updated_after=<as_of>`` lists them."""

    items: list[TaskOut]
    next_cursor: str | None = None
    as_of: datetime


class CommentCreate(msgspec.Struct, forbid_unknown_fields=True):
    body: Body


class CommentOut(msgspec.Struct, frozen=True):
    id: int
    task_id: int
    author_id: int
    body: str
    created_at: datetime
    updated_at: datetime
    author_name: str | None = None

    @classmethod
    def from_row(cls, row: Comment, author_name: str | None = None) -> CommentOut:
        return from_row(cls, row, author_name=author_name)
