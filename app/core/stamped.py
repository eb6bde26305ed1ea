"""Answers kept in Valkey under a *stamp*: the versions of everything that could change them, read
with the answer in one Lua call (the feed's cache and the task lists' page cache build on it).

A version is a Valkey key whose value is replaced (never counted up) after what it covers changes
and before the request that changed it answers. A version key that is missing (never set, or
evicted) is given a fresh random value by the lookup (``VERSION_LUA``), so no answer stored before
can match it. A reader's *scope* (what they may see) is kept as ``{mv}|{ids}`` under
``{namespace}:scope:{reader}`` and is valid only while ``{namespace}:mv:{reader}`` holds ``mv``.

A subclass's lookup script answers ``{0, mv}`` when the reader's scope must be loaded, ``{1, stamp}``
on a miss, ``{2, bytes}`` on a hit, anything else when the answer must come from PostgreSQL without
being stored. On a miss the stamp is read *before* the database is, so an answer loaded across a
concurrent change carries the older stamp and is never served. Valkey down (``VALKEY_DOWN``:
unreachable, or answering that it cannot serve now, as a replica after a failover): every read goes
to PostgreSQL (counted in ``app_cache_degraded``) and nothing is stored; the TTL bounds how long a
version change lost to an outage can go unnoticed. The scripts read keys they compute, so they need
a single, non-cluster Valkey, like ``app/core/cache.py``.

An entry is stored as ``{stamp}{token}\\n{answer}``: ``token`` is fresh for every store. The process
that stored or read an entry keeps its answer (``held``, bounded by ``HELD_BYTES``) and passes the
entry's header (``{stamp}{token}\\n``) to the lookup: while the stamp is current and Valkey still
holds that very entry, the lookup answers ``{4}`` and the answer is not sent again (a cached task
page is ~16 KB: moving it out of Valkey and parsing it was most of a hit's cost). Served only while
Valkey holds the same entry, a held answer is never older than the entry's TTL allows.

Versions expire (``version_ttl_ms``, far above the entries' and scopes' TTL): a version of a project
since deleted, or of a reader who stopped reading, must not stay in Valkey for ever (it has no
eviction: it also holds the queues and the rate limits). An expiry is safe for the same reason an
eviction is: the lookup gives a missing version a fresh random value, which no stored entry, scope
or held header carries, so an expired version makes answers stale, never an old answer current. A
version in use outlives every entry stamped with it; one read for longer is regenerated, once.

The entries of a *group* (``_read``'s ``group``: the task lists' pages of one project) are at most
``entries_per_group``: the store script keeps the group's entry keys, newest first, in
``{group}`` and deletes the oldest past the cap in the same atomic call. Each stored query is a key
of its own, so without a cap a reader varying a query would leave an entry per request.

An entry's key names the code that rendered it (``entry_key``, ``app/core/release.py``): while a
rolling deploy runs two releases on one Valkey, each reads only the answers it stored itself. A
stamp covers the data, and an answer of the other release may phrase or shape the same data
differently.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, NamedTuple

from cachetools import LRUCache

from app.core.cache import Cache, Flights, hits_and_misses, single_flight
from app.core.errors import ForbiddenError, NotFoundError
from app.core.release import CODE_FINGERPRINT
from app.core.valkey import VALKEY_DOWN

VERSION_LUA = """
local function version(key, value)
  if value then return value end
  redis.call('SET', key, ARGV[2], 'PX', ARGV[4])
  return ARGV[2]
