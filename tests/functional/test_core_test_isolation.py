"""The harness's promise (``tests/conftest.py``): a test that takes ``db`` starts on an empty Valkey
as well as an empty database, whether it takes ``valkey`` or not. Ids repeat from test to test (the
truncation restarts every sequence), so a report cached by one test under its site's id answered the
next test's site of the same id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

LEFT_BEHIND = "summary:22001:7d:UTC:7"


@pytest.fixture
async def left_behind(valkey_url: str) -> AsyncIterator[Valkey]:
    """A client of the session's Valkey, holding the cache entry an earlier test left. Requested
    before ``db``, it is set up first (pytest sets up a test's fixtures of one scope in the order of
    its parameters): ``db`` then finds the entry as the next test would."""
    client = Valkey.from_url(valkey_url)
    await client.set(LEFT_BEHIND, b"another test's numbers")
    yield client
    await client.aclose()


async def test_a_test_taking_db_does_not_see_what_an_earlier_one_left(
    left_behind: Valkey, db: AsyncConnection[Any]
) -> None:
    assert not await left_behind.exists(LEFT_BEHIND)
