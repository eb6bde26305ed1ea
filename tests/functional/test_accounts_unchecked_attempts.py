"""A sign-in attempt that checks no password is taken back from the login throttle
(``app/domains/accounts/throttle.py``): refused because every password check was busy (503), or
cancelled while it waited for its turn in the account's schedule. It used to count as a failure, so an
owner retrying through a busy spell with the right password was locked out (429) for the window. One
that took a slot in the account's schedule stays counted for its network: its slot stays spent."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import argon2
import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import TooManyRequestsError
from app.db.models import User
from app.domains.accounts.throttle import LoginThrottle, throttle_key
from tests.factories import (
    GENEROUS_AUTH,
    PASSWORD,
    create_user,
    login,
    serve_in_loop,
    unique_email,
    wait_until,
)

HELD_PASSWORD = "a password whose check is held"


@pytest.fixture
def held_check(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """(started, release): argon2-cffi's own ``verify`` (nothing of ours replaced) waits for
    ``release`` when checking ``HELD_PASSWORD``, and sets ``started`` when it begins."""
    started, release = threading.Event(), threading.Event()
    verify = argon2.PasswordHasher.verify

    def held(self: argon2.PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        if password == HELD_PASSWORD:
            started.set()
            release.wait(60)
        return verify(self, hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", held)
    return started, release


async def sign_ins_while_every_check_is_busy(
    settings: Settings,
    held_check: tuple[threading.Event, threading.Event],
    owner: User,
    *,
    tries: int,
    known: bool,
) -> tuple[list[int], int]:
    """The statuses of ``tries`` sign-ins of ``owner``'s with the right password while the one check
    slot is held by another account's, then the status of one more once it is free. ``known``: the
    owner signs in first, so the test's network is one they signed in from."""
    started, release = held_check
    async with serve_in_loop(settings, **GENEROUS_AUTH, password_checks_max=1) as served:
        client = served.client
        if known:
            await login(client, owner.email)
        held = asyncio.create_task(
            client.post("/api/auth/login", json={"email": unique_email(), "password": HELD_PASSWORD})
        )
        try:
            assert await asyncio.to_thread(started.wait, 60), "the held check began"
            busy = [
                await client.post("/api/auth/login", json={"email": owner.email, "password": PASSWORD})
                for _ in range(tries)
            ]
        finally:
            release.set()
        assert (await held).status_code == 401
        after = await client.post("/api/auth/login", json={"email": owner.email, "password": PASSWORD})
    return [answer.status_code for answer in busy], after.status_code


async def test_sign_ins_refused_while_every_check_is_busy_do_not_lock_the_owner_out(
    settings: Settings,
    db: AsyncConnection[Any],
    password_hash: str,
    held_check: tuple[threading.Event, threading.Event],
) -> None:
    owner = await create_user(db, password_hash)
    tries = settings.login_max_failures + 1
    busy, after = await sign_ins_while_every_check_is_busy(
        settings, held_check, owner, tries=tries, known=True
    )
    assert busy == [503] * tries
    assert after == 200


async def test_an_owner_refused_while_every_check_is_busy_after_waiting_their_turn_is_not_locked_out(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    password_hash: str,
    held_check: tuple[threading.Event, threading.Event],
) -> None:
    """As above, on an account someone elsewhere has slowed: each of the owner's sign-ins (from a
    network they never signed in from) takes a turn in its schedule, waits for it, then finds every
    check busy (503). A refusal of the server's is taken back in full, turn or not: it was kept on the
    owner's network as if their client had left, and the owner was then refused (429) there."""
    owner = await create_user(db, password_hash)
    guesser = LoginThrottle(settings, valkey)
    for _ in range(settings.login_max_failures):
        await guesser.attempt(owner.email, "198.51.100.7")
    tries = settings.login_max_failures
    busy, after = await sign_ins_while_every_check_is_busy(
        settings, held_check, owner, tries=tries, known=False
    )
    assert busy == [503] * tries
    assert after == 200


async def test_an_attempt_cancelled_while_it_waits_for_its_turn_stays_counted_for_its_network(
    settings: Settings, valkey: Valkey
) -> None:
    """Past ``LOGIN_MAX_FAILURES`` an attempt waits for its slot in the account's schedule; cancelled
    there (the request ended), it is given back to the account's count, but its slot stays spent, so
    it stays counted for its network (pair and address)."""
    throttle = LoginThrottle(settings, valkey)
    email, first, second = unique_email(), "198.51.100.7", "203.0.113.9"
    for _ in range(settings.login_max_failures):  # not slowed; the pair's limit is now reached
        await throttle.attempt(email, first)
    counters = [
        throttle_key(settings.secret_key, "pair", f"{email}\n{second}"),
        throttle_key(settings.secret_key, "addr", second),
        throttle_key(settings.secret_key, "acct", email),
    ]
    assert [int(value or 0) for value in await valkey.mget(counters)] == [0, 0, settings.login_max_failures]

    await _cancel_while_waiting(throttle, valkey, email, second)

    assert [int(value or 0) for value in await valkey.mget(counters)] == [1, 1, settings.login_max_failures]
    assert await valkey.exists(throttle_key(settings.secret_key, "next", email)), (
        "the slot handed out stays spent"
    )


async def test_attempts_cancelled_while_they_wait_cannot_fill_the_schedule_for_free(
    settings: Settings, valkey: Valkey
) -> None:
    """A client reserving turns and cancelling each before its password is checked is held by its
    network's limit, as if each had been a guess: it used to be counted nowhere, so it could keep the
    account's schedule full, and the owner was refused (429) on every new network."""
    throttle = LoginThrottle(settings, valkey)
    email, first, second = unique_email(), "198.51.100.7", "203.0.113.9"
    for _ in range(settings.login_max_failures):
        await throttle.attempt(email, first)
    for _ in range(settings.login_max_failures):
        await _cancel_while_waiting(throttle, valkey, email, second)

    with pytest.raises(TooManyRequestsError) as refused:
        await throttle.attempt(email, second)
    assert "from this address" in refused.value.detail


async def _cancel_while_waiting(throttle: LoginThrottle, valkey: Valkey, email: str, network: str) -> None:
    """One attempt of ``network``'s, cancelled once it holds a slot in the account's schedule."""
    before = await valkey.get(throttle_key(throttle.settings.secret_key, "next", email))

    async def slot_taken() -> bool:
        return await valkey.get(throttle_key(throttle.settings.secret_key, "next", email)) not in (
            None,
            before,
        )

    slowed = asyncio.create_task(throttle.attempt(email, network))
    await wait_until(slot_taken, 30, "the attempt holds a slot")
    slowed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slowed
