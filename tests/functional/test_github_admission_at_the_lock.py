"""A GitHub fetch chain is admitted by its payer when it takes the user's fetch lock, about to ask
GitHub, not when a caller starts waiting.

Admitted up front, a request that found another process's chain of the user (about half of them,
with two web workers) got a 429 on a spent share, or held one of its address's four slots while it
polled. Admitted at the lock, the payer's refusal comes out of the flight that the callers of this
process share; who hears it decides which of them asks again:

- a caller held to the limit that refused (the same account, or the same address) hears it as its
  own 429 (ten requests of one account for one user all got 429s before; after the move, seven of
  ten got a 503 ``github-busy`` that blamed GitHub's queue);
- any other caller asks again, on its own payer, up to ``REFUSED_JOINS`` times.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.domains.github import shares as shares_module
from app.domains.github.errors import PayerRefusedError
from app.domains.github.governor import Priority
from app.domains.github.lookups import REFUSED_JOINS, ProfileLookups
from app.domains.github.services import GithubService
from app.domains.github.shares import SNAPSHOTS_ACCOUNT, Payer
from tests.factories import make_user, serve_in_loop, wait_until
from tests.fakes.clock import FakeClock
from tests.fakes.github import FakeGitHub, FakeGitHubServer
from tests.functional.test_github_address_share import (
    ADDRESS_SHARE,
    READER,
    a_refresh_at_the_cap,
    address,
    as_a_worker_holds_it,
    chains_under_way,
    spent_by,
    waiting_in_another_process,
    waits_recorded,
)
from tests.functional.test_github_address_share import github as github  # the fixtures
from tests.functional.test_github_address_share import github_settings as github_settings
from tests.functional.test_github_fair_share import two_repos
from tests.functional.test_github_http import work_refresh


def answers_by_problem(answers: list[Any]) -> Counter[str]:
    """``200``, or the status and the problem's slug: ``429 github-lookup-budget``."""
    counted: Counter[str] = Counter()
    for answer in answers:
        slug = "" if answer.status_code == 200 else " " + answer.json()["type"].rsplit("/", 1)[-1]
        counted[f"{answer.status_code}{slug}"] += 1
    return counted


async def a_spent_accounts_lookup_under_way(
    served: Any, db: AsyncConnection[Any], valkey: Valkey
) -> tuple[asyncio.Task[Any], list[object]]:
    """An account whose share is spent asks for "popular": returned once its flight has started,
    its admission held until a second caller waits for it (``admitted_once_all_ask``). Its request,
    and the flights waited for."""
    spent = await make_user(db, served.app, name="Spent")
    lookups = served.app.state.services[GithubService].lookups
    budget, _ = await lookups.shares.budget(spent.id)
    await valkey.set(f"github:lookup-spent:{spent.id}", budget, ex=3600)
    waited = admitted_once_all_ask(lookups, 2)
    first = asyncio.create_task(served.client.get("/api/github/users/popular", headers=spent.headers))
    await wait_until(lambda: asyncio.sleep(0, bool(waited)), 20, "the first request's flight starts")
    return first, waited


def admitted_once_all_ask(lookups: ProfileLookups, asking: int) -> list[object]:
    """The first flight's admission waits until ``asking`` callers wait for a flight: every one of
    them has joined it when its payer is refused. Returns the flights waited for, as they are."""
    waited = waits_recorded(lookups)
    admit = lookups.shares.admit

    async def every_caller_waits() -> bool:
        return len(waited) >= asking

    async def admit_once_all_wait(user_id: int, client_address: str | None) -> Any:
        await wait_until(every_caller_waits, 20, f"{asking} callers wait for the flight")
        lookups.shares.admit = admit  # type: ignore[method-assign]
        return await admit(user_id, client_address)

    lookups.shares.admit = admit_once_all_wait  # type: ignore[method-assign,assignment]
    return waited


