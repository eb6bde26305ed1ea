"""Chunked deletes (the purges and retentions) name their rows by ctid, so a chunk reads about its own
rows whatever the statistics say (CONVENTIONS.md, "A chunked delete").

``delete ... where (key) in (select key ... order by ... limit n) and <condition>`` left the join to
the planner's estimates. Right after a backlog arrived, statistics that had not seen it estimate one
row on each side, and the plan read the whole backlog once per row of the chunk: in CI a 10,000-row
chunk of 60,000 rows past the retention outlasted the 15 s statement timeout (282 s measured here), so
the purge failed every time it ran. Rows read are counted with EXPLAIN ANALYZE (rolled back), never
timed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection, AsyncRawCursor

from app.db import monitoring, pageviews
from tests.factories import plan_rows_read

CHUNK = 1_000
BACKLOG = 20_000
"""Over a hundred pages of each table: a sequential scan costs more than fetching the chunk's rows by
ctid, whatever the statistics (a table of a few dozen pages is read whole, with each row's ctid looked
up in the chunk: bounded by the small table)."""
QUERIES = Path(__file__).resolve().parents[2] / "sql" / "queries"

MONITORING_ARGUMENTS = "select now() - interval '30 days', $1::integer"
"""The retention's cut (the default 30 days) and the chunk."""

BACKLOGS: dict[str, tuple[str, str, str]] = {
    # table: (the chunk's statement, the backlog's insert of $1 rows, its arguments from $1 = CHUNK)
    "monitoring_route_latency": (
        monitoring.PURGE_LATENCY_BEFORE,
        "insert into monitoring_route_latency (route, method, minute, bucket, requests)"
        " select '/chunked-' || (g % 20), 'GET',"
        " date_trunc('minute', now() - interval '90 days') + (g / 20) * interval '1 minute', 1, 1"
        " from generate_series(1, $1) g",
        MONITORING_ARGUMENTS,
    ),
    "monitoring_cron_checkins": (
        monitoring.PURGE_CHECKINS_BEFORE,
        "insert into monitoring_cron_checkins (name, status, at)"
        " select 'chunked', 'ok', now() - interval '90 days' + g * interval '1 second'"
        " from generate_series(1, $1) g",
        MONITORING_ARGUMENTS,
    ),
    "monitoring_group_releases": (  # one group seen in $1 releases, long ago
        monitoring.PURGE_GROUP_RELEASES_BEFORE,
        "with g as (select nextval(pg_get_serial_sequence('monitoring_groups', 'id')) as id),"
        " groups as (insert into monitoring_groups"
        "  (id, root_id, kind, title, status_changed_at, first_seen_at, last_seen_at)"
        "  select id, id, 'error', 'chunked', now(), now(), now() from g returning id),"
        " releases as (insert into monitoring_releases (name)"
        "  select 'chunked-' || r from generate_series(1, $1) r returning id)"
        " insert into monitoring_group_releases (group_id, release_id, first_seen_at, last_seen_at, events)"
        " select groups.id, releases.id, now() - interval '90 days' + releases.id * interval '1 second',"
        " now() - interval '90 days' + releases.id * interval '1 second', 1 from groups, releases",
        MONITORING_ARGUMENTS,
    ),
    "page_views": (  # a deleted site's views of today (ids of sites are positive: -1 is nobody's)
        pageviews.PURGE_SITE_PAGE_VIEWS,
        "insert into page_views (site_id, ts, visitor_id, path, device, browser, os)"
        " select -1, date_trunc('day', now()) + g * interval '1 millisecond', 1, '/', 'desktop', 'x', 'y'"
        " from generate_series(1, $1) g",
        # site_id, from_ts, to_ts: the chunk's range (SitePageViewChunk), the views of CHUNK milliseconds
        "select -1::bigint, date_trunc('day', now()),"
        " date_trunc('day', now()) + ($1::integer + 1) * interval '1 millisecond'",
    ),
}


def chunked_deletes() -> list[tuple[str, str]]:
    """Every query of ``sql/queries`` that deletes a chunk (a ``limit`` given as a parameter): (its
    name, its text)."""
    found = []
    for path in sorted(QUERIES.glob("*.sql")):
        for name, body in re.findall(r"-- name: (\w+) :\w+\n(.*?)(?=\n-- name: |\Z)", path.read_text(), re.S):
            statement = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
            if re.search(r"\bdelete from\b", statement) and re.search(r"\blimit @\w+", statement):
                found.append((name, statement))
    return found


