"""Task listing: filters and keyset pagination against a Python model, while tasks keep arriving.

Each example arranges a project with random tasks (inserted with SQL), picks a filter combination,
a sort and a page size, and pages through ``GET /api/projects/{id}/tasks`` following
``next_cursor``; between two page reads it inserts more random tasks. The documented order:

- created: by id;
- due: soonest first, undated last, then id;
- priority: urgent, high, medium, low, then id;
- updated: most recently updated first, then id (ascending, for equal ``updated_at``).

Keyset pagination then guarantees exactly this: the pages are the tasks that matched before paging
started plus the matching tasks inserted *after the cursor's position* at the time of insertion,
in model order, each once; a task inserted before the cursor's position never appears. (The tasks
are inserted with an ``updated_at`` in the past, before the walk's ``as_of``: to the list they are
tasks that were there all along, committed late.)

The second property edits, creates and deletes tasks through the API between two page reads: a walk
of a sort whose keys change (due, priority, updated) lists every task it did not see changed exactly
once, in order, and leaves out the tasks changed after its ``as_of``, which the catch-up
(``updated_after=<as_of>``) lists; a ``created`` walk keeps the edited tasks in place. No task is
listed twice by a walk, and the walk and its catch-up together hold every task that matches at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.db.models import ProjectRole, TaskPriority, TaskStatus
from tests.factories import generous_client, make_project, make_task, make_user, scaled_examples

VOCABULARY = ("alpha", "beta", "gamma", "delta", "omega")
FIRST_DAY = date(2030, 1, 1)
UPDATED_BASE = datetime(2020, 6, 1, 12, tzinfo=UTC)  # before every walk's as_of
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PRIORITY_RANK = {TaskPriority.LOW: 1, TaskPriority.MEDIUM: 2, TaskPriority.HIGH: 3, TaskPriority.URGENT: 4}
SORTS = ("created", "due", "priority", "updated")
MAX_PAGES = 200
INSERT_BUDGET = 6  # tasks inserted while paging through one sort: paging must end


class Spec(msgspec.Struct, frozen=True):
    """A task to insert; ``assignee`` indexes the project's two members."""

    status: TaskStatus
    priority: TaskPriority
    assignee: int | None
    due: int | None
    words: tuple[str, ...]
    updated: int  # seconds after UPDATED_BASE: a small range, so that ties happen


class Row(msgspec.Struct, frozen=True):
    id: int
    status: TaskStatus
    priority: TaskPriority
    assignee_id: int | None
    due_date: date | None
    title: str
    updated_at: datetime


specs = st.builds(
    Spec,
    status=st.sampled_from(TaskStatus),
    priority=st.sampled_from(TaskPriority),
    assignee=st.sampled_from((0, 1, None)),
    due=st.none() | st.integers(0, 4),
    words=st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=3).map(tuple),
    updated=st.integers(0, 3),
)
FILTERS: dict[str, st.SearchStrategy[Any]] = {
    "status": st.sampled_from(TaskStatus),
    "priority": st.sampled_from(TaskPriority),
    "assignee": st.sampled_from((0, 1)),
    "due_before": st.integers(0, 4),
    "due_after": st.integers(0, 4),
    "q": st.sampled_from(VOCABULARY),
}
# At most two filters at once: more would leave nearly every example with an empty listing.
filter_choices = st.sets(st.sampled_from(sorted(FILTERS)), max_size=2).flatmap(
    lambda names: st.fixed_dictionaries({name: FILTERS[name] for name in names})
)


