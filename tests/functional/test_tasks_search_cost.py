"""The task list's full-text search (``q``) reads each task's stored document instead of computing one
per task and query.

Review: the search matched ``task_search_document(t.title, t.description)``, an expression only its
GIN index held. A query that index could not answer alone (a phrase ``"b a"``, a pure exclusion
``-a``, a common word) walked the project's tasks in sort order and computed ``to_tsvector`` of each
title and description again: about 5 ms for a 20,000-character description. A project of 3,000 such
tasks held a pooled connection and a core for the whole statement timeout (15 s) per search, then
answered 503; a few dozen such searches at once left every route answering 503.

Now each task's document is stored in ``task_search_documents`` (kept by triggers on ``tasks``, the
existing tasks backfilled by a migration) and the search matches the stored one. What these tests
check is the plan, not a duration: no plan of the search, custom or generic, computes a document,
and every scan of the stored documents is bounded to the project; and the documents follow the tasks.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, AsyncRawCursor

from app.db import tasks as task_queries
from app.db.models import TaskStatus
from tests.factories import Client, Team, make_project, make_task, migration_up
from tests.functional.test_tasks_search import titles

QUERIES = ['"b a"', "-a", "a", "zzz", "task -b", '"a b" or zzz']
"""A phrase, a pure exclusion, a word every task holds, one none holds, and mixes of them."""
DESCRIPTION = " ".join(f"w{n} a b" for n in range(60))
"""Every ``w<n>`` is followed by ``a b``: ``"a b"`` is in every description, ``"b a"`` in none."""

STORED_DOCUMENTS = "task_search_documents"
DIFFERING_DOCUMENTS = """
select count(*) from tasks t full join task_search_documents d on d.task_id = t.id
where d.document is distinct from task_search_document(t.title, t.description)
   or d.project_id is distinct from t.project_id"""
"""Tasks whose stored document is missing or not their own, and documents of no task."""


def list_statements(team: Team, q: str) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """The list's statement of each sort and its parameters, in order: the project's first page for its
    viewer, searching ``q``."""
    filters = (None, None, None, None, None, None, None, q)
    viewer, first_due, first_priority, first_updated = team.viewer.id, date.min, "urgent", datetime.max
    return {
        "created": (task_queries.LIST_PROJECT_TASKS_BY_CREATED, (team.project, 0, *filters, viewer, 51)),
        "due": (
            task_queries.LIST_PROJECT_TASKS_BY_DUE,
            (team.project, first_due, 0, *filters, 51, 0, viewer),
        ),
        "priority": (
            task_queries.LIST_PROJECT_TASKS_BY_PRIORITY,
            (team.project, first_priority, 0, *filters, 51, viewer),
        ),
        "updated": (
            task_queries.LIST_PROJECT_TASKS_BY_UPDATED,
            (team.project, first_updated.replace(tzinfo=UTC), 0, *filters, 51, viewer),
        ),
    }


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first."""
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


def check_plan(plan: dict[str, Any], label: str) -> list[str]:
    """What is wrong with a plan of the search: a document computed, or stored documents read beyond
    the project (every scan of them must be by the project, or by one task of the project's walk)."""
    problems = []
    if "to_tsvector" in json.dumps(plan):
        problems.append(f"{label}: computes a document (to_tsvector)")
    documents = [node for node in plan_nodes(plan) if node.get("Relation Name") == STORED_DOCUMENTS]
    if not documents:
        problems.append(f"{label}: does not read the stored documents")
    for node in documents:
        conditions = " ".join(str(node.get(key, "")) for key in ("Index Cond", "Recheck Cond", "Filter"))
        if "project_id" not in conditions and "task_id = t.id" not in conditions:
            problems.append(f"{label}: reads documents of every project ({node['Node Type']})")
    return problems


async def test_no_plan_of_a_search_computes_a_document(db: AsyncConnection[Any], team: Team) -> None:
    """The statements the list runs, planned for their parameters (custom) and for any (generic: a
    prepared statement's plan after a few executions), for every kind of query and every sort."""
    for n in range(40):
        await db.execute(
            "insert into tasks (project_id, title, description, position, created_by, updated_by)"
            " values (%s, %s, %s, %s, %s, %s)",
            (team.project, f"task {n}", DESCRIPTION, n, team.owner.id, team.owner.id),
        )
    other = await make_project(db, team.owner)
    for n in range(40):
        await make_task(db, other, team.owner, title=f"task b a {n}")
    await db.execute("analyze")

    problems = []
    async with AsyncRawCursor(db) as cur:
        for sort, (statement, _) in list_statements(team, "a").items():
            await cur.execute("explain (generic_plan, format json) " + statement)
            row = await cur.fetchone()
            assert row is not None
            problems += check_plan(row[0][0]["Plan"], f"{sort} generic plan")
        for q in QUERIES:
            for sort, (statement, arguments) in list_statements(team, q).items():
                await cur.execute("explain (format json) " + statement, arguments)
                row = await cur.fetchone()
                assert row is not None
                problems += check_plan(row[0][0]["Plan"], f"{sort} {q!r}")
    assert problems == []