@pytest.mark.parametrize("refused_by", ["address-share", "address-cap", "account-share"])
async def test_one_payers_requests_for_one_user_all_hear_its_own_refusal(
    refused_by: str, github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    fake.add_user("popular", two_repos())
    async with serve_in_loop(github_settings) as served:
        account = await make_user(db, served.app, name="Tabs")
        lookups = served.app.state.services[GithubService].lookups
        held = []
        if refused_by == "address-share":
            await valkey.set(f"github:lookup-spent:{address(github_settings)}", ADDRESS_SHARE, ex=3600)
        elif refused_by == "account-share":
            budget, _ = await lookups.shares.budget(account.id)
            await valkey.set(f"github:lookup-spent:{account.id}", budget, ex=3600)
        else:
            held = [await lookups.shares.address_chains.claim(address(github_settings)) for _ in range(4)]
        admitted_once_all_ask(lookups, 10)
        answers = await asyncio.gather(
            *(served.client.get("/api/github/users/popular", headers=account.headers) for _ in range(10))
        )
        for slot in held:
            await slot.release()

    expected = "429 github-lookups-in-flight" if refused_by == "address-cap" else "429 github-lookup-budget"
    assert answers_by_problem(answers) == Counter({expected: 10})
    assert fake.recorded("/users/popular") == []


async def test_callers_whose_own_shares_are_spent_hear_their_own_429_behind_other_refusals(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Accounts whose shares are all spent ask for one user at once. Each refused flight's other
    callers asked again, one of them starting a flight certain to be refused: the last caller asked
    once per account, then got a 503 that blamed others. A caller checks its own shares first."""
    fake.add_user("popular", two_repos())
    callers = REFUSED_JOINS + 2
    async with serve_in_loop(github_settings) as served:
        accounts = [await make_user(db, served.app, name=f"Spent{n}") for n in range(callers)]
        lookups = served.app.state.services[GithubService].lookups
        budget, _ = await lookups.shares.budget(accounts[0].id)
        for account in accounts:
            await valkey.set(f"github:lookup-spent:{account.id}", budget, ex=3600)
        admitted_once_all_ask(lookups, callers)
        answers = await asyncio.gather(
            *(served.client.get("/api/github/users/popular", headers=a.headers) for a in accounts)
        )

    assert answers_by_problem(answers) == Counter({"429 github-lookup-budget": callers})


async def at_cap_from(
    served: Any, db: AsyncConnection[Any], settings: Settings, count: int
) -> list[dict[str, str]]:
    """``count`` accounts, each asking from an address of its own whose four slots are taken: the
    headers of each."""
    lookups = served.app.state.services[GithubService].lookups
    asks = []
    for n in range(count):
        ip = f"203.0.113.{100 + n}"
        for _ in range(4):
            await lookups.shares.address_chains.claim(address(settings, ip))
        account = await make_user(db, served.app, name=f"AtCap{n}")
        asks.append({**account.headers, "x-forwarded-for": ip})
    return asks


async def test_a_caller_behind_more_refused_payers_than_it_joins_is_told_to_ask_again(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    """Callers from addresses each at its cap (their shares with room) ask for one user at once:
    each refused flight's other callers ask again, and one of them starts the next. The last caller
    asks ``REFUSED_JOINS`` times more than once, then gets a 503 ``github-busy``."""
    fake.add_user("popular", two_repos())
    callers = REFUSED_JOINS + 2
    async with serve_in_loop(github_settings) as served:
        asks = await at_cap_from(served, db, github_settings, callers)
        admitted_once_all_ask(served.app.state.services[GithubService].lookups, callers)
        answers = await asyncio.gather(
            *(served.client.get("/api/github/users/popular", headers=headers) for headers in asks)
        )

    assert answers_by_problem(answers) == Counter(
        {"429 github-lookups-in-flight": REFUSED_JOINS + 1, "503 github-busy": 1}
    )
    (busy,) = [answer for answer in answers if answer.status_code == 503]
    assert "other accounts or addresses that their own limits refused" in busy.json()["detail"]
    assert int(busy.headers["retry-after"]) >= 1


async def test_a_requests_whole_wait_across_its_asks_is_its_cold_wait(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any]
) -> None:
    """Each ask waited ``GITHUB_COLD_WAIT_S`` afresh: behind five refused flights a request could
    wait five times as long as a request may. Here each refusal comes 0.3 s into its flight, and a
    request may wait 1 s: the last callers' waits end (503 ``github-unavailable``) before a fifth
    ask would have told one to ask again."""
    fake.add_user("popular", two_repos())
    callers = REFUSED_JOINS + 2
    short = msgspec.structs.replace(github_settings, github_cold_wait_s=1.0)
    async with serve_in_loop(short) as served:
        asks = await at_cap_from(served, db, short, callers)
        lookups = served.app.state.services[GithubService].lookups
        admit = lookups.shares.admit

        async def admitted_later(user_id: int, client_address: str | None) -> Any:
            await asyncio.sleep(0.3)  # the flight's time before its payer is refused (not a synchronisation)
            return await admit(user_id, client_address)

        lookups.shares.admit = admitted_later
        admitted_once_all_ask(lookups, callers)
        answers = await asyncio.gather(
            *(served.client.get("/api/github/users/popular", headers=headers) for headers in asks)
        )

    counted = answers_by_problem(answers)
    assert "503 github-busy" not in counted, counted
    assert counted["503 github-unavailable"] >= 1, counted


async def test_a_request_whose_wait_ended_before_it_asks_again_starts_no_flight(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """A request refused by another account's share asks again on its own payer; when its wait has
    ended by then, the flight it started would be admitted and ask GitHub for nobody. Here the
    check of its own shares takes past its half-second wait."""
    fake.add_user("popular", two_repos())
    short = msgspec.structs.replace(github_settings, github_cold_wait_s=0.5)
    async with serve_in_loop(short) as served:
        late = await make_user(db, served.app, name="Late")
        lookups = served.app.state.services[GithubService].lookups
        refusal = lookups.shares.refusal

        async def slow_for_the_late(user_id: int, client_address: str | None) -> Any:
            if user_id == late.id:
                await asyncio.sleep(0.6)  # past the request's wait (a duration, not a synchronisation)
            return await refusal(user_id, client_address)

        lookups.shares.refusal = slow_for_the_late  # type: ignore[method-assign]
        first, _ = await a_spent_accounts_lookup_under_way(served, db, valkey)
        answered = await served.client.get("/api/github/users/popular", headers=late.headers)
        refused = await first
        await wait_until(lambda: asyncio.sleep(0, not lookups._flights), 20, "no flight is under way")

    assert answers_by_problem([refused, answered]) == Counter(
        {"429 github-lookup-budget": 1, "503 github-unavailable": 1}
    )
    assert fake.recorded("/users/popular") == [], "no flight asked GitHub for the request that left"


async def test_a_request_of_another_account_that_joined_a_refused_flight_pays_its_own(
    github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    fake.add_user("popular", two_repos())
    async with serve_in_loop(github_settings) as served:
        roomy = await make_user(db, served.app, name="Roomy")
        first, waited = await a_spent_accounts_lookup_under_way(served, db, valkey)
        answered = await served.client.get("/api/github/users/popular", headers=roomy.headers)
        refused = await first

    assert waited[0] is waited[1], "the second joined the first's flight"
    assert answers_by_problem([refused]) == Counter({"429 github-lookup-budget": 1})
    assert answered.status_code == 200, answered.text
    assert int(await valkey.get(f"github:lookup-spent:{roomy.id}") or 0) == 4, "the joiner paid its own"


async def test_the_snapshot_cron_that_joined_a_refresh_refused_at_the_cap_pays_its_own(
    github: GithubService, valkey: Valkey, settings: Settings
) -> None:
    stored = await github.lookups.load("stored")
    assert stored is not None
    requested = await github.request_refresh("stored", user_id=READER, address=address(settings))
    held = [await github.lookups.shares.address_chains.claim(address(settings)) for _ in range(4)]
    waited = admitted_once_all_ask(github.lookups, 2)
    refresh = asyncio.create_task(github.run_refresh("stored", requested.id, user_id=READER))
    await wait_until(lambda: asyncio.sleep(0, bool(waited)), 20, "the refresh's flight starts")
    snapshot = github.lookups.fetch_shared(
        "stored", Priority.BACKGROUND, newer_than=stored.fetched_at, payer=Payer(SNAPSHOTS_ACCOUNT)
    )
    fetched, outcome = await asyncio.gather(snapshot, refresh)
    for slot in held:
        await slot.release()

    assert waited[0] is waited[1], "the cron joined the refresh's flight"
    assert fetched.fetched_at > stored.fetched_at
    assert int(await valkey.get(f"github:lookup-spent:{SNAPSHOTS_ACCOUNT}") or 0) == 4, "the cron paid"
    assert outcome == "succeeded", (await github.refresh_state(requested.id)).error


@pytest.mark.parametrize("share", ["room", "spent"])
async def test_a_request_waiting_for_another_processs_chain_that_stops_then_asks_on_its_own(
    share: str, github_settings: Settings, fake: FakeGitHub, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The first process's chain stops on its payer's share once it has the user (nothing stored,
    nothing remembered): the second process's request, which waited for it without a share or a
    slot, takes the lock and asks on its own payer."""
    fake.add_user("slow", two_repos())
    async with serve_in_loop(github_settings) as one, serve_in_loop(github_settings) as two:
        payer = await make_user(db, one.app, name="Payer")
        poller = await make_user(db, two.app, name="Poller")
        budget, _ = await one.app.state.services[GithubService].lookup_budget(payer.id)
        await valkey.set(f"github:lookup-spent:{payer.id}", budget - 1, ex=3600)  # its user, no page
        if share == "spent":
            await valkey.set(f"github:lookup-spent:{address(github_settings)}", ADDRESS_SHARE, ex=3600)
        async with waiting_in_another_process(valkey, one, two, payer.headers, poller.headers) as asked:
            paying, polling = asked
        paid, polled = await paying, await polling
        assert await chains_under_way(valkey, github_settings) == 0

    assert paid.status_code == 429, paid.text
    if share == "room":
        assert polled.status_code == 200, polled.text
        assert await spent_by(valkey, github_settings) == 4
    else:
        assert answers_by_problem([polled]) == Counter({"429 github-lookup-budget": 1})
        assert await spent_by(valkey, github_settings) == ADDRESS_SHARE


async def test_a_refresh_waiting_for_a_slot_reads_no_whole_profile(
    github_settings: Settings,
    fake: FakeGitHub,
    db: AsyncConnection[Any],
    valkey: Valkey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refresh job at its address's cap asks again four times a second; each try takes the user's
    lock before its payer is refused, and read the whole stored document (up to a thousand
    repositories) each time. It reads when the profile was fetched only."""
    job_settings = msgspec.structs.replace(github_settings, github_cold_wait_s=1.0)
    for login in ("held0", "held1", "held2", "held3", "refreshed"):
        fake.add_user(login)
    loads: Counter[str] = Counter()
    load = ProfileLookups.load

    async def counted(self: ProfileLookups, login: str) -> Any:
        loads[login] += 1
        return await load(self, login)

    async with (
        serve_in_loop(github_settings) as served,
        a_refresh_at_the_cap(valkey, served, db) as (refresh, _),
    ):
        monkeypatch.setattr(ProfileLookups, "load", counted)
        outcome = await work_refresh(job_settings, refresh["id"])
        monkeypatch.setattr(ProfileLookups, "load", load)

    assert outcome == "failed"
    assert loads["refreshed"] == 0, loads


# -- a refresh job at its address's cap ------------------------------------------------------------


@pytest.fixture
async def patient(
    settings: Settings,
    fake_server: FakeGitHubServer,
    fake: FakeGitHub,
    clock: FakeClock,
    db: object,
    valkey: object,
) -> AsyncIterator[GithubService]:
    """``github``'s service, whose refresh jobs wait up to 3 s for a slot at their address's cap."""
    async with as_a_worker_holds_it(settings, fake_server, fake, clock, github_cold_wait_s=3.0) as service:
        yield service


def admissions_and_turns(service: GithubService) -> tuple[list[str], list[str | None]]:
    """The outcome of each admission (``admitted``, or the refusal's slug), and each waiting turn
    asked for, as the service's chains ask."""
    shares = service.lookups.shares
    admissions: list[str] = []
    turns: list[str | None] = []
    admit, waiting_turn = shares.admit, shares.waiting_turn

    async def recorded_admit(user_id: int, client_address: str | None) -> Any:
        try:
            payer = await admit(user_id, client_address)
        except PayerRefusedError as refused:
            admissions.append(refused.problem.slug)
            raise
        admissions.append("admitted")
        return payer

    @contextlib.asynccontextmanager
    async def recorded_turn(client_address: str | None) -> AsyncIterator[bool]:
        turns.append(client_address)
        async with waiting_turn(client_address) as waiting:
            yield waiting

    shares.admit = recorded_admit  # type: ignore[method-assign,assignment]
    shares.waiting_turn = recorded_turn  # type: ignore[method-assign,assignment]
    return admissions, turns


@pytest.mark.parametrize("spent", ["account", "address"])
async def test_a_refresh_refused_for_a_share_fails_at_once_without_waiting_for_a_slot(
    spent: str, patient: GithubService, valkey: Valkey, settings: Settings
) -> None:
    requested = await patient.request_refresh("stored", user_id=READER, address=address(settings))
    budget, _ = await patient.lookup_budget(READER)
    spent_key, spent_count = (
        (f"github:lookup-spent:{READER}", budget)
        if spent == "account"
        else (f"github:lookup-spent:{address(settings)}", ADDRESS_SHARE)
    )
    await valkey.set(spent_key, spent_count, ex=3600)
    admissions, turns = admissions_and_turns(patient)

    outcome = await patient.run_refresh("stored", requested.id, user_id=READER)

    state = await patient.refresh_state(requested.id)
    assert outcome == "failed" and state.error is not None
    assert state.error.kind == "rate-limited" and (state.error.retry_after_s or 0) > 2, state.error
    assert state.error.type == "/problems/github-lookup-budget", "the share, not GitHub's limit"
    assert admissions == ["github-lookup-budget"]
    assert turns == [], "a refusal for a share takes no turn to wait for a slot"


async def test_a_refresh_waiting_for_a_slot_fails_once_its_share_is_spent(
    patient: GithubService, valkey: Valkey, settings: Settings
) -> None:
    requested = await patient.request_refresh("stored", user_id=READER, address=address(settings))
    held = [await patient.lookups.shares.address_chains.claim(address(settings)) for _ in range(4)]
    admissions, turns = admissions_and_turns(patient)
    job = asyncio.create_task(patient.run_refresh("stored", requested.id, user_id=READER))
    await wait_until(lambda: asyncio.sleep(0, bool(turns)), 20, "the refresh waits for a slot")
    budget, _ = await patient.lookup_budget(READER)
    await valkey.set(f"github:lookup-spent:{READER}", budget, ex=3600)

    outcome = await job

    for slot in held:
        await slot.release()
    state = await patient.refresh_state(requested.id)
    assert outcome == "failed" and state.error is not None
    assert (state.error.retry_after_s or 0) > 2, "the share's Retry-After, not the cap's"
    assert state.error.type == "/problems/github-lookup-budget", "the share, not the cap"
    assert admissions[-1] == "github-lookup-budget"
    assert admissions.count("github-lookup-budget") == 1, "it asked no more once its share was spent"
    assert await valkey.zcard(f"github:address-waiters:{address(settings)}") == 0, "its turn given back"


async def test_a_refresh_waiting_for_a_slot_keeps_its_turn_past_the_turns_lease(
    patient: GithubService, valkey: Valkey, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One job of an address at a time waits for a slot. A try of the job may wait for another
    process's chain of the login past the job's ``GITHUB_COLD_WAIT_S``, and the turn's lease (that
    and 30 s) lapsed under it: a second job of the address could then wait too. The turn is renewed
    while the job waits. Its lease is a third of a second here (30 s in the app)."""
    monkeypatch.setattr(shares_module, "SLOT_LEASE_S", 0.3)
    patient.lookups.shares.address_waiters.lease_ms = 300
    requested = await patient.request_refresh("stored", user_id=READER, address=address(settings))
    held = [await patient.lookups.shares.address_chains.claim(address(settings)) for _ in range(4)]
    key = f"github:address-waiters:{address(settings)}"
    job = asyncio.create_task(patient.run_refresh("stored", requested.id, user_id=READER))

    async def the_jobs_turn_taken() -> bool:
        return bool(await valkey.zcard(key))

    await wait_until(the_jobs_turn_taken, 20, "the refresh waits for a slot")
    ((_, first_lease_end),) = await valkey.zrange(key, 0, -1, withscores=True)

    async def renewed_past_its_first_lease() -> bool:
        turns = await valkey.zrange(key, 0, -1, withscores=True)
        return len(turns) == 1 and turns[0][1] > first_lease_end + 300

    await wait_until(renewed_past_its_first_lease, 20, "the job's turn is renewed")
    for slot in held:
        await slot.release()

    assert await job == "succeeded", (await patient.refresh_state(requested.id)).error
    assert await valkey.zcard(key) == 0, "its turn given back"
