"""No list serves a member and an administrator with one statement: its generic plan would serve both.

Review: ``ListSites`` took an optional owner (``owner is null or owner_id = owner``: members their
sites, administrators every site) and ``ListOrders`` an optional user. psycopg prepares a statement
after a few executions on a connection, and after five custom plans PostgreSQL may keep the generic
plan, made for any owner, null included: a walk of the primary key with the owner as a filter. A
member with 2 sites then read every site (400 owners of 50 sites: 20,000 rows filtered out, 5 ms
instead of 0.04 ms); a user with one order every order (40,000, 10 ms).

Each list is now one statement per shape, chosen by the service (``ListOwnSites`` / ``ListAllSites``;
``ListUserOrders`` / ``ListOrdersWithStatus`` / ``ListAllOrders``). What these tests check is the plan
the statement gets for any parameters (``explain (generic_plan)``), and the rows it reads when forced
to use it (``plan_cache_mode``), not a duration: a member's list reads that member's index range, no
other owner's rows.

An administrator's list of users took an optional role the same way (``ListUsers``): listing the 3
administrators among 20,000 users read all 20,000.

The same shape on a cursor (``before_id is null or id < before_id``, a project's files): the generic
plan could not bound the scan by it, and a page read every newer file of the project.

Monitoring's alerts took an optional group (``ListAlerts``: a group's tree, or every alert) with no
index on the alert's group: a group's page walked every alert newest first with the group as a
filter, under either plan (4,000 alerts read for a group's 3). A group's list is ``ListGroupAlerts``.
Its error groups took an optional status and kind, neither indexed: a page of the 30 ignored among
20,000 read every root (``ListGroupsWithStatusAndKind`` now).
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, AsyncRawCursor, sql

from app.db import accounts as account_queries
from app.db import files as file_queries
from app.db import monitoring as monitoring_queries
from app.db import orders as order_queries
from app.db import projects as project_queries
from app.db import sites as site_queries
from app.db import tasks as task_queries
from app.domains.tasks import services as task_services
from app.domains.tasks.schemas import TaskCursor, TaskSort
from tests.factories import make_project, plan_nodes, plan_rows_read, plan_scans

OWNERS = 400
SITES_EACH = 50
ORDERS_EACH = 100


async def make_crowd(db: AsyncConnection[Any], users: int) -> list[int]:
    """``users`` members, inserted in one statement."""
    rows = await (
        await db.execute(
            "insert into users (email, display_name, password_hash)"
            " select 'crowd' || n || '@example.com', 'crowd ' || n, 'x' from generate_series(1, %s) n"
            " returning id",
            (users,),
        )
    ).fetchall()
    return [row[0] for row in rows]


async def generic_plan(db: AsyncConnection[Any], statement: str) -> dict[str, Any]:
    """The plan PostgreSQL makes for ``statement`` whatever its parameters (a prepared statement's
    generic plan)."""
    async with AsyncRawCursor(db) as cur:
        await cur.execute("explain (generic_plan, format json) " + statement)
        row = await cur.fetchone()
        assert row is not None
        plan: dict[str, Any] = row[0][0]["Plan"]
        return plan


async def run_generic(db: AsyncConnection[Any], statement: str, arguments: tuple[Any, ...]) -> dict[str, Any]:
    """``statement`` executed with ``arguments`` under its generic plan (EXPLAIN ANALYZE of a
    prepared statement, ``plan_cache_mode = force_generic_plan``)."""
    return await run_planned(db, statement, arguments, "force_generic_plan")


async def run_custom(db: AsyncConnection[Any], statement: str, arguments: tuple[Any, ...]) -> dict[str, Any]:
    """``statement`` executed with ``arguments`` under the plan made for them (a custom plan)."""
    return await run_planned(db, statement, arguments, "force_custom_plan")


async def run_planned(
    db: AsyncConnection[Any], statement: str, arguments: tuple[Any, ...], plan_cache_mode: str
) -> dict[str, Any]:
    literals = sql.SQL(", ").join(sql.Literal(argument) for argument in arguments)
    async with db.transaction(force_rollback=True):
        await db.execute("prepare measured as " + statement, prepare=False)
        await db.execute(sql.SQL("set local plan_cache_mode = {}").format(sql.Literal(plan_cache_mode)))
        explained = sql.SQL("explain (analyze, format json) execute measured ({})").format(literals)
        row = await (await db.execute(explained, prepare=False)).fetchone()
        await db.execute("deallocate measured", prepare=False)
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def problems_of(plan: dict[str, Any], table: str, column: str, index: str, label: str) -> list[str]:
    """What is wrong with a plan that must read ``table`` only through ``index``, bounded by
    ``column``: a scan of it that is not an index range on ``column`` (the primary key walked with
    ``column`` as a filter, or a sequential scan)."""
    problems = []
    scans = plan_scans(plan, table)
    if not scans:
        problems.append(f"{label}: does not read {table}")
    for node in scans:
        bounded = column in str(node.get("Index Cond", "")) and node.get("Index Name") == index
        if not bounded:
            problems.append(
                f"{label}: {node['Node Type']} on {node.get('Index Name', table)},"
                f" filter {node.get('Filter', '-')}"
            )
    return problems


def rows_read(plan: dict[str, Any], table: str) -> int:
    return sum(plan_rows_read(node) for node in plan_nodes(plan) if node.get("Relation Name") == table)


async def test_a_members_sites_are_read_from_their_range_whatever_the_plan(db: AsyncConnection[Any]) -> None:
    owners = await make_crowd(db, OWNERS + 1)
    member, crowd = owners[0], owners[1:]
    await db.execute(
        "insert into sites (owner_id, domain, ingest_key)"
        " select o, 'crowd.example.com', md5(o::text || '/' || n) || 'k'"
        " from unnest(%s::bigint[]) o, generate_series(1, %s) n",
        (crowd, SITES_EACH),
    )
    await db.execute(
        "insert into sites (owner_id, domain, ingest_key)"
        " select %s, 'mine.example.com', md5('mine' || n) from generate_series(1, 2) n",
        (member,),
    )
    await db.execute("analyze users, sites")

    statement = site_queries.LIST_OWN_SITES
    plan = await generic_plan(db, statement)
    assert problems_of(plan, "sites", "owner_id", "sites_owner_idx", "generic plan") == []

    measured = await run_generic(db, statement, (member, 0, 51))
    assert measured["Actual Rows"] == 2
    assert rows_read(measured, "sites") == 2  # that member's two sites: none of the 20,000 others

    # the administrators' list has no owner to bound it: every site in id order, one page of them
    everyone = await run_generic(db, site_queries.LIST_ALL_SITES, (0, 51))
    assert everyone["Actual Rows"] == 51


async def test_a_users_orders_are_read_from_their_range_whatever_the_plan(db: AsyncConnection[Any]) -> None:
    users = await make_crowd(db, OWNERS + 1)
    buyer, crowd = users[0], users[1:]
    await db.execute(
        "insert into orders (user_id, status, total, currency)"
        " select u, case when n = 1 then 'cancelled' else 'paid' end::order_status, 10, 'EUR'"
        " from generate_series(1, %s) n, unnest(%s::bigint[]) u",
        (ORDERS_EACH, crowd),
    )
    await db.execute(
        "insert into orders (user_id, status, total, currency) values (%s, 'pending', 10, 'EUR')", (buyer,)
    )
    await db.execute("analyze users, orders")
    first_page = 2**63 - 1

    statement = order_queries.LIST_USER_ORDERS
    plan = await generic_plan(db, statement)
    assert problems_of(plan, "orders", "user_id", "orders_user_idx", "generic plan") == []
    measured = await run_generic(db, statement, (buyer, first_page, 51))
    assert measured["Actual Rows"] == 1
    assert rows_read(measured, "orders") == 1  # the buyer's one order: no one else's
    with_status = order_queries.LIST_USER_ORDERS_WITH_STATUS  # a busy buyer's: test_orders_plans.py
    plan = await generic_plan(db, with_status)
    assert problems_of(plan, "orders", "user_id", "orders_user_status_idx", "generic plan") == []
    for status in ("pending", "paid"):
        measured = await run_generic(db, with_status, (buyer, status, first_page, 51))
        assert measured["Actual Rows"] == (0 if status == "paid" else 1)
        assert rows_read(measured, "orders") == (0 if status == "paid" else 1), status

    # an administrator's list of one status reads that status's range (400 of 40,000 are cancelled)
    by_status = order_queries.LIST_ORDERS_WITH_STATUS
    plan = await generic_plan(db, by_status)
    assert problems_of(plan, "orders", "status", "orders_status_idx", "generic plan") == []
    measured = await run_generic(db, by_status, ("cancelled", first_page, 500))
    assert measured["Actual Rows"] == OWNERS
    assert rows_read(measured, "orders") == OWNERS

    everyone = await run_generic(db, order_queries.LIST_ALL_ORDERS, (first_page, 51))
    assert everyone["Actual Rows"] == 51


async def test_a_page_of_files_is_read_from_its_cursor_whatever_the_plan(db: AsyncConnection[Any]) -> None:
    (owner,) = await make_crowd(db, 1)
    projects = [await make_project(db, owner) for _ in range(100)]
    await db.execute(
        "insert into project_files"
        " (project_id, uploaded_by, filename, content_type, size_bytes, sha256, storage_key)"
        " select p, %s, 'f.txt', 'text/plain', 1, repeat('a', 64), md5(p || '/' || n)"
        " from unnest(%s::bigint[]) p, generate_series(1, 100) n",
        (owner, projects),
    )
    await db.execute("analyze project_files")
    row = await (
        await db.execute("select min(id) from project_files where project_id = %s", (projects[2],))
    ).fetchone()
    assert row is not None

    statement = file_queries.LIST_PROJECT_FILES
    plan = await generic_plan(db, statement)
    assert problems_of(plan, "project_files", "id <", "project_files_project_idx", "generic plan") == []
    last_page = await run_generic(db, statement, (projects[2], row[0] + 21, 21))
    assert last_page["Actual Rows"] == 21
    assert rows_read(last_page, "project_files") == 21  # not the 79 newer files of the project too


async def test_an_administrators_list_of_one_role_reads_that_roles_range_whatever_the_plan(
    db: AsyncConnection[Any],
) -> None:
    users = await make_crowd(db, 20_000)
    await db.execute("update users set role = 'admin' where id = any(%s)", (users[:3],))
    await db.execute("update users set is_active = false where id = any(%s)", (users[3:10],))
    await db.execute("analyze users")

    with_role = account_queries.LIST_USERS_WITH_ROLE
    plan = await generic_plan(db, with_role)
    assert problems_of(plan, "users", "role", "users_role_id_idx", "generic plan") == []
    admins = await run_generic(db, with_role, ("admin", 0, 51))
    assert admins["Actual Rows"] == 3
    assert rows_read(admins, "users") == 3  # not the 20,000 users
    members = await run_generic(db, with_role, ("member", 0, 51))
    assert rows_read(members, "users") == 51

    with_state = account_queries.LIST_USERS_WITH_ROLE_AND_STATE
    plan = await generic_plan(db, with_state)
    assert problems_of(plan, "users", "is_active", "users_role_active_idx", "generic plan") == []
    inactive = await run_generic(db, with_state, ("member", False, 0, 51))
    assert inactive["Actual Rows"] == 7
    assert rows_read(inactive, "users") == 7


async def test_a_members_projects_are_read_from_their_memberships(db: AsyncConnection[Any]) -> None:
    """A member of 30 of 30,000 projects: the page is read from the member's memberships, then each
    project by its key; the join walked every project in id order and probed the member's
    memberships for each (30,000 projects read for 30; review)."""
    owner, member = await make_crowd(db, 2)
    rows = await (
        await db.execute(
            "insert into projects (name, owner_id) select 'crowd ' || n, %s from generate_series(1, 30000) n"
            " returning id",
            (owner,),
        )
    ).fetchall()
    projects = [row[0] for row in rows]
    joined = projects[::1000]
    await db.execute(
        "insert into project_members (project_id, user_id, role)"
        " select p, %s, 'owner' from unnest(%s::bigint[]) p",
        (owner, projects),
    )
    await db.execute(
        "insert into project_members (project_id, user_id, role)"
        " select p, %s, 'viewer' from unnest(%s::bigint[]) p",
        (member, joined),
    )
    await db.execute("analyze projects, project_members")

    statement = project_queries.LIST_MEMBER_PROJECTS
    for label, measured in (
        ("custom", await run_custom(db, statement, (member, 0, None, 51))),
        ("generic", await run_generic(db, statement, (member, 0, None, 51))),
    ):
        assert measured["Actual Rows"] == len(joined), label
        assert rows_read(measured, "projects") == len(joined), label
        assert rows_read(measured, "project_members") == len(joined), label


async def make_groups(db: AsyncConnection[Any], roots: int) -> list[int]:
    """``roots`` monitoring groups, each the root of its own tree, inserted in one statement."""
    rows = await (
        await db.execute(
            "insert into monitoring_groups"
            " (id, root_id, kind, title, status_changed_at, first_seen_at, last_seen_at)"
            " select n, n, 'error', 'crowd ' || n, now(), now(), now()"
            " from (select nextval(pg_get_serial_sequence('monitoring_groups', 'id')) n"
            "       from generate_series(1, %s)) s"
            " returning id",
            (roots,),
        )
    ).fetchall()
    return [row[0] for row in rows]


async def test_a_groups_alerts_are_read_from_its_trees_ranges_whatever_the_plan(
    db: AsyncConnection[Any],
) -> None:
    """A root with a merged group (2 alerts each, the oldest) and a busy root (2 x 100 alerts over its
    two members) among 200 groups of 20 alerts each: a page of a tree reads each member's newest ids
    from monitoring_alerts_group_idx (at most a page of each), then the page's rows by their key. The
    optional group walked every alert newest first with the group as a filter, under either plan
    (4,204 read for a group's 4)."""
    quiet, merged, busy, busy_merged, *crowd = await make_groups(db, 204)
    await db.execute(
        "update monitoring_groups g set root_id = m.parent, parent_id = m.parent"
        " from (values (%s::bigint, %s::bigint), (%s, %s)) m(child, parent)"
        " where g.id = m.child",
        (merged, quiet, busy_merged, busy),
    )
    alerts = [(quiet, 2), (merged, 2), *((g, 100) for g in (busy, busy_merged)), *((g, 20) for g in crowd)]
    await db.execute(
        "insert into monitoring_alerts"
        " (key, kind, rule, group_id, summary, text_html, text_plain, created_at)"
        " select 'plan-' || g || '-' || n, 'alert', 'new_group', g, 's', 'h', 'p', now()"
        " from unnest(%s::bigint[], %s::int[]) a(g, c), generate_series(1, c) n"
        " order by n, g",  # interleaved: each group's alerts spread over the ids and the pages
        ([g for g, _ in alerts], [c for _, c in alerts]),
    )
    # statistics and the visibility map as autovacuum leaves a table that is only appended to: the
    # members' ranges are read from the index alone
    await db.execute("vacuum analyze monitoring_groups, monitoring_alerts")
    first_page = 2**63 - 1

    statement = monitoring_queries.LIST_GROUP_ALERTS
    for label, run in (("custom", run_custom), ("generic", run_generic)):
        tree = await run(db, statement, (first_page, 21, quiet))
        assert tree["Actual Rows"] == 4, label  # the root's 2 and its merged group's 2
        assert rows_read(tree, "monitoring_alerts") == 4 + 4, label  # their ids, then their rows
        own = await run(db, statement, (first_page, 21, merged))
        assert own["Actual Rows"] == 2, label  # a merged group: its own alerts only
        assert rows_read(own, "monitoring_alerts") == 2 + 2, label
        page = await run(db, statement, (first_page, 21, busy))
        assert page["Actual Rows"] == 21, label
        assert rows_read(page, "monitoring_alerts") <= 2 * 21 + 21, label  # a page of each member's ids

    everyone = await run_generic(db, monitoring_queries.LIST_ALERTS, (first_page, 51))
    assert everyone["Actual Rows"] == 51
    assert rows_read(everyone, "monitoring_alerts") == 51


async def test_a_status_or_kind_of_groups_is_read_from_its_ranges_whatever_the_plan(
    db: AsyncConnection[Any],
) -> None:
    """30 ignored roots (the oldest) and 20 of kind cron among 20,000: a page of a status, of a kind or
    of both reads the ids of each (status, kind) range of monitoring_groups_listed_idx, at most a
    page of each, then the page's rows by their key. The optional filters read every root newest
    first under either plan (20,030 rows for the 30)."""
    await db.execute(
        "insert into monitoring_groups"
        " (id, root_id, kind, title, status, status_changed_at, first_seen_at, last_seen_at)"
        " select n, n, case when g %% 1000 = 0 then 'cron' else 'error' end::monitoring_group_kind, 't',"
        "  case when g <= 30 then 'ignored' else 'unresolved' end::monitoring_group_status,"
        "  now(), now(), now()"
        " from (select nextval(pg_get_serial_sequence('monitoring_groups', 'id')) n, g"
        "       from generate_series(1, %s) g) s",
        (20_000,),
    )
    await db.execute("vacuum analyze monitoring_groups")  # as autovacuum leaves it: see the alerts' test
    first_page = 2**63 - 1
    statuses, kinds = ["resolved", "unresolved", "ignored", "regressed"], ["error", "job", "cron"]

    statement = monitoring_queries.LIST_GROUPS_WITH_STATUS_AND_KIND
    for label, run in (("custom", run_custom), ("generic", run_generic)):
        ignored = await run(db, statement, (["ignored"], kinds, first_page, None, 51))
        assert ignored["Actual Rows"] == 30, label
        # each id in its range, then each row by its key and its tree's counters (itself)
        assert rows_read(ignored, "monitoring_groups") <= 4 * 30, label
        cron = await run(db, statement, (statuses, ["cron"], first_page, None, 51))
        assert cron["Actual Rows"] == 20, label
        assert rows_read(cron, "monitoring_groups") <= 4 * 20, label
        both = await run(db, statement, (["unresolved"], ["error"], first_page, None, 51))
        assert both["Actual Rows"] == 51, label
        assert rows_read(both, "monitoring_groups") <= 4 * 51, label

    everyone = await run_generic(db, monitoring_queries.LIST_GROUPS, (first_page, None, 51))
    assert everyone["Actual Rows"] == 51
    assert rows_read(everyone, "monitoring_groups") <= 2 * 51  # each root and its tree's counters


TASKS_IN_PROJECT = 10_000
TASK_SORTS: tuple[TaskSort, ...] = ("created", "due", "priority", "updated")
TASK_PAGE = 51
"""A page of 50 and the row that tells a next page exists."""


async def make_task_crowd(db: AsyncConnection[Any], project: int, owner: int, tasks: int) -> None:
    """``tasks`` tasks in one statement: every priority, one in five undated, the others due on one of
    400 days, changed at one of 3,000 moments (several tasks share each day and moment)."""
    await db.execute(
        "insert into tasks (project_id, title, priority, due_date, position, created_by, updated_by,"
        " updated_at)"
        " select %(project)s, 'task ' || n, (enum_range(null::task_priority))[1 + n %% 4],"
        " case when n %% 5 = 0 then null else date '2027-01-01' + n * 7 %% 400 end, n, %(owner)s,"
        " %(owner)s, timestamptz '2026-12-01' - (n * 13 %% 3000) * interval '1 second'"
        " from generate_series(1, %(tasks)s) n",
        {"project": project, "owner": owner, "tasks": tasks},
    )


def task_list_statement(
    sort: TaskSort, project: int, member: int, cursor: TaskCursor | None, limit: int
) -> tuple[str, tuple[Any, ...]]:
    """The statement the service runs for a page of ``sort`` after ``cursor`` (no filter), and its
    parameters in order, from the cursor as the service reads it."""
    no_filters = (None, None, None, None, None, None, None, None)
    if sort == "due":
        after = task_services.due_after(cursor)
        return task_queries.LIST_PROJECT_TASKS_BY_DUE, (
            project,
            after.due,
            after.id,
            *no_filters,
            limit,
            after.undated_id,
            member,
        )
    if sort == "priority":
        priority, after_id = task_services.priority_after(cursor)
        return task_queries.LIST_PROJECT_TASKS_BY_PRIORITY, (
            project,
            priority,
            after_id,
            *no_filters,
            limit,
            member,
        )
    if sort == "updated":
        updated, after_id = task_services.updated_after(cursor)
        return task_queries.LIST_PROJECT_TASKS_BY_UPDATED, (
            project,
            updated,
            after_id,
            *no_filters,
            limit,
            member,
        )
    return task_queries.LIST_PROJECT_TASKS_BY_CREATED, (
        project,
        cursor.id if cursor else 0,
        *no_filters,
        member,
        limit,
    )


async def test_a_page_of_tasks_reads_one_page_in_every_sort_whatever_the_plan(
    db: AsyncConnection[Any],
) -> None:
    """10,000 tasks in one project, 2,000 in another: a page of 51 reads about 51 tasks, in every sort,
    on the first page and after a cursor near the end, under a custom and a generic plan. Review: one
    statement for every sort, with a CASE sort key no index held, read the whole project for every
    page (10,000 rows; the generic plan for sort=created too), and for priority built the enum's
    range for every task."""
    owner, other = await make_crowd(db, 2)
    project = await make_project(db, owner)
    await make_task_crowd(db, project, owner, TASKS_IN_PROJECT)
    await make_task_crowd(db, await make_project(db, other), other, 2_000)
    await db.execute("analyze tasks, project_members")
    tasks = await (
        await db.execute(
            "select id, project_id, title, description, status, priority, assignee_id, due_date, position,"
            " created_by, updated_by, created_at, updated_at, version, now()"
            " from tasks where project_id = %s",
            (project,),
        )
    ).fetchall()
    rows = [task_queries.ListProjectTasksByCreatedRow(*task) for task in tasks]

    problems = []
    for sort in TASK_SORTS:
        walk = sorted(rows, key=lambda row: (task_services.sort_key(sort, row), row.id))
        keys = [task_services.sort_key(sort, row) for row in walk]
        positions = {"deep cursor": len(walk) - 100}
        if sort in ("due", "priority"):  # 25 before the undated tasks, the lowest priority
            positions["cursor 25 before the last range"] = keys.index(keys[-1]) - 25
        if sort == "updated":  # a moment shared with the next tasks, half way
            positions["cursor inside a moment"] = next(
                n for n in range(5_000, len(walk)) if keys[n] == keys[n + 1]
            )
        cursors: dict[str, TaskCursor | None] = {"first page": None}
        for where, position in positions.items():
            cursors[where] = TaskCursor(sort=sort, key=keys[position], id=walk[position].id, as_of=0)
        for where, cursor in cursors.items():
            statement, arguments = task_list_statement(sort, project, owner, cursor, TASK_PAGE)
            for plan, run in (("custom", run_custom), ("generic", run_generic)):
                measured = await run(db, statement, arguments)
                read = rows_read(measured, "tasks")
                if measured["Actual Rows"] != TASK_PAGE or read > TASK_PAGE + 1:
                    problems.append(
                        f"{sort}, {where}, {plan} plan: {measured['Actual Rows']} rows, {read} read"
                    )
    assert problems == []
