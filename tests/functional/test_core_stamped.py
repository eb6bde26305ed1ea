"""``app/core/stamped.py`` on a real Valkey, through the task lists' cache (its simplest user)."""

from __future__ import annotations

from valkey.asyncio import Valkey

from app.core.stamped import STORED_BYTES_MAX, Load
from app.domains.tasks.cache import TaskListCache
from tests.factories import MakeCache

READER, PROJECT = 7, 101


async def member_of_the_project(user_id: int) -> list[int]:
    return [PROJECT]


async def stored_bytes(valkey: Valkey) -> int:
    return sum([await valkey.strlen(key) async for key in valkey.scan_iter("tasks:entry:*")])


async def test_an_answer_over_the_cap_is_served_but_never_stored(
    make_cache: MakeCache, valkey: Valkey
) -> None:
    """One reader varying a filter made each query's multi-megabyte page an entry of its own: twenty
    requests parked ~170 MB in Valkey. Past the cap an answer is loaded each time instead."""
    cache = TaskListCache(make_cache(valkey), 30, member_of_the_project)
    loads: list[int] = []

    def loader(size: int) -> Load:
        async def load() -> bytes:
            loads.append(size)
            return b"x" * size

        return load

    big = STORED_BYTES_MAX + 1
    for query in ("a", "b", "c"):
        assert await cache.read(READER, PROJECT, query, loader(big)) == b"x" * big
    assert await cache.read(READER, PROJECT, "a", loader(big)) == b"x" * big
    assert loads == [big] * 4
    assert await stored_bytes(valkey) < STORED_BYTES_MAX

    small = STORED_BYTES_MAX
    await cache.read(READER, PROJECT, "d", loader(small))
    await cache.read(READER, PROJECT, "d", loader(small))
    assert loads == [big] * 4 + [small], "an answer at the cap is stored and served again"
    assert await stored_bytes(valkey) > small


async def test_versions_expire_well_after_the_answers_they_stamp(
    make_cache: MakeCache, valkey: Valkey
) -> None:
    """Review: versions were set without an expiry, so a deleted project's and every past reader's
    stayed in Valkey for ever. Those the lookup creates and those a change replaces both expire, after
    every entry and scope stamped with them (an expired one is regenerated fresh: a miss, never an
    old answer current)."""
    cache = TaskListCache(make_cache(valkey), 30, member_of_the_project)

    async def load() -> bytes:
        return b"page"

    versions = (f"tasks:mv:{READER}", f"tasks:pv:{PROJECT}")

    async def expiries() -> list[int]:
        return [await valkey.pttl(key) for key in versions]

    await cache.read(READER, PROJECT, "q", load)
    assert all(ttl > 10 * cache.ttl_ms for ttl in await expiries()), "created by the lookup"
    await valkey.persist(versions[1])
    await cache.tasks_changed(PROJECT)
    await cache.membership_changed(READER, PROJECT)
    assert all(ttl > 10 * cache.ttl_ms for ttl in await expiries()), "replaced after a change"
