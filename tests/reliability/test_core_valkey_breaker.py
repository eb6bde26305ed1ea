"""The shared Valkey client's circuit breaker (``app/core/valkey.py``) against a private Valkey.

Injected: SIGSTOP of the Valkey process (``pause``: the kernel completes TCP handshakes, nothing
answers), or error replies meaning "not now" (a real Valkey made a replica: ``READONLY``).
Asserted: once a call has timed out, the rate limiter's leases (a script), the cache's lookups (on
the lookups' own connection) and pipelines fail at once for ``min(FAIL_FAST_S, VALKEY_TIMEOUT_S)``
instead of each waiting ``VALKEY_TIMEOUT_S``: a run of operations makes a few real attempts, not one
each (counted by the server: the connections it accepted once resumed); after the window a single
call probes while the others still fail fast; after ``resume()`` the client answers again within the
window plus one probe, and the outage is logged twice (opened, closed), not per call. Error replies
answer fast: they never open it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.cache import VALKEY_DOWN, Cache
from app.core.ratelimit import Policy, RateLimiter
from app.core.valkey import FAIL_FAST_S, create_valkey
from tests.factories import MakeCache, captured_logs, wait_until
from tests.valkey_control import ControlledValkey

TIMEOUT_S = 0.2
"""The client's ``VALKEY_TIMEOUT_S`` here: each call that waits on the frozen server costs this."""
WINDOW_S = min(FAIL_FAST_S, TIMEOUT_S)
OPERATIONS = 10
POLICY = Policy("breaker", 100_000, 1_000_000)


async def connections_received(url: str) -> int:
    """Connections the server has accepted so far, the one asking included. Asked once it answers
    again, it counts the connections made while it was frozen too (the kernel queued them)."""
    async with Valkey.from_url(url) as observer:
        return int((await observer.info("stats"))["total_connections_received"])


async def attempts_since(url: str, before: int) -> int:
    """Connections made to the server since ``connections_received`` said ``before``, not counting
    the one asking now."""
    return await connections_received(url) - before - 1


class Loader:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        return self.calls


@pytest.fixture
async def client(settings: Settings, controlled_valkey: ControlledValkey) -> AsyncIterator[Valkey]:
    """The app's shared client (``create_valkey``) on the private Valkey, with a short timeout."""
    valkey = create_valkey(
        msgspec.structs.replace(settings, valkey_timeout_s=TIMEOUT_S), controlled_valkey.url
    )
    yield valkey
    controlled_valkey.resume()
    await valkey.aclose()


async def warmed(limiter: RateLimiter, cache: Cache, loader: Loader) -> None:
    """One lease and one cached read, so the connections and scripts exist before the fault."""
    await limiter.hit(POLICY, "ip:warm")
    await cache.namespace("breaker").get_or_load("warm", loader, ttl_s=60, type=int)


async def test_a_frozen_valkey_is_tried_a_few_times_not_once_per_operation(
    client: Valkey, controlled_valkey: ControlledValkey, make_cache: MakeCache
) -> None:
    limiter, cache, loader = RateLimiter(client, secret_key="test-secret"), make_cache(client), Loader()
    namespace = cache.namespace("breaker")
    await warmed(limiter, cache, loader)
    before = await connections_received(controlled_valkey.url)
    with controlled_valkey.paused():
        for n in range(OPERATIONS):  # each its own key: no lease or flight is shared
            with pytest.raises(VALKEY_DOWN):
                await limiter.hit(POLICY, f"ip:10.0.0.{n}")
            assert await namespace.get_or_load(f"k{n}", loader, ttl_s=60, type=int) == loader.calls
            with pytest.raises(VALKEY_DOWN):
                async with client.pipeline(transaction=False) as pipe:
                    await pipe.incr(f"p{n}").expire(f"p{n}", 60).execute()
    attempts = await attempts_since(controlled_valkey.url, before)
    # Without a breaker: one connection per operation but the first, for the leases, the lookups and
    # the pipelines alike (each timed-out call drops its connection). With one: the first call's
    # timeout, then a probe per elapsed window at most, and each operation takes far less than that.
    assert attempts <= 3, f"{attempts} connections for {3 * OPERATIONS} operations"


