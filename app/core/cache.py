"""A small read-through cache on Valkey for hot reads.

Layout: ``{prefix}:{namespace}:g{generation}:{key}`` holds the msgpack-encoded value (a cached
``None`` is the non-empty msgpack nil, so it is distinct from a miss), ``{prefix}:{namespace}:gen``
holds the generation. ``invalidate_all`` bumps the generation: O(1), the old keys expire on their own.

Stampede guard, two levels: within a process, concurrent calls for one key share one flight
(an ``asyncio`` task); across processes the first flight to miss takes ``{value key}:lock`` with
``SET NX PX`` and loads, the others poll (``poll_interval_s``) until the value appears, the lock
disappears (then they may take it) or ``lock_ttl_s`` passes (then they load themselves: never hang).

Valkey down (``VALKEY_DOWN``: unreachable, too slow, or answering that it cannot serve now, as while
it loads its data after a restart): the loader is called directly and the failure is counted in
``app_cache_degraded``; a failed invalidation is logged and counted, not raised, so a reader may see
the stale value for up to its TTL. The same staleness window applies to the race of an invalidation
with a concurrent load: keep TTLs as short as staleness is acceptable.

The client must return bytes (``decode_responses=False``, the default). The Lua scripts build
value keys from the generation, so the cache assumes a single (non-cluster) Valkey.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, TypeVar, cast

import msgspec
import structlog
from prometheus_client import Counter
from valkey.asyncio import Valkey

from app.core.logging import OncePerInterval, error_message
from app.core.multiplexed import MultiplexedValkey
from app.core.pool import awaited_as_a_borrower, shared_load_context
from app.core.valkey import VALKEY_DOWN

T = TypeVar("T")

_log = structlog.get_logger("app.cache")

CACHE_REQUESTS = Counter(
    "app_cache_requests", "Cache lookups in Valkey (one per in-process flight)", ["namespace", "result"]
)


def hits_and_misses(namespace: str) -> tuple[Counter, Counter]:
    """The namespace's two ``CACHE_REQUESTS`` series, bound once by their owner (``labels`` on
    every read is a lookup under the metric's lock, on the hot read paths)."""
    return (
        CACHE_REQUESTS.labels(namespace=namespace, result="hit"),
        CACHE_REQUESTS.labels(namespace=namespace, result="miss"),
    )


CACHE_DEGRADED = Counter(
    "app_cache_degraded", "Cache operations that fell back because Valkey was unreachable", ["namespace"]
)

# KEYS[1] = generation key; ARGV = namespace base, key, lock token, lock ttl (ms).
# One round trip on both the hit and the miss path: read the generation, the value, and on a miss
# try to take the lock. Returns {generation, value or nil, 1 if the lock was taken else 0}.
_FETCH = """
local gen = redis.call('GET', KEYS[1]) or '0'
local vkey = ARGV[1] .. ':g' .. gen .. ':' .. ARGV[2]
local value = redis.call('GET', vkey)
if value then return {gen, value, 0} end
local locked = redis.call('SET', vkey .. ':lock', ARGV[3], 'NX', 'PX', ARGV[4])
return {gen, false, locked and 1 or 0}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_INVALIDATE = """
local gen = redis.call('GET', KEYS[1]) or '0'
return redis.call('DEL', ARGV[1] .. ':g' .. gen .. ':' .. ARGV[2])
"""


class Cache:
    """Owns the client, the scripts and the rate-limited degradation warning."""

    def __init__(
        self,
        valkey: Valkey,
        *,
        prefix: str = "cache",
        lock_ttl_s: float = 5.0,
        warn_interval_s: float = 60.0,
        poll_interval_s: float = 0.025,
    ) -> None:
        self.valkey = valkey
        self.lookups = MultiplexedValkey.like(valkey)
        """The hot reads' Lua calls (this cache's fetch, the stamped caches' lookups), pipelined on
        one connection: a fraction of the client's cost per call (``app/core/multiplexed.py``)."""
        self.prefix = prefix
        self.lock_ttl_s = lock_ttl_s
        self.poll_interval_s = poll_interval_s
        self._warnings = OncePerInterval(warn_interval_s)
        self._fetch = self.lookups.register_script(_FETCH)
        self._release = valkey.register_script(_RELEASE)
        self._invalidate = valkey.register_script(_INVALIDATE)
        self._flights: Flights = {}

    async def aclose(self) -> None:
        """Close the lookups' connection (the client's pool is its owner's to close)."""
        await self.lookups.aclose()

    def namespace(self, name: str) -> CacheNamespace:
        return CacheNamespace(self, name)

    def degraded(self, namespace: str, operation: str, error: Exception) -> None:
        """Count every fallback, but warn at most once per ``warn_interval_s`` (an outage is loud)."""
        CACHE_DEGRADED.labels(namespace=namespace).inc()
        if self._warnings.due():
            _log.warning(
                "cache_degraded",
                namespace=namespace,
                operation=operation,
                error=type(error).__name__,
                detail=error_message(error),
            )


