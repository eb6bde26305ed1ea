"""A sign-in limit reached only with attempts still being checked is not a lockout.

The throttle counts an attempt before its password is checked, so a burst cannot slip past a limit;
six correct sign-ins at once from one network (a browser and a phone, several tabs) reached the
pair's limit of five with attempts in progress, and the sixth was told ``Retry-After: 900`` and
logged as ``login_locked_out``, though the next sign-in, a moment later, passed (the races reviewer).
Such a refusal now says ``Retry-After: 1`` and is no lockout; a limit reached by failed checks still
is (``app/domains/accounts/throttle.py``), and the failure that reaches it logs
``login_lockout_began`` once, so a burst of guesses that stops leaves its lockout in the security log
(the diff reviewer: the burst's refusals were all "in progress", and nothing said "locked out").
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import TooManyRequestsError
from app.domains.accounts.throttle import LoginThrottle, throttle_key
from tests.factories import (
    GENEROUS_AUTH,
    PASSWORD,
    captured_logs,
    create_user,
    serve_in_loop,
    unique_email,
    wait_until,
)
from tests.valkey_control import ControlledValkey

NETWORK = "203.0.113.9"


async def refusal(throttle: LoginThrottle, email: str, address: str = NETWORK) -> TooManyRequestsError:
    with pytest.raises(TooManyRequestsError) as refused:
        await throttle.attempt(email, address)
    return refused.value


@pytest.fixture
async def pausable(settings: Settings, controlled_valkey: ControlledValkey) -> AsyncIterator[LoginThrottle]:
    """A throttle on a Valkey of its own, which ``cancelled_under_way`` pauses."""
    async with Valkey.from_url(controlled_valkey.url) as client:
        yield LoginThrottle(settings, client)


async def cancelled_under_way(
    throttle: LoginThrottle, controlled_valkey: ControlledValkey, work: Coroutine[Any, Any, object]
) -> None:
    """``work`` cancelled while its Valkey call is surely under way (Valkey paused meanwhile), as a
    shutdown cancels a request; then Valkey resumes and the throttle closes, waiting for what is left."""
    controlled_valkey.pause()
    try:
        running = asyncio.ensure_future(work)

        async def under_way() -> bool:
            return throttle.in_flight > 0

        await wait_until(under_way, 10, "the throttle's call waits for Valkey")
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    finally:
        controlled_valkey.resume()
    await throttle.close()


async def test_attempts_in_progress_at_the_pairs_limit_refuse_for_a_moment_not_a_window(
    settings: Settings, valkey: Valkey
) -> None:
    throttle = LoginThrottle(settings, valkey)
    email = unique_email("owner")
    in_progress = [await throttle.attempt(email, NETWORK) for _ in range(settings.login_max_failures)]

    with captured_logs() as logs:
        refused = await refusal(throttle, email)

    assert refused.headers == {"Retry-After": "1"}
    assert logs.events("login_locked_out") == []
    assert len(logs.events("login_attempts_in_progress")) == 1
    await throttle.succeeded(in_progress[0])  # one of them had the right password: the pair is cleared
    assert (await throttle.attempt(email, NETWORK)).counted


async def test_failed_checks_at_the_pairs_limit_are_still_a_lockout_for_the_window(
    settings: Settings, valkey: Valkey
) -> None:
    throttle = LoginThrottle(settings, valkey)
    email = unique_email("owner")
    for _ in range(settings.login_max_failures):
        await throttle.failed(await throttle.attempt(email, NETWORK))

    with captured_logs() as logs:
        refused = await refusal(throttle, email)

    assert int(refused.headers["Retry-After"]) > settings.login_failure_window_s - 60
    assert [line["scope"] for line in logs.events("login_locked_out")] == ["pair"]
    assert "for this account from this address" in refused.detail, "not the whole address (new-user pass)"


async def test_the_failure_that_locks_a_pair_out_says_so_once_though_nothing_is_refused_after_it(
    settings: Settings, valkey: Valkey
) -> None:
    throttle = LoginThrottle(settings, valkey)
    email = unique_email("owner")
    with captured_logs() as logs:
        burst = [await throttle.attempt(email, NETWORK) for _ in range(settings.login_max_failures)]
        assert (await refusal(throttle, email)).headers == {"Retry-After": "1"}  # the burst's last guess
        for attempt in burst:
            await throttle.failed(attempt)

    began = logs.events("login_lockout_began")
    assert [(line["scope"], line["level"]) for line in began] == [("pair", "warning")]
    assert began[0]["retry_after_s"] > settings.login_failure_window_s - 60
    assert [line["level"] for line in logs.events("login_attempts_in_progress")] == ["warning"]


async def test_an_attempts_end_is_not_lost_when_its_request_is_cancelled_nor_at_close(
    settings: Settings, pausable: LoginThrottle, controlled_valkey: ControlledValkey
) -> None:
    """A shutdown cancels the request while it ends its attempt, then closes the throttle and its
    Valkey client: the end still runs, lockout line included, so the attempt is not left in progress
    (which turned the pair's real lockout into a moment's refusal) and the lockout it began is logged."""
    email = unique_email("owner")
    for _ in range(settings.login_max_failures - 1):
        await pausable.failed(await pausable.attempt(email, NETWORK))
    last = await pausable.attempt(email, NETWORK)
    with captured_logs() as logs:
        await cancelled_under_way(pausable, controlled_valkey, pausable.failed(last))
    assert [line["scope"] for line in logs.events("login_lockout_began")] == ["pair"]
    async with Valkey.from_url(controlled_valkey.url) as reader:
        assert await reader.get(throttle_key(settings.secret_key, "pair-busy", f"{email}\n{NETWORK}")) in (
            None,
            b"0",
        )
        assert int((await refusal(LoginThrottle(settings, reader), email)).headers["Retry-After"]) > 1


async def test_an_attempt_whose_request_is_cancelled_while_valkey_counts_it_is_taken_back(
    pausable: LoginThrottle, controlled_valkey: ControlledValkey
) -> None:
    """The count landed after the request was gone (a shutdown): nothing ended the attempt, so it
    stayed counted as a failure and in progress until its busy count expired."""
    email = unique_email("owner")
    pair, busy = (
        throttle_key(pausable.settings.secret_key, "pair", f"{email}\n{NETWORK}"),
        throttle_key(pausable.settings.secret_key, "pair-busy", f"{email}\n{NETWORK}"),
    )
    await pausable.failed(await pausable.attempt(email, NETWORK))  # one failure stays counted
    await cancelled_under_way(pausable, controlled_valkey, pausable.attempt(email, NETWORK))
    assert (await pausable.valkey.get(pair), await pausable.valkey.get(busy)) == (b"1", b"0")


async def test_an_end_valkey_refuses_is_logged_and_leaves_the_answer_alone(
    settings: Settings, valkey: Valkey
) -> None:
    """A key of the wrong type (a bug, or another program's key) makes the end's script fail: the
    sign-in's answer stands (no 500 from the throttle's bookkeeping) and the failure is logged."""
    throttle = LoginThrottle(settings, valkey)
    email = unique_email("owner")
    attempt = await throttle.attempt(email, NETWORK)
    pair = throttle_key(settings.secret_key, "pair", f"{email}\n{NETWORK}")
    await valkey.delete(pair)
    await valkey.hset(pair, "not", "a counter")
    with captured_logs() as logs:
        await throttle.failed(attempt)
    assert [line["operation"] for line in logs.events("login_throttle_end_failed")] == ["failed"]


async def test_a_lockout_recorded_by_a_count_whose_request_was_cancelled_is_logged(
    settings: Settings, pausable: LoginThrottle, controlled_valkey: ControlledValkey
) -> None:
    """The count that finds the lockout unrecorded (its last attempt never ended) records it; its
    request was cancelled meanwhile, so the line comes from the count's own end."""
    email = unique_email("owner")
    for _ in range(settings.login_max_failures):
        await pausable.failed(await pausable.attempt(email, NETWORK))
    await pausable.valkey.delete(
        throttle_key(settings.secret_key, "pair-began", f"{email}\n{NETWORK}")
    )  # as if the last end was lost
    with captured_logs() as logs:
        await cancelled_under_way(pausable, controlled_valkey, pausable.attempt(email, NETWORK))
    assert [line["scope"] for line in logs.events("login_lockout_began")] == ["pair"]


