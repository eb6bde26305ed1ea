"""The accounts of one client address share a part of GitHub's window, not the whole of it.

Accounts are free (20 a minute per address): with only a share per account, five accounts of one
person spent GitHub's whole hourly window, and every account's lookups of users not stored yet then
answered 503 until GitHub's reset. The chains asked from one address (an IPv4 address, an IPv6 /64)
may cost ``GITHUB_ADDRESS_QUOTA_FRACTION`` of the window (two fifths of an anonymous hour's 60: 24)
and be ``GITHUB_ADDRESS_LOOKUPS_IN_FLIGHT`` (4) under way at once, across processes; a chain reserves
its pages of repositories before it reads them.

The test client's requests come from 127.0.0.1, a trusted proxy: ``X-Forwarded-For`` names another
address.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as redis
from psycopg import AsyncConnection
from saq.job import Status
from saq.queue.redis import RedisQueue
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.ratelimit import stored_identity
from app.core.services import open_services
from app.core.slots import LeasedSlots
from app.domains.github import shares as shares_module
from app.domains.github.analysis import DEFAULT_FILTERS
from app.domains.github.errors import PayerRefusedError, TooManyLookupsError
from app.domains.github.governor import Priority
from app.domains.github.jobs import refresh_github_profile
from app.domains.github.module import module as github_module
from app.domains.github.refreshes import QUEUE, REFRESH_MIN_AGE_S
from app.domains.github.services import GithubService
from app.domains.github.shares import SNAPSHOTS_ACCOUNT, Payer
from tests.factories import assert_problem, clocked_github, make_user, serve_in_loop, wait_until
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer, FakeRepo
from tests.functional.test_github_fair_share import TURN_LOCK, two_repos, under_way
from tests.functional.test_github_http import older_than_a_refresh_fetches, work_refresh

ELSEWHERE = {"x-forwarded-for": "203.0.113.7"}
ADDRESS_SHARE = 24
READER = 7
CHAINS_UNDER_WAY = 4


@pytest.fixture
def github_settings(
    settings: Settings, fake_server: FakeGitHubServer, db: object, valkey: object
) -> Settings:
    return msgspec.structs.replace(
        settings,
        github_api_url=fake_server.url,
        github_retry_wait_s=0.01,
        github_timeout_s=2.0,
        github_interactive_wait_s=30.0,
    )


def address(settings: Settings, ip: str = "127.0.0.1") -> str:
    """The address as Valkey keeps it (``app.core.ratelimit.ClientAddress``)."""
    return stored_identity(settings.secret_key, f"ip:{ip}")


async def spent_by(valkey: Valkey, settings: Settings, ip: str = "127.0.0.1") -> int:
    return int(await valkey.get(f"github:lookup-spent:{address(settings, ip)}") or 0)


async def chains_under_way(valkey: Valkey, settings: Settings, ip: str = "127.0.0.1") -> int:
    return int(await valkey.zcard(f"github:address-chains:{address(settings, ip)}"))


@contextlib.asynccontextmanager
async def turn_taken(valkey: Valkey) -> AsyncIterator[None]:
    """GitHub's turn taken for the block: the lookups started in it wait, under way, until it ends."""
    await valkey.set(TURN_LOCK, "the-test", px=60_000)
    try:
        yield
    finally:
        await valkey.delete(TURN_LOCK)


async def asked_under_way(
    valkey: Valkey, asks: list[tuple[httpx.AsyncClient, str, dict[str, str]]]
) -> list[asyncio.Task[httpx.Response]]:
    """Each ``(client, login, headers)`` asked at once, returned once every login's chain is under way
    (in ``turn_taken``: they then wait for GitHub's turn)."""
    held = [
        asyncio.create_task(client.get(f"/api/github/users/{login}", headers=headers))
        for client, login, headers in asks
    ]
    logins = [login for _, login, _ in asks]
    await wait_until(lambda: under_way(valkey, *logins), 20, f"{len(logins)} lookups are under way")
    return held


def four_held(
    client: httpx.AsyncClient, first: Any, second: Any
) -> list[tuple[httpx.AsyncClient, str, dict[str, str]]]:
    """held0..held3, two lookups of each of two accounts (each account's cap): the address's four."""
    return [(client, f"held{i}", account.headers) for i, account in enumerate((first, first, second, second))]