class CacheNamespace:
    """One namespace of a :class:`Cache`; keys are caller strings, values any msgspec-encodable."""

    def __init__(self, cache: Cache, name: str) -> None:
        self.cache = cache
        self.name = name
        self._base = f"{cache.prefix}:{name}"
        self._gen_key = f"{self._base}:gen"
        self._hits, self._misses = hits_and_misses(name)

    async def get_or_load(
        self, key: str, loader: Callable[[], Awaitable[T]], *, ttl_s: float, type: type[T]
    ) -> T:
        """The cached value of ``key``, else ``loader()``'s (stored for about ``ttl_s``, ±10%).

        Concurrent calls in this process for the same key join the first call's flight (and so its
        loader). Loader exceptions propagate and are not cached.
        """
        return await single_flight(
            self.cache._flights, f"{self._base}\0{key}", lambda: self._load_through(key, loader, ttl_s, type)
        )

    async def invalidate(self, key: str) -> None:
        """Drop one key (current generation). On a Valkey outage: logged, counted, not raised."""
        try:
            await self.cache._invalidate(keys=[self._gen_key], args=[self._base, key])
        except VALKEY_DOWN as exc:
            self.cache.degraded(self.name, "invalidate", exc)

    async def invalidate_all(self) -> None:
        """Drop the whole namespace by moving to a new generation (O(1))."""
        try:
            await self.cache.valkey.incr(self._gen_key)
        except VALKEY_DOWN as exc:
            self.cache.degraded(self.name, "invalidate_all", exc)

    async def _load_through(
        self, key: str, loader: Callable[[], Awaitable[T]], ttl_s: float, type: type[T]
    ) -> T:
        cache = self.cache
        token = secrets.token_hex(8)
        lock_ms = max(1, int(cache.lock_ttl_s * 1000))
        deadline = time.monotonic() + cache.lock_ttl_s
        first = True
        while True:
            try:
                gen, raw, locked = await cache._fetch(
                    keys=[self._gen_key], args=[self._base, key, token, lock_ms]
                )
            except VALKEY_DOWN as exc:
                cache.degraded(self.name, "get", exc)
                return await loader()
            if first:
                (self._misses if raw is None else self._hits).inc()
                first = False
            value_key = f"{self._base}:g{int(gen)}:{key}"
            if raw is not None:
                try:
                    return msgspec.msgpack.decode(raw, type=type)
                except msgspec.DecodeError:  # includes ValidationError: the stored shape changed
                    _log.warning("cache value undecodable, reloading", namespace=self.name, key=key)
                    return await self._load_and_store(value_key, loader, ttl_s)
            if locked:
                try:
                    return await self._load_and_store(value_key, loader, ttl_s)
                finally:
                    await self._release_lock(f"{value_key}:lock", token)
            if time.monotonic() >= deadline:  # the lock holder is slow or gone: don't wait forever
                return await self._load_and_store(value_key, loader, ttl_s)
            await asyncio.sleep(cache.poll_interval_s)

    async def _load_and_store(self, value_key: str, loader: Callable[[], Awaitable[T]], ttl_s: float) -> T:
        value = await loader()
        ttl_ms = max(1, int(ttl_s * 1000 * random.uniform(0.9, 1.1)))  # no synchronized expiry
        try:
            await self.cache.valkey.set(value_key, msgspec.msgpack.encode(value), px=ttl_ms)
        except VALKEY_DOWN as exc:
            self.cache.degraded(self.name, "store", exc)
        return value

    async def _release_lock(self, lock_key: str, token: str) -> None:
        try:
            await self.cache._release(keys=[lock_key], args=[token])
        except VALKEY_DOWN as exc:  # the lock expires on its own after lock_ttl_s
            self.cache.degraded(self.name, "release", exc)


Flights = dict[Hashable, "asyncio.Future[Any]"]


async def single_flight(flights: Flights, key: Hashable, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``make()``'s result, shared by every caller that asks for ``key`` while it runs (in this
    process). Shielded: one cancelled caller must not cancel the load the others are waiting for.

    The load borrows connections as a request does (``shared_load_context``), whoever started it; a
    caller that borrows patiently (a job) and is refused because PostgreSQL is unreachable runs
    ``make()`` again on its own, patiently."""
    flight = flights.get(key)
    if flight is None:
        flight = asyncio.get_running_loop().create_task(make(), context=shared_load_context())
        flights[key] = flight
        flight.add_done_callback(lambda done: _finish_flight(flights, key, done))
    return cast("T", await awaited_as_a_borrower(asyncio.shield(flight), make))


def _finish_flight(flights: Flights, flight_key: Hashable, done: asyncio.Future[Any]) -> None:
    if flights.get(flight_key) is done:
        del flights[flight_key]
    if not done.cancelled():
        done.exception()  # retrieved here so a flight whose callers all left logs no warning


__all__ = [
    "CACHE_DEGRADED",
    "CACHE_REQUESTS",
    "VALKEY_DOWN",
    "Cache",
    "CacheNamespace",
    "Flights",
    "hits_and_misses",
    "single_flight",
]
