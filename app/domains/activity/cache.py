"""Answers of the feed's hottest reads (the unread counts, the first page) kept in Valkey, each
under a *stamp* of everything that could change it.

A reader's stamp is made of versions, each a Valkey key whose value is replaced (never counted up)
when what it covers changes; a version key that is missing (never set, or evicted) is given a fresh
random value by the lookup, so no answer stored before can match it:

- ``feed:mv:{reader}``: the reader's scope — a membership added or removed, the role changed;
- ``feed:rv:{reader}``: the reader's read state (seen, read marks);
- ``feed:uv:{reader}``: events addressed to the reader (their orders);
- ``feed:pv:{project}``: events stored in the project, or the project deleted;
- ``feed:seq``: any event stored (administrators see everything).

The reader's scope (the projects whose versions count) is kept beside them as ``{mv}|{ids}`` and
is valid only while ``feed:mv:{reader}`` still holds that ``mv``. One Lua script reads the scope,
the versions and the entry in one round trip and answers the cached bytes when the entry's stamp
is the current one. On a miss the stamp is read *before* the database is, so an answer stored
after a concurrent change carries the older stamp and is never served.

Versions change after the change commits, before the request that made it answers: a read that
starts after that answer sees the new stamp. Valkey unreachable: every read goes to PostgreSQL
(counted in ``app_cache_degraded``) and nothing is stored. Entries and scopes expire after
``FEED_CACHE_TTL_S``, which also bounds how long a version change lost to a Valkey outage can go
unnoticed. The script reads keys it computes (the project versions), so it needs a single,
non-cluster Valkey, like ``app/core/cache.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from app.core.cache import CACHE_REQUESTS, VALKEY_DOWN, Cache, Flights, single_flight

_NAMESPACE = "feed"

# KEYS: scope, mv, rv, uv, entry, seq. ARGV: the project version key prefix, a fresh version for a
# version key that is missing (never read as a default such as '0': a version evicted from Valkey must
# not make an answer stored before its first change current again).
# Returns {0, mv} when the scope must be loaded, {1, stamp} on a miss, {2, bytes} on a hit.
_LOOKUP = """
local function version(key, value)
  if value then return value end
  redis.call('SET', key, ARGV[2])
  return ARGV[2]