async def test_after_the_window_one_call_probes_while_the_others_still_fail_fast(
    client: Valkey, controlled_valkey: ControlledValkey, make_cache: MakeCache
) -> None:
    limiter, cache, loader = RateLimiter(client, secret_key="test-secret"), make_cache(client), Loader()
    await warmed(limiter, cache, loader)
    before = await connections_received(controlled_valkey.url)
    with controlled_valkey.paused():
        with pytest.raises(VALKEY_DOWN):
            await limiter.hit(POLICY, "ip:10.0.1.1")  # times out on the warm connection, dropping it
        failed_at = time.monotonic()

        async def window_over() -> bool:
            return time.monotonic() > failed_at + WINDOW_S

        await wait_until(window_over, 10, "the window is over")
        outcomes = await asyncio.gather(
            *(limiter.hit(POLICY, f"ip:10.0.2.{n}") for n in range(OPERATIONS)), return_exceptions=True
        )
        assert all(isinstance(outcome, VALKEY_DOWN) for outcome in outcomes), outcomes
    attempts = await attempts_since(controlled_valkey.url, before)
    # Without a breaker each of the concurrent calls connects; with one, only the probe does.
    assert attempts == 1, f"{attempts} connections for one probe"


async def test_the_client_answers_again_once_valkey_resumes_and_the_outage_is_logged_twice(
    client: Valkey, controlled_valkey: ControlledValkey, make_cache: MakeCache
) -> None:
    limiter, cache, loader = RateLimiter(client, secret_key="test-secret"), make_cache(client), Loader()
    namespace = cache.namespace("breaker")
    await warmed(limiter, cache, loader)
    with captured_logs() as logs:
        with controlled_valkey.paused():
            for n in range(OPERATIONS):
                with pytest.raises(VALKEY_DOWN):
                    await limiter.hit(POLICY, f"ip:10.0.3.{n}")
                await namespace.get_or_load("k", loader, ttl_s=60, type=int)

        async def answered() -> bool:
            try:
                await limiter.hit(POLICY, "ip:10.0.4.1")
                await cache.lookups.execute("PING")
            except VALKEY_DOWN:
                return False
            return True

        await wait_until(answered, 10, "the leases and the lookups reach Valkey again")
        await namespace.invalidate_all()
        assert await namespace.get_or_load("k", loader, ttl_s=60, type=int) == loader.calls
        assert await namespace.get_or_load("k", loader, ttl_s=60, type=int) == loader.calls, "cached"
    [opened] = logs.events("valkey_circuit_opened")
    assert opened["level"] == "warning"
    assert str(controlled_valkey.port) in opened["detail"], opened  # error: the class, as elsewhere
    [closed] = logs.events("valkey_circuit_closed")
    assert closed["level"] == "info"
    assert closed["open_s"] > 0


async def test_error_replies_meaning_not_now_answer_fast_and_do_not_open_it(
    client: Valkey, controlled_valkey: ControlledValkey, make_cache: MakeCache
) -> None:
    """A replica refuses writes (``READONLY``), the leases' counting and the lookups' locks among
    them, but answers them at once: reads right after still reach it."""
    limiter, cache, loader = RateLimiter(client, secret_key="test-secret"), make_cache(client), Loader()
    namespace = cache.namespace("breaker")
    await client.set("kept", "value")
    await client.execute_command("REPLICAOF", "127.0.0.1", "1")
    with captured_logs() as logs:
        for n in range(OPERATIONS):
            with pytest.raises(VALKEY_DOWN):
                await limiter.hit(POLICY, f"ip:10.0.5.{n}")
            with pytest.raises(VALKEY_DOWN):
                await client.set("kept", "other")
            assert await namespace.get_or_load(f"k{n}", loader, ttl_s=60, type=int) == loader.calls
            assert await client.get("kept") == b"value"
            assert await cache.lookups.execute("GET", "kept") == b"value"
    assert logs.events("valkey_circuit_opened") == []