def sort_key(row: Row, sort: str) -> tuple[int | float, int]:
    if sort == "created":
        return (0, row.id)
    if sort == "due":
        return (row.due_date.toordinal() if row.due_date else float("inf"), row.id)
    if sort == "priority":
        return (-PRIORITY_RANK[row.priority], row.id)
    assert sort == "updated"
    return (-((row.updated_at - EPOCH) // timedelta(microseconds=1)), row.id)


def matches(row: Row, filters: dict[str, Any], members: list[int]) -> bool:
    if "status" in filters and row.status != filters["status"]:
        return False
    if "priority" in filters and row.priority != filters["priority"]:
        return False
    if "assignee" in filters and row.assignee_id != members[filters["assignee"]]:
        return False
    if "due_before" in filters and (
        row.due_date is None or row.due_date > FIRST_DAY + timedelta(days=filters["due_before"])
    ):
        return False
    if "due_after" in filters and (
        row.due_date is None or row.due_date < FIRST_DAY + timedelta(days=filters["due_after"])
    ):
        return False
    return not ("q" in filters and filters["q"] not in row.title.split())


def query_params(filters: dict[str, Any], members: list[int]) -> dict[str, str]:
    params: dict[str, str] = {key: str(filters[key]) for key in ("status", "priority", "q") if key in filters}
    if "assignee" in filters:
        params["assignee_id"] = str(members[filters["assignee"]])
    for key in ("due_before", "due_after"):
        if key in filters:
            params[key] = (FIRST_DAY + timedelta(days=filters[key])).isoformat()
    return params


async def insert(db: AsyncConnection[Any], project_id: int, members: list[int], spec: Spec) -> Row:
    """A task created by the project's editor (``members[1]``), with ``spec``'s fields."""
    task_id = await make_task(
        db,
        project_id,
        members[1],
        title=" ".join(spec.words),
        status=spec.status,
        priority=spec.priority,
        assignee=members[spec.assignee] if spec.assignee is not None else None,
        due=FIRST_DAY + timedelta(days=spec.due) if spec.due is not None else None,
    )
    cursor = await db.execute(
        "update tasks set updated_at = %s where id = %s"
        " returning id, status, priority, assignee_id, due_date, title, updated_at",
        (UPDATED_BASE + timedelta(seconds=spec.updated), task_id),
    )
    stored = await cursor.fetchone()
    assert stored is not None
    return Row(*stored)


async def arrange(app: Litestar, db: AsyncConnection[Any]) -> tuple[int, list[int], dict[str, str]]:
    """A project with an owner and two members, a viewer (who lists) and an editor; the project's id,
    the two members, the lister's headers."""
    project, members, headers, _ = await arrange_with_editor(app, db)
    return project, members, headers


async def arrange_with_editor(
    app: Litestar, db: AsyncConnection[Any]
) -> tuple[int, list[int], dict[str, str], dict[str, str]]:
    """``arrange``'s, and the editor's headers."""
    owner = await make_user(db, app, name="Owner")
    lister = await make_user(db, app, name="Lister")
    editor = await make_user(db, app, name="Editor")
    project = await make_project(
        db, owner, {lister.id: ProjectRole.VIEWER, editor.id: ProjectRole.EDITOR}, name="Listing"
    )
    return project, [lister.id, editor.id], lister.headers, editor.headers


@pytest.fixture(scope="module")
async def module_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The app without the default per-user quota in the way (one example may read 150 pages), and
    without the task lists' page cache: tasks are inserted here with SQL, past the service that tells
    the cache (the cache has its own tests: test_tasks_cache.py, test_tasks_lists_cached.py)."""
    async for client in generous_client(
        settings,
        rate_limit_default_per_minute=100_000,
        rate_limit_default_per_hour=1_000_000,
        tasks_cache_ttl_s=0,
    ):
        yield client


@pytest.fixture
def api(
    module_client: AsyncTestClient[Litestar], db: AsyncConnection[Any], valkey: Valkey
) -> AsyncTestClient[Litestar]:
    module_client.headers.clear()
    module_client.cookies.clear()
    return module_client


def check_item(item: dict[str, Any], row: Row) -> None:
    assert (item["status"], item["priority"], item["assignee_id"], item["title"]) == (
        row.status.value,
        row.priority.value,
        row.assignee_id,
        row.title,
    )
    assert item["due_date"] == (row.due_date.isoformat() if row.due_date else None)
    assert datetime.fromisoformat(item["updated_at"]) == row.updated_at


class Listing(msgspec.Struct):
    """One example's project, as the model knows it."""

    client: AsyncTestClient[Litestar]
    db: AsyncConnection[Any]
    project_id: int
    members: list[int]
    headers: dict[str, str]
    known: dict[int, Row]

    async def insert(self, spec: Spec) -> Row:
        row = await insert(self.db, self.project_id, self.members, spec)
        self.known[row.id] = row
        return row

    async def page_through(
        self, filters: dict[str, Any], sort: str, limit: int, data: st.DataObject | None = None
    ) -> tuple[list[int], set[int], dict[int, tuple[int | float, int]]]:
        """The ids listed, the tasks that existed before, and each task inserted meanwhile with the
        cursor position at the time of its insertion (``data`` draws the tasks to insert)."""
        before = set(self.known)
        inserted_after: dict[int, tuple[int | float, int]] = {}
        params = {"sort": sort, "limit": str(limit), **query_params(filters, self.members)}
        returned: list[int] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            response = await self.client.get(
                f"/api/projects/{self.project_id}/tasks",
                params=params | ({"cursor": cursor} if cursor else {}),
                headers=self.headers,
            )
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["items"]) <= limit
            for item in page["items"]:
                assert item["id"] in self.known, f"{item['id']} is no task of this project"
                check_item(item, self.known[item["id"]])
                returned.append(item["id"])
            cursor = page["next_cursor"]
            if cursor is None:
                return returned, before, inserted_after
            assert len(page["items"]) == limit, "a next page is announced after a short page"
            position = sort_key(self.known[page["items"][-1]["id"]], sort)
            budget = min(2, INSERT_BUDGET - len(inserted_after))
            batch = (
                [] if data is None else data.draw(st.lists(specs, max_size=budget), label=f"added ({sort})")
            )
            for spec in batch:
                inserted_after[(await self.insert(spec)).id] = position
        raise AssertionError(f"more than {MAX_PAGES} pages")


@settings(max_examples=scaled_examples(40), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    initial=st.lists(specs, min_size=2, max_size=15),
    filters=filter_choices,
    first_sort=st.sampled_from(SORTS),
    limit=st.integers(1, 5),
    data=st.data(),
)
async def test_pages_are_the_model_order_without_duplicates_or_gaps(
    api: AsyncTestClient[Litestar],
    app: Litestar,
    db: AsyncConnection[Any],
    initial: list[Spec],
    filters: dict[str, Any],
    first_sort: str,
    limit: int,
    data: st.DataObject,
) -> None:
    """Each example pages through every sort (the drawn one first), inserting tasks as it goes."""
    project_id, members, headers = await arrange(app, db)
    known: dict[int, Row] = {}
    listing = Listing(api, db, project_id, members, headers, known)
    try:
        for spec in initial:
            await listing.insert(spec)
        for sort in [first_sort, *(other for other in SORTS if other != first_sort)]:
            returned, before, inserted_after = await listing.page_through(filters, sort, limit, data)

            def key(task_id: int, sort: str = sort) -> tuple[int | float, int]:
                return sort_key(known[task_id], sort)

            assert len(returned) == len(set(returned)), f"{sort}: duplicates in {returned}"
            wrong = [known[task_id] for task_id in returned if not matches(known[task_id], filters, members)]
            assert not wrong, f"{sort}: tasks that do not match {filters}: {wrong}"
            assert [key(i) for i in returned] == sorted(key(i) for i in returned), f"{sort}: {returned}"
            matching_before = sorted((i for i in before if matches(known[i], filters, members)), key=key)
            assert [i for i in returned if i in before] == matching_before, f"{sort}: gaps"
            late = {
                task_id
                for task_id, position in inserted_after.items()
                if matches(known[task_id], filters, members) and key(task_id) > position
            }
            assert {i for i in returned if i not in before} == late, f"{sort}: tasks inserted while paging"
    finally:
        await db.execute("delete from projects where id = %s", (project_id,))


async def test_each_sort_follows_the_documented_order(
    api: AsyncTestClient[Litestar], app: Litestar, db: AsyncConnection[Any]
) -> None:
    """The model's orders on one fixed set of tasks (a deterministic companion of the property)."""
    project_id, members, headers = await arrange(app, db)
    listing = Listing(api, db, project_id, members, headers, {})
    rows = [
        await listing.insert(Spec(TaskStatus.TODO, priority, None, due, ("alpha",), updated))
        for priority, due, updated in [
            (TaskPriority.LOW, 2, 1),
            (TaskPriority.URGENT, None, 3),
            (TaskPriority.MEDIUM, 0, 1),
            (TaskPriority.HIGH, 2, 0),
            (TaskPriority.URGENT, 1, 3),
        ]
    ]
    ids = [row.id for row in rows]
    expected = {
        "created": ids,
        "due": [ids[2], ids[4], ids[0], ids[3], ids[1]],
        "priority": [ids[1], ids[4], ids[3], ids[2], ids[0]],
        "updated": [ids[1], ids[4], ids[0], ids[2], ids[3]],
    }
    for sort, order in expected.items():
        for limit in (2, 5):
            listed, _, _ = await listing.page_through({}, sort, limit)
            assert listed == order, (sort, limit)


# -- walks while tasks are edited ---------------------------------------------------------------------

MUTABLE_SORTS = ("due", "priority", "updated")


class Edit(msgspec.Struct, frozen=True):
    """A change made between two page reads: ``kind`` edit, create or delete; ``pick`` chooses the task
    among those alive (edit, delete); ``fields``: the PATCH's or POST's body, with ``assignee`` an
    index of the project's two members."""

    kind: str
    pick: int
    fields: dict[str, Any]


field_values: dict[str, st.SearchStrategy[Any]] = {
    "status": st.sampled_from(TaskStatus).map(lambda status: status.value),
    "priority": st.sampled_from(TaskPriority).map(lambda priority: priority.value),
    "due_date": st.none() | st.integers(0, 4).map(lambda day: (FIRST_DAY + timedelta(days=day)).isoformat()),
    "assignee": st.sampled_from((0, 1, None)),
    "title": st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=3).map(" ".join),
}
edits = st.builds(
    Edit,
    kind=st.sampled_from(("edit", "edit", "edit", "create", "delete")),
    pick=st.integers(0, 50),
    fields=st.fixed_dictionaries({}, optional=field_values),
)


