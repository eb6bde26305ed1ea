"""A project's deletion at scale: every row of the project goes, nothing of another project goes with
it, and every cascade finds the rows of a deleted row by an index.

Review: the deletion is one statement, ``delete from projects``, whose foreign keys cascade to everything
in the project (memberships, tasks, their comments and search documents, files, invitations, and the
feed's groups, their events, actors, sample objects and reads). Each foreign key runs its action once per
deleted row it references: without an index on the referencing columns that is a sequential scan of the
whole referencing table per deleted row. Speed is not asserted here (``benchmarks/``): the plans are.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from litestar import Litestar
from psycopg import AsyncConnection, AsyncRawCursor, sql

from app.db.models import ProjectRole
from app.domains.projects.jobs import purge_deleted_project
from tests.factories import Client, Team, make_project

PER_PROJECT = {
    "tasks": "select count(*) from tasks where project_id = $1",
    "comments": "select count(*) from comments c join tasks t on t.id = c.task_id where t.project_id = $1",
    "task_search_documents": "select count(*) from task_search_documents where project_id = $1",
    "project_members": "select count(*) from project_members where project_id = $1",
    "project_assignees": "select count(*) from project_assignees where project_id = $1",
    "project_invitations": "select count(*) from project_invitations where project_id = $1",
    "project_files": "select count(*) from project_files where project_id = $1",
    "activity_groups": "select count(*) from activity_groups where project_id = $1",
    "activity_events": "select count(*) from activity_events e"
    " join activity_groups g on g.id = e.group_id where g.project_id = $1",
    "activity_group_objects": "select count(*) from activity_group_objects o"
    " join activity_groups g on g.id = o.group_id where g.project_id = $1",
    "activity_group_actors": "select count(*) from activity_group_actors a"
    " join activity_groups g on g.id = a.group_id where g.project_id = $1",
    "activity_event_reads": "select count(*) from activity_event_reads r"
    " join activity_groups g on g.id = r.group_id where g.project_id = $1",
}
"""Each table the deletion of a project reaches, and how many of its rows are the project's."""

FILL = [
    # Tasks, half of them assigned to a member (the set null of an assignee's deletion reaches them).
    """insert into tasks (project_id, title, description, position, created_by, updated_by, assignee_id)
    select %(project)s, 'task ' || n, repeat('lorem ipsum dolor ', 40), n, %(owner)s, %(owner)s,
           case when n %% 2 = 0 then %(member)s end
    from generate_series(1, %(tasks)s) n""",
    """insert into comments (task_id, author_id, body)
    select t.id, %(member)s, 'comment ' || n
    from tasks t, generate_series(1, %(comments)s) n where t.project_id = %(project)s""",
    """insert into project_invitations (project_id, email, role, invited_by)
    values (%(project)s, 'invited-' || %(project)s || '@example.com', 'viewer', %(owner)s)""",
    """insert into project_files (project_id, uploaded_by, filename, content_type, size_bytes, sha256,
        storage_key)
    values (%(project)s, %(owner)s, 'a.txt', 'text/plain', 1, repeat('0', 64), 'scale-' || %(project)s)""",
    # The feed: a group of comment.added per task, an event and a sample object per comment (as the
    # feed writer stores them), some of the events read.
    """insert into activity_groups (key, rule_version, window_s, max_span_s, stream, verb, object_type,
        project_id, target_type, target_id, first_at, last_at, first_seq, last_seq, event_count,
        actor_count, object_count)
    select 'scale-' || t.id, 1, 1800, 21600, 'project:' || t.project_id, 'comment.added', 'comment',
        t.project_id, 'task', t.id, now(), now(), 1, 1, %(comments)s, 1, %(comments)s
    from tasks t where t.project_id = %(project)s""",
    """insert into activity_events (outbox_id, actor_id, verb, object_type, object_id, data, occurred_at,
        group_id, target_type, target_id)
    select c.id, %(member)s, 'comment.added', 'comment', c.id, '{}', now(), g.id, 'task', t.id
    from comments c
    join tasks t on t.id = c.task_id
    join activity_groups g on g.key = 'scale-' || t.id
    where t.project_id = %(project)s""",
    """insert into activity_group_objects (group_id, object_id, event_count, last_seq)
    select e.group_id, e.object_id, 1, e.id
    from activity_events e join activity_groups g on g.id = e.group_id where g.project_id = %(project)s""",
    """insert into activity_group_actors (group_id, actor_id, event_count, first_seq, last_seq, project_id)
    select g.id, %(member)s, g.event_count, 1, 1, g.project_id
    from activity_groups g where g.project_id = %(project)s""",
    """insert into activity_event_reads (user_id, event_id, group_id)
    select %(owner)s, e.id, e.group_id
    from activity_events e join activity_groups g on g.id = e.group_id
    where g.project_id = %(project)s and e.id %% 7 = 0""",
]


async def fill(
    db: AsyncConnection[Any], project: int, owner: int, member: int, *, tasks: int, comments: int
) -> None:
    """``tasks`` tasks of ``comments`` comments each in ``project``, with what hangs off them, in SQL."""
    arguments = {"project": project, "owner": owner, "member": member, "tasks": tasks, "comments": comments}
    for statement in FILL:
        await db.execute(statement, arguments)


