"""The task lists' page cache on a real Valkey (``app/domains/tasks/cache.py``): a page is served only
to a reader whose scope holds the project and only under the version it was loaded under; each
kind of change makes it stale; a change during a load is never hidden by the stored page; a lost
version never makes an old page current; Valkey unreachable means PostgreSQL answers.

The scope loader and the page loader stand for PostgreSQL here: the tests count their calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import REGISTRY
from valkey.asyncio import Valkey

from app.core.errors import NotFoundError
from app.domains.tasks.cache import PAGES_PER_PROJECT, TaskListCache
from tests.factories import MakeCache, wait_until
from tests.valkey_control import ControlledValkey

READER, OTHER = 7, 8
PROJECT, ELSEWHERE = 101, 102


class Loads:
    """The page loader: a new page per call, counted; ``during`` runs inside the load."""

    def __init__(self, during: Callable[[], Awaitable[object]] | None = None) -> None:
        self.calls = 0
        self.during = during

    async def __call__(self) -> bytes:
        self.calls += 1
        if self.during is not None:
            await self.during()
        return f"page {self.calls}".encode()


class Memberships:
    """The scope loader: which projects each user is a member of, and how often it was asked."""

    def __init__(self) -> None:
        self.of = {READER: [PROJECT, ELSEWHERE], OTHER: [PROJECT]}
        self.calls = 0

    async def __call__(self, user_id: int) -> list[int]:
        self.calls += 1
        return self.of.get(user_id, [])


@pytest.fixture
def memberships() -> Memberships:
    return Memberships()


@pytest.fixture
def cache(make_cache: MakeCache, valkey: Valkey, memberships: Memberships) -> TaskListCache:
    return TaskListCache(make_cache(valkey), 30, memberships)


async def read(cache: TaskListCache, load: Loads, reader: int = READER, query: str = "q") -> bytes:
    return await cache.read(reader, PROJECT, query, load)


async def test_a_page_is_loaded_once_and_shared_by_the_members(
    cache: TaskListCache, memberships: Memberships
) -> None:
    load = Loads()
    assert await read(cache, load) == b"page 1"
    assert await read(cache, load) == b"page 1"
    assert await read(cache, load, reader=OTHER) == b"page 1"
    assert load.calls == 1
    assert memberships.calls == 2, "each reader's scope is loaded once"


async def test_each_query_is_its_own_page(cache: TaskListCache) -> None:
    load = Loads()
    assert await read(cache, load, query="a") == b"page 1"
    assert await read(cache, load, query="b") == b"page 2"
    assert await read(cache, load, query="a") == b"page 1"


async def stored_pages(valkey: Valkey, project: int) -> list[bytes]:
    return [key async for key in valkey.scan_iter(f"tasks:entry:*:{project}:*")]


async def test_a_project_keeps_at_most_its_cap_of_pages_the_newest(
    cache: TaskListCache, valkey: Valkey
) -> None:
    """Review: every made-up query (a date, a limit) was a page of its own in Valkey, 120 requests
    left 120 entries (30 MB). The oldest pages of the project go; other projects keep theirs."""
    elsewhere = Loads()
    assert await cache.read(READER, ELSEWHERE, "q", elsewhere) == b"page 1"
    load = Loads()
    queries = [f"made-up {n}" for n in range(3 * PAGES_PER_PROJECT)]
    for query in queries:
        await read(cache, load, query=query)
    assert len(await stored_pages(valkey, PROJECT)) == PAGES_PER_PROJECT
    assert await valkey.llen(f"tasks:pages:{PROJECT}") == PAGES_PER_PROJECT
    assert 0 < await valkey.pttl(f"tasks:pages:{PROJECT}") <= cache.ttl_ms

    calls = load.calls
    for query in queries[-PAGES_PER_PROJECT:]:
        await read(cache, load, query=query)
    assert load.calls == calls, "the newest pages were kept and served"
    await read(cache, load, query=queries[0])
    assert load.calls == calls + 1, "the oldest was deleted"
    assert await cache.read(READER, ELSEWHERE, "q", elsewhere) == b"page 1"
    assert elsewhere.calls == 1


async def test_each_release_keeps_its_own_opening_page_while_a_rolling_deploy_runs_both(
    make_cache: MakeCache, valkey: Valkey, memberships: Memberships
) -> None:
    """The items' shape is the code's (``TaskOut`` gained ``version`` once): a page one release
    stored is never the other's, and the project's cap leaves each release its page."""
    old = TaskListCache(make_cache(valkey), 30, memberships, code="old")
    new = TaskListCache(make_cache(valkey), 30, memberships, code="new")
    by_old, by_new = Loads(), Loads()
    for _ in range(2):
        assert await read(old, by_old) == b"page 1"
        assert await read(new, by_new) == b"page 1"
    assert (by_old.calls, by_new.calls) == (1, 1)
    assert len(await stored_pages(valkey, PROJECT)) == 2


def misses() -> float:
    sample = REGISTRY.get_sample_value("app_cache_requests_total", {"namespace": "tasks", "result": "miss"})
    return sample or 0.0


async def test_a_reader_refused_by_the_database_does_not_refuse_the_readers_who_joined_their_load(
    cache: TaskListCache,
) -> None:
    """Review: concurrent readers of a missing page share one load, which checks its starter's
    membership in PostgreSQL. A member whose read joined the load of a member just removed (their
    scope not yet replaced) was answered that member's 404; they load for themselves instead."""
    release = asyncio.Event()

    async def removed_member() -> bytes:
        await release.wait()
        raise NotFoundError("No such project.")

    member = Loads()
    before = misses()
    refused = asyncio.create_task(cache.read(OTHER, PROJECT, "q", removed_member))

    async def missed(count: int) -> bool:
        return misses() >= before + count

    await wait_until(lambda: missed(1), 5, "the removed member started the load")
    served = asyncio.create_task(read(cache, member))
    await wait_until(lambda: missed(2), 5, "the member joined it")
    release.set()
    with pytest.raises(NotFoundError):
        await refused
    assert await served == b"page 1"
    assert await read(cache, member) == b"page 1", "the member's own load was stored"
    assert member.calls == 1


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: c.tasks_changed(PROJECT), id="a task of the project changed"),
        pytest.param(lambda c: c.membership_changed(OTHER, PROJECT), id="another member left or joined"),
        pytest.param(lambda c: c.membership_changed(READER, PROJECT), id="the reader left or joined"),
    ],
)
async def test_each_change_of_the_project_makes_its_pages_stale(
    cache: TaskListCache, change: Callable[[TaskListCache], Awaitable[None]]
) -> None:
    load = Loads()
    await read(cache, load)
    await change(cache)
    assert await read(cache, load) == b"page 2"
    assert await read(cache, load) == b"page 2", "the new page is cached in turn"


