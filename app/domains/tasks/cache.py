"""Pages of project task lists kept in Valkey as their JSON bytes, under a *stamp* of what could
change them (the shape of the feed's cache, ``app/domains/activity/cache.py``).

- ``tasks:pv:{project}``: the project's task version, replaced by a random one (never counted up)
  after a task of the project is created, changed or deleted, a member leaves (the database
  unassigns their tasks) or the project is deleted;
- ``tasks:mv:{user}``: the user's membership version, replaced when they join or leave a project;
- ``tasks:scope:{user}``: ``{mv}|{project ids}``, the projects the user was a member of when
  ``tasks:mv:{user}`` held ``mv`` (valid only while it still does);
- ``tasks:page:{project}:{query}``: ``{pv}\\n{page}``, one page, shared by every member.

A version key that is missing (never set, or evicted) is given a fresh random value by the lookup,
so no page stored before can match it.

One Lua script reads the reader's scope, checks the project is in it, reads the project's version
and the page in one round trip. A reader whose scope does not hold the project goes to PostgreSQL,
which answers 404 or the page (never stored then). On a miss the version is read *before* the
database is, so a page loaded across a concurrent change carries the older version and is never
served. Versions change after the change commits, before the request that made it answers: a read
that starts after that answer sees the new versions.

Valkey unreachable: every read goes to PostgreSQL (counted in ``app_cache_degraded``) and nothing is
stored. Entries expire after ``TASKS_CACHE_TTL_S``, which also bounds how long a version change lost
to a Valkey outage can go unnoticed. The script reads keys it computes, so it needs a single,
non-cluster Valkey, like ``app/core/cache.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from app.core.cache import CACHE_REQUESTS, VALKEY_DOWN, Cache, Flights, single_flight

_NAMESPACE = "tasks"

# KEYS: scope, mv, pv, page. ARGV: the project id, a fresh version for a version key that is missing
# (never read as a default such as '0': a version evicted from Valkey must not make an old page
# current again). Returns {0, mv} when the scope must be loaded, {3} when the project is not in it,
# {1, version} on a miss, {2, bytes} on a hit.
_LOOKUP = """
local function version(key)
  local value = redis.call('GET', key)
  if value then return value end
  redis.call('SET', key, ARGV[2])
  return ARGV[2]
end
local mv = version(KEYS[2])
local scope = redis.call('GET', KEYS[1])
if not scope then return {0, mv} end
local bar = string.find(scope, '|', 1, true)
if string.sub(scope, 1, bar - 1) ~= mv then return {0, mv} end
if not string.find(',' .. string.sub(scope, bar + 1) .. ',', ',' .. ARGV[1] .. ',', 1, true) then
  return {3}
end
local stamp = version(KEYS[3]) .. '\\n'
local page = redis.call('GET', KEYS[4])
if page and string.sub(page, 1, #stamp) == stamp then
  return {2, string.sub(page, #stamp + 1)}
end
return {1, stamp}
"""

MemberProjects = Callable[[int], Awaitable[list[int]]]
"""Loads the projects a user is a member of from PostgreSQL."""


def _token() -> str:
    return secrets.token_hex(8)


class TaskListCache:
    def __init__(self, cache: Cache, ttl_s: float, member_projects: MemberProjects) -> None:
        """``cache``: the process's Valkey cache (its client, its rate-limited warning when Valkey is
        unreachable); ``member_projects``: the reader scope's source of truth."""
        self.cache = cache
        self.valkey = cache.valkey
        self.ttl_ms = int(ttl_s * 1000)
        self.member_projects = member_projects
        self._lookup = self.valkey.register_script(_LOOKUP)
        self._flights: Flights = {}

    async def read(
        self, reader_id: int, project_id: int, query: str, load: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """The page ``query`` of the project's tasks for a member, else ``load()``'s (stored under
        the version read before it ran when the reader is a member)."""
        if self.ttl_ms <= 0:
            return await load()
        page = f"tasks:page:{project_id}:{query}"
        try:
            found = await self._look(reader_id, project_id, page)
            if found[0] == 0:
                mv = bytes(found[1])
                await single_flight(
                    self._flights, ("scope", reader_id, mv), lambda: self._load_scope(reader_id, mv)
                )
                found = await self._look(reader_id, project_id, page)
        except VALKEY_DOWN as error:
            self.cache.degraded(_NAMESPACE, "read", error)
            return await load()
        if found[0] == 2:
            CACHE_REQUESTS.labels(namespace=_NAMESPACE, result="hit").inc()
            return bytes(found[1])
        CACHE_REQUESTS.labels(namespace=_NAMESPACE, result="miss").inc()
        if found[0] != 1:  # not a member as far as the cache knows, or the scope changed meanwhile
            return await load()
        version = bytes(found[1])
        # One load per missing page and version in this process; whoever joins has read that version
        # and checked their own membership against their own scope.
        return await single_flight(
            self._flights, (page, version), lambda: self._load_and_store(page, version, load)
        )

    async def _look(self, reader_id: int, project_id: int, page: str) -> list[Any]:
        keys = [f"tasks:scope:{reader_id}", f"tasks:mv:{reader_id}", f"tasks:pv:{project_id}", page]
        result: list[Any] = await self._lookup(keys=keys, args=[project_id, _token()])
        return result

    async def _load_scope(self, reader_id: int, mv: bytes) -> None:
        ids = ",".join(map(str, await self.member_projects(reader_id)))
        await self.valkey.set(f"tasks:scope:{reader_id}", mv + b"|" + ids.encode(), px=self.ttl_ms)

    async def _load_and_store(self, page: str, version: bytes, load: Callable[[], Awaitable[bytes]]) -> bytes:
        body = await load()
        try:
            await self.valkey.set(page, version + body, px=self.ttl_ms)
        except VALKEY_DOWN as error:
            self.cache.degraded(_NAMESPACE, "store", error)
        return body

    # -- versions ----------------------------------------------------------------------------------

    async def tasks_changed(self, project_id: int) -> None:
        """Tasks of the project changed (or the project is gone): no page stored before is served."""
        await self._replace({f"tasks:pv:{project_id}": _token()}, "project")

    async def membership_changed(self, user_id: int, project_id: int) -> None:
        """The user joined or left the project: their scope is loaded again, and the project's pages
        are stale too (a leaving member's tasks were unassigned in the same transaction)."""
        token = _token()
        await self._replace({f"tasks:mv:{user_id}": token, f"tasks:pv:{project_id}": token}, "membership")

    async def _replace(self, versions: dict[str, str], what: str) -> None:
        if self.ttl_ms <= 0:
            return
        try:
            await self.valkey.mset(versions)
        except VALKEY_DOWN as error:
            self.cache.degraded(_NAMESPACE, f"version of {what}", error)
