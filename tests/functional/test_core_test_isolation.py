"""The harness's promise (``tests/conftest.py``): a test that takes ``db`` starts on an empty Valkey
as well as an empty database, whether it takes ``valkey`` or not. Ids repeat from test to test (the
truncation restarts every sequence), so a report cached by one test under its site's id answered the
next test's site of the same id. The two tests run in this order: the first leaves a key behind, the
second must not find it."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from valkey.asyncio import Valkey

LEFT_BEHIND = "summary:22001:7d:UTC:7"


async def test_a_test_leaves_a_cache_entry_behind(valkey_url: str, db: AsyncConnection[Any]) -> None:
    client = Valkey.from_url(valkey_url)
    try:
        await client.set(LEFT_BEHIND, b"another test's numbers")
    finally:
        await client.aclose()


async def test_the_next_test_taking_db_does_not_see_it(valkey_url: str, db: AsyncConnection[Any]) -> None:
    client = Valkey.from_url(valkey_url)
    try:
        assert not await client.exists(LEFT_BEHIND)
    finally:
        await client.aclose()
