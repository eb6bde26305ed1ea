"""Migrations build and drop indexes on live tables without blocking them, and alter a live table
only with a bound on how long they wait for its lock.

``create index`` on a table that already holds rows takes a SHARE lock for the whole build: every
insert, update and delete of the table waits (an upgrade of 20261202001000 held ~0.8 s of locks per
100k feed rows). On a table an earlier migration created, the build must be ``concurrently``, in a
file of its own run outside a transaction (``-- migrate:up transaction:false``: dbmate sends a file
as one query, and a concurrent build cannot run in a transaction block), one build per file (a build
that failed leaves an INVALID index, which ``migrate`` drops before it runs the file again; see
20261202010500). A table created in the same file is empty, so its indexes need none of that, and
``create index ... on only`` a partitioned parent builds nothing (each partition's index is built
concurrently and attached). ``drop index`` takes ACCESS EXCLUSIVE on the table: ``concurrently``
likewise (20261202011000).

``alter table`` queues for an ACCESS EXCLUSIVE lock behind the table's longest reader, and every
query of the table queues behind it: a migration that alters a table an earlier one created sets a
non-zero ``lock_timeout`` before it (it fails, and ``migrate`` tries again, instead): ``set local``
in a transactional file, ``set`` in one run outside a transaction. What it does under that lock must be
short too: a check or foreign key added to a live table is ``not valid`` (validated by a later
statement, which reads the table under a lock that lets writes go on), a unique or primary key comes
from an index built concurrently (``using index``), and no column changes its type (most type
changes rewrite the table; a new column of another type, filled in batches, instead).

Not checked: statements inside dollar-quoted bodies (functions, ``do`` blocks: they run later, on the
tables a function is given, like the page-view partitions, created empty), and the rarer ways to
block a table (``reindex``, ``lock table``, ``create trigger``, a whole-table ``update``, ``set not
null`` without a validated check that proves it, a volatile default, a check written in a column's
definition, a constraint name in quotes), which review still catches.
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
    "20261206100000_monitoring_report_periods.sql",  # a check on a table of a few rows
}
"""Migrations that broke a rule before it was checked, already applied to databases: a migration
is never edited once released (dbmate would not run it again anyway)."""

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_CREATED = re.compile(
    r"\bcreate\s+(?:(?:temp|temporary|unlogged)\s+)?(?:table|materialized\s+view)\s+(?:if\s+not\s+exists\s+)?"
    r"([\w.]+)",
    re.I,
)
_ALTER_TABLE = re.compile(r"\balter\s+table\s+(?:if\s+exists\s+)?(?:only\s+)?([\w.]+)", re.I)
_SET_LOCK_TIMEOUT = re.compile(r"\bset\s+(?:local\s+)?lock_timeout\s*(?:=|to)\s*'?(\w+)", re.I)
_CREATE_INDEX = re.compile(
    r"\bcreate\s+(?:unique\s+)?index\s+(concurrently\s+)?(?:if\s+not\s+exists\s+)?[\w.]*\s*"
    r"on\s+(only\s+)?([\w.]+)",
    re.I,
)
_SCANNED_CONSTRAINT = re.compile(r"\badd\s+(?:constraint\s+\w+\s+)?(?:check|foreign\s+key)\b", re.I)
_NOT_VALID = re.compile(r"\bnot\s+valid\b", re.I)
_TYPE_CHANGE = re.compile(r"\balter\s+(?:column\s+)?(?!column\b)\w+\s+(?:set\s+data\s+)?type\b", re.I)
_INDEXED_CONSTRAINT = re.compile(r"\badd\s+(?:constraint\s+\w+\s+)?(?:unique|primary\s+key)\b", re.I)
_USING_INDEX = re.compile(r"\busing\s+index\b", re.I)
_DROP_INDEX = re.compile(r"\bdrop\s+index\s+(concurrently\s+)?(?:if\s+exists\s+)?([\w.]+)", re.I)


def code_of(sql: str) -> str:
    """``sql`` as PostgreSQL reads it, for the rules' patterns: comments and dollar-quoted bodies
    removed, quoted identifiers unquoted, string literals kept (a ``--`` or ``$$`` inside one is not
    taken for a comment or a body). Hand-written: the rules need a statement's words, not a parse."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        two = sql[i : i + 2]
        if two == "--":
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif two == "/*":
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif sql[i] in "'\"":
            quote, j = sql[i], i + 1
            while j < n and not (sql[j] == quote and sql[j + 1 : j + 2] != quote):
                j += 2 if sql[j : j + 2] == quote * 2 else 1
            body = sql[i + 1 : j]
            out.append(f"'{body}'" if quote == "'" else body)
            i = j + 1
        elif (tag := _DOLLAR_TAG.match(sql, i)) is not None:
            end = sql.find(tag.group(), tag.end())
            i = n if end < 0 else end + len(tag.group())
            out.append(" ")
        else:
            out.append(sql[i])
            i += 1
    return "".join(out)


def up_section(text: str) -> tuple[str, bool]:
    """The ``migrate:up`` part of a dbmate file as ``code_of`` reads it, and whether it runs outside
    a transaction."""
    up, _, _ = text.partition("-- migrate:down")
    outside_transaction = bool(re.search(r"^-- migrate:up\b.*\btransaction:false\b", up, re.M))
    return code_of(up), outside_transaction


def _bare(name: str) -> str:
    return name.lower().rsplit(".", 1)[-1]


