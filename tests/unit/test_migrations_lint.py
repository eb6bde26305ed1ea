"""Migrations build indexes on live tables without blocking their writers, and alter a live table
only with a bound on how long they wait for its lock.

``create index`` on a table that already holds rows takes a SHARE lock for the whole build: every
insert, update and delete of the table waits (an upgrade of 20261202001000 held ~0.8 s of locks per
100k feed rows). On a table an earlier migration created, the build must be ``concurrently``, in a
file of its own run outside a transaction (``-- migrate:up transaction:false``: dbmate sends a file
as one query, and a concurrent build cannot run in a transaction block), one build per file (a build
that failed leaves an INVALID index, which ``migrate`` drops before it runs the file again; see
20261202010500). A table created in the same file is empty, so its indexes need none of that.

``alter table`` queues for an ACCESS EXCLUSIVE lock behind the table's longest reader, and every
query of the table queues behind it: a transactional migration that alters a table an earlier one
created sets ``lock_timeout`` first (it fails, and ``migrate`` tries again, instead).

Statements inside dollar-quoted bodies (functions, ``do`` blocks) are not checked: they run later,
on the tables a function is given (the page-view partitions, created empty).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

APPLIED_BEFORE_THE_RULE = {
    "20261122000600_analytics_rollups.sql",
    "20261130100000_activity_feed.sql",
    "20261130100100_activity_feed_writes.sql",
    "20261130130000_task_assignee_is_member.sql",
    "20261201200000_pageviews_ingest.sql",
    "20261201300000_abuse_resistance.sql",
    "20261201700000_monitoring_ended_ignores.sql",
    "20261201800000_monitoring_retention.sql",
    "20261202000500_projects_creator_index.sql",
    "20261202001000_activity_actor_scopes.sql",
}
"""Migrations that broke a rule before it was checked, already applied to databases: a migration
is never edited once released (dbmate would not run it again anyway)."""

_DOLLAR_QUOTED = re.compile(r"\$([A-Za-z_]*)\$.*?\$\1\$", re.DOTALL)
_COMMENT = re.compile(r"--[^\n]*")
_CREATE_TABLE = re.compile(r"\bcreate\s+(?:unlogged\s+)?table\s+(?:if\s+not\s+exists\s+)?([\w.]+)", re.I)
_ALTER_TABLE = re.compile(r"\balter\s+table\s+(?:if\s+exists\s+)?(?:only\s+)?([\w.]+)", re.I)
_CREATE_INDEX = re.compile(
    r"\bcreate\s+(?:unique\s+)?index\s+(concurrently\s+)?(?:if\s+not\s+exists\s+)?[\w.]*\s*"
    r"on\s+(?:only\s+)?([\w.]+)",
    re.I,
)


def up_section(text: str) -> tuple[str, bool]:
    """The ``migrate:up`` part of a dbmate file without comments or dollar-quoted bodies, and whether
    it runs outside a transaction."""
    up, _, _ = text.partition("-- migrate:down")
    outside_transaction = bool(re.search(r"^-- migrate:up\b.*\btransaction:false\b", up, re.M))
    return _COMMENT.sub("", _DOLLAR_QUOTED.sub("", up)), outside_transaction


def _bare(name: str) -> str:
    return name.lower().rsplit(".", 1)[-1]


def blocking_statements(text: str) -> list[str]:
    """What in one migration's ``up`` would block a live table's readers or writers, as sentences."""
    up, outside_transaction = up_section(text)
    created_here = {_bare(name) for name in _CREATE_TABLE.findall(up)}
    problems: list[str] = []
    altered = sorted({_bare(name) for name in _ALTER_TABLE.findall(up)} - created_here)
    if altered and not outside_transaction and "lock_timeout" not in up.lower():
        problems.append(f"alters {', '.join(altered)} without `set local lock_timeout` first")
    concurrent_builds = 0
    for concurrently, table in _CREATE_INDEX.findall(up):
        name = _bare(table)
        if concurrently:
            concurrent_builds += 1
        elif name not in created_here:
            problems.append(f"an index on {name}, created before this file, is built without concurrently")
    if concurrent_builds and not outside_transaction:
        problems.append("a concurrent build needs `-- migrate:up transaction:false`")
    if concurrent_builds > 1:
        problems.append(f"{concurrent_builds} concurrent builds in one file (one per file)")
    return problems


@pytest.mark.parametrize("path", sorted(MIGRATIONS.glob("*.sql")), ids=lambda path: path.name)
def test_a_migration_never_blocks_a_live_table(path: Path) -> None:
    problems = blocking_statements(path.read_text())
    if path.name in APPLIED_BEFORE_THE_RULE:
        assert problems, f"{path.name} keeps the rule now: take it off APPLIED_BEFORE_THE_RULE"
    else:
        assert problems == [], f"{path.name}: {'; '.join(problems)}"


@pytest.mark.parametrize(
    ("up", "problems"),
    [
        ("create table t (id int);\ncreate index t_idx on t (id);", []),
        ("create index tasks_x_idx on tasks (x);", ["an index on tasks, created before this file"]),
        ("create unique index if not exists u on public.users (email);", ["an index on users"]),
        ("create index concurrently t_idx on tasks (x);", ["a concurrent build needs"]),
        (
            "create index concurrently a on tasks (x);\ncreate index concurrently b on tasks (y);",
            ["a concurrent build needs", "2 concurrent builds in one file"],
        ),
        (
            "create function f() returns void as $$ begin create index i on tasks (x); end $$ language sql;",
            [],
        ),
        ("-- create index i on tasks (x);\nselect 1;", []),
        ("alter table tasks add column x int;", ["alters tasks without `set local lock_timeout`"]),
        ("set local lock_timeout = '3s';\nalter table tasks add column x int;", []),
        ("create table t (id int);\nalter table t add column x int;", []),
    ],
)
def test_the_rule_reads_each_kind_of_statement(up: str, problems: list[str]) -> None:
    found = blocking_statements(f"-- migrate:up\n{up}\n\n-- migrate:down\ncreate index d on tasks (x);\n")
    assert len(found) == len(problems), found
    for sentence, start in zip(found, problems, strict=True):
        assert sentence.startswith(start), sentence


def test_a_concurrent_build_outside_a_transaction_passes() -> None:
    text = "-- migrate:up transaction:false\ncreate index concurrently if not exists i on tasks (x);\n"
    assert blocking_statements(text) == []
