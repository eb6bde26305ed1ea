"""The snapshot cron across a login's life on GitHub: a login that changes hands starts a new
segment of its history, and a login gone from GitHub is asked once per snapshot day, not hourly."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.domains.github.client import GitHubRefusedError
from app.domains.github.governor import Priority
from app.domains.github.jobs import snapshot_github_profiles
from app.domains.github.services import GithubService
from app.domains.github.snapshots import REFUSED_RETRY_S
from tests.factories import captured_logs, clocked_github, create_user
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo


def _configured(settings: Settings, fake_server: FakeGitHubServer) -> Settings:
    return msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_token="identity-test-token",
        github_snapshot_hour_utc=4,
        github_profile_ttl_s=3600,
        github_retry_wait_s=0.01,
    )


async def test_a_login_renamed_away_and_registered_again_starts_a_new_segment_of_its_history(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    first = fake.add_user("taken-over", [FakeRepo(name="a", stars=500, languages={"Go": 100})], followers=900)
    owner = await create_user(db)
    first_day = clock.now.date() + timedelta(days=1)

    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        await github.track(owner.id, "taken-over")
        for day in range(4):
            if day == 2:  # the first account takes another name; a newcomer registers the free login
                fake.rename_user("taken-over", "moved-on")
                fake.add_user("taken-over", [FakeRepo(name="b", stars=3, languages={"C": 7})], followers=1)
            if day == 3:
                fake.users["taken-over"].followers = 4
            clock.now = datetime.combine(first_day + timedelta(days=day), time(5), tzinfo=UTC)
            assert await snapshot_github_profiles(ctx) == 1
        history = await github.history("taken-over", first_day, first_day + timedelta(days=3))

    newcomer = fake.users["taken-over"]
    assert [p.github_id for p in history.points] == [first.id, first.id, newcomer.id, newcomer.id]
    assert [p.followers for p in history.points] == [900, 900, 1, 4]
    changes = [p.change for p in history.points]
    assert changes[0] is None and changes[2] is None  # never the newcomer's 1 minus the first's 900
    assert changes[1] is not None and changes[1].followers == 0
    assert changes[3] is not None and changes[3].followers == 3
    assert history.points[2].days_since_previous == 1
    assert history.deltas_from == first_day + timedelta(days=2)
    assert history.deltas is not None
    assert (history.deltas.followers, history.deltas.total_stars) == (3, 0)
    assert history.deltas.language_bytes == {}


async def test_snapshots_recorded_before_ids_were_keep_their_changes(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """A snapshot without an id (taken before they were recorded) is not a change of hands."""
    fake.add_user("kept-one", [FakeRepo(name="a", stars=10, languages={"Go": 1})], followers=20)
    owner = await create_user(db)
    first_day = clock.now.date() + timedelta(days=1)

    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        await github.track(owner.id, "kept-one")
        for day in range(2):
            fake.users["kept-one"].followers = 20 + 5 * day
            clock.now = datetime.combine(first_day + timedelta(days=day), time(5), tzinfo=UTC)
            assert await snapshot_github_profiles(ctx) == 1
        await db.execute(
            "update github_snapshots set github_id = null where login = 'kept-one' and taken_on = %s",
            (first_day,),
        )
        history = await github.history("kept-one", first_day, first_day + timedelta(days=1))

    assert [p.github_id is None for p in history.points] == [True, False]
    assert history.points[1].change is not None and history.points[1].change.followers == 5
    assert history.deltas is not None and history.deltas.followers == 5
    assert history.deltas_from == first_day


async def test_a_login_gone_from_github_is_asked_once_per_snapshot_day_not_in_every_hourly_run(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    fake.add_user("soon-gone", [FakeRepo(name="a", stars=1, languages={"C": 1})])
    fake.add_user("still-here", [FakeRepo(name="b", stars=2, languages={"Go": 2})])
    owner = await create_user(db)
    first_day = clock.now.date() + timedelta(days=1)

    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        await github.track(owner.id, "soon-gone")
        await github.track(owner.id, "still-here")
        del fake.users["soon-gone"]
        taken = []
        for day in range(2):
            clock.now = datetime.combine(first_day + timedelta(days=day), time(5), tzinfo=UTC)
            for _ in range(6):  # six hourly runs of the same snapshot day
                taken.append(await snapshot_github_profiles(ctx))
                # The "no such user" memory (GITHUB_NOT_FOUND_TTL_S, real seconds) lapses between
                # hourly runs; here the clock is fake, so it is let go by hand.
                await valkey.delete("github:missing:soon-gone", github.lookups.failed_key("soon-gone"))
                clock.now += timedelta(hours=1)
        still_tracked = await github.list_tracked(owner.id, after_id=0, limit=10)

    assert taken == [1, 0, 0, 0, 0, 0] * 2
    misses = [r.status for r in fake.recorded("/users/soon-gone") if r.path == "/users/soon-gone"]
    assert misses == [200, 404, 404]  # the lookup that tracked it, then one try per snapshot day
    assert [t.username for t in still_tracked.items] == ["soon-gone", "still-here"]


async def test_an_outage_settles_nothing_the_next_run_takes_the_login_again(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    fake.add_user("waits-out", [FakeRepo(name="a", stars=1, languages={"C": 1})])
    owner = await create_user(db)
    clock.now = datetime.combine(clock.now.date() + timedelta(days=1), time(5), tzinfo=UTC)

    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        await github.track(owner.id, "waits-out")
        clock.now += timedelta(hours=2)  # the stored profile is stale: the run fetches
        fake.fail(502, times=100)
        assert await snapshot_github_profiles(ctx) == 0
        fake.recover()
        await valkey.delete(github.lookups.failed_key("waits-out"))
        clock.now += timedelta(hours=1)
        assert await snapshot_github_profiles(ctx) == 1


async def test_an_answer_that_is_not_githubs_holds_the_login_back_for_hours_and_the_run_goes_on(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """A profile whose answer the client refuses (a count no GitHub answer has) is no outage: the
    others are still snapshotted, and it is asked again hours later (REFUSED_RETRY_S), not in every
    hourly run, nor never again that day (the refusal might have been a proxy's)."""
    absurd = fake.add_user("absurd", [FakeRepo(name="a", stars=1, languages={"C": 1})])
    fake.add_user("normal", [FakeRepo(name="b", stars=2, languages={"Go": 2})])
    owner = await create_user(db)
    first_day = clock.now.date() + timedelta(days=1)

    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        await github.track(owner.id, "absurd")
        await github.track(owner.id, "normal")
        absurd.followers = 2**62  # far past GithubUser's bound: not an answer GitHub gives
        taken = []
        for day in range(2):
            clock.now = datetime.combine(first_day + timedelta(days=day), time(5), tzinfo=UTC)
            for _ in range(3):
                taken.append(await snapshot_github_profiles(ctx))
                await valkey.delete(github.lookups.failed_key("absurd"))  # the 10-second memory, lapsed
                clock.now += timedelta(hours=1)

    assert taken == [1, 0, 0] * 2
    asked = [r.status for r in fake.recorded("/users/absurd") if r.path == "/users/absurd"]
    assert asked == [200, 200, 200]  # the lookup that tracked it, then one try per three runs here


async def test_a_refusal_remembered_from_a_lookup_settles_the_login_instead_of_pausing_the_run(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """A reader's lookup met GitHub's 451 for a login moments before the run: the run hears of it
    from the failure memory, as the blocked login's own failure (both read ``unavailable``)."""
    fake.add_user("a-blocked", [FakeRepo(name="a", stars=1, languages={"C": 1})])
    fake.add_user("b-fine", [FakeRepo(name="b", stars=2, languages={"Go": 2})])
    owner = await create_user(db)

    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        await github.track(owner.id, "a-blocked")
        await github.track(owner.id, "b-fine")
        clock.now = datetime.combine(clock.now.date() + timedelta(days=1), time(5), tzinfo=UTC)
        fake.fail(451, path_contains="/users/a-blocked")
        with pytest.raises(GitHubRefusedError):  # a refresh-like fetch of the profile meets the 451
            await github.lookups.fetch_shared("a-blocked", Priority.BACKGROUND, newer_than=clock.now)
        assert await snapshot_github_profiles({"services": services}) == 1

    settled = await (
        await db.execute("select login, failed_on from github_snapshot_attempts order by login")
    ).fetchall()
    assert [(login, failed_on is not None) for login, failed_on in settled] == [
        ("a-blocked", True),
        ("b-fine", False),
    ]


async def test_answers_refused_three_in_a_row_pause_the_run_and_lose_nobody_the_day(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """Every answer not GitHub's (a proxy in GITHUB_API_URL's place answering a page): no login's own
    fault, so none is settled for the day; the run pauses and the next one, GitHub back, takes them."""
    logins = ["proxied-a", "proxied-b", "proxied-c", "proxied-d"]
    for login in logins:
        fake.add_user(login, [FakeRepo(name="r", stars=1, languages={"C": 1})])
    owner = await create_user(db)

    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        for login in logins:
            await github.track(owner.id, login)
        clock.now = datetime.combine(clock.now.date() + timedelta(days=1), time(5), tzinfo=UTC)
        fake.fail(200, body=b"<html>Sign in to the proxy</html>", times=100, path_contains="/users/")
        with captured_logs() as logs:
            assert await snapshot_github_profiles(ctx) == 0
        fake.recover()
        await valkey.delete(*(github.lookups.failed_key(login) for login in logins))
        clock.now += timedelta(hours=1)
        assert await snapshot_github_profiles(ctx) == 1  # the three refused wait their hours
        clock.now += timedelta(seconds=REFUSED_RETRY_S)
        assert await snapshot_github_profiles(ctx) == 3  # the same snapshot day: none was lost

    [paused] = logs.events("github_snapshots_paused")
    assert (paused["reason"], paused["login"]) == ("refused-answers", "proxied-c")
    settled = await (
        await db.execute("select count(*) from github_snapshot_attempts where failed_on is not null")
    ).fetchone()
    assert settled == (0,)


async def test_refused_answers_around_a_404_are_held_back_for_hours_and_the_404_for_the_day(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """The diff reviewers' sequences: a 404 between refusals ends their streak (no pause), a refused
    login that ends a run is not asked again in the day's next runs, and no refusal settles the day."""
    logins = ["a-refused", "b-gone", "c-refused", "d-refused", "e-ok"]
    for login in logins:
        fake.add_user(login, [FakeRepo(name="r", stars=1, languages={"C": 1})])
    owner = await create_user(db)

    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        ctx: dict[str, Any] = {"services": services}
        for login in logins:
            await github.track(owner.id, login)
        del fake.users["b-gone"]
        for login in ("a-refused", "c-refused", "d-refused"):
            fake.fail(200, body=b"<html>not json</html>", times=100, path_contains=f"/users/{login}")
        clock.now = datetime.combine(clock.now.date() + timedelta(days=1), time(5), tzinfo=UTC)
        runs = []
        for _ in range(3):
            runs.append(await snapshot_github_profiles(ctx))
            await valkey.delete(
                *(f"github:{kind}:{login}" for login in logins for kind in ("failed", "missing"))
            )
            clock.now += timedelta(hours=1)

    assert runs == [1, 0, 0]
    rows = await (
        await db.execute(
            "select login, failed_on is not null, refused_at is not null from github_snapshot_attempts"
        )
    ).fetchall()
    assert {login: (failed, refused) for login, failed, refused in rows} == {
        "a-refused": (False, True),
        "b-gone": (True, False),
        "c-refused": (False, True),
        "d-refused": (False, True),
        "e-ok": (False, False),
    }
    for login in ("a-refused", "c-refused", "d-refused"):  # the tracking lookup, then one try
        assert len([r for r in fake.recorded(f"/users/{login}") if r.path == f"/users/{login}"]) == 2


async def test_a_refusal_late_in_the_snapshot_day_gets_a_last_try_in_its_last_hour(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """The fifth diff reviewer: a login first tried in a day's last six hours and refused by a brief
    proxy fault waited past the day's end: that day had no snapshot."""
    fake.add_user("late", [FakeRepo(name="r", stars=1, languages={"C": 1})])
    owner = await create_user(db)
    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        await github.track(owner.id, "late")
        clock.now = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)  # hour 18 of snapshot day 03-02 (hour 4)
        fake.fail(200, body=b"<html>proxy</html>", path_contains="/users/late")
        runs = []
        for _ in range(6):  # 22:30 ... 03:30, the day's last hour
            runs.append(await snapshot_github_profiles({"services": services}))
            await valkey.delete(github.lookups.failed_key("late"))
            clock.now += timedelta(hours=1)

    assert runs == [0, 0, 0, 0, 0, 1]
    taken = await (await db.execute("select taken_on from github_snapshots where login = 'late'")).fetchall()
    assert taken == [(datetime(2026, 3, 2).date(),)]


async def test_a_remembered_404_does_not_end_a_streak_of_refused_answers(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Any,
    clock: FakeClock,
) -> None:
    """A login remembered missing is answered from memory, no request made: it says nothing of what
    answers in GitHub's place now, so the proxy's third refusal still pauses the run."""
    logins = ["p1", "p2-missing", "p3", "p4", "p5"]
    for login in logins:
        fake.add_user(login, [FakeRepo(name="r", stars=1, languages={"C": 1})])
    owner = await create_user(db)
    async with open_services(_configured(settings, fake_server), [clocked_github(clock)]) as services:
        github = services[GithubService]
        for login in logins:
            await github.track(owner.id, login)
        await valkey.set("github:missing:p2-missing", b"1", ex=600)
        clock.now = datetime.combine(clock.now.date() + timedelta(days=1), time(5), tzinfo=UTC)
        fake.fail(200, body=b"<html>Sign in to the proxy</html>", times=100, path_contains="/users/")
        with captured_logs() as logs:
            assert await snapshot_github_profiles({"services": services}) == 0

    [paused] = logs.events("github_snapshots_paused")
    assert (paused["reason"], paused["login"]) == ("refused-answers", "p4")
    assert [r for r in fake.recorded("/users/p5") if r.path == "/users/p5"][1:] == []  # only its tracking
