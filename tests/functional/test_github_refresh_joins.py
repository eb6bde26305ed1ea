"""Requests for a login's refresh that meet one being begun: each is given the refresh whose job will
run, with a state to read, and a request that joins costs its account no slot.

Before, the login's pending marker was claimed before the refresh's state existed: a second request
read it as ended, took it over and, its enqueue refused by the first one's job, handed its own id,
which no job finishes, to the requests that came meanwhile (they read "failed: the refresh's job
was lost" once the grace had passed, while the real refresh succeeded). And an account's refresh
counted before its state was saved looked ended to the account's next request, which then went
past the cap.

The interleavings are fixed by holding the service's calls into Valkey and SAQ (called through).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection
from saq.queue.redis import RedisQueue
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import open_services
from app.domains.github.errors import LookupBudgetError
from app.domains.github.module import module as github_module
from app.domains.github.refreshes import REFRESH_STATE_TTL_S, Refreshes
from app.domains.github.schemas import RefreshOut
from app.domains.github.services import GithubService
from tests.factories import clocked_github, wait_until
from tests.fakes.clock import FakeClock


class HeldScript:
    """The first Valkey script call naming ``key`` is held, before it runs or after (``after``),
    until ``release()``; ``reached`` is set once it is held."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, client: Valkey, key: str, *, after: bool = False
    ) -> None:
        self.reached, self.released = asyncio.Event(), asyncio.Event()
        held = False
        evalsha = client.evalsha

        async def holding(*args: Any) -> Any:
            nonlocal held
            if held or key not in args:
                return await evalsha(*args)
            if not after:
                held = True
                self.reached.set()
                await self.released.wait()
                return await evalsha(*args)
            result = await evalsha(*args)  # a NOSCRIPT error goes to the script, which loads and calls again
            held = True
            self.reached.set()
            await self.released.wait()
            return result

        monkeypatch.setattr(client, "evalsha", holding)

    def release(self) -> None:
        self.released.set()