async def holdings(db: AsyncConnection[Any], project: int) -> dict[str, int]:
    held = {}
    async with AsyncRawCursor(db) as cur:
        for table, query in PER_PROJECT.items():
            await cur.execute(query, (project,))
            row = await cur.fetchone()
            assert row is not None
            held[table] = row[0]
    return held


async def totals(db: AsyncConnection[Any]) -> dict[str, int]:
    held = {}
    for table in PER_PROJECT:
        row = await (
            await db.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table)))
        ).fetchone()
        assert row is not None
        held[table] = row[0]
    return held


async def test_a_deletion_removes_everything_of_the_project_and_nothing_of_another(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    other = await make_project(db, team.owner, {team.editor.id: ProjectRole.EDITOR}, name="Gemini")
    await fill(db, team.project, team.owner.id, team.editor.id, tasks=60, comments=25)
    await fill(db, other, team.owner.id, team.editor.id, tasks=15, comments=10)
    doomed, kept = await holdings(db, team.project), await holdings(db, other)
    assert all(doomed.values()) and all(kept.values()), (doomed, kept)
    assert doomed["comments"] == 60 * 25 and doomed["activity_events"] == 60 * 25

    deleted = await client.delete(f"/api/projects/{team.project}", headers=team.owner.headers)
    assert deleted.status_code == 204, deleted.text
    app: Litestar = client.app
    purge = partial(purge_deleted_project, {"services": app.state.services}, project_id=team.project)
    assert client.blocking_portal.call(purge) is True  # the job the deletion enqueued

    assert await totals(db) == kept
    assert await holdings(db, other) == kept
    projects = await (await db.execute("select id from projects order by id")).fetchall()
    assert projects == [(other,)]


# -- plans -------------------------------------------------------------------------------------------


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first."""
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


def sequential_scans(plan: dict[str, Any]) -> list[str]:
    return [node["Relation Name"] for node in plan_nodes(plan) if node["Node Type"] == "Seq Scan"]


CASCADE_FROM_PROJECTS = """
with recursive reached(table_oid) as (
    select 'projects'::regclass::oid
    union
    select c.conrelid from pg_constraint c join reached r on c.confrelid = r.table_oid
    where c.contype = 'f' and c.confdeltype in ('c', 'n', 'd')
)
select c.conname, c.conrelid::regclass::text, c.confdeltype::text,
       array(select a.attname::text from unnest(c.conkey) k(attnum)
             join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum)
from pg_constraint c
where c.contype = 'f' and c.confrelid in (select table_oid from reached)
order by c.conname
"""
"""Every foreign key into a table whose rows a project's deletion deletes (the project's and, through
``on delete cascade`` / ``set null`` / ``set default``, their referencing tables' in turn): the
deletion runs its action, or its check, once per deleted row. (name, referencing table, action,
columns)."""


def action_for(table: str, action: str, columns: list[str]) -> sql.Composed:
    """The statement a foreign key runs for each deleted row it references (as PostgreSQL's
    ``ri_triggers.c`` writes it): delete the referencing rows, set their key null, or check."""
    where = sql.SQL(" and ").join(
        sql.SQL("{} = {}").format(sql.Identifier(column), sql.SQL(f"${n}"))
        for n, column in enumerate(columns, 1)
    )
    relation = sql.SQL("only {}").format(sql.Identifier(table))
    if action == "c":
        return sql.SQL("delete from {} where {}").format(relation, where)
    if action == "n":
        return sql.SQL("update {} set {} = null where {}").format(
            relation, sql.Identifier(columns[-1]), where
        )
    return sql.SQL("select 1 from {} where {} for key share").format(relation, where)


async def explained(
    db: AsyncConnection[Any], statement: str, arguments: tuple[Any, ...] = ()
) -> dict[str, Any]:
    async with AsyncRawCursor(db) as cur:
        if arguments:
            await cur.execute("explain (format json) " + statement, arguments)
        else:
            await cur.execute("explain (generic_plan, format json) " + statement)
        row = await cur.fetchone()
        assert row is not None
        plan: dict[str, Any] = row[0][0]["Plan"]
        return plan


async def test_every_cascade_of_a_deletion_finds_its_rows_by_an_index(db: AsyncConnection[Any]) -> None:
    """For each foreign key a project's deletion runs per deleted row, the generic plan of its statement,
    with sequential scans priced out of reach (``enable_seqscan`` off: only a missing index leaves one)."""
    keys = await (await db.execute(CASCADE_FROM_PROJECTS)).fetchall()
    tables = {table for _, table, _, _ in keys}
    assert {"tasks", "comments", "task_search_documents", "project_members", "activity_events"} <= tables
    problems = []
    async with db.transaction(force_rollback=True):
        await db.execute("set local enable_seqscan = off")
        for name, table, action, columns in keys:
            statement = action_for(table, action, columns).as_string(db)
            if scanned := sequential_scans(await explained(db, statement)):
                problems.append(f"{name}: {statement} scans {scanned}")
    assert problems == []
