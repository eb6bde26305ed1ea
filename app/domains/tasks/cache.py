"""Pages of project task lists kept in Valkey as their JSON bytes, under a stamp of what could change
them (``app/core/stamped.py``: the protocol, shared with the feed's cache).

- ``tasks:pv:{project}``: the project's task version, replaced after a task of the project is
  created, changed or deleted, a member leaves (the database unassigns their tasks) or the project
  is deleted;
- ``tasks:mv:{user}``: the user's membership version, replaced when they join or leave a project;
- ``tasks:scope:{user}``: ``{mv}|{project ids}``, the projects the user was a member of under ``mv``;
- ``tasks:entry:{release}:{project}:{query}``: ``{pv}\\n{token}\\n{page}``, one page, shared by every member
  (``app/core/stamped.py``: the token lets a process that holds the page skip its transfer);
- ``tasks:pages:{project}``: the project's page keys, newest first: at most ``PAGES_PER_PROJECT``
  pages of a project are stored, the oldest deleted by the store that goes past the cap.

Which pages are worth storing is the service's call (``TaskService.page_in_project``): only the
project's opening page (default sort and size, no filter, no cursor), so one per project. The query
is otherwise the reader's to choose (filters, dates, a limit, a sort), and a per-query key alone let
one reader leave an entry per request (120 requests, 30 MB); even capped at 16 per project, every
first page stored let one user park ~400 MiB across their projects. The cap is the backstop Valkey
enforces itself: whatever a release asks to store, a project holds ``PAGES_PER_PROJECT`` pages.

One Lua script reads the reader's scope, checks the project is in it, reads the project's version
and the page in one round trip. A reader whose scope does not hold the project goes to PostgreSQL,
which answers 404 or the page (never stored then). Entries expire after ``TASKS_CACHE_TTL_S``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from app.core.cache import Cache
from app.core.release import CODE_FINGERPRINT
from app.core.stamped import Load, StampedCache, fresh_version

# KEYS: scope, mv, pv, page. ARGV: the project id, a fresh version (``VERSION_LUA``), the header of
# the page held (``ANSWER_LUA``), the versions' TTL in ms (``VERSION_LUA``). Returns {0, mv} when the
# scope must be loaded, {3} when the project is not in it, else ``answer``'s.
_LOOKUP = """
local got = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])
local mv = version(KEYS[2], got[2])
local scope = got[1]
if not scope then return {0, mv} end
local bar = string.find(scope, '|', 1, true)
if string.sub(scope, 1, bar - 1) ~= mv then return {0, mv} end
if not string.find(',' .. string.sub(scope, bar + 1) .. ',', ',' .. ARGV[1] .. ',', 1, true) then
  return {3}
end
return answer(version(KEYS[3], got[3]) .. '\\n', KEYS[4])
"""

MemberProjects = Callable[[int], Awaitable[list[int]]]
"""Loads the projects a user is a member of from PostgreSQL."""


PAGES_PER_PROJECT = 2
"""A project's stored pages at most. The service stores one, the opening page; the second place is
for the opening page of the other release while a rolling deploy runs two (each names its entries
after its code, ``StampedCache.entry_key``; with one place, each release's store would delete the
other's page). Pages a release that stored more left behind are deleted by this one's next store in
the project."""


class TaskListCache(StampedCache):
    namespace = "tasks"
    entries_per_group = PAGES_PER_PROJECT

    def __init__(
        self, cache: Cache, ttl_s: float, member_projects: MemberProjects, *, code: str = CODE_FINGERPRINT
    ) -> None:
        """``member_projects``: the reader scope's source of truth."""
        super().__init__(cache, ttl_s, _LOOKUP, code=code)
        self.member_projects = member_projects

    async def read(self, reader_id: int, project_id: int, query: str, load: Load) -> bytes:
        """The page ``query`` of the project's tasks for a member, else ``load()``'s (stored under
        the version read before it ran when the reader is a member)."""
        page = self.entry_key(f"{project_id}:{query}")
        keys = [f"tasks:scope:{reader_id}", f"tasks:mv:{reader_id}", f"tasks:pv:{project_id}", page]

        async def scope() -> str:
            return ",".join(map(str, await self.member_projects(reader_id)))

        return await self._read(
            reader_id, page, keys, project_id, scope, load, group=f"tasks:pages:{project_id}"
        )

    # -- versions ----------------------------------------------------------------------------------

    async def tasks_changed(self, project_id: int) -> None:
        """Tasks of the project changed (or the project is gone): no page stored before is served."""
        await self._replace({f"tasks:pv:{project_id}": fresh_version()}, "project")

    async def membership_changed(self, user_id: int, project_id: int) -> None:
        """The user joined or left the project: their scope is loaded again, and the project's pages
        are stale too (a leaving member's tasks were unassigned in the same transaction)."""
        token = fresh_version()
        await self._replace({f"tasks:mv:{user_id}": token, f"tasks:pv:{project_id}": token}, "membership")