def blocking_statements(text: str) -> list[str]:
    """What in one migration's ``up`` would block a live table's readers or writers, as sentences."""
    up, outside_transaction = up_section(text)
    created_here = {_bare(name) for name in _CREATED.findall(up)}
    problems: list[str] = []
    altered = [match for match in _ALTER_TABLE.finditer(up) if _bare(match.group(1)) not in created_here]
    if altered:
        timeouts = [m for m in _SET_LOCK_TIMEOUT.finditer(up) if m.start() < altered[0].start()]
        if not timeouts or timeouts[-1].group(1) == "0":
            names = ", ".join(sorted({_bare(match.group(1)) for match in altered}))
            problems.append(f"alters {names} without `set local lock_timeout` first")
    for match in altered:
        name, statement = _bare(match.group(1)), up[match.start() :].partition(";")[0]
        if _SCANNED_CONSTRAINT.search(statement) and not _NOT_VALID.search(statement):
            problems.append(
                f"adds a check or foreign key to {name} without `not valid` (a scan under its lock)"
            )
        if _INDEXED_CONSTRAINT.search(statement) and not _USING_INDEX.search(statement):
            problems.append(
                f"adds a unique or primary key to {name} without `using index` (a build under its lock)"
            )
        if _TYPE_CHANGE.search(statement):
            problems.append(f"changes a column's type in {name} (a rewrite under its lock)")
    concurrent_builds = 0
    for concurrently, only, table in _CREATE_INDEX.findall(up):
        name = _bare(table)
        if concurrently:
            concurrent_builds += 1
        elif name not in created_here and not only:  # `on only` a partitioned parent builds nothing
            problems.append(f"an index on {name}, created before this file, is built without concurrently")
    for concurrently, index in _DROP_INDEX.findall(up):
        if concurrently:
            concurrent_builds += 1
        else:
            problems.append(f"drops index {_bare(index)} without concurrently")
    if concurrent_builds and not outside_transaction:
        problems.append("a concurrent build or drop needs `-- migrate:up transaction:false`")
    if concurrent_builds > 1:
        problems.append(f"{concurrent_builds} concurrent builds or drops in one file (one per file)")
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
        ('create index i on "tasks" (x);', ["an index on tasks"]),
        ("select '--'; create index i on tasks (x);", ["an index on tasks"]),
        ("create index i on only page_views (x);", []),
        ("create temp table t (x int);\ncreate index i on t (x);", []),
        ("create materialized view v as select 1 as x;\ncreate index i on v (x);", []),
        ("create index concurrently t_idx on tasks (x);", ["a concurrent build or drop needs"]),
        (
            "create index concurrently a on tasks (x);\ncreate index concurrently b on tasks (y);",
            ["a concurrent build or drop needs", "2 concurrent builds or drops in one file"],
        ),
        ("drop index tasks_x_idx;", ["drops index tasks_x_idx without concurrently"]),
        ("drop index concurrently if exists tasks_x_idx;", ["a concurrent build or drop needs"]),
        (
            "create function f() returns void as $$ begin create index i on tasks (x); end $$ language sql;",
            [],
        ),
        ("create function f() returns void as $body$ select 1; $body$ language sql;", []),
        ("-- create index i on tasks (x);\nselect 1;", []),
        ("/* create index i on tasks (x); */ select 1;", []),
        ("alter table tasks add column x int;", ["alters tasks without `set local lock_timeout`"]),
        ("set local lock_timeout = '3s';\nalter table tasks add column x int;", []),
        ("alter table tasks add column x int;\nset local lock_timeout = '3s';", ["alters tasks"]),
        ("set local lock_timeout = 0;\nalter table tasks add column x int;", ["alters tasks"]),
        ("comment on table tasks is 'lock_timeout';\nalter table tasks add column x int;", ["alters tasks"]),
        ("create table t (id int);\nalter table t add column x int;", []),
        (
            "set local lock_timeout = '3s';\nalter table tasks add constraint c check (x > 0);",
            ["adds a check or foreign key to tasks without `not valid`"],
        ),
        ("set local lock_timeout = '3s';\nalter table tasks add constraint c check (x > 0) not valid;", []),
        (
            "set local lock_timeout = '3s';\nalter table tasks add foreign key (a) references users (id);",
            ["adds a check or foreign key to tasks"],
        ),
        (
            "set local lock_timeout = '3s';\nalter table tasks alter column x type bigint;",
            ["changes a column's type in tasks"],
        ),
        (
            "set local lock_timeout = '3s';\nalter table tasks alter x set data type text;",
            ["changes a column's"],
        ),
        ("create table t (x int);\nalter table t add check (x > 0), alter column x type bigint;", []),
        ("set local lock_timeout = '3s';\nalter table tasks alter column type set default 'bug';", []),
        ("set local lock_timeout = '3s';\nalter table tasks alter column type drop not null;", []),
        (
            "set local lock_timeout = '3s';\nalter table tasks alter column type type text;",
            ["changes a column's type in tasks"],
        ),
        (
            "set local lock_timeout = '3s';\nalter table tasks add constraint u unique (a, b);",
            ["adds a unique or primary key to tasks without `using index`"],
        ),
        ("set local lock_timeout = '3s';\nalter table tasks add constraint u unique using index u_idx;", []),
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


def test_an_alter_outside_a_transaction_needs_its_lock_timeout_too() -> None:
    """Each statement of such a file is its own transaction: `set lock_timeout` (a session's) bounds
    the alter's wait there."""
    alter = "alter table tasks add column x int;\n"
    assert blocking_statements(f"-- migrate:up transaction:false\n{alter}") != []
    assert blocking_statements(f"-- migrate:up transaction:false\nset lock_timeout = '3s';\n{alter}") == []