async def until(event: asyncio.Event, task: asyncio.Future[Any]) -> None:
    """Until ``event`` is set, or ``task`` has ended (a request that failed waits for nothing)."""
    waiting = asyncio.ensure_future(event.wait())
    await asyncio.wait([waiting, task], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()


@pytest.fixture
async def refreshes(settings: Settings, db: AsyncConnection[Any], valkey: Valkey) -> AsyncIterator[Refreshes]:
    configured = msgspec.structs.replace(settings, github_user_pending_refreshes=1)
    async with open_services(configured, [github_module]) as services:
        yield services[GithubService].refreshes


def ask(refreshes: Refreshes, login: str, user_id: int) -> asyncio.Future[RefreshOut | None]:
    return asyncio.ensure_future(refreshes.join_or_enqueue(login, user_id))


async def assert_run_by_the_job(refreshes: Refreshes, valkey: Valkey, login: str, answers: list[Any]) -> str:
    """Every answer is the refresh of the login's job, which the marker names; its id."""
    assert refreshes._queue is not None
    job = await refreshes._queue.job(f"github-refresh:{login}")
    assert job is not None and job.kwargs is not None
    running = job.kwargs["refresh_id"]
    assert [str(answer.id) if answer is not None else None for answer in answers] == [running] * len(answers)
    assert await valkey.get(f"github:refresh-pending:{login}") == running.encode()
    assert (await refreshes.refresh_state(answers[0].id)).status == "queued"
    return str(running)


async def pending_of(valkey: Valkey, user_id: int) -> list[str]:
    return [member.decode() for member in await valkey.zrange(f"github:user-refreshes:{user_id}", 0, -1)]


async def test_requests_meeting_a_refresh_being_begun_are_given_the_one_with_the_job(
    refreshes: Refreshes, valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request is held at its account's count until a second one gets there too, the
    second there until the first has answered; a second enqueue, if one happens, is held until a
    third request has answered."""
    first_counting = HeldScript(monkeypatch, refreshes.valkey, "github:user-refreshes:1")
    second_counting = HeldScript(monkeypatch, refreshes.valkey, "github:user-refreshes:2")
    assert refreshes._queue is not None
    enqueue, enqueues = refreshes._queue.enqueue, 0
    second_enqueuing, third_answered = asyncio.Event(), asyncio.Event()

    async def held_enqueue(*args: Any, **kwargs: Any) -> Any:
        nonlocal enqueues
        enqueues += 1
        if enqueues == 2:
            second_enqueuing.set()
            await third_answered.wait()
        return await enqueue(*args, **kwargs)

    monkeypatch.setattr(refreshes._queue, "enqueue", held_enqueue)

    first = ask(refreshes, "octo", 1)
    await until(first_counting.reached, first)
    second = ask(refreshes, "octo", 2)
    await until(second_counting.reached, second)
    first_counting.release()
    await asyncio.wait([first])
    second_counting.release()
    await until(second_enqueuing, second)
    try:
        third = await refreshes.join_or_enqueue("octo", 3)
    finally:
        third_answered.set()

    running = await assert_run_by_the_job(refreshes, valkey, "octo", [await first, await second, third])
    for user_id in (1, 2, 3):  # only the account whose refresh runs has one pending
        assert await pending_of(valkey, user_id) == ([running] if user_id == 1 else [])


async def test_a_refresh_whose_marker_expired_while_its_job_waited_is_joined(
    refreshes: Refreshes, valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker lives the refresh timeout and 5 minutes; a job may wait longer in a backlog. Whoever
    asks then joins the waiting job's refresh, and so does a request that comes meanwhile."""
    waiting = await refreshes.join_or_enqueue("octo", 1)
    assert waiting is not None
    await valkey.delete("github:refresh-pending:octo")
    assert refreshes._queue is not None
    enqueue = refreshes._queue.enqueue
    enqueuing, third_answered = asyncio.Event(), asyncio.Event()

    async def held_enqueue(*args: Any, **kwargs: Any) -> Any:
        enqueuing.set()
        await third_answered.wait()
        return await enqueue(*args, **kwargs)

    monkeypatch.setattr(refreshes._queue, "enqueue", held_enqueue)
    second = ask(refreshes, "octo", 2)
    await until(enqueuing, second)
    try:
        third = await refreshes.join_or_enqueue("octo", 3)
    finally:
        third_answered.set()

    await assert_run_by_the_job(refreshes, valkey, "octo", [waiting, await second, third])
    assert third is not None and (await refreshes.refresh_state(third.id)).id == waiting.id


async def test_a_second_click_joins_the_first_even_at_the_accounts_cap(
    refreshes: Refreshes, valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot (the fixture's cap): the first request holds it, held just after it was counted; the
    same account asking for the same login meanwhile joins it (was: None, a 429)."""
    counted = HeldScript(monkeypatch, refreshes.valkey, "github:user-refreshes:1", after=True)
    first = ask(refreshes, "octo", 1)
    await until(counted.reached, first)
    again = await refreshes.join_or_enqueue("octo", 1)
    counted.release()

    await assert_run_by_the_job(refreshes, valkey, "octo", [await first, again])


async def test_an_account_at_its_cap_is_refused_while_its_counted_refresh_is_being_begun(
    refreshes: Refreshes, valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot: a refresh counted, held before anything else is done for it, still holds it (was:
    its state not saved yet, the account's next request took it as ended and went past the cap)."""
    counted = HeldScript(monkeypatch, refreshes.valkey, "github:user-refreshes:1", after=True)
    first = ask(refreshes, "octo", 1)
    await until(counted.reached, first)
    other = await refreshes.join_or_enqueue("other", 1)
    counted.release()

    assert other is None
    running = await assert_run_by_the_job(refreshes, valkey, "octo", [await first])
    assert await pending_of(valkey, 1) == [running]
    assert refreshes._queue is not None and await refreshes._queue.job("github-refresh:other") is None


async def test_a_refresh_waiting_in_a_backlog_keeps_its_accounts_slot_past_its_marker(
    refreshes: Refreshes, valkey: Valkey
) -> None:
    """A job may wait longer than the login's marker lives: the account's slot lasts as long as the
    refresh's state (it ends earlier with the refresh), so the account cannot begin another (was: the
    slot lapsed with the marker, and every 15 minutes the account could queue up to its cap again)."""
    waiting = await refreshes.join_or_enqueue("octo", 1)
    assert waiting is not None
    await valkey.delete("github:refresh-pending:octo")  # expired
    slot_ends = await valkey.zscore("github:user-refreshes:1", str(waiting.id))
    assert slot_ends is not None and slot_ends >= time.time() + REFRESH_STATE_TTL_S - 60
    assert await refreshes.join_or_enqueue("other", 1) is None
    assert (await refreshes.join_or_enqueue("octo", 2)) == waiting


async def test_a_request_that_only_joins_is_not_refused_for_its_accounts_spent_share(
    refreshes: Refreshes, valkey: Valkey
) -> None:
    waiting = await refreshes.join_or_enqueue("octo", 1)
    assert waiting is not None
    await valkey.set("github:lookup-spent:2", 1_000_000)
    with pytest.raises(LookupBudgetError):
        await refreshes.join_or_enqueue("other", 2)
    await valkey.delete("github:refresh-pending:octo")  # expired while the job waits
    assert await refreshes.join_or_enqueue("octo", 2) == waiting


async def test_a_request_cancelled_once_its_refresh_is_counted_still_enqueues_it(
    refreshes: Refreshes, valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted and made the login's pending one, a refresh is given to others: a request cancelled
    then (a shutdown) does not leave it without a job, holding its account's slot."""
    counted = HeldScript(monkeypatch, refreshes.valkey, "github:user-refreshes:1", after=True)
    first = ask(refreshes, "octo", 1)
    await until(counted.reached, first)
    first.cancel()
    joined = await refreshes.join_or_enqueue("octo", 2)
    counted.release()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert refreshes._queue is not None
    queue = refreshes._queue

    async def enqueued() -> bool:
        return await queue.job("github-refresh:octo") is not None

    await wait_until(enqueued, 10, "the counted refresh is enqueued")
    running = await assert_run_by_the_job(refreshes, valkey, "octo", [joined])
    assert await pending_of(valkey, 1) == [running]


async def test_a_refresh_that_cannot_be_enqueued_fails_at_once_for_whoever_joined_it(
    refreshes: Refreshes, valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its state says failed, its marker and its account's slot are freed (was: queued for the
    grace, given to everyone meanwhile, the slot held)."""
    assert refreshes._queue is not None
    enqueuing, joined_meanwhile = asyncio.Event(), asyncio.Event()

    async def failing_enqueue(*args: Any, **kwargs: Any) -> Any:
        enqueuing.set()
        await joined_meanwhile.wait()
        raise ConnectionError("Valkey went away")

    monkeypatch.setattr(refreshes._queue, "enqueue", failing_enqueue)
    first = ask(refreshes, "octo", 1)
    await until(enqueuing, first)
    try:
        joined = await refreshes.join_or_enqueue("octo", 2)
    finally:
        joined_meanwhile.set()
    with pytest.raises(ConnectionError):
        await first

    assert joined is not None
    ended = await refreshes.refresh_state(joined.id)
    assert ended.status == "failed" and ended.error is not None and ended.error.kind == "unavailable"
    assert await valkey.get("github:refresh-pending:octo") is None
    assert await pending_of(valkey, 1) == []


async def test_the_accounts_cap_holds_for_a_service_on_another_clock(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, clock: FakeClock
) -> None:
    """The slots' scores and their key's expiry are Valkey's time, not the service's clock (on a
    clock behind, a test's here, the key expired as it was written: the cap held nothing)."""
    configured = msgspec.structs.replace(settings, github_user_pending_refreshes=1)
    async with open_services(configured, [clocked_github(clock)]) as services:
        refreshes = services[GithubService].refreshes
        assert await refreshes.join_or_enqueue("octo", 1) is not None
        assert await refreshes.join_or_enqueue("other", 1) is None
        assert len(await pending_of(valkey, 1)) == 1


async def test_closing_waits_for_a_refresh_a_cancelled_request_was_beginning(
    refreshes: Refreshes, valkey: Valkey, monkeypatch: pytest.MonkeyPatch, github_queue: RedisQueue
) -> None:
    """A shutdown cancels the request while its refresh is counted but not enqueued: close() lets the
    enqueue finish before it closes the queue's connection."""
    counted = HeldScript(monkeypatch, refreshes.valkey, "github:user-refreshes:1", after=True)
    first = ask(refreshes, "octo", 1)
    await until(counted.reached, first)
    first.cancel()
    closing = asyncio.ensure_future(refreshes.close())
    await asyncio.wait([closing], timeout=0)  # close() has begun waiting
    counted.release()
    await closing
    job = await github_queue.job("github-refresh:octo")
    assert job is not None and job.kwargs is not None
    assert await valkey.get("github:refresh-pending:octo") == job.kwargs["refresh_id"].encode()
