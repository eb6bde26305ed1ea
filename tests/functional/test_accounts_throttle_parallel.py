"""The account's slow-down is one schedule shared by every request and process: guesses sent at once
from many networks wait in turn for slots of their own, and are refused once the next slot is further
away than ``LOGIN_MAX_DELAY_S`` (``app/domains/accounts/throttle.py``)."""

from __future__ import annotations

import asyncio
import itertools
from contextlib import AsyncExitStack
from typing import Any

import httpx
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.middleware import client_network
from tests.factories import (
    GENEROUS_AUTH,
    PASSWORD,
    captured_logs,
    create_user,
    serve_in_loop,
    wait_until,
    with_test_peer,
)
from tests.faults import holds

_networks = itertools.count(1)


def new_network() -> str:
    """An address in an IPv6 /64 no other request of the run uses (one /48 holds 65,536 of them)."""
    return f"2001:db8:77:{next(_networks):x}::1"


async def test_parallel_guesses_for_one_account_wait_for_slots_of_their_own(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    password_hash: str,
    argon2_verifications: list[str],
) -> None:
    """Guesses from many networks at once, through two app instances (two processes' worth of
    services on one Valkey): past LOGIN_MAX_FAILURES each one that reaches the password check holds a
    slot of the account's schedule, at least its delay after the previous one; the others are refused
    (429 with a Retry-After) without a password check."""
    victim = await create_user(db, password_hash)
    max_failures, max_delay_s, guesses = 2, 3, 24
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            served = await stack.enter_async_context(
                serve_in_loop(
                    settings, **GENEROUS_AUTH, login_max_failures=max_failures, login_max_delay_s=max_delay_s
                )
            )
            # Litestar's ASGI types are narrower than httpx's (factories' serve_in_loop passes it the same)
            transport = httpx.ASGITransport(app=with_test_peer(served.app))  # type: ignore[arg-type]
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url="http://testserver")
                )
            )
        with captured_logs() as logs:
            answers = await asyncio.gather(
                *(
                    clients[n % 2].post(
                        "/api/auth/login",
                        json={"email": victim.email, "password": f"guess {n}"},
                        headers={"x-test-peer": new_network()},
                    )
                    for n in range(guesses)
                )
            )
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {401, 429}, statuses
    checked = statuses.count(401)
    assert argon2_verifications.count(victim.password_hash) == checked
    # Past the first LOGIN_MAX_FAILURES, slots of 1, 2, then 3 s apart: at most LOGIN_MAX_DELAY_S of
    # waiting fits a few of them. Had all the guesses been checked, they would have reached the
    # throttle spread over more than a minute.
    refused = [answer for answer in answers if answer.status_code == 429]
    assert checked < guesses, f"all {guesses} parallel guesses for one account were checked"

    slowed = logs.events("login_slowed")
    # The first LOGIN_MAX_FAILURES attempts are checked at once; every later one that was checked
    # waited for a slot of the account's schedule.
    assert checked == max_failures + len(slowed), (statuses, slowed)
    slots = sorted((event["slot_ms"], event["delay_s"], event["wait_s"]) for event in slowed)
    assert len({slot for slot, _, _ in slots}) == len(slowed), f"guesses checked side by side: {slots}"
    for (earlier, _, _), (later, delay_s, _) in itertools.pairwise(slots):
        assert later - earlier >= delay_s * 1000, slots
    assert all(0 < wait_s <= max_delay_s for _, _, wait_s in slots), slots

    for answer in refused:
        assert answer.json()["type"] == "/problems/rate-limited"
        assert 1 <= int(answer.headers["retry-after"]) <= max_delay_s, answer.headers
    locked = logs.events("login_locked_out")
    assert [event["scope"] for event in locked] == ["account"] * len(refused), locked
    assert victim.email not in str(locked + slowed)


async def test_a_guesser_filling_the_schedule_does_not_lock_the_owner_out_of_a_known_network(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, password_hash: str
) -> None:
    """The owner signed in from their network before; guesses from elsewhere then fill the account's
    schedule. The owner's next sign-in from that network neither waits for a slot nor is refused."""
    owner = await create_user(db, password_hash)
    home = new_network()
    async with serve_in_loop(settings, **GENEROUS_AUTH, login_max_failures=2, login_max_delay_s=3) as served:
        transport = httpx.ASGITransport(app=with_test_peer(served.app))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

            async def sign_in(password: str, network: str) -> httpx.Response:
                return await client.post(
                    "/api/auth/login",
                    json={"email": owner.email, "password": password},
                    headers={"x-test-peer": network},
                )

            assert (await sign_in(PASSWORD, home)).status_code == 200
            with captured_logs() as logs:
                guesses = [asyncio.ensure_future(sign_in(f"guess {n}", new_network())) for n in range(24)]
                await wait_until(
                    holds(lambda: any(e["scope"] == "account" for e in logs.events("login_locked_out"))),
                    60,
                    "the guesses fill the account's schedule",
                )
                at_home = await sign_in(PASSWORD, home)
                await asyncio.gather(*guesses)
    assert at_home.status_code == 200, at_home.text
    home_network = client_network(home)
    mine = [
        event
        for event in logs.events("login_slowed") + logs.events("login_locked_out")
        if event["client_network"] == home_network
    ]
    assert not mine, mine
