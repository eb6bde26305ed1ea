"""What a key's rotation and a site's creation cost the database (review).

- ``retired_ingest_keys`` had no index but its primary key (the key): each rotation's ``RotationWait``
  (the site's rotations within the hour) and ``ForgetRetiredKeys`` (the keys older than any process
  remembers), and each listener's (re)load ``RecentlyDeletedKeys``, read the whole table. Two indexes
  now bound them: (site_id, retired_at) and (retired_at).
- A creation asked PostgreSQL whether it knows the site's zone by reading ``pg_timezone_names`` (its
  tz directory, from disk: ~45 ms) every time. A zone it knows is now remembered by the process; one
  it lacks is asked again.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.db import sites as site_queries
from app.domains.sites.schemas import SiteCreate
from app.domains.sites.services import SiteService, UnsupportedTimeZoneError
from app.modules import MODULES
from tests.factories import make_user, plan_scans
from tests.functional.test_core_generic_plans import generic_plan

TABLE = "retired_ingest_keys"


@pytest.mark.parametrize(
    ("statement", "column"),
    [
        (site_queries.ROTATION_WAIT, "site_id"),
        (site_queries.FORGET_RETIRED_KEYS, "retired_at"),
        (site_queries.RECENTLY_DELETED_KEYS, "retired_at"),
    ],
    ids=["RotationWait", "ForgetRetiredKeys", "RecentlyDeletedKeys"],
)
async def test_the_retired_keys_a_statement_needs_are_found_by_an_index(
    db: AsyncConnection[Any], statement: str, column: str
) -> None:
    """The generic plan of each statement that reads retired keys, sequential scans priced out of reach
    (``enable_seqscan`` off: only a missing index leaves one): every scan of the table is an index
    range on ``column``, not a walk of the whole table or of its primary key. The table holds what a
    day of rotations leaves, analyzed: the statistics an earlier test left (a few keys of one site,
    all retired moments ago) made the retired_at index look the narrower one."""
    async with db.transaction(force_rollback=True):
        await db.execute(
            "insert into retired_ingest_keys (ingest_key, site_id, retired_at)"
            " select 'retired-' || n, n % 500, now() - n * interval '20 seconds'"
            " from generate_series(1, 4000) n"
        )
        await db.execute(f"analyze {TABLE}")
        await db.execute("set local enable_seqscan = off")
        plan = await generic_plan(db, statement)
    scans = plan_scans(plan, TABLE)
    assert scans, plan
    for node in scans:
        bound = f"{node.get('Index Cond', '')} {node.get('Recheck Cond', '')}"
        assert column in bound, (node["Node Type"], node.get("Index Name"), node.get("Filter"))
        assert "Seq Scan" not in node["Node Type"]


@pytest.fixture
def time_zone_checks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every execution of ``DatabaseKnowsTimeZone`` by any connection of this process, with its
    parameters (psycopg's cursor spied on: the statement runs as it would)."""
    seen: list[object] = []
    execute = psycopg.AsyncRawCursor.execute

    async def spied(self: psycopg.AsyncRawCursor[Any], query: Any, params: Any = None, **kwargs: Any) -> Any:
        if query == site_queries.DATABASE_KNOWS_TIME_ZONE:
            seen.append(params)
        return await execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.AsyncRawCursor, "execute", spied)
    return seen


async def test_a_zone_postgresql_knows_is_asked_once_per_process_and_one_it_lacks_each_time(
    settings: Settings, app: Litestar, db: AsyncConnection[Any], time_zone_checks: list[object]
) -> None:
    owner = await make_user(db, app)
    async with open_services(settings, MODULES) as services:
        sites = services[SiteService]
        for n in range(3):
            await sites.create(owner.id, SiteCreate(domain=f"{n}.example", timezone="Europe/Berlin"))
        assert time_zone_checks == [("Europe/Berlin",)]

        for _ in range(2):
            with pytest.raises(UnsupportedTimeZoneError):
                await sites.create(owner.id, SiteCreate(domain="x.example", timezone="Mars/Olympus"))
        assert time_zone_checks == [("Europe/Berlin",), ("Mars/Olympus",), ("Mars/Olympus",)]

        await sites.create(owner.id, SiteCreate(domain="u.example"))
        assert time_zone_checks[-1] == ("UTC",)
    count = await (await db.execute("select count(*) from sites where owner_id = %s", (owner.id,))).fetchone()
    assert count == (4,)