end
local mv = version(KEYS[2], redis.call('GET', KEYS[2]))
local scope = redis.call('GET', KEYS[1])
if not scope then return {0, mv} end
local bar = string.find(scope, '|', 1, true)
if string.sub(scope, 1, bar - 1) ~= mv then return {0, mv} end
local ids = string.sub(scope, bar + 1)
local parts = {mv, version(KEYS[3], redis.call('GET', KEYS[3])), version(KEYS[4], redis.call('GET', KEYS[4]))}
if ids == '*' then
  parts[#parts + 1] = version(KEYS[6], redis.call('GET', KEYS[6]))
elseif ids ~= '' then
  local keys = {}
  for id in string.gmatch(ids, '[^,]+') do keys[#keys + 1] = ARGV[1] .. id end
  local values = redis.call('MGET', unpack(keys))
  for i = 1, #values do parts[#parts + 1] = version(keys[i], values[i]) end
end
local stamp = table.concat(parts, ':') .. '\\n'
local entry = redis.call('GET', KEYS[5])
if entry and string.sub(entry, 1, #stamp) == stamp then
  return {2, string.sub(entry, #stamp + 1)}
end
return {1, stamp}
"""

Scope = Callable[[], Awaitable[tuple[bool, Iterable[int]]]]
"""Loads the reader's scope from PostgreSQL: (is administrator, projects they are a member of)."""


def _token() -> str:
    return secrets.token_hex(8)


class FeedCache:
    def __init__(self, cache: Cache, ttl_s: float) -> None:
        """``cache``: the process's Valkey cache (its client, its single flights, its rate-limited
        warning when Valkey is unreachable)."""
        self.cache = cache
        self.valkey = cache.valkey
        self.ttl_ms = int(ttl_s * 1000)
        self._lookup = self.valkey.register_script(_LOOKUP)
        self._flights: Flights = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_ms > 0

    async def read(
        self, reader_id: int, name: str, scope: Scope, load: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """The cached answer ``name`` of the reader, else ``load()``'s (then stored under the stamp
        read before it ran)."""
        if not self.enabled:
            return await load()
        entry = f"feed:{name}:{reader_id}"
        try:
            found = await self._look(reader_id, entry)
            if found[0] == 0:
                mv = bytes(found[1])
                await single_flight(
                    self._flights, ("scope", reader_id, mv), lambda: self._load_scope(reader_id, mv, scope)
                )
                found = await self._look(reader_id, entry)
        except VALKEY_DOWN as error:
            self._degraded("read", error)
            return await load()
        if found[0] == 2:
            CACHE_REQUESTS.labels(namespace=_NAMESPACE, result="hit").inc()
            return bytes(found[1])
        CACHE_REQUESTS.labels(namespace=_NAMESPACE, result="miss").inc()
        if found[0] == 0:  # the scope changed again meanwhile: answer, do not store
            return await load()
        stamp = bytes(found[1])
        # One load per missing answer in this process: when an entry expired under load, every
        # concurrent reader sent the same query (a burst that made the feed's p99 several times its
        # p50). Keyed by the stamp the readers saw, so whoever joins is answered as of a stamp they
        # read themselves.
        return await single_flight(
            self._flights, (entry, stamp), lambda: self._load_and_store(entry, stamp, load)
        )

    async def _load_scope(self, reader_id: int, mv: bytes, scope: Scope) -> None:
        is_admin, projects = await scope()
        ids = "*" if is_admin else ",".join(map(str, sorted(projects)))
        await self.valkey.set(f"feed:scope:{reader_id}", mv + b"|" + ids.encode(), px=self.ttl_ms)

    async def _load_and_store(self, entry: str, stamp: bytes, load: Callable[[], Awaitable[bytes]]) -> bytes:
        body = await load()
        try:
            await self.valkey.set(entry, stamp + body, px=self.ttl_ms)
        except VALKEY_DOWN as error:
            self._degraded("store", error)
        return body

    async def _look(self, reader_id: int, entry: str) -> list[Any]:
        keys = [
            f"feed:scope:{reader_id}",
            f"feed:mv:{reader_id}",
            f"feed:rv:{reader_id}",
            f"feed:uv:{reader_id}",
            entry,
            "feed:seq",
        ]
        result: list[Any] = await self._lookup(keys=keys, args=["feed:pv:", _token()])
        return result

    # -- versions ----------------------------------------------------------------------------------

    async def events_stored(self, last_id: int, projects: Iterable[int], audiences: Iterable[int]) -> None:
        """A batch of events committed (``last_id``: its newest event, never reused)."""
        versions = {f"feed:pv:{p}": last_id for p in projects} | {f"feed:uv:{u}": last_id for u in audiences}
        await self._set(versions | {"feed:seq": last_id}, "events")

    async def scope_changed(self, user_id: int) -> None:
        """The user's memberships or role changed: their next read loads the scope again."""
        await self._set({f"feed:mv:{user_id}": _token()}, "scope")

    async def project_gone(self, project_id: int) -> None:
        await self._set({f"feed:pv:{project_id}": _token()}, "project")

    async def read_state_changed(self, reader_id: int) -> None:
        await self._set({f"feed:rv:{reader_id}": _token()}, "read state")

    async def _set(self, versions: dict[str, Any], what: str) -> None:
        if not self.enabled or not versions:
            return
        try:
            await self.valkey.mset(versions)
        except VALKEY_DOWN as error:
            self._degraded(f"version of {what}", error)

    def _degraded(self, operation: str, error: Exception) -> None:
        self.cache.degraded(_NAMESPACE, operation, error)