def row_of(item: dict[str, Any]) -> Row:
    return Row(
        id=item["id"],
        status=TaskStatus(item["status"]),
        priority=TaskPriority(item["priority"]),
        assignee_id=item["assignee_id"],
        due_date=date.fromisoformat(item["due_date"]) if item["due_date"] else None,
        title=item["title"],
        updated_at=datetime.fromisoformat(item["updated_at"]),
    )


class EditedWalk(msgspec.Struct):
    """One example's project while it is walked and edited, as the model knows it."""

    client: AsyncTestClient[Litestar]
    project_id: int
    members: list[int]
    headers: dict[str, str]
    editor: dict[str, str]
    known: dict[int, Row]
    alive: list[int]
    changed: set[int] = msgspec.field(default_factory=set)

    async def apply(self, edit: Edit) -> None:
        """One change through the API; ``changed`` gets the tasks whose ``updated_at`` it moved."""
        body = dict(edit.fields)
        if "assignee" in body:
            index = body.pop("assignee")
            body["assignee_id"] = self.members[index] if index is not None else None
        if edit.kind == "create" or not self.alive:
            body.setdefault("title", "alpha")
            response = await self.client.post(
                f"/api/projects/{self.project_id}/tasks", json=body, headers=self.editor
            )
            assert response.status_code == 201, response.text
            row = row_of(response.json())
            self.known[row.id] = row
            self.alive.append(row.id)
            self.changed.add(row.id)
            return
        task_id = self.alive[edit.pick % len(self.alive)]
        if edit.kind == "delete":
            response = await self.client.delete(f"/api/tasks/{task_id}", headers=self.editor)
            assert response.status_code == 204, response.text
            self.alive.remove(task_id)
            return
        response = await self.client.patch(f"/api/tasks/{task_id}", json=body, headers=self.editor)
        assert response.status_code == 200, response.text
        row = row_of(response.json())
        if row != self.known[task_id]:
            assert row.updated_at > self.known[task_id].updated_at, "a change moves updated_at"
            self.changed.add(task_id)
        else:
            assert row.updated_at == self.known[task_id].updated_at, "no change, no new updated_at"
        self.known[task_id] = row

    async def walk(
        self, params: dict[str, str], limit: int, between: list[list[Edit]] | None = None
    ) -> tuple[list[int], str]:
        """The ids a walk listed and its ``as_of``; ``between[n]`` is applied after the n-th page. A
        walk of a sort whose keys change never lists a task after it changed."""
        excludes_changed = between is not None and params["sort"] in MUTABLE_SORTS
        listed: list[int] = []
        as_of: set[str] = set()
        cursor: str | None = None
        for n in range(MAX_PAGES):
            response = await self.client.get(
                f"/api/projects/{self.project_id}/tasks",
                params=params | {"limit": str(limit)} | ({"cursor": cursor} if cursor else {}),
                headers=self.headers,
            )
            assert response.status_code == 200, response.text
            page = response.json()
            listed += [item["id"] for item in page["items"]]
            for item in page["items"]:
                assert item["id"] in self.known, f"{item['id']} is no task of this project"
                check_item(item, self.known[item["id"]])  # as it is now: it was listed after its change
                if excludes_changed:
                    assert item["id"] not in self.changed, f"{params['sort']}: listed after its change"
            as_of.add(page.get("as_of"))
            cursor = page["next_cursor"]
            if cursor is None:
                assert len(as_of) == 1, f"the pages of one walk carry different as_of: {as_of}"
                return listed, as_of.pop()
            for edit in between[n] if between is not None and n < len(between) else []:
                await self.apply(edit)
        raise AssertionError(f"more than {MAX_PAGES} pages")


