"""Login timing is flat: an unknown email costs an argon2 verification just like a wrong password.

Only ratios of medians measured in the same run, interleaved, are asserted (never absolute times):
both failure paths must cost about the same, and clearly more than a request refused by validation
before any hashing (the short-circuit baseline).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.security import Passwords
from tests.factories import PASSWORD, Client, create_user, generous_client, unique_email

ROUNDS = 7
_peers = itertools.count(1)


@pytest.fixture(scope="module")
async def module_client(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings):
        yield client


async def timed(call: Callable[[], Awaitable[Any]], expected_status: int) -> float:
    started = time.perf_counter()
    response = await call()
    elapsed = time.perf_counter() - started
    assert response.status_code == expected_status, response.text
    return elapsed


async def test_unknown_email_and_wrong_password_take_the_same_path(
    module_client: Client, db: AsyncConnection[Any], valkey: Valkey, settings: Settings
) -> None:
    known = await create_user(db, await Passwords(settings).hash(PASSWORD))

    def attempt(email: str, password: str) -> Callable[[], Awaitable[Any]]:
        n = next(_peers)
        peer = f"10.77.{n // 256 % 256}.{n % 256}"
        return lambda: module_client.post(
            "/api/auth/login", json={"email": email, "password": password}, headers={"x-test-peer": peer}
        )

    samples: dict[str, list[float]] = {"invalid": [], "unknown": [], "known": []}
    for round_ in range(ROUNDS + 1):  # round 0 warms every path up and is not counted
        measured = {
            "invalid": await timed(attempt("not-an-email", "x"), 400),
            "unknown": await timed(attempt(unique_email("ghost"), "wrong password"), 401),
            "known": await timed(attempt(known.email, "wrong password"), 401),
        }
        await valkey.flushdb()  # failure counters: keep the throttle out of the measurements
        if round_:
            for kind, seconds in measured.items():
                samples[kind].append(seconds)

    invalid, unknown, known_ = (statistics.median(samples[k]) for k in ("invalid", "unknown", "known"))
    report = ", ".join(f"{k}={statistics.median(v) * 1000:.1f} ms" for k, v in samples.items())
    assert 0.5 <= unknown / known_ <= 2.0, report
    assert unknown >= 3 * invalid, report
    assert known_ >= 3 * invalid, report
