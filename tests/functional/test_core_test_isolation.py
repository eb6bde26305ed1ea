"""The harness's promise (``tests/conftest.py``): a test that takes ``db`` starts on an empty Valkey
as well as an empty database, whether it takes ``valkey`` or not. Ids repeat from test to test (the
truncation restarts every sequence), so a report cached by one test under its site's id answered the
next test's site of the same id. Nor does an app that outlives a test (the session's) write what an
earlier test made it hold into a later test's database (``tests.factories.settle_outliving_apps``).

The tests of this module run in its order, in one process (``--dist loadfile``): the second one is
the next test after the first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.db.models import UserRole
from app.domains.monitoring.services import MonitoringService
from tests.factories import Client, make_user

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


async def test_the_session_app_answers_a_500_and_other_requests(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN)
    assert (await client.post("/api/admin/monitoring/test-error", headers=admin.headers)).status_code == 500
    assert (await client.get("/api/auth/me", headers=admin.headers)).status_code == 200


async def test_the_next_test_finds_none_of_it_written_into_its_database(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """What the app still held when the test above ended (the 500's event, the latency of both
    requests) was written before this test's truncation, not after it by the app's next round."""
    portal = client.blocking_portal
    assert portal is not None
    monitoring: MonitoringService = app.state.services[MonitoringService]
    await asyncio.wrap_future(portal.start_task_soon(monitoring.write_held))
    row = await (
        await db.execute(
            "select (select count(*) from monitoring_groups), (select count(*) from monitoring_route_latency)"
        )
    ).fetchone()
    assert row == (0, 0)
