"""``just serve`` seeds the demo data once: a demo project or site a user deleted or renamed was
created again at every start, because each seed finds its data by name. ``just seed`` brings it
back."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.modules import MODULES
from app.seed import run_seeders
from tests.factories import migration_up, scalar


async def seed(settings: Settings, *, once: bool) -> list[str]:
    async with open_services(settings, MODULES) as services:
        return await run_seeders(services, once=once)


async def demo_rows(db: AsyncConnection[Any]) -> tuple[int, int]:
    projects = await scalar(db, "select count(*) from projects where name in ('Apollo', 'Gemini')")
    sites = await scalar(db, "select count(*) from sites where domain = 'demo.example.com'")
    return projects, sites


async def test_a_start_does_not_bring_back_demo_data_a_user_deleted_or_renamed(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    first = await seed(settings, once=True)
    assert await demo_rows(db) == (2, 1), first
    await db.execute("update projects set name = 'Apollo, renamed' where name = 'Apollo'")
    await db.execute("delete from sites where domain = 'demo.example.com'")

    restarted = await seed(settings, once=True)

    assert await demo_rows(db) == (1, 0), restarted
    assert not any("demo projects" in line or "demo site" in line for line in restarted), restarted
    asked = await seed(settings, once=False)  # `just seed`
    assert await demo_rows(db) == (2, 1), asked


async def test_a_seed_that_stopped_half_way_runs_again_at_the_next_start(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    """Only a seed run to its end is marked: one a crash cut short (here: its mark taken back)."""
    await seed(settings, once=True)
    await db.execute("delete from demo_seeds where module = 'sites'")
    await db.execute("delete from sites where domain = 'demo.example.com'")

    await seed(settings, once=True)

    assert await demo_rows(db) == (2, 1)


async def test_an_upgrade_from_a_release_before_the_records_does_not_bring_back_deleted_demo_data(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    """An earlier release seeded at every start and kept no record: the first start after the upgrade
    ran every seed again (the upgrade review). Its migration records them where the demo members exist."""
    await seed(settings, once=True)
    await db.execute("delete from demo_seeds")  # as the release before demo_seeds left it
    await db.execute("delete from projects where name = 'Apollo'")
    await db.execute("delete from sites where domain = 'demo.example.com'")
    await db.execute("delete from deleted_sites")  # its record forgotten two days later (a review)

    await db.execute(migration_up("demo_seeds_of_earlier_releases"))
    restarted = await seed(settings, once=True)

    assert await demo_rows(db) == (1, 0), restarted
    assert await scalar(db, "select count(*) from demo_seeds") == 4


async def test_an_upgrade_from_before_a_seed_existed_still_runs_that_seed_once(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    """An installation of the time before the sites' seed: its members and projects, no site ever."""
    await seed(settings, once=True)
    await db.execute("delete from demo_seeds")
    await db.execute("delete from sites")
    await db.execute("delete from deleted_sites")
    await db.execute("select setval(pg_get_serial_sequence('sites', 'id'), 1, false)")  # never drawn

    await db.execute(migration_up("demo_seeds_of_earlier_releases"))
    await seed(settings, once=True)

    assert await demo_rows(db) == (2, 1)


async def test_a_new_installation_is_seeded_whatever_the_records_migration_did(
    db: AsyncConnection[Any], settings: Settings
) -> None:
    await db.execute(migration_up("demo_seeds_of_earlier_releases"))  # no users yet: records nothing
    assert await scalar(db, "select count(*) from demo_seeds") == 0
    await seed(settings, once=True)
    assert await demo_rows(db) == (2, 1)