async def test_changes_elsewhere_keep_the_page(cache: TaskListCache) -> None:
    load = Loads()
    await read(cache, load)
    await cache.tasks_changed(ELSEWHERE)
    await cache.membership_changed(OTHER, ELSEWHERE)
    assert await read(cache, load) == b"page 1"
    assert load.calls == 1


async def test_a_reader_whose_scope_lacks_the_project_always_goes_to_the_database(
    cache: TaskListCache, memberships: Memberships
) -> None:
    """The database then answers 404 (or the page, when the scope is behind): nothing is stored."""
    memberships.of[READER] = [ELSEWHERE]
    load = Loads()
    assert await read(cache, load) == b"page 1"
    assert await read(cache, load) == b"page 2"
    assert await read(cache, load, reader=OTHER) == b"page 3", "a non-member's load was not stored"
    assert await read(cache, load, reader=OTHER) == b"page 3"


async def test_a_removed_member_is_not_served_the_page(
    cache: TaskListCache, memberships: Memberships
) -> None:
    load = Loads()
    await read(cache, load, reader=OTHER)
    memberships.of[OTHER] = []
    await cache.membership_changed(OTHER, PROJECT)
    await read(cache, load, reader=OTHER)
    await read(cache, load, reader=OTHER)
    assert load.calls == 3, "every read of the removed member went to the database"


async def test_a_change_committed_while_loading_is_not_hidden_by_the_stored_page(
    cache: TaskListCache,
) -> None:
    """The load may have read the database before the change: its page must not be served after."""

    async def task_changed_meanwhile() -> None:
        if load.calls == 1:
            await cache.tasks_changed(PROJECT)

    load = Loads(during=task_changed_meanwhile)
    assert await read(cache, load) == b"page 1"
    assert await read(cache, load) == b"page 2"
    assert await read(cache, load) == b"page 2"