def thousand_repos(tag: str) -> list[FakeRepo]:
    """A user whose listing is ten pages: eleven requests before its first language."""
    return [FakeRepo(name=f"{tag}-r{j:04d}", size=100 + j, languages={"Go": 10}) for j in range(1000)]


async def work_refreshes_at_once(settings: Settings, count: int) -> list[str]:
    """What one worker does with ``count`` queued refreshes (WORKER_CONCURRENCY 10): runs them at
    once. Returns their outcomes."""
    assert settings.valkey_url is not None
    queue = RedisQueue(redis.from_url(settings.valkey_url), name=QUEUE)
    try:
        jobs = [await queue.dequeue(timeout=5) for _ in range(count)]
        async with open_services(settings, [github_module]) as services:
            outcomes = await asyncio.gather(
                *(
                    refresh_github_profile({"services": services, "job": job}, **(job.kwargs or {}))  # type: ignore[typeddict-unknown-key]
                    for job in jobs
                    if job is not None
                )
            )
        for job, outcome in zip(jobs, outcomes, strict=True):
            assert job is not None
            await queue.finish(job, Status.COMPLETE, result=outcome)
        return list(outcomes)
    finally:
        await queue.redis.aclose()


# -- the share ------------------------------------------------------------------------------------


async def test_the_accounts_of_one_address_leave_the_shared_quota_to_the_others(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    for index in range(12):
        fake.add_user(f"someone{index}", two_repos())
    fake.add_user("wanted")
    async with serve_in_loop(github_settings) as served:
        first, second, third = [await make_user(db, served.app, name=f"Same{n}") for n in range(3)]
        other = await make_user(db, served.app, name="Other")
        answers = [
            await served.client.get(f"/api/github/users/someone{index}", headers=account.headers)
            for account, logins in ((first, range(3)), (second, range(3, 6)), (third, range(6, 9)))
            for index in logins
        ]
        theirs = await served.client.get("/api/github/users/wanted", headers={**other.headers, **ELSEWHERE})

    # Each lookup costs 4 (the user, its repositories, two repositories' languages): the first two
    # accounts' six lookups spend the address's 24, within each account's 12.
    assert [answer.status_code for answer in answers] == [200] * 6 + [429] * 3
    refused = assert_problem(answers[6], 429, "github-lookup-budget")
    assert "one network address 24 GitHub requests per hour" in refused["detail"], refused["detail"]
    assert "limit of 60" in refused["detail"] and "have cost 24" in refused["detail"]
    assert 1 <= int(answers[6].headers["retry-after"]) <= 3602, "until GitHub's window ends"
    assert theirs.status_code == 200, theirs.text
    assert fake.charged() == ADDRESS_SHARE + 2, "the address's share, then the other address's lookup"
    assert await chains_under_way(valkey, github_settings) == 0, "each lookup gave its slot back"


async def test_lookups_asked_at_once_from_many_accounts_of_one_address_stay_near_its_share(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Thirty lookups asked at once by fifteen accounts (two each, the account's cap) all passed the
    share's check before any was charged: the address spent GitHub's whole window. At most four are
    under way at once, and each is charged as it goes: past the share, the four under way can each
    cost only what they ask before their first charge (the user and a page of repositories)."""
    for index in range(30):
        fake.add_user(f"someone{index}", two_repos())
    fake.add_user("wanted")
    async with serve_in_loop(github_settings) as served:
        accounts = [await make_user(db, served.app, name=f"Same{n}") for n in range(15)]
        answers = await asyncio.gather(
            *(
                served.client.get(f"/api/github/users/someone{2 * n + k}", headers=account.headers)
                for n, account in enumerate(accounts)
                for k in range(2)
            )
        )
        charged_by_the_address = fake.charged()
        theirs = await served.client.get(
            "/api/github/users/wanted", headers={**accounts[0].headers, **ELSEWHERE}
        )

    statuses = {answer.status_code for answer in answers}
    assert statuses <= {200, 429} and 200 in statuses, statuses
    assert charged_by_the_address <= ADDRESS_SHARE + CHAINS_UNDER_WAY * 2, charged_by_the_address
    assert await spent_by(valkey, github_settings) == charged_by_the_address, "every request was charged"
    assert theirs.status_code == 200, theirs.text


async def test_a_lookup_that_straddles_the_share_measures_no_language_past_it(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    """The address at 22 of its 24, each of its accounts well within its 12: a lookup is admitted, and
    once its user and repositories bring the address to 24 it measures no language."""
    fake.add_user("bare")  # 2 requests: the user, its (empty) repositories
    for index in range(5):
        fake.add_user(f"someone{index}", two_repos())  # 4 each
    fake.add_user("many", [FakeRepo(name=f"r{j}", size=100 + j, languages={"Go": 10}) for j in range(5)])
    async with serve_in_loop(github_settings) as served:
        accounts = [await make_user(db, served.app, name=f"Same{n}") for n in range(4)]
        plan = [
            (0, "bare"),
            (0, "someone0"),
            (0, "someone1"),
            (1, "someone2"),
            (1, "someone3"),
            (2, "someone4"),
        ]
        for n, login in plan:
            looked_up = await served.client.get(f"/api/github/users/{login}", headers=accounts[n].headers)
            assert looked_up.status_code == 200, looked_up.text
        assert fake.charged() == 22
        many = await served.client.get("/api/github/users/many", headers=accounts[3].headers)

    assert many.status_code == 200, many.text
    assert fake.charged() == ADDRESS_SHARE, "the user and its repositories, no language"


async def test_users_with_many_pages_of_repositories_under_way_at_once_stay_near_the_share(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Four chains of users with ten pages of repositories, under way at once: each read its pages
    before its first charge, and the address spent 46 of its 24. A chain now reserves its pages once
    it has the user, counting the others' reservations: with the share spent, a chain stops there.
    Four accounts with one lookup each, so that the address's share, not an account's, decides."""
    for index in range(4):
        fake.add_user(f"big{index}", thousand_repos(f"big{index}"))
    fake.add_user("wanted", two_repos())
    async with serve_in_loop(github_settings) as served:
        accounts = [await make_user(db, served.app, name=f"Same{n}") for n in range(4)]
        other = await make_user(db, served.app, name="Other")
        bigs = [f"big{index}" for index in range(4)]
        async with turn_taken(valkey):
            held = await asked_under_way(
                valkey,
                [
                    (served.client, login, account.headers)
                    for login, account in zip(bigs, accounts, strict=True)
                ],
            )
        statuses = [(await task).status_code for task in held]
        charged_by_the_address = fake.charged()
        theirs = await served.client.get("/api/github/users/wanted", headers={**other.headers, **ELSEWHERE})

    # Two or three chains reserve before the address's count reaches 24 (their users' requests are
    # charged as they come); the others stop after their users. No language once the share is spent.
    assert sorted(statuses) in ([200, 200, 429, 429], [200, 200, 200, 429]), statuses
    assert charged_by_the_address == 4 + 10 * statuses.count(200), charged_by_the_address
    assert charged_by_the_address <= ADDRESS_SHARE + 10 + 4 - 1, "past the share by one chain's pages at most"
    assert await spent_by(valkey, github_settings) == charged_by_the_address, "reservations given back"
    assert theirs.status_code == 200, theirs.text


async def test_one_account_on_two_processes_passes_its_share_by_one_chain_at_most(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The account's cap of two lookups under way is per process: on two web workers it had four of
    users with ten pages each under way, and spent 45 of its 12."""
    for index in range(4):
        fake.add_user(f"big{index}", thousand_repos(f"big{index}"))
    async with serve_in_loop(github_settings) as one, serve_in_loop(github_settings) as two:
        greedy = await make_user(db, one.app, name="Greedy")
        bigs = [f"big{index}" for index in range(4)]
        async with turn_taken(valkey):
            held = await asked_under_way(
                valkey,
                [
                    (served.client, login, greedy.headers)
                    for login, served in zip(bigs, (one, one, two, two), strict=True)
                ],
            )
        statuses = sorted([(await task).status_code for task in held])

    assert statuses == [200, 429, 429, 429], statuses
    assert int(await valkey.get(f"github:lookup-spent:{greedy.id}") or 0) == 4 + 10 == fake.charged()


# -- chains under way -----------------------------------------------------------------------------


async def test_the_accounts_of_one_address_have_at_most_four_lookups_under_way(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    for login in ("held0", "held1", "held2", "held3", "fifth", "wanted"):
        fake.add_user(login)
    async with serve_in_loop(github_settings) as served:
        first, second, third = [await make_user(db, served.app, name=f"Same{n}") for n in range(3)]
        other = await make_user(db, served.app, name="Other")
        client = served.client
        async with turn_taken(valkey):
            held = await asked_under_way(valkey, four_held(client, first, second))
            fifth = await client.get("/api/github/users/fifth", headers=third.headers)
            joined = asyncio.create_task(client.get("/api/github/users/held0", headers=third.headers))
            theirs = asyncio.create_task(
                client.get("/api/github/users/wanted", headers={**other.headers, **ELSEWHERE})
            )
            await wait_until(
                lambda: under_way(valkey, "wanted"), 20, "the other address's lookup is under way"
            )
            assert await chains_under_way(valkey, github_settings) == CHAINS_UNDER_WAY, "the join holds none"
        refused = assert_problem(fifth, 429, "github-lookups-in-flight")
        assert "one network address may have 4" in refused["detail"], refused["detail"]
        assert int(fifth.headers["retry-after"]) >= 1
        assert [(await task).status_code for task in held] == [200] * 4
        assert (await joined).status_code == 200, "joining a lookup under way adds no work"
        assert (await theirs).status_code == 200
        assert fake.recorded("/users/fifth") == []
        again = await client.get("/api/github/users/fifth", headers=third.headers)
        assert again.status_code == 200, "the lookups ended: the address's slots are free"
    assert await chains_under_way(valkey, github_settings) == 0


async def test_requests_for_one_user_asked_at_once_join_one_chain(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Each request was admitted (a slot among the address's four) before any had started the chain
    the others could join: twenty requests for one user got 429s while one chain ran for them all.
    A request finds or starts the user's flight in one step, and the flight is admitted once."""
    fake.add_user("popular", two_repos())
    async with serve_in_loop(github_settings) as served:
        account = await make_user(db, served.app, name="Tabs")
        lookups = served.app.state.services[GithubService].lookups
        cold_lookup, admit = lookups.cold_lookup, lookups.shares.admit
        asking = 0

        async def counted_cold_lookup(*args: Any) -> Any:
            nonlocal asking
            asking += 1
            return await cold_lookup(*args)

        async def every_request_asking() -> bool:
            return asking == 20

        async def admit_once_all_ask(user_id: int, client_address: str | None) -> Any:
            await wait_until(every_request_asking, 20, "every request asks for the user")
            return await admit(user_id, client_address)

        lookups.cold_lookup = counted_cold_lookup  # type: ignore[method-assign]
        lookups.shares.admit = admit_once_all_ask  # type: ignore[method-assign]
        answers = await asyncio.gather(
            *(served.client.get("/api/github/users/popular", headers=account.headers) for _ in range(20))
        )

    assert [answer.status_code for answer in answers] == [200] * 20, {a.status_code for a in answers}
    assert [r.path for r in fake.recorded("/users/popular")] == ["/users/popular", "/users/popular/repos"]
    assert await chains_under_way(valkey, github_settings) == 0


async def test_a_chain_under_way_keeps_its_slot_past_the_slots_lease(
    github_settings: Settings,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Valkey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slot's lease frees the slots of a process that died with chains under way; a chain that runs
    longer than the lease renews it, or the address's other chains could take its place meanwhile.
    The lease is a third of a second here (30 s in the app)."""
    monkeypatch.setattr(shares_module, "SLOT_LEASE_S", 0.3)
    fake.add_user("held0")
    key = f"github:address-chains:{address(github_settings)}"
    async with serve_in_loop(github_settings) as served:
        account = await make_user(db, served.app, name="Patient")
        async with turn_taken(valkey):
            held = await asked_under_way(valkey, [(served.client, "held0", account.headers)])
            ((_, first_lease_end),) = await valkey.zrange(key, 0, -1, withscores=True)

            async def renewed_past_its_first_lease() -> bool:
                slots = await valkey.zrange(key, 0, -1, withscores=True)
                return len(slots) == 1 and slots[0][1] > first_lease_end + 300

            await wait_until(renewed_past_its_first_lease, 20, "the chain's slot is renewed")
        assert (await held[0]).status_code == 200
    assert await chains_under_way(valkey, github_settings) == 0


async def test_an_accounts_lookup_past_its_own_cap_gives_the_address_slot_back(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    for login in ("held0", "held1", "third"):
        fake.add_user(login)
    async with serve_in_loop(github_settings) as served:
        greedy = await make_user(db, served.app, name="Greedy")
        async with turn_taken(valkey):
            held = await asked_under_way(
                valkey, [(served.client, f"held{i}", greedy.headers) for i in range(2)]
            )
            third = await served.client.get("/api/github/users/third", headers=greedy.headers)
            slots_after_the_refusal = await chains_under_way(valkey, github_settings)
        assert [(await task).status_code for task in held] == [200, 200]

    refused = assert_problem(third, 429, "github-lookups-in-flight")
    assert "An account may have 2" in refused["detail"], refused["detail"]
    assert slots_after_the_refusal == 2, "the refused lookup's slot was given back"


async def test_a_slot_whose_claim_lost_its_reply_is_given_back(valkey: Valkey) -> None:
    """Valkey applied the claim, and its reply was lost (a timeout, a cancelled request): the slot was
    held until its lease ended, eleven minutes for a chain."""
    slots = LeasedSlots(
        valkey,
        prefix="test:lost-replies",
        cap=4,
        lease_ms=600_000,
        too_many=lambda: TooManyLookupsError("at the cap"),
    )
    claim = slots.claim_script

    async def reply_lost(**kwargs: Any) -> Any:
        await claim(**kwargs)
        raise ConnectionError("the reply never came")

    slots.claim_script = reply_lost  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await slots.claim("somebody")
    assert await valkey.zcard("test:lost-replies:somebody") == 0


async def test_joining_a_lookup_under_way_is_free_for_an_address_whose_share_is_spent(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    fake.add_user("slow", two_repos())
    fake.add_user("new")
    async with serve_in_loop(github_settings) as served:
        payer = await make_user(db, served.app, name="Payer")
        joiner = await make_user(db, served.app, name="Joiner")
        await valkey.set(f"github:lookup-spent:{address(github_settings)}", ADDRESS_SHARE, ex=3600)
        async with turn_taken(valkey):
            paying = asyncio.create_task(
                served.client.get("/api/github/users/slow", headers={**payer.headers, **ELSEWHERE})
            )
            await wait_until(lambda: under_way(valkey, "slow"), 20, "the other address's lookup is under way")
            joined = asyncio.create_task(served.client.get("/api/github/users/slow", headers=joiner.headers))
            new = await served.client.get("/api/github/users/new", headers=joiner.headers)
        paid, joined_answer = await paying, await joined

    assert paid.status_code == 200, paid.text
    assert joined_answer.status_code == 200, joined_answer.text
    assert_problem(new, 429, "github-lookup-budget")
    assert await spent_by(valkey, github_settings) == ADDRESS_SHARE, "the join cost the spent address nothing"
    assert await spent_by(valkey, github_settings, "203.0.113.7") == 4, "its payer paid"


async def test_waiting_for_another_processs_lookup_needs_no_share_and_no_slot(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Only a flight in the same process was a free join: a request that found another process's
    chain of the user (about half of them, with two web workers) was admitted before it waited, so a
    spent share got a 429 and a share with room held one of the address's slots while it polled. A
    chain is admitted when it takes the user's fetch lock, about to ask GitHub."""
    fake.add_user("slow", two_repos())
    async with serve_in_loop(github_settings) as one, serve_in_loop(github_settings) as two:
        payer = await make_user(db, one.app, name="Payer")
        joiner = await make_user(db, two.app, name="Joiner")
        await valkey.set(f"github:lookup-spent:{address(github_settings)}", ADDRESS_SHARE, ex=3600)
        asked = waiting_in_another_process(valkey, one, two, payer.headers, joiner.headers)
        async with asked as (paying, joined):
            slots_while_waiting = await chains_under_way(valkey, github_settings)
        paid, joined_answer = await paying, await joined

    assert paid.status_code == 200, paid.text
    assert joined_answer.status_code == 200, joined_answer.text
    assert slots_while_waiting == 0, "the wait held a slot of its address"
    assert await spent_by(valkey, github_settings) == ADDRESS_SHARE, "the wait cost the spent address nothing"
    assert await spent_by(valkey, github_settings, "203.0.113.7") == 4, "its payer paid"
    assert [r.path for r in fake.recorded("/users/slow")] == ["/users/slow", "/users/slow/repos"]


@contextlib.asynccontextmanager
async def waiting_in_another_process(
    valkey: Valkey, one: Any, two: Any, payer: dict[str, str], waiter: dict[str, str]
) -> AsyncIterator[tuple[asyncio.Task[httpx.Response], asyncio.Task[httpx.Response]]]:
    """``payer``'s lookup of "slow" under way in process ``one`` (from another address), then
    ``waiter``'s in process ``two``, waiting for it, not answered: both requests, held in
    ``turn_taken`` until the block ends."""
    flights = two.app.state.services[GithubService].lookups._flights
    async with turn_taken(valkey):
        paying = asyncio.create_task(one.client.get("/api/github/users/slow", headers={**payer, **ELSEWHERE}))
        await wait_until(lambda: under_way(valkey, "slow"), 20, "the first process's lookup is under way")
        waiting = asyncio.create_task(two.client.get("/api/github/users/slow", headers=waiter))

        async def waiting_in_the_second_process_or_answered() -> bool:
            return "slow" in flights or waiting.done()

        await wait_until(waiting_in_the_second_process_or_answered, 20, "the second process asks")
        assert not waiting.done(), (await waiting).text
        yield paying, waiting


# -- refreshes ------------------------------------------------------------------------------------


async def stored_by_another_address(served: Any, db: AsyncConnection[Any], logins: list[str]) -> None:
    """The logins looked up from another address (costing this one nothing), then old enough to be
    fetched again by a refresh."""
    seeder = await make_user(db, served.app, name="Seeder")
    for login in logins:
        looked_up = await served.client.get(
            f"/api/github/users/{login}", headers={**seeder.headers, **ELSEWHERE}
        )
        assert looked_up.status_code == 200, looked_up.text
    await older_than_a_refresh_fetches(db)


async def test_a_refresh_is_charged_to_the_address_it_was_asked_from(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """A refresh's job runs in a worker, with no request: it charges the address the refresh was
    asked from (kept beside the refresh's state, as long as it), so refreshes cannot take what
    lookups may not. Here the refresh's 4 requests bring the address to its 24, and the next
    account's lookup from it is refused."""
    for index in range(6):
        fake.add_user(f"someone{index}", two_repos())
    fake.add_user("wanted")
    async with serve_in_loop(github_settings) as served:
        first, second, third = [await make_user(db, served.app, name=f"Same{n}") for n in range(3)]
        for account, logins in ((first, range(3)), (second, range(3, 5))):  # 12 and 8 of the 24
            for index in logins:
                looked_up = await served.client.get(
                    f"/api/github/users/someone{index}", headers=account.headers
                )
                assert looked_up.status_code == 200, looked_up.text
        await older_than_a_refresh_fetches(db)
        refresh = await served.client.post("/api/github/users/someone0/refresh", headers=second.headers)
        assert refresh.status_code == 202, refresh.text
        refresh_id = refresh.json()["id"]
        kept_for = await valkey.ttl(f"github:refresh-address:{refresh_id}")
        state_kept_for = await valkey.ttl(f"github:refresh:{refresh_id}")
        assert await work_refresh(github_settings, refresh_id) == "succeeded"
        refused = await served.client.get("/api/github/users/wanted", headers=third.headers)

    detail = assert_problem(refused, 429, "github-lookup-budget")["detail"]
    assert "one network address 24" in detail and "have cost 24" in detail, detail
    assert abs(kept_for - state_kept_for) <= 5, "a job that waits as long as its state is kept finds it"
    assert not await valkey.exists(f"github:refresh-address:{refresh_id}"), "forgotten once finished"
    assert await chains_under_way(valkey, github_settings) == 0


async def test_one_accounts_five_refreshes_run_at_once_all_succeed(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Five stale reads of one account (its own cap of pending refreshes) start five refreshes, and a
    worker runs them at once: the fifth failed at the address's cap while the other four ran. A job
    waits for a slot, as long as a lookup would wait."""
    logins = [f"stale{index}" for index in range(5)]
    for login in logins:
        fake.add_user(login)
    async with serve_in_loop(github_settings) as served:
        await stored_by_another_address(served, db, logins)
        await db.execute("update github_profiles set fetched_at = fetched_at - interval '2 hours'")
        reader = await make_user(db, served.app, name="Reader")
        for login in logins:
            read = await served.client.get(f"/api/github/users/{login}", headers=reader.headers)
            assert read.json()["source"] == "stale" and read.json()["refresh"] is not None, read.text
        outcomes = await work_refreshes_at_once(github_settings, len(logins))

    assert outcomes == ["succeeded"] * 5
    assert await chains_under_way(valkey, github_settings) == 0


@contextlib.asynccontextmanager
async def a_refresh_at_the_cap(valkey: Valkey, served: Any, db: AsyncConnection[Any]) -> AsyncIterator[Any]:
    """A refresh of "refreshed" (stored from another address) asked by an account of this address,
    yielded while the address's four chains are held under way (``four_held``, in ``turn_taken``):
    the refresh's answer (its ``id``, its ``state_url``) and the headers of the account that asked.
    The four chains answer 200 once the block ends."""
    await stored_by_another_address(served, db, ["refreshed"])
    first, second, third = [await make_user(db, served.app, name=f"Same{n}") for n in range(3)]
    refresh = await served.client.post("/api/github/users/refreshed/refresh", headers=third.headers)
    assert refresh.status_code == 202, refresh.text
    async with turn_taken(valkey):
        held = await asked_under_way(valkey, four_held(served.client, first, second))
        yield refresh.json(), third.headers
    assert [(await task).status_code for task in held] == [200] * 4


async def test_a_refresh_whose_address_has_four_chains_under_way_waits_then_fails_fetching_nothing(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Jobs run ten at once per worker: each passing its check while the address's other chains are
    under way, they would overshoot its share together. The job takes a slot among the address's
    chains under way, as a lookup does, across processes (here the job runs beside the server),
    waiting for one as long as a lookup waits (``GITHUB_COLD_WAIT_S``, a second here)."""
    job_settings = msgspec.structs.replace(github_settings, github_cold_wait_s=1.0)
    for login in ("held0", "held1", "held2", "held3", "refreshed"):
        fake.add_user(login)
    async with serve_in_loop(github_settings) as served:
        async with a_refresh_at_the_cap(valkey, served, db) as (refresh, asker):
            charged_before = fake.charged()
            outcome = await work_refresh(job_settings, refresh["id"])
            charged_by_the_job = fake.charged() - charged_before
        state = (await served.client.get(refresh["state_url"], headers=asker)).json()

    assert outcome == "failed" and charged_by_the_job == 0
    assert state["status"] == "failed" and state["error"]["kind"] == "rate-limited", state
    assert state["error"]["retry_after_s"] >= 1
    assert state["error"]["type"] == "/problems/github-lookups-in-flight", "the cap, not GitHub's limit"


# -- chains stopped by their payer's share --------------------------------------------------------


@contextlib.asynccontextmanager
async def as_a_worker_holds_it(
    settings: Settings, fake_server: FakeGitHubServer, fake: FakeGitHub, clock: FakeClock, **changes: Any
) -> AsyncIterator[GithubService]:
    """The service in the test's process, as a worker holds it (its settings with ``changes``), with
    "stored" old enough to refresh."""
    fake.add_user("stored", two_repos())
    configured = msgspec.structs.replace(
        settings, github_api_url=fake_server.url, github_retry_wait_s=0.01, **changes
    )
    async with open_services(configured, [clocked_github(clock)]) as services:
        github = services[GithubService]
        await github.profile("stored", DEFAULT_FILTERS, top_repos=0, top_languages=1, user_id=99)
        clock.now += timedelta(seconds=REFRESH_MIN_AGE_S + 1)
        yield github


@pytest.fixture
async def github(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    clock: FakeClock,
    db: object,
    valkey: object,
) -> AsyncIterator[GithubService]:
    async with as_a_worker_holds_it(settings, fake_server, fake, clock) as github:
        yield github


def waits_recorded(lookups: Any) -> list[object]:
    """The flights the calls of ``lookups`` wait for, as they start waiting (a caller that joins a
    flight waits for the one its starter waits for)."""
    waited: list[object] = []
    wait = lookups._wait

    async def recording(flight: object, *args: Any) -> Any:
        waited.append(flight)
        return await wait(flight, *args)

    lookups._wait = recording
    return waited


@pytest.mark.parametrize("payer_first", ["snapshot-cron", "refresh"])
async def test_a_chain_stopped_by_its_payers_share_is_asked_again_by_who_joined_it(
    payer_first: str, github: GithubService, valkey: Valkey
) -> None:
    """A refresh job that joined the snapshot cron's chain failed when the cron's share stopped it,
    and the cron that joined an account's refresh paused its run, each on a share not its own. The
    joiner now asks again, on its own share: only the payer is refused."""
    payer, joiner = (
        (SNAPSHOTS_ACCOUNT, READER) if payer_first == "snapshot-cron" else (READER, SNAPSHOTS_ACCOUNT)
    )
    budget, _ = await github.lookup_budget(payer)
    await valkey.set(f"github:lookup-spent:{payer}", budget - 1, ex=3600)  # its user, then no page
    stored = await github.lookups.load("stored")
    assert stored is not None
    requested = await github.request_refresh("stored", user_id=READER)
    waited = waits_recorded(github.lookups)

    def snapshot() -> Any:
        return github.lookups.fetch_shared(
            "stored", Priority.BACKGROUND, newer_than=stored.fetched_at, payer=Payer(SNAPSHOTS_ACCOUNT)
        )

    def refresh() -> Any:
        return github.run_refresh("stored", requested.id, user_id=READER)

    first, second = (snapshot, refresh) if payer_first == "snapshot-cron" else (refresh, snapshot)
    async with turn_taken(valkey):
        paying = asyncio.create_task(first())
        await wait_until(lambda: under_way(valkey, "stored"), 20, "the payer's chain is under way")
        joining = asyncio.create_task(second())

        async def has_joined() -> bool:
            return len(waited) == 2 and waited[0] is waited[1]

        await wait_until(has_joined, 20, "the other joined the payer's chain")
    paid, answered = await asyncio.gather(paying, joining, return_exceptions=True)

    refused, joiner_answer = (paid, answered)
    if payer_first == "snapshot-cron":
        assert isinstance(refused, PayerRefusedError), refused
        assert joiner_answer == "succeeded", (await github.refresh_state(requested.id)).error
    else:
        assert refused == "failed" and (await github.refresh_state(requested.id)).status == "failed"
        assert not isinstance(joiner_answer, BaseException), joiner_answer
    assert int(await valkey.get(f"github:lookup-spent:{joiner}") or 0) > 0, "the joiner paid its own chain"


async def test_one_job_of_an_address_waits_for_a_slot_the_others_fail_at_once(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """A job waiting for a slot holds its worker's place: six jobs of one address waited their
    thirty seconds together, asking GitHub nothing, while the queue's other jobs waited behind. One
    job of an address waits at a time."""
    logins = [f"stale{index}" for index in range(3)]
    for login in [*logins, "held0", "held1", "held2", "held3"]:
        fake.add_user(login)
    async with serve_in_loop(github_settings) as served:
        await stored_by_another_address(served, db, logins)
        readers = [await make_user(db, served.app, name=f"Reader{n}") for n in range(3)]
        first, second = [await make_user(db, served.app, name=f"Same{n}") for n in range(2)]
        for login, reader in zip(logins, readers, strict=True):
            asked = await served.client.post(f"/api/github/users/{login}/refresh", headers=reader.headers)
            assert asked.status_code == 202, asked.text
        assert github_settings.valkey_url is not None
        queue = RedisQueue(redis.from_url(github_settings.valkey_url), name=QUEUE)
        try:
            jobs = [await queue.dequeue(timeout=5) for _ in logins]
            async with open_services(github_settings, [github_module]) as services:
                async with turn_taken(valkey):
                    held = await asked_under_way(valkey, four_held(served.client, first, second))
                    running = [
                        asyncio.create_task(
                            refresh_github_profile({"services": services, "job": job}, **(job.kwargs or {}))  # type: ignore[typeddict-item]
                        )
                        for job in jobs
                        if job is not None
                    ]

                    async def two_ended() -> bool:
                        return sum(task.done() for task in running) == 2

                    await wait_until(two_ended, 20, "the jobs that may not wait end")
                    waiting = [task for task in running if not task.done()]
                outcomes = [task.result() for task in running if task.done() and task not in waiting]
                assert await waiting[0] == "succeeded", "the one that waited ran once a slot was free"
        finally:
            await queue.redis.aclose()
        assert [(await task).status_code for task in held] == [200] * 4

    assert outcomes == ["failed", "failed"]


async def test_a_reservation_given_back_never_takes_a_count_below_zero(
    github: GithubService, valkey: Valkey
) -> None:
    """A chain reserved its pages, GitHub's window turned (the count expired) and it read none: the
    give-back left the new window's count at -10, ten requests more for the account."""
    spend = github.lookups.shares._spend
    window_end_ms = 4_102_444_800_000
    await spend(keys=["test:spent:expired"], args=[-10, window_end_ms])
    await valkey.set("test:spent:low", 3)
    await spend(keys=["test:spent:low"], args=[-10, window_end_ms])
    await valkey.set("test:spent:high", 30)
    given_back = await spend(keys=["test:spent:high"], args=[-10, window_end_ms])

    assert await valkey.get("test:spent:expired") is None
    assert int(await valkey.get("test:spent:low") or -1) == 0
    assert given_back == [20]