end
"""
"""The start of every lookup script: ``version(key, value)`` is the key's value, or a fresh one
(``ARGV[2]``) stored in it for ``ARGV[4]`` ms when it is missing — never a default such as '0'."""

ANSWER_LUA = """
local function answer(stamp, key)
  local held = ARGV[3]
  if #held > #stamp and string.sub(held, 1, #stamp) == stamp
    and redis.call('GETRANGE', key, 0, #held - 1) == held then
    return {4}
  end
  local entry = redis.call('GET', key)
  if entry and string.sub(entry, 1, #stamp) == stamp then return {2, entry} end
  return {1, stamp}
end
"""
"""The end of every lookup script: ``return answer(stamp, entry_key)`` is ``{4}`` when the entry whose
header the caller holds (``ARGV[3]``) is current and still stored, else ``{2, entry}`` when the stored
entry is current, else ``{1, stamp}`` (a miss)."""

# KEYS: the entry, its group's list of entry keys. ARGV: the entry's value, its TTL (ms), the cap.
_STORE_IN_GROUP = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('LREM', KEYS[2], 0, KEYS[1])
redis.call('LPUSH', KEYS[2], KEYS[1])
local cap = tonumber(ARGV[3])
local older = redis.call('LRANGE', KEYS[2], cap, -1)
if #older > 0 then
  redis.call('LTRIM', KEYS[2], 0, cap - 1)
  redis.call('DEL', unpack(older))
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
"""
"""Stores an entry of a group and deletes the group's oldest past the cap, atomically. Every entry
has the same TTL and the list is in store order, so the live entries are among the last ``cap``
stored: the list expires with its newest entry, after all of them."""

VERSION_TTL_MS = 24 * 3600 * 1000
"""How long a version is kept after it was last replaced (or regenerated): at least a day, and ten
times the cache's TTL (``version_ttl_ms``). The TTLs are at most an hour (``app/config.py``)."""

ENTRIES_PER_GROUP = 16
"""The default cap of a group's entries (``StampedCache.entries_per_group``)."""

HELD_BYTES = 8 * 2**20
"""Answers a process keeps per cache (least recently used dropped first)."""

STORED_BYTES_MAX = 256 * 2**10
"""A larger answer is served but not stored: each query is its own entry, so one reader varying a
filter could otherwise park a few megabytes per request in Valkey, which also holds the rate limits,
revocations and queues (a task page is ~16 KB; 100 tasks at the longest descriptions, ~8 MB)."""

Load = Callable[[], Awaitable[bytes]]

REFUSED_READER = (NotFoundError, ForbiddenError)
"""What a load raises when its reader may not see the answer (checked in PostgreSQL): a reader who
joined that load (``single_flight``) loads for themselves instead of sharing the refusal."""


def fresh_version() -> str:
    return secrets.token_hex(8)


class _Held(NamedTuple):
    header: bytes  # {stamp}{token}\n
    answer: bytes


def _held_size(held: _Held) -> int:
    return len(held.header) + len(held.answer)


def _split(entry: bytes) -> _Held:
    """``{stamp}{token}\\n{answer}`` (neither the stamp's versions nor the token hold a newline)."""
    end = entry.index(b"\n", entry.index(b"\n") + 1) + 1
    return _Held(entry[:end], entry[end:])


class StampedCache:
    """The read protocol, the stored answers and the versions; a subclass names its keys."""

    namespace: str
    entries_per_group = ENTRIES_PER_GROUP

    def __init__(self, cache: Cache, ttl_s: float, lookup: str, *, code: str = CODE_FINGERPRINT) -> None:
        """``cache``: the process's Valkey cache (its client, its rate-limited warning when Valkey is
        unreachable); ``lookup``: the subclass's script, after ``VERSION_LUA``; ``code``: the
        release whose answers these are (``entry_key``)."""
        self.cache = cache
        self.code = code
        self.valkey = cache.valkey
        self.ttl_ms = int(ttl_s * 1000)
        self.version_ttl_ms = max(VERSION_TTL_MS, 10 * self.ttl_ms)
        self._lookup = cache.lookups.register_script(VERSION_LUA + ANSWER_LUA + lookup)
        self._store_in_group = cache.valkey.register_script(_STORE_IN_GROUP)
        self._held: LRUCache[str, _Held] = LRUCache(HELD_BYTES, getsizeof=_held_size)
        self._hits, self._misses = hits_and_misses(self.namespace)
        self._flights: Flights = {}

    def entry_key(self, name: str) -> str:
        """The key of the stored answer ``name``, this release's own."""
        return f"{self.namespace}:entry:{self.code}:{name}"

    @property
    def enabled(self) -> bool:
        return self.ttl_ms > 0

    async def _read(
        self,
        reader_id: int,
        entry: str,
        keys: list[str],
        arg: str | int,
        scope: Callable[[], Awaitable[str]],
        load: Load,
        *,
        group: str | None = None,
    ) -> bytes:
        """``entry``'s stored answer when its stamp is current, else ``load()``'s (stored under the
        stamp read before it ran). ``keys`` and ``arg``: the lookup's KEYS and ARGV[1] (ARGV[2] is
        a fresh version, ARGV[3] the header of the entry held, ARGV[4] the versions' TTL); ``scope``:
        the reader's scope ids from PostgreSQL, when they must be loaded; ``group``: the key of the
        list that caps the entries ``entry`` is one of (``entries_per_group``), if any."""
        if not self.enabled:
            return await load()
        held = self._held.get(entry)
        args = [arg, fresh_version(), held.header if held else b"", self.version_ttl_ms]
        try:
            found = await self._lookup(keys=keys, args=args)
            if found[0] == 0:
                mv = bytes(found[1])
                await single_flight(
                    self._flights, ("scope", reader_id, mv), lambda: self._store_scope(reader_id, mv, scope)
                )
                found = await self._lookup(keys=keys, args=args)
        except VALKEY_DOWN as error:
            self.degraded("read", error)
            return await load()
        if found[0] == 4 and held is not None:
            self._hits.inc()
            return held.answer
        if found[0] == 2:
            self._hits.inc()
            return self._hold(entry, _split(found[1]))
        self._misses.inc()
        if found[0] != 1:  # the scope changed again meanwhile, or it says: not for this reader
            return await load()
        stamp = bytes(found[1])
        # One load per missing answer and stamp in this process: when an entry expired under load,
        # every concurrent reader sent the same query (a burst that made the feed's p99 several times
        # its p50). Whoever joins has read that stamp and checked their own scope.
        started = False

        def start() -> Coroutine[Any, Any, bytes]:
            nonlocal started
            started = True
            return self._load_and_store(entry, stamp, load, group)

        try:
            return await single_flight(self._flights, (entry, stamp), start)
        except REFUSED_READER:
            # The load checks its reader's access in PostgreSQL (whose word is final, the scope being
            # a cache of it): a refusal is the starter's, not the answer's. A joiner, who may be a
            # member where the starter no longer is, loads for themselves.
            if started:
                raise
            return await self._load_and_store(entry, stamp, load, group)

    async def _store_scope(self, reader_id: int, mv: bytes, scope: Callable[[], Awaitable[str]]) -> None:
        ids = await scope()
        await self.valkey.set(f"{self.namespace}:scope:{reader_id}", mv + b"|" + ids.encode(), px=self.ttl_ms)

    async def _load_and_store(self, entry: str, stamp: bytes, load: Load, group: str | None) -> bytes:
        body = await load()
        if len(body) > STORED_BYTES_MAX:
            return body
        held = _Held(stamp + fresh_version().encode() + b"\n", body)
        try:
            if group is None:
                await self.valkey.set(entry, held.header + body, px=self.ttl_ms)
            else:
                await self._store_in_group(
                    keys=[entry, group], args=[held.header + body, self.ttl_ms, self.entries_per_group]
                )
        except VALKEY_DOWN as error:
            self.degraded("store", error)
            return body
        return self._hold(entry, held)

    def _hold(self, entry: str, held: _Held) -> bytes:
        if _held_size(held) <= HELD_BYTES:
            self._held[entry] = held
        return held.answer

    async def _replace(self, versions: Mapping[str, Any], what: str) -> None:
        """Set these versions (after a change committed), each for ``version_ttl_ms``, in one
        transaction; an outage is counted, not raised."""
        if not self.enabled or not versions:
            return
        try:
            async with self.valkey.pipeline(transaction=True) as pipe:
                for key, value in versions.items():
                    pipe.set(key, value, px=self.version_ttl_ms)
                await pipe.execute()
        except VALKEY_DOWN as error:
            self.degraded(f"version of {what}", error)

    def degraded(self, operation: str, error: Exception) -> None:
        self.cache.degraded(self.namespace, operation, error)
