"""The GitHub domain's retention (``GithubService.purge_expired``) on a fake clock: what it deletes,
what it keeps (also against a tracking or a fetch committed while it runs), in bounded chunks."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import msgspec
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.db import github as queries
from app.db.models import register_types
from app.domains.github.analysis import DEFAULT_FILTERS
from app.domains.github.jobs import purge_github_retention, snapshot_github_profiles
from app.domains.github.schemas import GithubProfileOut
from app.domains.github.services import GithubService
from tests.factories import clocked_github, create_user, sessions_waiting_for_a_lock, wait_until
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo

ACCOUNT = 1  # a cold lookup's account (only its share of the quota is kept, in Valkey)


def _configured(settings: Settings, fake_server: FakeGitHubServer) -> Settings:
    return msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_token="retention-test-token",
        github_retry_wait_s=0.01,
        github_profile_retention_days=30,
        github_snapshot_retention_days=400,
        github_snapshot_hour_utc=4,
    )


def _add_users(fake: FakeGitHub, *logins: str) -> None:
    for login in logins:
        fake.add_user(login, [FakeRepo(name=f"{login}-repo", stars=3, language="Go", languages={"Go": 10})])


async def _stored_logins(db: AsyncConnection[Any]) -> set[str]:
    rows = await (await db.execute("select login from github_profiles")).fetchall()
    return {row[0] for row in rows}


async def _look_up(github: GithubService, login: str) -> GithubProfileOut:
    return await github.profile(login, DEFAULT_FILTERS, top_repos=1, top_languages=1, user_id=ACCOUNT)


def _profile_requests(fake: FakeGitHub, login: str) -> int:
    return sum(1 for r in fake.recorded(f"/users/{login}") if r.path == f"/users/{login}")


async def _waiting_on_row_locks(db: AsyncConnection[Any]) -> bool:
    """Whether a session waits for a row another transaction holds (not an advisory lock)."""
    return await sessions_waiting_for_a_lock(db, "transactionid", "tuple") > 0


async def test_old_profiles_nobody_tracks_are_deleted_tracked_and_recent_ones_kept(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    _add_users(fake, "old-lookup", "recent-lookup", "old-tracked", "untracked-later")
    owner = await create_user(db)
    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        for login in ("old-lookup", "untracked-later"):
            await _look_up(github, login)
        await github.track(owner.id, "old-tracked")
        await github.track(owner.id, "untracked-later")
        clock.now += timedelta(days=20)
        await _look_up(github, "recent-lookup")
        await github.untrack(owner.id, "untracked-later")
        clock.now += timedelta(days=10, seconds=1)  # 30 days and a second after the first lookups

        first = await github.purge_expired()
        after_first = await _stored_logins(db)
        second = await purge_github_retention(ctx)  # the cron's job: nothing more to delete

    assert after_first == {"old-tracked", "recent-lookup"}
    assert first.profiles == 2
    assert second == 0
    assert await _stored_logins(db) == {"old-tracked", "recent-lookup"}


async def test_a_lookup_after_the_purge_fetches_the_profile_from_github_again(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    _add_users(fake, "looked-up-once")
    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        first = await _look_up(github, "looked-up-once")
        clock.now += timedelta(days=31)
        purged = await github.purge_expired()
        fake.users["looked-up-once"].followers = 42  # changed on GitHub meanwhile
        again = await _look_up(github, "looked-up-once")

    assert purged.profiles == 1
    assert first.source == "live"
    assert again.source == "live" and not again.stale  # a cold lookup, not a stale answer
    assert again.fetched_at == clock.now and again.profile.followers == 42
    assert _profile_requests(fake, "looked-up-once") == 2
    assert await _stored_logins(db) == {"looked-up-once"}


async def test_a_login_tracked_while_the_purge_runs_keeps_its_profile(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    database_url: str,
    valkey: Any,
    clock: FakeClock,
) -> None:
    """The tracking has read the stored profile and is inside its transaction (held there by another
    transaction holding the user's tracking lock) when the purge's chunk reaches the profile: the purge
    waits for the tracking, then sees it and keeps the profile (no second request to GitHub)."""
    _add_users(fake, "tracked-meanwhile")
    owner = await create_user(db)
    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        await _look_up(github, "tracked-meanwhile")
        clock.now += timedelta(days=31)
        async with await AsyncConnection.connect(database_url) as holder:
            await holder.execute(
                "select pg_advisory_xact_lock(hashtextextended(concat('github_tracked:', %s::bigint), 0))",
                (owner.id,),
            )
            tracking = asyncio.ensure_future(github.track(owner.id, "tracked-meanwhile"))
            purging: asyncio.Future[Any] | None = None
            try:

                async def tracking_waits() -> bool:
                    return tracking.done() or await sessions_waiting_for_a_lock(db, "advisory") > 0

                await wait_until(tracking_waits, 20, "the tracking waits for the user's tracking lock")
                purging = asyncio.ensure_future(github.purge_expired())

                async def purge_waits_or_ended() -> bool:
                    return purging is not None and (purging.done() or await _waiting_on_row_locks(db))

                await wait_until(purge_waits_or_ended, 20, "the purge waits for the tracking (or ends)")
            finally:
                await holder.commit()
            tracked, new = await tracking
            purged = await purging

    assert new and tracked.username == "tracked-meanwhile"
    assert purged.profiles == 0
    assert await _stored_logins(db) == {"tracked-meanwhile"}
    assert _profile_requests(fake, "tracked-meanwhile") == 1  # kept, not fetched again


async def test_a_tracking_that_finds_its_profile_purged_meanwhile_looks_the_login_up_again(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    database_url: str,
    valkey: Any,
    clock: FakeClock,
) -> None:
    """The purge's chunk has the profile locked (and deleted, uncommitted) when the tracking, which
    read the profile before, locks it: the tracking waits, finds it gone and fetches it again."""
    _add_users(fake, "purged-meanwhile")
    owner = await create_user(db)
    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        await _look_up(github, "purged-meanwhile")
        clock.now += timedelta(days=31)
        async with await AsyncConnection.connect(database_url) as purger:
            await register_types(purger)
            logins = await queries.lock_expired_github_profiles(
                purger, fetched_before=clock.now - timedelta(days=30), chunk_size=10
            )
            deleted = await queries.delete_expired_github_profiles(
                purger, logins=logins, fetched_before=clock.now - timedelta(days=30)
            )
            tracking = asyncio.ensure_future(github.track(owner.id, "purged-meanwhile"))
            try:

                async def tracking_waits_or_ended() -> bool:
                    return tracking.done() or await _waiting_on_row_locks(db)

                await wait_until(tracking_waits_or_ended, 20, "the tracking waits for the purge (or ends)")
            finally:
                await purger.commit()
            tracked, new = await tracking

    assert deleted == 1
    assert new and tracked.username == "purged-meanwhile"
    assert await _stored_logins(db) == {"purged-meanwhile"}
    stored = await queries.get_github_profile(db, login="purged-meanwhile")
    assert stored is not None and stored.fetched_at == clock.now
    assert _profile_requests(fake, "purged-meanwhile") == 2


async def test_a_profile_fetched_while_the_purge_runs_is_kept(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    database_url: str,
    valkey: Any,
    clock: FakeClock,
) -> None:
    """A fetch stores the profile (uncommitted yet) when the purge's chunk reaches it: the purge waits
    for the fetch's transaction, then sees the new ``fetched_at`` and keeps the profile."""
    _add_users(fake, "fetched-meanwhile", "not-fetched")
    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        for login in ("fetched-meanwhile", "not-fetched"):
            await _look_up(github, login)
        clock.now += timedelta(days=31)
        stored = await queries.get_github_profile(db, login="fetched-meanwhile")
        assert stored is not None
        async with await AsyncConnection.connect(database_url) as fetcher:
            await register_types(fetcher)
            await fetcher.commit()
            stores = await queries.upsert_github_profile(
                fetcher, login="fetched-meanwhile", data=stored.data, fetched_at=clock.now
            )
            purging = asyncio.ensure_future(github.purge_expired())
            try:

                async def purge_waits_or_ended() -> bool:
                    return purging.done() or await _waiting_on_row_locks(db)

                await wait_until(purge_waits_or_ended, 20, "the purge waits for the fetch (or ends)")
            finally:
                await fetcher.commit()
            purged = await purging

    assert stores == 1
    assert purged.profiles == 1  # "not-fetched"
    kept = await queries.get_github_profile(db, login="fetched-meanwhile")
    assert kept is not None and kept.fetched_at == clock.now
    assert await _stored_logins(db) == {"fetched-meanwhile"}


AUDIT = """
create table retention_audit (txid bigint not null, tbl text not null, deleted bigint not null);
create function retention_audit() returns trigger language plpgsql as $$
begin
    insert into retention_audit select txid_current(), tg_table_name, count(*) from gone;
    return null;
end $$;
create trigger retention_audit after delete on github_profiles
    referencing old table as gone for each statement execute function retention_audit();
create trigger retention_audit after delete on github_snapshots
    referencing old table as gone for each statement execute function retention_audit();
create trigger retention_audit after delete on github_snapshot_attempts
    referencing old table as gone for each statement execute function retention_audit();
"""
NO_AUDIT = """
drop trigger if exists retention_audit on github_profiles;
drop trigger if exists retention_audit on github_snapshots;
drop trigger if exists retention_audit on github_snapshot_attempts;
drop function if exists retention_audit();
drop table if exists retention_audit;
"""


async def test_the_purge_deletes_more_than_a_chunk_in_bounded_transactions(
    settings: Settings,
    fake_server: FakeGitHubServer,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """With chunks of 4 rows: 23 profiles, 13 snapshots past their retention and 3 forgotten logins
    of 5 snapshots each are all deleted, and no transaction deleted more than 4 rows (each deletion
    statement's rows are recorded with its transaction by a trigger)."""
    today = clock.now.date()
    old = clock.now - timedelta(days=31)
    await db.execute(
        "insert into github_profiles (login, data, fetched_at)"
        " select 'expired-' || n, '{}'::jsonb, %s - n * interval '1 minute' from generate_series(1, 23) n",
        (old,),
    )
    await db.execute(
        "insert into github_snapshots (login, taken_on, taken_at, followers, following, public_repos,"
        " repos_counted, total_stars, total_forks, language_bytes)"
        " select 'ancient', %s - n, now(), 0, 0, 0, 0, 0, 0, '{}' from generate_series(401, 413) n",
        (today,),
    )
    await db.execute(
        "insert into github_snapshots (login, taken_on, taken_at, followers, following, public_repos,"
        " repos_counted, total_stars, total_forks, language_bytes)"
        " select 'forgotten-' || l, %s - d, now(), 0, 0, 0, 0, 0, 0, '{}'"
        " from generate_series(1, 3) l, generate_series(40, 44) d",
        (today,),
    )
    await db.execute(
        "insert into github_snapshot_attempts (login, attempted_at)"
        " select 'forgotten-' || l, %s from generate_series(1, 3) l",
        (old,),
    )
    await db.execute(NO_AUDIT)
    await db.execute(AUDIT)
    try:
        async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
            purged = await services[GithubService].purge_expired(chunk_size=4)
        rows = await (
            await db.execute("select txid, sum(deleted)::bigint from retention_audit group by txid")
        ).fetchall()
        by_table = dict(
            await (
                await db.execute("select tbl, sum(deleted)::bigint from retention_audit group by tbl")
            ).fetchall()
        )
    finally:
        await db.execute(NO_AUDIT)

    assert (purged.profiles, purged.snapshots, purged.forgotten_logins) == (23, 13 + 15, 3)
    assert by_table == {"github_profiles": 23, "github_snapshots": 28, "github_snapshot_attempts": 3}
    assert max(per_transaction for _, per_transaction in rows) <= 4
    assert sum(per_transaction for _, per_transaction in rows) == 23 + 28 + 3
    for table in ("github_profiles", "github_snapshots", "github_snapshot_attempts"):
        assert await (await db.execute(f"select count(*) from {table}")).fetchone() == (0,)


async def _insert_snapshots(db: AsyncConnection[Any], login: str, days: list[date]) -> None:
    for day in days:
        await db.execute(
            "insert into github_snapshots (login, taken_on, taken_at, followers, following, public_repos,"
            " repos_counted, total_stars, total_forks, language_bytes)"
            " values (%s, %s, %s, 1, 2, 3, 4, 5, 6, '{}')",
            (login, day, datetime.combine(day, time(5), tzinfo=UTC)),
        )


async def test_snapshots_past_their_retention_and_of_logins_untracked_long_ago_are_deleted(
    settings: Settings,
    fake_server: FakeGitHubServer,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    today = clock.now.date()
    owner = await create_user(db)
    for login in ("tracked-for-years", "tracked-but-failing"):
        await db.execute("insert into github_tracked (user_id, login) values (%s, %s)", (owner.id, login))
    # Tracked: only what is older than GITHUB_SNAPSHOT_RETENTION_DAYS (400) goes.
    await _insert_snapshots(db, "tracked-for-years", [today - timedelta(days=d) for d in (401, 400, 399, 1)])
    await db.execute(
        "insert into github_snapshot_attempts (login, attempted_at) values (%s, %s), (%s, %s), (%s, %s)",
        (
            "tracked-for-years",
            clock.now - timedelta(hours=20),
            "tracked-but-failing",  # untried for long (GitHub answers 404), still tracked: kept
            clock.now - timedelta(days=60),
            "untracked-lately",
            clock.now - timedelta(days=29),
        ),
    )
    await _insert_snapshots(db, "tracked-but-failing", [today - timedelta(days=60)])
    # Untracked 29 days ago: kept, should someone track it again.
    await _insert_snapshots(db, "untracked-lately", [today - timedelta(days=d) for d in range(29, 40)])
    # Untracked 31 days ago: its snapshots go, and its attempt with them.
    await db.execute(
        "insert into github_snapshot_attempts (login, attempted_at) values (%s, %s)",
        ("untracked-long-ago", clock.now - timedelta(days=31)),
    )
    await _insert_snapshots(db, "untracked-long-ago", [today - timedelta(days=d) for d in range(31, 40)])

    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        purged = await github.purge_expired()
        long_ago = await github.history("untracked-long-ago", today - timedelta(days=60), today)
        lately = await github.history("untracked-lately", today - timedelta(days=60), today)

    remaining = await (
        await db.execute(
            "select login, count(*), min(taken_on) from github_snapshots group by login order by login"
        )
    ).fetchall()
    attempts = await (
        await db.execute("select login from github_snapshot_attempts order by login")
    ).fetchall()
    assert (purged.snapshots, purged.forgotten_logins) == (1 + 9, 1)
    assert remaining == [
        ("tracked-but-failing", 1, today - timedelta(days=60)),
        ("tracked-for-years", 3, today - timedelta(days=400)),
        ("untracked-lately", 11, today - timedelta(days=39)),
    ]
    assert [row[0] for row in attempts] == ["tracked-but-failing", "tracked-for-years", "untracked-lately"]
    assert long_ago.points == [] and len(lately.points) == 11


async def test_an_untracked_login_keeps_its_history_for_the_retention_after_its_last_snapshot(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """With the real crons: a login untracked after three daily snapshots keeps them (the hourly
    snapshot runs go on) for GITHUB_PROFILE_RETENTION_DAYS after the last one, then loses them and
    its profile; the login still tracked keeps everything."""
    _add_users(fake, "ex-tracked", "still-tracked")
    owner = await create_user(db)
    first_day = clock.now.date() + timedelta(days=1)
    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        await github.track(owner.id, "ex-tracked")
        await github.track(owner.id, "still-tracked")
        for day in range(6):
            if day == 3:
                await github.untrack(owner.id, "ex-tracked")
            clock.now = datetime.combine(first_day + timedelta(days=day), time(5), tzinfo=UTC)
            await snapshot_github_profiles(ctx)
            clock.now += timedelta(hours=1)
            await snapshot_github_profiles(ctx)
        last_day = first_day + timedelta(days=5)

        clock.now = datetime.combine(first_day + timedelta(days=2 + 29), time(6), tzinfo=UTC)
        soon = await github.purge_expired()
        kept = await github.history("ex-tracked", first_day, last_day)
        clock.now += timedelta(days=2)  # 31 days after its last snapshot
        later = await github.purge_expired()
        gone = await github.history("ex-tracked", first_day, last_day)
        tracked = await github.history("still-tracked", first_day, last_day)

    assert soon.snapshots == 0 and len(kept.points) == 3
    assert later.snapshots == 3 and later.forgotten_logins == 1 and gone.points == []
    assert later.profiles == 1 and await _stored_logins(db) == {"still-tracked"}
    assert len(tracked.points) == 6


async def test_logins_only_deactivated_accounts_track_are_purged_as_untracked_ones(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """A deactivated account's logins are no longer fetched; their profiles (third parties' names,
    bios, public e-mails) and histories were kept for good all the same (privacy review). They go as
    an untracked login's do; the tracking rows stay, for a reactivation."""
    _add_users(fake, "kept-by-active", "tracked-by-deactivated")
    active, deactivated = await create_user(db), await create_user(db)
    today = clock.now.date()
    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        await github.track(active.id, "kept-by-active")
        await github.track(deactivated.id, "tracked-by-deactivated")
        await db.execute("update users set is_active = false where id = %s", (deactivated.id,))
        for login in ("kept-by-active", "tracked-by-deactivated"):
            await db.execute(
                "insert into github_snapshot_attempts (login, attempted_at) values (%s, %s)"
                " on conflict (login) do update set attempted_at = excluded.attempted_at",
                (login, clock.now),
            )
            await _insert_snapshots(db, login, [today - timedelta(days=d) for d in range(1, 4)])
        clock.now += timedelta(days=31)
        purged = await github.purge_expired()

    assert await _stored_logins(db) == {"kept-by-active"}
    snapshots = await (await db.execute("select distinct login from github_snapshots")).fetchall()
    assert snapshots == [("kept-by-active",)]
    assert (purged.profiles, purged.snapshots, purged.forgotten_logins) == (1, 3, 1)
    tracked = await (await db.execute("select login from github_tracked order by login")).fetchall()
    assert tracked == [("kept-by-active",), ("tracked-by-deactivated",)]