async def test_the_last_attempt_of_a_lockout_abandoned_after_its_turn_still_logs_it(
    settings: Settings, valkey: Valkey
) -> None:
    """An attempt that waited for its turn and whose client went stays counted for its network: when
    it is the last of the limit's worth to end, the lockout it completes is logged (a guesser could
    close a burst's last connection to silence the line)."""
    throttle = LoginThrottle(settings, valkey)
    email = unique_email("owner")
    burst = [await throttle.attempt(email, NETWORK) for _ in range(settings.login_max_failures)]
    with captured_logs() as logs:
        for attempt in burst[:-1]:
            await throttle.failed(attempt)
        await throttle.abandoned(dataclasses.replace(burst[-1], took_slot=True), asyncio.CancelledError())
    assert [line["scope"] for line in logs.events("login_lockout_began")] == ["pair"]
    assert int((await refusal(throttle, email)).headers["Retry-After"]) > 1


async def test_a_lockout_is_logged_once_though_the_count_in_progress_was_lost(
    settings: Settings, valkey: Valkey
) -> None:
    """Valkey lost the busy count (it expired, or Valkey restarted) while the attempts ran: every
    failure then sees the limit reached, and the lockout is still logged once."""
    throttle = LoginThrottle(settings, valkey)
    email = unique_email("owner")
    burst = [await throttle.attempt(email, NETWORK) for _ in range(settings.login_max_failures)]
    await valkey.delete(throttle_key(settings.secret_key, "pair-busy", f"{email}\n{NETWORK}"))
    with captured_logs() as logs:
        for attempt in burst:
            await throttle.failed(attempt)
    assert [line["scope"] for line in logs.events("login_lockout_began")] == ["pair"]


