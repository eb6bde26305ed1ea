"""The snapshot cron's due query reads one tracked row per login, whatever the plan.

Review: ``ListGithubLoginsDue`` grouped every row of ``github_tracked`` (one per user and login) to
find the distinct logins: with 2,000 logins tracked by 25 users each, every hourly run read all
50,000 rows (a Seq Scan) though not one login was due. It now finds the logins by a skip scan of
``github_tracked_login_idx`` (a recursive CTE, one index entry per login). Checked, as in
``test_core_generic_plans``, by the rows the statement reads under a custom and a generic plan,
not by a duration.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from app.db import github as github_queries
from tests.functional.test_core_generic_plans import make_crowd, rows_read, run_custom, run_generic

LOGINS = 2_000
TRACKERS = 25
"""Users tracking each login: 50,000 rows of ``github_tracked``."""
DAY = date(2026, 3, 1)
REFUSED_SINCE = datetime(2026, 3, 1, tzinfo=UTC)  # nothing refused lately
HISTORY_DAYS = 10


async def track_crowd(db: AsyncConnection[Any]) -> None:
    """``LOGINS`` logins, each tracked by ``TRACKERS`` users, all snapshotted and tried on ``DAY``, with
    ``HISTORY_DAYS`` days of snapshots before it (a day's are found among them, not a whole table)."""
    users = await make_crowd(db, LOGINS)
    await db.execute(
        "insert into github_tracked (user_id, login)"
        " select u, 'login-' || ((u * 7 + k) %% %s) from unnest(%s::bigint[]) u, generate_series(1, %s) k",
        (LOGINS, users, TRACKERS),
    )
    await db.execute(
        "insert into github_snapshots (login, taken_on, taken_at, followers, following, public_repos,"
        " repos_counted, total_stars, total_forks, language_bytes)"
        " select distinct login, %s::date - d, %s, 0, 0, 0, 0, 0, 0, '{}'::jsonb"
        " from github_tracked, generate_series(0, %s) d",
        (DAY, datetime(2026, 3, 1, 5, tzinfo=UTC), HISTORY_DAYS),
    )
    await db.execute(
        "insert into github_snapshot_attempts (login, attempted_at)"
        " select distinct login, %s from github_tracked",
        (datetime(2026, 3, 1, 5, tzinfo=UTC),),
    )
    counted = await (
        await db.execute("select count(*), count(distinct login) from github_tracked")
    ).fetchone()
    assert counted == (LOGINS * TRACKERS, LOGINS)
    await db.execute("vacuum analyze github_tracked, github_snapshots, github_snapshot_attempts")


async def test_a_run_with_nothing_due_reads_one_tracked_row_per_login(db: AsyncConnection[Any]) -> None:
    await track_crowd(db)
    statement = github_queries.LIST_GITHUB_LOGINS_DUE

    for label, run in (("custom", run_custom), ("generic", run_generic)):
        measured = await run(db, statement, (50, DAY, REFUSED_SINCE))  # (batch_size, taken_on, refused_since)
        assert measured["Actual Rows"] == 0, label
        read = rows_read(measured, "github_tracked")
        assert read <= LOGINS + 1, f"{label} plan read {read} tracked rows for {LOGINS} logins"
        assert rows_read(measured, "github_snapshots") <= LOGINS, label
        assert rows_read(measured, "github_snapshot_attempts") <= LOGINS, label


async def test_the_due_logins_come_never_tried_first_then_longest_untried(db: AsyncConnection[Any]) -> None:
    await track_crowd(db)
    await db.execute(
        "delete from github_snapshots where taken_on = %s and login = any(%s)",
        (DAY, ["login-5", "login-17", "login-900", "login-42"]),
    )
    await db.execute("delete from github_snapshot_attempts where login = 'login-900'")
    tried = datetime(2026, 3, 1, 5, tzinfo=UTC)
    for login, hours in (("login-17", 3), ("login-42", 2)):
        await db.execute(
            "update github_snapshot_attempts set attempted_at = %s where login = %s",
            (tried - timedelta(hours=hours), login),
        )

    due = await github_queries.list_github_logins_due(
        db, taken_on=DAY, refused_since=REFUSED_SINCE, batch_size=3
    )
    tomorrow = await github_queries.list_github_logins_due(
        db, taken_on=DAY + timedelta(days=1), refused_since=REFUSED_SINCE, batch_size=10
    )

    assert due == ["login-900", "login-17", "login-42"]
    assert tomorrow[:3] == ["login-900", "login-17", "login-42"]
    assert len(tomorrow) == 10 and len(set(tomorrow)) == 10
    for label, run in (("custom", run_custom), ("generic", run_generic)):
        measured = await run(db, github_queries.LIST_GITHUB_LOGINS_DUE, (3, DAY, REFUSED_SINCE))
        assert measured["Actual Rows"] == 3, label
        # and one per due login: whether an active account tracks it
        assert rows_read(measured, "github_tracked") <= LOGINS + 1 + 4, label
        assert rows_read(measured, "github_snapshots") <= LOGINS, label


async def test_a_login_only_deactivated_accounts_track_is_not_due(db: AsyncConnection[Any]) -> None:
    """A deactivated account's tracked logins were fetched every day, forever (users are never
    deleted): its list is kept for a reactivation, but costs no fetch meanwhile."""
    users = await make_crowd(db, 2)
    await db.execute(
        "insert into github_tracked (user_id, login) values (%s, 'shared'), (%s, 'shared'), (%s, 'alone')",
        (users[0], users[1], users[1]),
    )
    await db.execute("update users set is_active = false where id = %s", (users[1],))

    assert await github_queries.list_github_logins_due(
        db, taken_on=DAY, refused_since=REFUSED_SINCE, batch_size=10
    ) == ["shared"]
    await db.execute("update users set is_active = true where id = %s", (users[1],))
    assert await github_queries.list_github_logins_due(
        db, taken_on=DAY, refused_since=REFUSED_SINCE, batch_size=10
    ) == ["alone", "shared"]