@settings(max_examples=scaled_examples(40), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    initial=st.lists(specs, min_size=2, max_size=12),
    filters=filter_choices,
    sort=st.sampled_from(SORTS),
    catch_up_sort=st.sampled_from(SORTS),
    limit=st.integers(1, 4),
    between=st.lists(st.lists(edits, max_size=3), max_size=6),
)
async def test_a_walk_with_edits_lists_each_task_once_and_the_catch_up_the_rest(
    api: AsyncTestClient[Litestar],
    app: Litestar,
    db: AsyncConnection[Any],
    initial: list[Spec],
    filters: dict[str, Any],
    sort: str,
    catch_up_sort: str,
    limit: int,
    between: list[list[Edit]],
) -> None:
    """Review: edited between two page reads, a task moved across the cursor of a due, priority or
    updated walk: it was listed twice, or never although it existed throughout."""
    project_id, members, headers, editor = await arrange_with_editor(app, db)
    known: dict[int, Row] = {}
    try:
        for spec in initial:
            row = await insert(db, project_id, members, spec)
            known[row.id] = row
        model = EditedWalk(api, project_id, members, headers, editor, known, list(known))
        before = set(known)
        params = {"sort": sort, **query_params(filters, members)}
        listed, as_of = await model.walk(params, limit, between)

        def key(task_id: int) -> tuple[int | float, int]:
            return sort_key(known[task_id], sort)

        assert len(listed) == len(set(listed)), f"{sort}: listed twice in {listed}"
        alive = set(model.alive)
        untouched = [i for i in before if i in alive and i not in model.changed]
        matching_untouched = sorted((i for i in untouched if matches(known[i], filters, members)), key=key)
        assert [i for i in listed if i in untouched] == matching_untouched, f"{sort}: gaps or disorder"
        if sort in MUTABLE_SORTS:
            shown_late = [i for i in listed if i not in before]
            assert not shown_late, f"{sort}: created after as_of, listed by the walk: {shown_late}"
        else:
            assert listed == sorted(listed), f"created: not in id order: {listed}"

        caught_up, _ = await model.walk(
            {"sort": catch_up_sort, "updated_after": as_of, **query_params(filters, members)}, 5
        )
        assert len(caught_up) == len(set(caught_up)), f"catch-up: listed twice in {caught_up}"
        final = {i for i in alive if matches(known[i], filters, members)}
        assert set(caught_up) == final & model.changed, f"{sort}: the catch-up is not what changed"
        lost = final - set(listed) - set(caught_up)
        assert not lost, f"{sort}: tasks neither walked nor caught up: {lost}"
    finally:
        await db.execute("delete from projects where id = %s", (project_id,))
