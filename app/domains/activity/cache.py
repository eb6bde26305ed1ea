"""Answers of the feed's hottest reads (the unread counts, the first page) kept in Valkey, each
under a stamp of everything that could change it (``app/core/stamped.py``: the protocol, shared with
the task lists' page cache). A reader's stamp is made of these versions:

- ``feed:mv:{reader}``: the reader's scope — a membership added or removed, the role changed;
- ``feed:rv:{reader}``: the reader's read state (seen, read marks);
- ``feed:uv:{reader}``: events addressed to the reader (their orders);
- ``feed:pv:{project}``: events stored in the project, the project renamed (its name is joined live
  from ``projects``) or deleted;
- ``feed:seq``: any event stored, any project renamed or deleted (administrators see everything);
- ``feed:names``: any user renamed. Actor names are joined live from ``users``, and an actor may
  appear in any reader's answers (in a project they have since left, in a group addressed to
  someone else), so a rename makes every reader's answers stale; renames are rare.

The reader's scope (the projects whose versions count: ``*`` for administrators) is kept as
``feed:scope:{reader}``, an answer as ``feed:entry:{release}:{name}:{reader}`` (``{stamp}{token}\\n{answer}``,
``app/core/stamped.py``). One Lua script reads the scope, the versions and the entry in one round
trip. Entries and scopes expire after ``FEED_CACHE_TTL_S``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from app.core.cache import Cache
from app.core.release import CODE_FINGERPRINT
from app.core.stamped import Load, StampedCache, fresh_version

# KEYS: scope, mv, rv, uv, entry, seq, names. ARGV: the project version key prefix, a fresh version
# (``VERSION_LUA``), the header of the entry held (``ANSWER_LUA``), the versions' TTL in ms
# (``VERSION_LUA``). Returns {0, mv} when the scope must be loaded, else ``answer``'s.
_LOOKUP = """
local got = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7])
local mv = version(KEYS[2], got[2])
local scope = got[1]
if not scope then return {0, mv} end
local bar = string.find(scope, '|', 1, true)
if string.sub(scope, 1, bar - 1) ~= mv then return {0, mv} end
local ids = string.sub(scope, bar + 1)
local parts = {mv, version(KEYS[3], got[3]), version(KEYS[4], got[4]), version(KEYS[7], got[6])}
if ids == '*' then
  parts[#parts + 1] = version(KEYS[6], got[5])
elseif ids ~= '' then
  local keys = {}
  for id in string.gmatch(ids, '[^,]+') do keys[#keys + 1] = ARGV[1] .. id end
  local values = redis.call('MGET', unpack(keys))
  for i = 1, #values do parts[#parts + 1] = version(keys[i], values[i]) end
end
return answer(table.concat(parts, ':') .. '\\n', KEYS[5])
"""

Scope = Callable[[], Awaitable[tuple[bool, Iterable[int]]]]
"""Loads the reader's scope from PostgreSQL: (is administrator, projects they are a member of)."""


class FeedCache(StampedCache):
    namespace = "feed"

    def __init__(self, cache: Cache, ttl_s: float, *, code: str = CODE_FINGERPRINT) -> None:
        super().__init__(cache, ttl_s, _LOOKUP, code=code)

    async def read(self, reader_id: int, name: str, scope: Scope, load: Load) -> bytes:
        """The cached answer ``name`` of the reader, else ``load()``'s (then stored under the stamp
        read before it ran)."""
        entry = self.entry_key(f"{name}:{reader_id}")
        keys = [
            f"feed:scope:{reader_id}",
            f"feed:mv:{reader_id}",
            f"feed:rv:{reader_id}",
            f"feed:uv:{reader_id}",
            entry,
            "feed:seq",
            "feed:names",
        ]

        async def scope_ids() -> str:
            is_admin, projects = await scope()
            return "*" if is_admin else ",".join(map(str, sorted(projects)))

        return await self._read(reader_id, entry, keys, "feed:pv:", scope_ids, load)

    # -- versions ----------------------------------------------------------------------------------

    async def events_stored(self, last_id: int, projects: Iterable[int], audiences: Iterable[int]) -> None:
        """A batch of events committed (``last_id``: its newest event, never reused)."""
        versions = {f"feed:pv:{p}": last_id for p in projects} | {f"feed:uv:{u}": last_id for u in audiences}
        await self._replace(versions | {"feed:seq": last_id}, "events")

    async def scope_changed(self, user_id: int) -> None:
        """The user's memberships or role changed: their next read loads the scope again."""
        await self._replace({f"feed:mv:{user_id}": fresh_version()}, "scope")

    async def project_gone(self, project_id: int) -> None:
        """A project deleted: its members' answers, and every administrator's (they see all projects,
        and their stamp has ``feed:seq`` instead of project versions), are stale at once."""
        versions = {f"feed:pv:{project_id}": fresh_version(), "feed:seq": fresh_version()}
        await self._replace(versions, "project")

    async def project_renamed(self, project_id: int) -> None:
        """A project renamed: the answers that show its name (its members', every administrator's)
        are stale at once, not only once the rename's event is recorded."""
        versions = {f"feed:pv:{project_id}": fresh_version(), "feed:seq": fresh_version()}
        await self._replace(versions, "project name")

    async def names_changed(self) -> None:
        """A user's display name changed: every reader's answers may show the old one."""
        await self._replace({"feed:names": fresh_version()}, "names")

    async def read_state_changed(self, reader_id: int) -> None:
        await self._replace({f"feed:rv:{reader_id}": fresh_version()}, "read state")
