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
    return sum([await valkey.strlen(key) async for key in valkey.scan_iter("tasks:*")])


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
