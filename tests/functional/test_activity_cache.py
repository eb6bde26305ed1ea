"""The feed's answer cache on a real Valkey: an answer is served only under the stamp it was computed
under; each kind of change makes it stale; a change during a load is never hidden by the stored answer;
Valkey unreachable means PostgreSQL answers (``app/domains/activity/cache.py``).

The scope loader and the answer loader stand for PostgreSQL here: the tests count their calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import pytest
from prometheus_client import REGISTRY
from valkey.asyncio import Valkey

from app.domains.activity.cache import FeedCache
from tests.factories import MakeCache, wait_until

READER = 7
PROJECTS = (101, 102)


class Loads:
    """The answer loader: returns a new answer per call, and counts the calls."""

    def __init__(self, during: Callable[[], Awaitable[object]] | None = None) -> None:
        self.calls = 0
        self.during = during

    async def __call__(self) -> bytes:
        self.calls += 1
        if self.during is not None:
            await self.during()
        return f"answer {self.calls}".encode()


def scope_of(is_admin: bool, projects: Iterable[int]) -> Callable[[], Awaitable[tuple[bool, Iterable[int]]]]:
    async def scope() -> tuple[bool, Iterable[int]]:
        return is_admin, projects

    return scope


@pytest.fixture
def cache(make_cache: MakeCache, valkey: Valkey) -> FeedCache:
    return FeedCache(make_cache(valkey), ttl_s=30)


async def read(
    cache: FeedCache, load: Loads, *, admin: bool = False, projects: Iterable[int] = PROJECTS
) -> bytes:
    return await cache.read(READER, "unread", scope_of(admin, projects), load)


async def test_a_second_read_is_served_from_the_cache(cache: FeedCache) -> None:
    load = Loads()
    assert await read(cache, load) == b"answer 1"
    assert await read(cache, load) == b"answer 1"
    assert load.calls == 1


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: c.events_stored(50, [PROJECTS[1]], []), id="event in a visible project"),
        pytest.param(lambda c: c.events_stored(51, [], [READER]), id="event addressed to the reader"),
        pytest.param(lambda c: c.scope_changed(READER), id="membership or role of the reader"),
        pytest.param(lambda c: c.project_gone(PROJECTS[0]), id="a visible project deleted"),
        pytest.param(lambda c: c.project_renamed(PROJECTS[0]), id="a visible project renamed"),
        pytest.param(lambda c: c.read_state_changed(READER), id="read state of the reader"),
        pytest.param(lambda c: c.names_changed(), id="any user renamed"),
    ],
)
async def test_each_change_that_concerns_the_reader_makes_the_answer_stale(
    cache: FeedCache, change: Callable[[FeedCache], Awaitable[None]]
) -> None:
    load = Loads()
    await read(cache, load)
    await change(cache)
    assert await read(cache, load) == b"answer 2"
    assert await read(cache, load) == b"answer 2", "the new answer is cached in turn"


async def test_changes_elsewhere_keep_the_answer(cache: FeedCache) -> None:
    load = Loads()
    await read(cache, load)
    await cache.events_stored(60, [999], [READER + 1])
    await cache.scope_changed(READER + 1)
    await cache.read_state_changed(READER + 1)
    await cache.project_gone(999)
    await cache.project_renamed(999)
    assert await read(cache, load) == b"answer 1"
    assert load.calls == 1


@pytest.mark.parametrize(
    ("change", "version"),
    [
        pytest.param(
            lambda c: c.events_stored(50, [PROJECTS[1]], []), f"feed:pv:{PROJECTS[1]}", id="project"
        ),
        pytest.param(lambda c: c.events_stored(51, [], [READER]), f"feed:uv:{READER}", id="reader's own"),
        pytest.param(lambda c: c.read_state_changed(READER), f"feed:rv:{READER}", id="read state"),
    ],
)
async def test_a_lost_version_never_makes_an_old_answer_current(
    cache: FeedCache, valkey: Valkey, change: Callable[[FeedCache], Awaitable[None]], version: str
) -> None:
    """A version key evicted (or flushed) after a change must not fall back to the value the old
    answer was stored under."""
    load = Loads()
    await read(cache, load)
    await change(cache)
    await valkey.delete(version)
    assert await read(cache, load) == b"answer 2"


async def test_an_administrator_answer_is_stale_after_any_event(cache: FeedCache) -> None:
    load = Loads()
    await read(cache, load, admin=True, projects=())
    await cache.events_stored(70, [999], [])
    assert await read(cache, load, admin=True, projects=()) == b"answer 2"


async def test_an_administrator_answer_is_stale_once_any_project_is_deleted(cache: FeedCache) -> None:
    """Before the deletion's own event is stored: an administrator sees every project's groups."""
    load = Loads()
    await read(cache, load, admin=True, projects=())
    await cache.project_gone(999)
    assert await read(cache, load, admin=True, projects=()) == b"answer 2"


async def test_an_administrator_answer_is_stale_once_any_project_is_renamed(cache: FeedCache) -> None:
    """Before the rename's own event is stored: the sentences join the project's name live."""
    load = Loads()
    await read(cache, load, admin=True, projects=())
    await cache.project_renamed(999)
    assert await read(cache, load, admin=True, projects=()) == b"answer 2"


async def test_a_change_committed_while_loading_is_not_hidden_by_the_stored_answer(cache: FeedCache) -> None:
    """The load may have read the database before the change: its answer must not be served after."""

    async def member_removed_meanwhile() -> None:
        if load.calls == 1:
            await cache.scope_changed(READER)

    load = Loads(during=member_removed_meanwhile)
    assert await read(cache, load) == b"answer 1"
    assert await read(cache, load) == b"answer 2"
    assert await read(cache, load) == b"answer 2"


async def test_a_scope_loaded_before_a_membership_change_is_not_used_after_it(cache: FeedCache) -> None:
    """The reader joins a project while their scope is being loaded: the project's events must still
    make their answer stale (the scope is loaded again under the new membership version)."""
    load = Loads()
    joined = False

    async def scope() -> tuple[bool, Iterable[int]]:
        nonlocal joined
        if not joined:
            joined = True
            await cache.scope_changed(READER)  # committed after the scope query read the memberships
            return False, PROJECTS
        return False, (*PROJECTS, 103)

    await cache.read(READER, "unread", scope, load)
    await cache.read(READER, "unread", scope, load)
    await cache.events_stored(80, [103], [])
    await cache.read(READER, "unread", scope, load)
    assert load.calls == 3, "an event in the joined project makes the answer stale"


async def test_answers_are_per_name(cache: FeedCache) -> None:
    counts, page = Loads(), Loads()
    await cache.read(READER, "unread", scope_of(False, PROJECTS), counts)
    await cache.read(READER, "page20", scope_of(False, PROJECTS), page)
    await cache.read(READER, "unread", scope_of(False, PROJECTS), counts)
    assert (counts.calls, page.calls) == (1, 1)


async def test_a_release_of_other_code_neither_serves_nor_replaces_this_ones_answers(
    make_cache: MakeCache, valkey: Valkey
) -> None:
    """A rolling deploy runs two releases on one Valkey, and the same data is phrased by each its
    own way (``member.left`` read "removed" before): an answer stored by one is not the other's,
    however current its stamp, and neither store evicts the other's."""
    old, new = (
        FeedCache(make_cache(valkey), ttl_s=30, code="old"),
        FeedCache(make_cache(valkey), ttl_s=30, code="new"),
    )
    by_old, by_new = Loads(), Loads()
    assert await read(old, by_old) == b"answer 1"
    assert await read(new, by_new) == b"answer 1"
    assert (by_old.calls, by_new.calls) == (1, 1), "the new release loaded its own"
    assert await read(old, by_old) == b"answer 1"
    assert await read(new, by_new) == b"answer 1"
    assert (by_old.calls, by_new.calls) == (1, 1), "each kept its own"


