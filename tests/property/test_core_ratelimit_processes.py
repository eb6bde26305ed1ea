"""The limiter never admits more than its quota, even under concurrent hits from several processes.

Each example fires rounds of concurrent ``RateLimiter.hit`` calls from 2-4 spawned processes (one
asyncio loop each, all hits of a round concurrent, all processes released together by a barrier once
each is connected) at one key, then checks what was admitted against the counters left in Valkey.

The limiter leases tokens in blocks (``app.core.ratelimit``), so besides "never over quota" the
properties pin down what leasing may and may not do: every token Valkey counted was either spent or
is still held by a process (none lost, none made up), no process holds more than one lease's worth,
and a hit was refused only when Valkey had nothing left to lease. Plus the header format.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from multiprocessing.managers import SyncManager
from threading import Barrier

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from valkey import Valkey
from valkey.asyncio import Valkey as AsyncValkey

from app.core.ratelimit import (
    HOUR_S,
    LEASE_FRACTION,
    MINUTE_S,
    Decision,
    Policy,
    RateLimiter,
    decide,
    rate_limit_headers,
    stored_identity,
)

MAX_PROCESSES = 4
SECRET = "test-secret"
BARRIER_TIMEOUT_S = 60.0


def _burst(url: str, policy: Policy, key: str, rounds: list[int], start: Barrier) -> tuple[int, int, int]:
    """In a worker process: rounds of concurrent hits once every process is ready;
    (admitted, unspent tokens still held, pid)."""

    async def run() -> tuple[int, int]:
        async with AsyncValkey.from_url(url) as client:
            limiter = RateLimiter(client, secret_key=SECRET, prefix="rlprop")
            await client.ping()
            await asyncio.to_thread(start.wait, BARRIER_TIMEOUT_S)
            admitted = 0
            for attempts in rounds:
                decisions = await asyncio.gather(*(limiter.hit(policy, key) for _ in range(attempts)))
                admitted += sum(decision.allowed for decision in decisions)
            return admitted, limiter.unspent(policy, key)

    admitted, unspent = asyncio.run(run())
    return admitted, unspent, os.getpid()


def _warm_up(everyone_started: Barrier) -> int:
    everyone_started.wait(BARRIER_TIMEOUT_S)  # no worker takes a second task: the pool starts them all
    return os.getpid()


@pytest.fixture(scope="module")
def manager() -> Iterator[SyncManager]:
    """Shares the start barriers with the pool's processes."""
    with get_context("spawn").Manager() as shared:
        yield shared


@pytest.fixture(scope="module")
def pool(manager: SyncManager) -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=MAX_PROCESSES, mp_context=get_context("spawn")) as executor:
        everyone_started = manager.Barrier(MAX_PROCESSES)
        pids = executor.map(_warm_up, [everyone_started] * MAX_PROCESSES)
        assert len(set(pids)) == MAX_PROCESSES
        yield executor


@pytest.fixture(scope="module")
def sync_valkey(valkey_url: str) -> Iterator[Valkey]:
    with Valkey.from_url(valkey_url) as client:
        yield client


def wait_out_minute_boundary(client: Valkey) -> None:
    """Keep an example inside one minute (and so one hour) of the server's clock."""
    seconds, _ = client.time()  # type: ignore[misc]  # the sync client's answer, not awaitable
    if seconds % MINUTE_S >= MINUTE_S - 10:
        time.sleep(MINUTE_S - seconds % MINUTE_S + 0.05)


@settings(max_examples=8, deadline=None)
@given(
    quota=st.integers(min_value=1, max_value=200),
    processes=st.integers(min_value=2, max_value=MAX_PROCESSES),
    rounds=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=3),
    binding=st.sampled_from(["minute", "hour"]),
)
def test_never_admits_more_than_the_quota_across_processes(
    pool: ProcessPoolExecutor,
    manager: SyncManager,
    sync_valkey: Valkey,
    valkey_url: str,
    quota: int,
    processes: int,
    rounds: list[int],
    binding: str,
) -> None:
    total = processes * sum(rounds)
    roomy = total + 1
    policy = (
        Policy("prop", per_minute=quota, per_hour=roomy)
        if binding == "minute"
        else Policy("prop", per_minute=roomy, per_hour=quota)
    )
    key = f"ip:{uuid.uuid4().hex}"
    wait_out_minute_boundary(sync_valkey)
    start = manager.Barrier(processes)
    futures = [pool.submit(_burst, valkey_url, policy, key, rounds, start) for _ in range(processes)]
    results = [future.result() for future in futures]

    assert len({pid for _, _, pid in results}) == processes, "every burst ran in its own process"
    admitted = sum(count for count, _, _ in results)
    held = sum(unspent for _, unspent, _ in results)
    counters = {
        key_name.decode().rsplit(":", 2)[1]: int(sync_valkey.get(key_name) or 0)  # type: ignore[arg-type]
        for key_name in sync_valkey.keys(f"rlprop:prop:{stored_identity(SECRET, key)}:*")  # type: ignore[union-attr]
    }
    leased = counters.get("m", 0)
    note = f"{quota=} {processes=} {rounds=} {binding=} {results=} {counters=}"
    assert admitted <= quota, "never over quota"
    assert counters.get("h", 0) == leased <= quota, "both windows counted the same leases, within quota"
    assert leased == admitted + held, ("every leased token was spent or is still held", note)
    assert all(unspent <= policy.max_lease for _, unspent, _ in results), "at most one lease per process"
    if admitted < min(quota, total):
        # The other window is roomy for the hits, not for the hits plus tokens leased and unspent.
        assert leased == min(policy.per_minute, policy.per_hour), (
            "a hit is refused only when Valkey has nothing left to lease",
            note,
        )
    if quota < 2 * LEASE_FRACTION:
        assert admitted == min(quota, total), "small quotas lease one token at a time and count exactly"


