"""The read-through cache against a real Valkey (and one that is stopped mid-test)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from valkey.asyncio import Valkey

from tests.factories import MakeCache, scaled_examples, wait_until
from tests.valkey_control import ControlledValkey


class Item(msgspec.Struct):
    id: int
    name: str
    tags: list[str] = []


class Loader:
    """Counts its calls; returns ``make(calls)``; optionally slow, held until ``gate`` opens, or failing."""

    def __init__(
        self,
        make=lambda n: n,
        delay_s: float = 0.0,
        error: Exception | None = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.calls = 0
        self.make = make
        self.delay_s = delay_s
        self.error = error
        self.gate = gate
        self.called_at: list[float] = []

    async def __call__(self):
        self.calls += 1
        self.called_at.append(time.monotonic())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.make(self.calls)


@pytest.fixture
async def second_valkey(valkey_url: str) -> AsyncIterator[Valkey]:
    """Another client, as another process would have."""
    client = Valkey.from_url(valkey_url)
    yield client
    await client.aclose()


def requests_count(namespace: str, result: str) -> float:
    value = REGISTRY.get_sample_value("app_cache_requests_total", {"namespace": namespace, "result": result})
    return value or 0.0


async def test_hit_after_miss_returns_typed_values_and_loads_once(
    make_cache: MakeCache, valkey: Valkey
) -> None:
    ns = make_cache(valkey).namespace("items")
    one = Loader(lambda n: Item(id=n, name="apollo", tags=["a", "b"]))
    many = Loader(lambda n: [Item(id=n, name="x"), Item(id=n + 1, name="y")])

    started = time.monotonic()
    first = await ns.get_or_load("one", one, ttl_s=60, type=Item)
    second = await ns.get_or_load("one", one, ttl_s=60, type=Item)
    listed = await ns.get_or_load("many", many, ttl_s=60, type=list[Item])
    listed_again = await ns.get_or_load("many", many, ttl_s=60, type=list[Item])

    assert first == second == Item(id=1, name="apollo", tags=["a", "b"])
    assert isinstance(second, Item)
    assert listed_again == listed == [Item(id=1, name="x"), Item(id=2, name="y")]
    assert all(isinstance(item, Item) for item in listed_again)
    assert (one.calls, many.calls) == (1, 1)
    assert await valkey.exists("cache:items:g0:one") == 1
    remaining_ms = await valkey.pttl("cache:items:g0:one")
    elapsed_ms = (time.monotonic() - started) * 1000
    assert 54_000 - elapsed_ms <= remaining_ms <= 66_000  # ttl ±10% jitter, less the time since
    assert await valkey.exists("cache:items:g0:one:lock") == 0


async def test_none_is_cached(make_cache: MakeCache, valkey: Valkey) -> None:
    ns = make_cache(valkey).namespace("nothing")
    loader = Loader(lambda n: None)

    assert await ns.get_or_load("k", loader, ttl_s=60, type=Item | None) is None
    assert await ns.get_or_load("k", loader, ttl_s=60, type=Item | None) is None
    assert loader.calls == 1


async def test_hits_and_misses_are_counted(make_cache: MakeCache, valkey: Valkey) -> None:
    name = f"metrics-{uuid.uuid4().hex}"
    ns = make_cache(valkey).namespace(name)
    loader = Loader()

    for _ in range(3):
        await ns.get_or_load("k", loader, ttl_s=60, type=int)

    assert (requests_count(name, "miss"), requests_count(name, "hit")) == (1.0, 2.0)


async def test_ttl_expiry_loads_again(make_cache: MakeCache, valkey: Valkey) -> None:
    ns = make_cache(valkey).namespace("ttl")
    loader = Loader()

    assert await ns.get_or_load("k", loader, ttl_s=60, type=int) == 1
    assert await ns.get_or_load("k", loader, ttl_s=60, type=int) == 1
    await valkey.pexpire("cache:ttl:g0:k", 1)  # the entry's TTL runs out (Valkey expires it)

    async def expired() -> bool:
        return not await valkey.exists("cache:ttl:g0:k")

    await wait_until(expired, 10, "Valkey has expired the entry")
    assert await ns.get_or_load("k", loader, ttl_s=60, type=int) == 2
    assert await ns.get_or_load("k", loader, ttl_s=60, type=int) == 2
    assert loader.calls == 2


async def test_namespaces_are_isolated_and_invalidation_is_scoped(
    make_cache: MakeCache, valkey: Valkey
) -> None:
    cache = make_cache(valkey)
    users, posts = cache.namespace("users"), cache.namespace("posts")
    loaders = {(ns.name, key): Loader() for ns in (users, posts) for key in ("a", "b")}

    async def get(ns, key: str) -> int:
        return await ns.get_or_load(key, loaders[ns.name, key], ttl_s=60, type=int)

    async def snapshot() -> list[int]:
        return [await get(ns, key) for ns in (users, posts) for key in ("a", "b")]

    assert await snapshot() == [1, 1, 1, 1]
    await users.invalidate("a")
    assert await snapshot() == [2, 1, 1, 1]
    await users.invalidate_all()
    assert await snapshot() == [3, 2, 1, 1]
    await posts.invalidate("b")
    assert await snapshot() == [3, 2, 1, 2]
    assert await snapshot() == [3, 2, 1, 2]


async def test_stampede_across_two_processes_loads_once(
    make_cache: MakeCache, valkey: Valkey, second_valkey: Valkey
) -> None:
    name = f"stampede-{uuid.uuid4().hex}"
    first, second = (make_cache(client, lock_ttl_s=10).namespace(name) for client in (valkey, second_valkey))
    loader = Loader(lambda n: Item(id=n, name="hot"), delay_s=0.2)

    results = await asyncio.wait_for(
        asyncio.gather(*(ns.get_or_load("hot", loader, ttl_s=60, type=Item) for ns in (first, second) * 25)),
        30,
    )

    assert loader.calls == 1
    assert results == [Item(id=1, name="hot")] * 50
    # In-process coalescing: one Valkey lookup per "process", not one per caller.
    assert requests_count(name, "miss") == 2.0


async def test_failing_loader_propagates_caches_nothing_and_releases_the_lock(
    make_cache: MakeCache, valkey: Valkey
) -> None:
    ns = make_cache(valkey, lock_ttl_s=30).namespace("failing")
    failing = Loader(error=RuntimeError("database down"))

    with pytest.raises(RuntimeError, match="database down"):
        await ns.get_or_load("k", failing, ttl_s=60, type=int)
    assert await valkey.keys("cache:failing:*") == []

    # The lock is gone, so the next caller loads at once (a held lock would make it wait 30 s).
    working = Loader(lambda n: 42)
    assert await asyncio.wait_for(ns.get_or_load("k", working, ttl_s=60, type=int), 10) == 42
    assert (failing.calls, working.calls) == (1, 1)


async def test_waiter_takes_over_when_the_lock_holder_fails(
    make_cache: MakeCache, valkey: Valkey, second_valkey: Valkey
) -> None:
    name = f"takeover-{uuid.uuid4().hex}"
    first = make_cache(valkey, lock_ttl_s=30).namespace(name)
    second = make_cache(second_valkey, lock_ttl_s=30).namespace(name)
    release = asyncio.Event()
    failing = Loader(error=RuntimeError("boom"), gate=release)
    working = Loader(lambda n: "fresh")

    holder = asyncio.ensure_future(first.get_or_load("k", failing, ttl_s=60, type=str))

    async def holder_is_loading() -> bool:
        return failing.calls == 1 and bool(await valkey.exists(f"cache:{name}:g0:k:lock"))

    await wait_until(holder_is_loading, 10, "the holder has the lock and is loading")
    waiter = asyncio.ensure_future(second.get_or_load("k", working, ttl_s=60, type=str))

    async def waiter_is_waiting() -> bool:  # it missed, and the lock was taken: it polls
        return requests_count(name, "miss") == 2.0

    await wait_until(waiter_is_waiting, 10, "the waiter has missed and waits on the lock")
    assert working.calls == 0
    release.set()  # the holder's load fails and releases the lock

    with pytest.raises(RuntimeError, match="boom"):
        await holder
    # Long before the lock's 30 s: the waiter takes the released lock and loads.
    assert await asyncio.wait_for(waiter, 10) == "fresh"
    assert (failing.calls, working.calls) == (1, 1)


async def test_waiter_loads_itself_after_lock_ttl_when_the_lock_is_stuck(
    make_cache: MakeCache, valkey: Valkey
) -> None:
    ns = make_cache(valkey, lock_ttl_s=0.3).namespace("stuck")
    await valkey.set("cache:stuck:g0:k:lock", "a crashed holder with a longer lock ttl", px=60_000)
    loader = Loader(lambda n: "loaded anyway")

    started = time.monotonic()
    # Long before the stuck lock's own 60 s expiry, and never before lock_ttl_s has passed.
    assert await asyncio.wait_for(ns.get_or_load("k", loader, ttl_s=60, type=str), 30) == "loaded anyway"
    assert loader.calls == 1
    assert loader.called_at[0] - started >= 0.3
    assert await valkey.exists("cache:stuck:g0:k:lock") == 1, "the other holder's lock is not ours to drop"


async def test_valkey_down_falls_back_to_the_loader(
    make_cache: MakeCache, controlled_valkey: ControlledValkey
) -> None:
    controlled = controlled_valkey
    client = Valkey.from_url(controlled.url, socket_connect_timeout=1, socket_timeout=1)
    name = f"down-{uuid.uuid4().hex}"
    ns = make_cache(client).namespace(name)
    loader = Loader()
    try:
        assert await ns.get_or_load("k", loader, ttl_s=60, type=int) == 1
        controlled.stop()

        assert await ns.get_or_load("k", loader, ttl_s=60, type=int) == 2
        assert await ns.get_or_load("k", loader, ttl_s=60, type=int) == 3
        await ns.invalidate("k")
        await ns.invalidate_all()
        degraded = REGISTRY.get_sample_value("app_cache_degraded_total", {"namespace": name})
        assert degraded == 4.0

        controlled.start()
        await ns.invalidate_all()  # the value cached before the outage is stale now
        assert await ns.get_or_load("k", loader, ttl_s=60, type=int) == 4
        assert await ns.get_or_load("k", loader, ttl_s=60, type=int) == 4
        assert loader.calls == 4
    finally:
        await client.aclose()


_operations = st.lists(
    st.one_of(
        st.tuples(st.just("get"), st.sampled_from("abc")),
        st.tuples(st.just("invalidate"), st.sampled_from("abc")),
        st.tuples(st.just("invalidate_all"), st.just("")),
    ),
    max_size=30,
)


@hypothesis_settings(
    max_examples=scaled_examples(25), suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=_operations)
async def test_returns_the_value_of_the_last_load_since_the_last_invalidation(
    make_cache: MakeCache, valkey: Valkey, operations: list[tuple[str, str]]
) -> None:
    """Model: a key holds the version its loader returned at the last load after its last invalidation."""
    ns = make_cache(valkey, prefix=f"prop-{uuid.uuid4().hex}").namespace("model")
    versions = {key: 0 for key in "abc"}
    model: dict[str, int] = {}

    def loader_for(key: str):
        async def load() -> int:
            versions[key] += 1
            return versions[key]

        return load

    for operation, key in operations:
        if operation == "get":
            # Cached: the version loaded last; not cached (never loaded or invalidated): a fresh load.
            expected = model.get(key, versions[key] + 1)
            value = await ns.get_or_load(key, loader_for(key), ttl_s=60, type=int)
            assert value == expected
            assert versions[key] == expected  # the loader ran exactly when the model says it must
            model[key] = value
        elif operation == "invalidate":
            await ns.invalidate(key)
            model.pop(key, None)
        else:
            await ns.invalidate_all()
            model.clear()