async def test_ttl_zero_turns_the_cache_off(make_cache: MakeCache, valkey: Valkey) -> None:
    off = FeedCache(make_cache(valkey), ttl_s=0)
    load = Loads()
    await read(off, load)
    await read(off, load)
    assert load.calls == 2
    await off.scope_changed(READER)
    assert await valkey.keys("feed:*") == []


async def test_valkey_unreachable_answers_from_the_loader_every_time(make_cache: MakeCache) -> None:
    unreachable = Valkey(host="127.0.0.1", port=1, socket_connect_timeout=1)
    try:
        down = FeedCache(make_cache(unreachable), ttl_s=30)
        load = Loads()
        assert await read(down, load) == b"answer 1"
        assert await read(down, load) == b"answer 2"
        await down.scope_changed(READER)  # logged and counted, not raised
    finally:
        await unreachable.aclose()


async def test_concurrent_readers_of_a_missing_answer_share_one_load(cache: FeedCache) -> None:
    """An entry expiring under load: the readers that find it missing wait for one query, even when
    the reader whose request started it goes away."""
    release = asyncio.Event()

    async def wait_for_release() -> None:
        await release.wait()

    def misses() -> float:
        return (
            REGISTRY.get_sample_value("app_cache_requests_total", {"namespace": "feed", "result": "miss"})
            or 0
        )

    load = Loads(during=wait_for_release)
    before = misses()
    first = asyncio.create_task(read(cache, load))

    async def started() -> bool:
        return load.calls == 1

    await wait_until(started, 5, "the first reader started the load")
    others = [asyncio.create_task(read(cache, load)) for _ in range(9)]

    async def all_missed() -> bool:
        return misses() >= before + 10

    await wait_until(all_missed, 5, "every reader found the answer missing")
    first.cancel()
    release.set()
    assert await asyncio.gather(*others) == [b"answer 1"] * 9
    assert load.calls == 1
    assert await read(cache, load) == b"answer 1", "and it was stored"
