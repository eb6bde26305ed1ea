"""Every foreign key of the schema has an index leading with its columns, in their order, or a stated
reason not to.

A deletion (or key change) of a referenced row makes PostgreSQL find the rows pointing at it (to
refuse, cascade or set null): without such an index, one scan of the referencing table per row. And a
key is usually what a query filters or joins by: monitoring_alerts.group_id had no index, so a
group's alerts were found by reading every alert newest first (``test_core_generic_plans.py``).
``test_core_chunked_deletes.py`` holds the keys into purged tables to the same; this holds them all.

An index counts when it is valid, its leading key columns are the foreign key's in the same order
(an index on (b, a) does not serve ``a = $1 and b = $2`` as a range; INCLUDE columns are no key), and
it is whole or partial on the key's columns being not null only (what PostgreSQL's lookup
``key = $1`` implies; an index of the live rows only does not find the others)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

QUERIES = Path(__file__).resolve().parents[2] / "sql" / "queries"

NEVER_DELETED = ("users", "products", "monitoring_groups", "monitoring_releases")
"""Tables no statement deletes from (accounts are deactivated, products withdrawn from sale, error
groups and releases kept): checked below against ``sql/queries``, where all of our SQL is."""

ALLOWED: dict[str, str] = {
    # "table (columns)": why no index leads with them (true, and checked where it can be)
    "comments (author_id)": "users are never deleted, and comments are read by task, never by author",
    "monitoring_cron_monitors (group_id)": "one row per cron job the code schedules: a few dozen at most",
    "monitoring_group_releases (release_id)": (
        "releases are never deleted, and a group's releases are read by group (the primary key"
        " (group_id, release_id)), never a release's groups"
    ),
    "monitoring_groups (resolved_after_release_id)": "releases are never deleted; written, never a filter",
    "monitoring_groups (resolved_in_release_id)": "releases are never deleted; written, never a filter",
    "monitoring_rule_fires (group_id)": (
        "groups are never deleted, and every query names the rule with the group (the primary key"
        " (rule, group_id)); the purge goes by last_fired_at"
    ),
    "order_events (actor_id)": "users are never deleted, and an order's events are read by order only",
    "order_items (product_id)": (
        "products are never deleted, and items are read by order (the primary key (order_id,"
        " product_id)), never a product's items"
    ),
    "payment_events (refunded_by)": "users are never deleted; only written, never a filter",
    "project_invitations (invited_by)": (
        "users are never deleted, and the sender's invitations are withdrawn within one project"
        " (project_id first, at most PROJECT_INVITATIONS_MAX waiting)"
    ),
    "refresh_tokens (user_id)": (
        "users are never deleted, and every query by user reads the unspent tokens only, which"
        " refresh_tokens_unspent_user_idx (user_id) holds"
    ),
    "stock_adjustments (actor_id)": "users are never deleted; only written, never a filter",
    "tasks (created_by)": "users are never deleted; only written and shown, never a filter",
    "tasks (updated_by)": "users are never deleted; only written and shown, never a filter",
}


async def unindexed_foreign_keys(db: AsyncConnection[Any]) -> list[tuple[str, str]]:
    """Each foreign key without an index serving it: ("table (columns)", the referenced table)."""
    rows = await (
        await db.execute(
            "select c.conrelid::regclass::text, c.confrelid::regclass::text,"
            "  array(select a.attname from unnest(c.conkey) with ordinality k(attnum, n)"
            "        join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum order by k.n),"
            "  array(select coalesce(pg_get_expr(i.indpred, i.indrelid), '') from pg_index i"
            "        where i.indrelid = c.conrelid and i.indisvalid"
            "          and cardinality(c.conkey) <= i.indnkeyatts"
            "          and (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey)"
            " from pg_constraint c where c.contype = 'f' order by 1, 3"
        )
    ).fetchall()
    unindexed = []
    for table, referenced, columns, predicates in rows:
        not_null = {f"({column} IS NOT NULL)" for column in columns}
        if not any(serves(predicate, not_null) for predicate in predicates):
            unindexed.append((f"{table} ({', '.join(columns)})", referenced))
    return unindexed


def serves(predicate: str, not_null: set[str]) -> bool:
    """Whether an index of this predicate ('' for none) holds every row a lookup by the key finds."""
    if not predicate:
        return True
    if " AND " in predicate:
        predicate = predicate.removeprefix("(").removesuffix(")")
    return all(term in not_null for term in predicate.split(" AND "))


async def test_every_foreign_key_has_an_index_leading_with_its_columns(db: AsyncConnection[Any]) -> None:
    unindexed = await unindexed_foreign_keys(db)
    missing = [f"{key} -> {referenced}" for key, referenced in unindexed if key not in ALLOWED]
    assert missing == [], "foreign keys without an index leading with their columns, nor a reason in ALLOWED"


async def test_every_allowed_key_is_still_unindexed_and_references_what_its_reason_says(
    db: AsyncConnection[Any],
) -> None:
    """An entry of ALLOWED whose key gained an index goes; a reason that the referenced rows are never
    deleted holds only while no statement deletes them."""
    unindexed = dict(await unindexed_foreign_keys(db))
    assert sorted(set(ALLOWED) - set(unindexed)) == []
    deletion = re.compile(r"\b(?:delete\s+from|truncate(?:\s+table)?)\s+(?:only\s+)?(\w+)", re.I)
    deleting = {table for path in QUERIES.glob("*.sql") for table in deletion.findall(path.read_text())}
    assert "monitoring_alerts" in deleting, deleting  # the pattern still finds deletions
    assert sorted(deleting & set(NEVER_DELETED)) == []
    for key, reason in ALLOWED.items():
        named = re.match(r"(\w+) are never deleted", reason)
        if named:
            assert unindexed[key] in NEVER_DELETED and unindexed[key].endswith(named[1]), (key, reason)
