"""What a project's deletion request costs in PostgreSQL as its assigned tasks grow.

    uv run python -m benchmarks.project_deletion                    # 1,000 / 10,000 / 100,000 tasks
    uv run python -m benchmarks.project_deletion --tasks 10000 --rounds 5

For each size, one project with that many tasks, all assigned to one of its two members, and the
statements of the deletion's transaction (``ProjectService.delete``: ``MarkProjectDeleting``,
``RemoveAllMembers``, ``RemoveAllInvitations``, through ``app.db.projects``), timed and rolled back,
best of ``--rounds``. The table also counts the project's tasks still assigned inside that
transaction: the deletion must touch none (their assignees, ``project_assignees``, stay until the
purge). When the assignee was a foreign key to the membership (before 540bb84), ``RemoveAllMembers``
unassigned every one of them. On the 2-core machine of 2026-12-05, best of three, before → after:
1,000 tasks 54 → 2.5 ms, 10,000 tasks 351 → 2.6 ms, 100,000 tasks 4,955 → 2.0 ms.

Data under ``--data-dir`` (default ``.data/bench-deletion``); its tables are emptied first.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import psycopg

from app.db import projects as queries
from benchmarks.harness.provision import migrated_embedded

FILL = """
insert into tasks (project_id, title, position, created_by, updated_by, assignee_id)
select %(project)s, 'task ' || n, n, %(owner)s, %(owner)s, %(member)s
from generate_series(1, %(tasks)s) n
"""


def say(message: str) -> None:
    print(f"project-deletion: {message}", flush=True)


def project_with_tasks(conn: psycopg.Connection, tasks: int) -> int:
    conn.execute("truncate users, projects cascade")
    owner, member = (
        row[0]
        for row in conn.execute(
            "insert into users (email, display_name, password_hash) select 'user-' || n ||"
            " '@deletion.bench.example', 'bench', 'x' from generate_series(1, 2) n returning id"
        ).fetchall()
    )
    found = conn.execute("insert into projects (name, owner_id) values ('bench', %s) returning id", (owner,))
    project = found.fetchone()
    assert project is not None
    conn.execute(
        "insert into project_members (project_id, user_id, role)"
        " values (%s, %s, 'owner'), (%s, %s, 'editor')",
        (project[0], owner, project[0], member),
    )
    conn.execute(FILL, {"project": project[0], "owner": owner, "member": member, "tasks": tasks})
    conn.execute("vacuum analyze")
    return int(project[0])


async def measure(database_url: str, project: int, rounds: int) -> tuple[float, int]:
    """The best time of the deletion's statements, and the tasks still assigned after them."""
    best, assigned = float("inf"), -1
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for _ in range(rounds):
            async with conn.transaction(force_rollback=True):
                started = time.perf_counter()
                await queries.mark_project_deleting(conn, id=project)
                await queries.remove_all_members(conn, project_id=project)
                await queries.remove_all_invitations(conn, project_id=project)
                best = min(best, time.perf_counter() - started)
                row = await (
                    await conn.execute(
                        "select count(*) from tasks where project_id = %s and assignee_id is not null",
                        (project,),
                    )
                ).fetchone()
                assert row is not None
                assigned = int(row[0])
    return best, assigned


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".data/bench-deletion"))
    parser.add_argument("--tasks", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with migrated_embedded(options.data_dir) as settings:
        assert settings.database_url
        lines = [
            "| assigned tasks | deletion's statements, ms (best) | tasks still assigned in it |",
            "|---:|---:|---:|",
        ]
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            for tasks in options.tasks:
                say(f"{tasks:,} tasks ...")
                project = project_with_tasks(conn, tasks)
                best, assigned = asyncio.run(measure(settings.database_url, project, options.rounds))
                lines.append(f"| {tasks:,} | {best * 1000:.1f} | {assigned:,} |")
            conn.execute("truncate users, projects cascade")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