# Structured-field items of draft-ietf-httpapi-ratelimit-headers: "name";param=int;...
ITEM = re.compile(r'^"(?P<name>[a-z0-9_-]+)"(?P<params>(?:;[a-z]+=\d+)+)$')


def parse_list(value: str) -> list[tuple[str, dict[str, int]]]:
    items = []
    for member in value.split(", "):
        match = ITEM.match(member)
        assert match, f"not a structured-field item: {member!r}"
        params = dict(param.split("=") for param in match["params"].lstrip(";").split(";"))
        items.append((match["name"], {name: int(number) for name, number in params.items()}))
    return items


names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
quotas = st.integers(min_value=1, max_value=10**9)


@st.composite
def policy_and_decision(draw: st.DrawFn) -> tuple[Policy, Decision]:
    policy = Policy(draw(names), draw(quotas), draw(quotas), fail_closed=draw(st.booleans()))
    window = draw(st.sampled_from(["minute", "hour"]))
    quota, length = (policy.per_minute, MINUTE_S) if window == "minute" else (policy.per_hour, HOUR_S)
    reset = draw(st.integers(min_value=1, max_value=length))
    if draw(st.booleans()):
        remaining = draw(st.integers(min_value=0, max_value=quota - 1))
        return policy, Decision(True, remaining, reset, 0, window)
    return policy, Decision(False, 0, reset, reset, window)


@given(policy_and_decision())
def test_headers_are_structured_fields_describing_the_policy(case: tuple[Policy, Decision]) -> None:
    policy, decision = case
    headers = rate_limit_headers(policy, decision)

    assert parse_list(headers["RateLimit-Policy"]) == [
        (f"{policy.name}-minute", {"q": policy.per_minute, "w": MINUTE_S}),
        (f"{policy.name}-hour", {"q": policy.per_hour, "w": HOUR_S}),
    ]
    assert parse_list(headers["RateLimit"]) == [
        (f"{policy.name}-{decision.window}", {"r": decision.remaining, "t": decision.reset_s})
    ]
    if decision.allowed:
        assert "Retry-After" not in headers
    else:
        assert headers["Retry-After"] == str(decision.retry_after_s)
    assert all(value.isascii() and "\n" not in value for value in headers.values())


@given(
    policy=st.builds(Policy, names, st.integers(1, 500), st.integers(1, 500)),
    minute=st.integers(0, 500),
    hour=st.integers(0, 500),
    minute_reset=st.integers(1, MINUTE_S),
    hour_reset=st.integers(1, HOUR_S),
)
def test_denial_names_the_exhausted_window_and_waits_for_all_of_them(
    policy: Policy, minute: int, hour: int, minute_reset: int, hour_reset: int
) -> None:
    """What the script reports for a denied hit: counts before it, at least one window full."""
    exhausted = {"minute": minute >= policy.per_minute, "hour": hour >= policy.per_hour}
    assume(any(exhausted.values()))  # the script never denies with room in both windows
    decision = decide(policy, False, minute, hour, minute_reset, hour_reset)
    resets = {"minute": minute_reset, "hour": hour_reset}
    assert exhausted[decision.window]
    assert decision.remaining == 0
    assert decision.retry_after_s == decision.reset_s == max(r for w, r in resets.items() if exhausted[w])


@given(
    policy=st.builds(Policy, names, st.integers(1, 500), st.integers(1, 500)),
    minute_left=st.integers(0, 499),
    hour_left=st.integers(0, 499),
    minute_reset=st.integers(1, MINUTE_S),
    hour_reset=st.integers(1, HOUR_S),
)
def test_admission_reports_the_window_closest_to_exhaustion(
    policy: Policy, minute_left: int, hour_left: int, minute_reset: int, hour_reset: int
) -> None:
    minute = policy.per_minute - min(minute_left, policy.per_minute - 1)
    hour = policy.per_hour - min(hour_left, policy.per_hour - 1)
    decision = decide(policy, True, minute, hour, minute_reset, hour_reset)
    left = {"minute": policy.per_minute - minute, "hour": policy.per_hour - hour}
    assert decision.allowed and decision.retry_after_s == 0
    assert decision.remaining == min(left.values()) == left[decision.window]
    assert decision.reset_s == {"minute": minute_reset, "hour": hour_reset}[decision.window]