def test_every_chunked_delete_names_its_rows_by_ctid_or_id_array() -> None:
    """The chunk is chosen in a subquery and the DELETE finds it by ``ctid = any(array(...))`` (or a
    single-column key's ``id = any(array(...))``): a TID (or primary-key) scan, never a join the
    planner sizes from statistics. No ``(key) in (select ... limit ...)`` is left."""
    deletes = chunked_deletes()
    assert len(deletes) >= 20, [name for name, _ in deletes]  # the parser still finds them
    wrong = [
        name
        for name, statement in deletes
        if not re.search(r"\b(\w+\.)?(ctid|\w*id) = any\(array\(", statement)
        or re.search(r"\bin \(\s*select", statement)
    ]
    assert wrong == []


@pytest.mark.parametrize("table", sorted(BACKLOGS))
async def test_a_chunk_of_a_backlog_the_statistics_never_saw_reads_about_its_rows(
    db: AsyncConnection[Any], table: str
) -> None:
    """Statistics taken before a backlog of 20,000 rows past the retention arrived (they estimate none
    of it): the DELETE of one chunk of 1,000 reads its 1,000 rows, and the whole chunk (its choice
    included) at most a few times the backlog. Was: 20,000 x 1,000 (a nested loop over the whole
    backlog for each row of the chunk), or 20,000 through an index on the time, each compared with
    the whole chunk."""
    statement, fill, arguments = BACKLOGS[table]
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    await db.execute(f"analyze {table}")  # the suite's rows only: none of the backlog
    async with db.transaction(force_rollback=True), AsyncRawCursor(db) as cur:
        await cur.execute(fill, (BACKLOG,))
        await cur.execute(arguments, (CHUNK,))
        values = await cur.fetchone()
        assert values is not None
        await cur.execute("explain (analyze, format json) " + statement, values)
        row = await cur.fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    chosen, deleted = chooser_and_target_reads(plan, table)
    assert chosen + deleted <= 3 * BACKLOG, (
        f"{table}: one chunk of {CHUNK} read {chosen + deleted} rows: {plan}"
    )
    assert CHUNK <= deleted <= CHUNK + 10, f"{table}: the DELETE itself read {deleted} rows: {plan}"


def chooser_and_target_reads(node: dict[str, Any], table: str, under_limit: bool = False) -> tuple[int, int]:
    """Rows of ``table`` (or of its daily partitions) read by the plan: those the chunk's chooser read
    (below a ``Limit``), and those the DELETE read to find its rows."""
    under_limit = under_limit or node["Node Type"] == "Limit"
    chosen = deleted = 0
    if (
        re.fullmatch(rf"{table}(_\d{{8}})?", node.get("Relation Name", ""))
        and node["Node Type"] != "ModifyTable"
    ):
        if under_limit:
            chosen += plan_rows_read(node)
        else:
            deleted += plan_rows_read(node)
    for child in node.get("Plans", ()):
        more_chosen, more_deleted = chooser_and_target_reads(child, table, under_limit)
        chosen, deleted = chosen + more_chosen, deleted + more_deleted
    return chosen, deleted


async def test_every_foreign_key_into_a_purged_table_has_an_index(db: AsyncConnection[Any]) -> None:
    """A row a chunked delete removes makes each foreign key referencing its table find the rows
    pointing at it (to cascade or set null): without an index leading with the key's columns, one
    scan of the referencing table per deleted row. monitoring_budget_periods.digest_id had none:
    575 ms of an 824 ms chunk of alerts with 720 periods."""
    purged = sorted(
        {
            match
            for _, statement in chunked_deletes()
            for match in re.findall(r"\bdelete from (\w+)", statement)
        }
    )
    assert "monitoring_alerts" in purged, purged
    rows = await (
        await db.execute(
            "select c.conrelid::regclass::text, c.conname from pg_constraint c"
            " where c.contype = 'f' and c.confrelid::regclass::text = any(%s)"
            " and not exists (select 1 from pg_index i where i.indrelid = c.conrelid"
            "   and (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey)",
            (purged,),
        )
    ).fetchall()
    assert rows == [], "foreign keys into purged tables without an index"