async def test_a_lockout_in_a_windows_last_half_second_is_logged_and_its_record_dies_with_it(
    settings: Settings, valkey: Valkey
) -> None:
    """The record of a logged lockout lives exactly as long as its counter, to the millisecond (a
    counter's TTL in seconds rounds: under 500 ms left read 0 and nothing was recorded, and a record
    could outlive its counter into the next window, whose lockout then went unlogged)."""
    throttle = LoginThrottle(settings, valkey)
    email = unique_email("owner")
    pair, began = (
        throttle_key(settings.secret_key, "pair", f"{email}\n{NETWORK}"),
        throttle_key(settings.secret_key, "pair-began", f"{email}\n{NETWORK}"),
    )
    for _ in range(settings.login_max_failures - 1):
        await throttle.failed(await throttle.attempt(email, NETWORK))
    last = await throttle.attempt(email, NETWORK)
    await valkey.pexpire(pair, 450)
    with captured_logs() as logs:
        await throttle.failed(last)
    assert [line["retry_after_s"] for line in logs.events("login_lockout_began")] == [1]
    async with valkey.pipeline(transaction=True) as both:  # read at one instant (two reads drifted apart)
        both.pttl(began).pttl(pair)
        record_ms, counter_ms = await both.execute()
    assert 0 < record_ms <= counter_ms + 1


async def test_a_lockout_whose_last_attempt_never_ended_is_logged_when_the_next_is_refused(
    settings: Settings, valkey: Valkey
) -> None:
    """An attempt in progress never ended (its process died): once its busy count expires (deleted
    here) the pair is locked out with no end left to say so; the first refusal does, once."""
    throttle = LoginThrottle(settings, valkey)
    email = unique_email("owner")
    burst = [await throttle.attempt(email, NETWORK) for _ in range(settings.login_max_failures)]
    for attempt in burst[:-1]:
        await throttle.failed(attempt)
    await valkey.delete(throttle_key(settings.secret_key, "pair-busy", f"{email}\n{NETWORK}"))
    with captured_logs() as logs:
        for _ in range(2):
            assert int((await refusal(throttle, email)).headers["Retry-After"]) > 1
    assert [line["scope"] for line in logs.events("login_lockout_began")] == ["pair"]
    assert len(logs.events("login_locked_out")) == 2


async def test_after_a_success_a_later_lockout_is_logged_again(settings: Settings, valkey: Valkey) -> None:
    throttle = LoginThrottle(settings, valkey)
    email = unique_email("owner")
    with captured_logs() as logs:
        for _ in range(settings.login_max_failures):
            await throttle.failed(await throttle.attempt(email, "198.51.100.1"))  # another network's lockout
        first = [await throttle.attempt(email, NETWORK) for _ in range(settings.login_max_failures - 1)]
        await throttle.succeeded(first[0])
        for attempt in first[1:]:
            await throttle.failed(attempt)
        for _ in range(settings.login_max_failures):
            await throttle.failed(await throttle.attempt(email, NETWORK))
    assert [line["client_network"] for line in logs.events("login_lockout_began")] == [
        "198.51.100.1",
        NETWORK,
    ]