async def test_a_scope_loaded_across_a_membership_change_is_not_used_after_it(
    make_cache: MakeCache, valkey: Valkey, memberships: Memberships
) -> None:
    """The reader leaves while their scope is being loaded (from before the change): the scope is
    loaded again under the new membership version, so they are not served the page."""

    async def before_the_removal(user_id: int) -> list[int]:
        scope = await memberships(user_id)
        if memberships.calls == 1:
            memberships.of[READER] = []
            await cache.membership_changed(READER, PROJECT)
        return scope

    cache = TaskListCache(make_cache(valkey), 30, before_the_removal)
    load = Loads()
    await read(cache, load)
    await read(cache, load)
    assert memberships.calls == 2
    assert load.calls == 2, "neither read was served from the cache"


async def test_a_lost_version_never_makes_an_old_page_current(cache: TaskListCache, valkey: Valkey) -> None:
    """A version key evicted (or flushed) after a change must not fall back to the value the old page
    was stored under."""
    load = Loads()
    await read(cache, load)
    await cache.tasks_changed(PROJECT)
    await valkey.delete(f"tasks:pv:{PROJECT}")
    assert await read(cache, load) == b"page 2"


# -- pages a process holds (``app/core/stamped.py``) --------------------------------------------------


@pytest.fixture
def other_process(make_cache: MakeCache, valkey: Valkey, memberships: Memberships) -> TaskListCache:
    """The same cache in another worker: its own Valkey connection and its own held pages."""
    return TaskListCache(make_cache(valkey), 30, memberships)


async def _bytes_sent_by_valkey(valkey: Valkey, read: Callable[[], Awaitable[bytes]]) -> int:
    before = (await valkey.info("stats"))["total_net_output_bytes"]
    await read()
    return int((await valkey.info("stats"))["total_net_output_bytes"] - before)


async def test_a_page_this_process_holds_is_not_sent_again(
    cache: TaskListCache, other_process: TaskListCache, valkey: Valkey
) -> None:
    big = b"[" + b"0," * 50_000 + b"0]"

    async def load() -> bytes:
        return big

    assert await read(cache, load) == big
    held = await _bytes_sent_by_valkey(valkey, lambda: read(cache, load))
    fetched = await _bytes_sent_by_valkey(valkey, lambda: read(other_process, load))
    assert fetched > len(big), "the other process had to fetch the page"
    assert held < 10_000, f"{held} bytes sent for a page this process holds"
    assert await read(cache, load) == await read(other_process, load) == big


async def test_a_held_page_changed_by_another_process_is_not_served(
    cache: TaskListCache, other_process: TaskListCache
) -> None:
    load = Loads()
    assert await read(cache, load) == b"page 1"
    await other_process.tasks_changed(PROJECT)
    assert await read(cache, load) == b"page 2"


async def test_a_held_page_is_served_only_while_valkey_holds_the_same_entry(
    cache: TaskListCache, other_process: TaskListCache, valkey: Valkey
) -> None:
    """The entry expired and another process stored a newer load under the same stamp: that one is
    served, not the older page this process still holds (which would outlive the TTL)."""
    load = Loads()
    assert await read(cache, load) == b"page 1"
    await valkey.delete(cache.entry_key(f"{PROJECT}:q"))
    assert await read(other_process, load) == b"page 2"
    assert await read(cache, load) == b"page 2"
    await valkey.delete(cache.entry_key(f"{PROJECT}:q"))
    assert await read(cache, load) == b"page 3", "an expired entry is loaded again"


async def test_a_zero_ttl_turns_the_cache_off(
    make_cache: MakeCache, valkey: Valkey, memberships: Memberships
) -> None:
    cache = TaskListCache(make_cache(valkey), 0, memberships)
    load = Loads()
    await read(cache, load)
    await read(cache, load)
    assert load.calls == 2 and memberships.calls == 0
    await cache.tasks_changed(PROJECT)
    assert await valkey.keys("tasks:*") == []


async def test_valkey_unreachable_means_every_read_is_loaded(
    make_cache: MakeCache, controlled_valkey: ControlledValkey, memberships: Memberships
) -> None:
    client = Valkey.from_url(controlled_valkey.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    cache = TaskListCache(make_cache(client), 30, memberships)
    load = Loads()
    await read(cache, load)
    controlled_valkey.stop()
    try:
        assert await read(cache, load) == b"page 2"
        await cache.tasks_changed(PROJECT)  # lost, not raised
        assert await read(cache, load) == b"page 3"
    finally:
        await client.aclose()