async def test_a_search_finds_what_the_tasks_say_now(
    client: Client, db: AsyncConnection[Any], team: Team
) -> None:
    """The stored documents follow every change of a title or a description, and go with the task."""
    tasks = f"/api/projects/{team.project}/tasks"
    created = await client.post(
        tasks, json={"title": "Launch", "description": "ship the rocket"}, headers=team.editor.headers
    )
    assert created.status_code == 201, created.text
    other = await client.post(tasks, json={"title": "Land"}, headers=team.editor.headers)
    assert other.status_code == 201, other.text
    url = f"/api/tasks/{created.json()['id']}"

    assert await titles(client, team, '"the rocket"') == ["Launch"]
    assert await titles(client, team, "-rocket") == ["Land"]
    assert await titles(client, team, '"rocket the"') == []

    changed = await client.patch(url, json={"description": "ship the probe"}, headers=team.editor.headers)
    assert changed.status_code == 200, changed.text
    assert await titles(client, team, '"the rocket"') == []
    assert await titles(client, team, '"the probe"') == ["Launch"]

    renamed = await client.patch(url, json={"title": "Takeoff"}, headers=team.editor.headers)
    assert renamed.status_code == 200, renamed.text
    assert await titles(client, team, "launch") == []
    assert await titles(client, team, "takeoff probe") == ["Takeoff"]

    moved = await client.patch(url, json={"status": TaskStatus.DONE.value}, headers=team.editor.headers)
    assert moved.status_code == 200, moved.text
    assert await titles(client, team, "takeoff probe") == ["Takeoff"]
    assert await (await db.execute(DIFFERING_DOCUMENTS)).fetchone() == (0,)

    assert (await client.delete(url, headers=team.editor.headers)).status_code == 204
    assert await titles(client, team, "takeoff") == []
    assert await (await db.execute("select count(*) from task_search_documents")).fetchone() == (1,)
    assert await (await db.execute(DIFFERING_DOCUMENTS)).fetchone() == (0,)


async def test_every_task_has_its_own_document(db: AsyncConnection[Any], team: Team) -> None:
    """Whatever statement writes a task (the previous release's during a rolling deploy too): the
    triggers store its document, and an update that changes neither title nor description keeps it."""
    first = await make_task(db, team.project, team.owner, title="alpha")
    await make_task(db, team.project, team.owner, title="beta")
    await db.execute(
        "update tasks set title = 'gamma', description = 'delta epsilon' where id = %s", (first,)
    )
    stored = "select xmin::text from task_search_documents where task_id = %s"
    before = await (await db.execute(stored, (first,))).fetchone()
    await db.execute("update tasks set status = 'done', title = title where id = %s", (first,))
    assert await (await db.execute(stored, (first,))).fetchone() == before
    assert await (await db.execute(DIFFERING_DOCUMENTS)).fetchone() == (0,)

    await db.execute("delete from projects where id = %s", (team.project,))
    assert await (await db.execute("select count(*) from task_search_documents")).fetchone() == (0,)


@pytest.mark.parametrize("missing", [0, 3, 250])
async def test_the_backfill_stores_the_documents_that_are_missing(
    database_url: str, db: AsyncConnection[Any], team: Team, missing: int
) -> None:
    """Tasks written before the triggers have no document: the backfill stores theirs (in batches,
    each committed on its own), keeps the others, and may run again."""
    for n in range(max(missing, 3)):
        await make_task(db, team.project, team.owner, title=f"task {n}")
    await db.execute(
        "delete from task_search_documents where task_id in (select id from tasks order by id limit %s)",
        (missing,),
    )
    kept = await (await db.execute("select task_id, xmin::text from task_search_documents")).fetchall()
    stored = "select count(distinct xmin::text) from task_search_documents where not task_id = any(%s)"

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(migration_up("task_search_documents_backfill"))
        conn.execute(migration_up("task_search_documents_backfill"))

    assert await (await db.execute(DIFFERING_DOCUMENTS)).fetchone() == (0,)
    still = await (
        await db.execute(
            "select task_id, xmin::text from task_search_documents where task_id = any(%s)",
            ([task_id for task_id, _ in kept],),
        )
    ).fetchall()
    assert sorted(still) == sorted(kept)
    # a transaction per batch of 100 tasks: a backfill of many holds no lock on them all until it ends
    transactions = await (await db.execute(stored, ([task_id for task_id, _ in kept],))).fetchone()
    assert transactions == ((0,) if missing == 0 else (1,) if missing < 100 else (3,))