async def test_at_the_address_limit_attempts_in_progress_refuse_for_a_moment_failures_for_the_window(
    settings: Settings, valkey: Valkey
) -> None:
    throttle = LoginThrottle(msgspec.structs.replace(settings, login_address_max_failures=3), valkey)
    in_progress = [await throttle.attempt(unique_email("user"), NETWORK) for _ in range(3)]
    assert (await refusal(throttle, unique_email("user"))).headers == {"Retry-After": "1"}

    with captured_logs() as logs:
        for attempt in in_progress:
            await throttle.failed(attempt)
        refused = await refusal(throttle, unique_email("user"))
    assert int(refused.headers["Retry-After"]) > 1
    assert [line["scope"] for line in logs.events("login_lockout_began")] == ["address"]
    assert [line["scope"] for line in logs.events("login_locked_out")] == ["address"]
    assert "attempts from this address" in refused.detail


async def test_an_attempt_that_checked_no_password_is_no_longer_in_progress(
    settings: Settings, valkey: Valkey
) -> None:
    """Taken back in full (the server refused it): its busy count goes with it, so the pair's next
    attempts count from zero again and a later limit is judged on failures alone."""
    throttle = LoginThrottle(settings, valkey)
    email = unique_email("owner")
    for _ in range(settings.login_max_failures):
        await throttle.abandoned(await throttle.attempt(email, NETWORK), ConnectionError("database down"))
    for _ in range(settings.login_max_failures):
        await throttle.failed(await throttle.attempt(email, NETWORK))
    assert int((await refusal(throttle, email)).headers["Retry-After"]) > 1


async def test_a_burst_of_wrong_passwords_over_http_is_checked_five_times_and_logged_as_a_lockout(
    settings: Settings, db: AsyncConnection[Any], password_hash: str
) -> None:
    owner = await create_user(db, password_hash)
    guesses = 4 * settings.login_max_failures
    async with serve_in_loop(settings, **GENEROUS_AUTH) as served:
        with captured_logs() as logs:
            answers = await asyncio.gather(
                *(
                    served.client.post(
                        "/api/auth/login", json={"email": owner.email, "password": f"guess {n}"}
                    )
                    for n in range(guesses)
                )
            )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [401] * settings.login_max_failures + [429] * (guesses - settings.login_max_failures)
    assert [line["scope"] for line in logs.events("login_lockout_began")] == ["pair"]


async def test_wrong_passwords_over_http_end_their_attempts_so_the_lockout_is_one(
    settings: Settings, db: AsyncConnection[Any], password_hash: str
) -> None:
    """The login route reports a wrong password to the throttle: past the limit the owner's network
    is locked out for the window (had the failures stayed in progress, it would say a moment)."""
    owner = await create_user(db, password_hash)
    async with serve_in_loop(settings, **GENEROUS_AUTH) as served:
        for _ in range(settings.login_max_failures):
            wrong = await served.client.post(
                "/api/auth/login", json={"email": owner.email, "password": "wrong"}
            )
            assert wrong.status_code == 401, wrong.text
        refused = await served.client.post(
            "/api/auth/login", json={"email": owner.email, "password": PASSWORD}
        )
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) > 1


async def test_the_counters_are_keyed_by_the_secret_key_not_a_plain_hash(
    settings: Settings, valkey: Valkey
) -> None:
    """The keys held a plain SHA-256 of the email and the address: a copy of Valkey (a dump, a
    replica) gave both back by hashing candidates, every IPv4 address in hours (privacy review)."""
    email = unique_email("owner")
    throttle = LoginThrottle(settings, valkey)
    await throttle.failed(await throttle.attempt(email, NETWORK))
    stored = {key.decode() async for key in valkey.scan_iter("auth:login-attempts:*")}
    pair = f"{email}\n{NETWORK}"
    assert throttle_key(settings.secret_key, "pair", pair) in stored
    plain = {
        f"auth:login-attempts:{kind}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"
        for kind, value in (("pair", pair), ("addr", NETWORK), ("acct", email), ("known", pair))
    }
    assert stored and not stored & plain, stored
    other = throttle_key("another-secret-key-of-32-characters!", "pair", pair)
    assert other != throttle_key(settings.secret_key, "pair", pair)
