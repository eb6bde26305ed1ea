"""The daily snapshot cron on a fake clock: one snapshot per tracked user and day, correct deltas."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import msgspec
from psycopg import AsyncConnection

from app.config import Settings
from app.core.modules import Module
from app.core.services import open_services
from app.domains.github.jobs import snapshot_github_profiles
from app.domains.github.services import GithubService
from tests.factories import clocked_github, create_user
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo


async def test_thirty_days_of_the_daily_cron_give_thirty_snapshots_and_correct_deltas(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
) -> None:
    configured = msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_token="snapshot-test-token",  # 5,000 requests an hour: 30 days cost about 100
        github_snapshot_hour_utc=4,
        github_retry_wait_s=0.01,
    )
    clock = FakeClock(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    module = Module(
        name="github",
        service=lambda s: GithubService(s.db, s.settings, s.valkey, s.broadcaster, clock=clock),
    )
    star = FakeRepo(name="star", stars=100, language="Go", size=500, languages={"Go": 1000})
    fork = FakeRepo(name="fork", stars=1000, fork=True, language="C", languages={"C": 5})
    user = fake.add_user("tracked-one", [star, fork], followers=10)
    fake.add_user("tracked-two", [FakeRepo(name="quiet", stars=1, language="Rust", languages={"Rust": 7})])
    owner = await create_user(db)

    async with open_services(configured, [module]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        await github.track(owner.id, "tracked-one")
        await github.track(owner.id, "Tracked-Two")

        clock.now = clock.now.replace(hour=5)
        first_day = clock.now.date()
        for day in range(30):
            user.followers = 10 + 3 * day
            star.stars = 100 + day
            star.languages = {"Go": 1000 + 10 * day}
            assert await snapshot_github_profiles(ctx) == 2
            clock.now += timedelta(hours=6)
            assert await snapshot_github_profiles(ctx) == 0  # the same day again: nothing new
            clock.now += timedelta(hours=15)
            assert await snapshot_github_profiles(ctx) == 0  # 02:00 the next day: still the same one
            clock.now += timedelta(hours=3)
        last_day = first_day + timedelta(days=29)

        history = await github.history("tracked-one", first_day, last_day)
        quiet = await github.history("tracked-two", first_day, last_day)
        window = await github.history("tracked-one", date(2026, 3, 10), date(2026, 3, 12))

    count = await (await db.execute("select count(*) from github_snapshots")).fetchone()
    assert count == (60,)
    assert fake.violations == 0
    assert len(history.points) == 30 and len(quiet.points) == 30
    assert [p.date for p in history.points] == [first_day + timedelta(days=d) for d in range(30)]
    assert [p.followers for p in history.points] == [10 + 3 * d for d in range(30)]
    assert [p.total_stars for p in history.points] == [100 + d for d in range(30)]  # the fork never counts
    assert history.points[0].change is None and history.points[0].days_since_previous is None
    for point in history.points[1:]:
        assert point.change is not None
        assert (point.change.followers, point.change.total_stars, point.days_since_previous) == (3, 1, 1)
        assert point.change.language_bytes == {"Go": 10}
    assert history.deltas is not None
    assert (history.deltas.followers, history.deltas.total_stars) == (87, 29)
    assert history.deltas.language_bytes == {"Go": 290}
    assert quiet.deltas is not None and quiet.deltas.followers == 0 and quiet.deltas.language_bytes == {}
    assert [p.date for p in window.points] == [date(2026, 3, 10), date(2026, 3, 11), date(2026, 3, 12)]


async def test_a_login_gone_from_github_does_not_keep_the_others_from_their_daily_snapshot(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    configured = msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_token="snapshot-test-token",
        github_snapshot_hour_utc=4,
        github_snapshots_per_run=1,
        github_retry_wait_s=0.01,
    )
    fake.add_user("aaa-gone", [FakeRepo(name="old", stars=1, languages={"C": 1})])
    fake.add_user("zzz-live", [FakeRepo(name="new", stars=2, languages={"Go": 2})], followers=5)
    owner = await create_user(db)

    async with open_services(configured, [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        await github.track(owner.id, "aaa-gone")
        await github.track(owner.id, "zzz-live")
        del fake.users["aaa-gone"]  # deleted (or renamed) on GitHub: 404 from now on
        first_day = clock.now.date() + timedelta(days=1)
        taken_per_day = []
        for day in range(3):
            clock.now = datetime.combine(first_day + timedelta(days=day), time(5), tzinfo=UTC)
            taken = 0
            for _ in range(2):  # two hourly runs of one login each
                taken += await snapshot_github_profiles(ctx)
                clock.now += timedelta(hours=1)
            taken_per_day.append(taken)
        live = await github.history("zzz-live", first_day, first_day + timedelta(days=2))
        gone = await github.history("aaa-gone", first_day, first_day + timedelta(days=2))
        still_tracked = await github.list_tracked(owner.id, after_id=0, limit=10)

    assert taken_per_day == [1, 1, 1]
    assert [p.date for p in live.points] == [first_day + timedelta(days=d) for d in range(3)]
    assert all(p.followers == 5 for p in live.points)
    assert gone.points == []
    assert [t.username for t in still_tracked.items] == ["aaa-gone", "zzz-live"]
    profile_requests = [r.status for r in fake.recorded("/users/aaa-gone") if r.path == "/users/aaa-gone"]
    assert profile_requests == [200, 404]  # then remembered as missing: not asked again every run


async def test_a_snapshot_day_missed_in_its_last_hours_before_midnight_is_finished_after_midnight(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """Snapshot day D runs from GITHUB_SNAPSHOT_HOUR_UTC on D to the same hour on D + 1: with the
    hour at 23, the runs after midnight still finish D (they used to wait for D + 1's 23:00, and D's
    missing logins were never caught up)."""
    configured = msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_token="snapshot-test-token",
        github_snapshot_hour_utc=23,
        github_snapshots_per_run=1,
        github_retry_wait_s=0.01,
    )
    fake.add_user("one", [FakeRepo(name="a", stars=1, language="Go", languages={"Go": 1})])
    fake.add_user("two", [FakeRepo(name="b", stars=2, language="Go", languages={"Go": 2})])
    owner = await create_user(db)
    day = date(2026, 3, 1)

    async with open_services(configured, [clocked_github(clock)]) as services:
        ctx: dict[str, Any] = {"services": services}
        clock.now = datetime.combine(day, time(22, 30), tzinfo=UTC)
        await services[GithubService].track(owner.id, "one")
        await services[GithubService].track(owner.id, "two")
        taken = []
        for _ in range(4):  # 22:30 (the day before's), 23:30, 00:30 and 01:30
            taken.append(await snapshot_github_profiles(ctx))
            clock.now += timedelta(hours=1)
        clock.now = datetime.combine(day + timedelta(days=1), time(23, 30), tzinfo=UTC)
        for _ in range(2):  # the next snapshot day, from its 23:00
            taken.append(await snapshot_github_profiles(ctx))
            clock.now += timedelta(hours=1)

    assert taken == [1, 1, 1, 0, 1, 1]
    rows = await (await db.execute("select login, taken_on from github_snapshots order by 2, 1")).fetchall()
    previous = day - timedelta(days=1)
    assert [(r[0], r[1]) for r in rows if r[1] != previous] == [
        ("one", day),
        ("two", day),
        ("one", day + timedelta(days=1)),
        ("two", day + timedelta(days=1)),
    ]
    assert len([r for r in rows if r[1] == previous]) == 1


async def test_a_github_outage_stops_the_run_and_the_next_run_takes_every_snapshot(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """A GitHub that answers 5xx tells the run so with its first login's retries: the other due
    logins are left to the next hourly run instead of each being asked into the outage."""
    configured = msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_token="snapshot-outage-token",
        github_snapshot_hour_utc=4,
        github_retry_wait_s=0.01,
    )
    logins = [f"outage-{i}" for i in range(6)]
    for login in logins:
        fake.add_user(login, [FakeRepo(name="r", stars=1, languages={"Go": 1})])
    owner = await create_user(db)

    async with open_services(configured, [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        for login in logins:
            await github.track(owner.id, login)
        day = clock.now.date() + timedelta(days=1)
        clock.now = datetime.combine(day, time(5), tzinfo=UTC)  # every profile stale, every login due
        fake.clear_requests()
        fake.fail(503, times=10_000)
        assert await snapshot_github_profiles(ctx) == 0
        asked_in_the_outage = len(fake.recorded())
        assert 0 < asked_in_the_outage <= configured.github_retry_attempts  # one login's retries
        fake.recover()
        clock.now += timedelta(hours=1)
        await valkey.delete(
            github.lookups.failed_key(logins[0])
        )  # the failure's memory (up to 60 s) is over by then
        assert await snapshot_github_profiles(ctx) == len(logins)
        points = [await github.history(login, day, day) for login in logins]

    assert all(len(history.points) == 1 for history in points)
