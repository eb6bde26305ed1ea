"""Feed events whose jobs were lost are recorded by the recovery cron (``app/domains/activity/recovery.py``).

A lost job is an outbox row marked published whose event was never stored: the relay enqueued it,
and every attempt then failed (a long outage) or the queue lost it. The tests make such rows by
publishing them without delivering them, dated now or longer than the grace ago.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from app.config import Settings
from app.core.logging import OncePerInterval
from app.core.services import Services, open_services
from app.db import activity as queries
from app.domains.activity import recovery
from app.domains.activity.events import emit
from app.domains.activity.module import module as activity_module
from app.domains.activity.recovery import GRACE, recover_lost_events
from app.domains.activity.services import ActivityService
from tests.factories import Team, captured_logs, make_project, migration_up
from tests.functional.test_core_generic_plans import rows_read, run_custom, run_generic

LATER = GRACE + timedelta(minutes=1)
OTHER_ROWS = 2000
"""Published rows of other tasks after the feed's last one."""


@pytest.fixture
async def feed(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[ActivityService]:
    services: Services
    async with open_services(settings, (activity_module,)) as services:
        yield services[ActivityService]


async def emit_tasks(feed: ActivityService, actor: int, project: int, titles: list[str]) -> list[int]:
    """One ``task.created`` event per title; their outbox ids."""
    async with feed.db.transaction() as uow:
        return [
            await emit(
                uow,
                actor=actor,
                verb="task.created",
                obj=("task", n),
                project_id=project,
                data={"title": title},
            )
            for n, title in enumerate(titles, start=1)
        ]


async def emit_task_changes(
    feed: ActivityService, actor: int, project: int, task: int, titles: list[str]
) -> list[int]:
    """Task ``task`` created with the first title, then renamed to each next one, in one transaction
    (as its changes would, in order); their outbox ids."""
    verbs = ["task.created"] + ["task.updated"] * (len(titles) - 1)
    async with feed.db.transaction() as uow:
        return [
            await emit(
                uow,
                actor=actor,
                verb=verb,
                obj=("task", task),
                project_id=project,
                data={"title": title, **({"fields": ["title"]} if verb == "task.updated" else {})},
            )
            for verb, title in zip(verbs, titles, strict=True)
        ]


async def run_jobs(db: AsyncConnection[Any], feed: ActivityService, outbox_ids: list[int]) -> None:
    """What the jobs of these outbox rows do, one after another in this order: record their event."""
    cursor = await db.execute("select id, payload from outbox where id = any(%s)", (outbox_ids,))
    payloads = dict(await cursor.fetchall())
    for outbox_id in outbox_ids:
        assert await feed.record_batch([{**payloads[outbox_id], "outbox_id": outbox_id}]) == 1


async def task_title(db: AsyncConnection[Any], task: int) -> str | None:
    row = await (
        await db.execute(
            "select title from activity_objects where object_type = 'task' and object_id = %s", (task,)
        )
    ).fetchone()
    assert row is not None
    title: str | None = row[0]
    return title


async def publish(db: AsyncConnection[Any], outbox_ids: list[int], ago: timedelta = timedelta()) -> None:
    """What the relay does before a job is lost: the rows are marked published (``ago`` back)."""
    await db.execute("update outbox set published_at = now() - %s where id = any(%s)", (ago, outbox_ids))


async def stored_titles(db: AsyncConnection[Any]) -> list[str]:
    """The titles the stored events were emitted with (their outbox rows': a stored event keeps only
    its details)."""
    rows = await (
        await db.execute(
            "select o.payload->'data'->>'title' from activity_events e join outbox o on o.id = e.outbox_id"
            " order by e.outbox_id"
        )
    ).fetchall()
    return [row[0] for row in rows]


async def mark(db: AsyncConnection[Any]) -> int:
    row = await (
        await db.execute("select coalesce(max(checked_through), 0) from activity_recovery")
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_lost_event_is_recorded_once_its_grace_has_passed_and_only_once(
    db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    ids = await emit_tasks(feed, team.editor.id, team.project, ["A", "B"])
    await publish(db, ids)

    assert await feed.recover_lost_events() == 0, "its job may still be retried"
    assert await stored_titles(db) == []
    assert await mark(db) == 0

    await publish(db, ids, ago=LATER)
    assert await feed.recover_lost_events() == 2
    assert await stored_titles(db) == ["A", "B"]
    assert await mark(db) == ids[-1]
    assert await feed.recover_lost_events() == 0
    assert await stored_titles(db) == ["A", "B"]


async def test_events_stored_by_their_jobs_are_not_recorded_again(
    db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    ids = await emit_tasks(feed, team.editor.id, team.project, ["A", "B"])
    await publish(db, ids, ago=LATER)
    rows = await (await db.execute("select id, payload from outbox order by id")).fetchall()
    assert await feed.record_batch([{**payload, "outbox_id": id_} for id_, payload in rows]) == 2

    assert await feed.recover_lost_events() == 0
    assert await stored_titles(db) == ["A", "B"]
    assert await mark(db) == ids[-1]


async def test_the_walk_stops_at_the_first_row_still_on_its_way(
    db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    """Rows behind the mark are never looked at again, so the mark stops before a row not yet
    published (or published within the grace), even when later rows are ready."""
    first, second, third = await emit_tasks(feed, team.editor.id, team.project, ["A", "B", "C"])
    await publish(db, [first, third], ago=LATER)

    assert await feed.recover_lost_events() == 1
    assert await stored_titles(db) == ["A"]
    assert await mark(db) == first

    await publish(db, [second])  # just now: still within its grace
    assert await feed.recover_lost_events() == 0
    assert await mark(db) == first

    await publish(db, [second], ago=LATER)
    assert await feed.recover_lost_events() == 2
    assert await stored_titles(db) == ["A", "B", "C"]
    assert await mark(db) == third


async def test_a_lost_event_of_a_deleted_project_is_passed_over(
    db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    doomed = await make_project(db, team.owner, name="Doomed")
    gone = await emit_tasks(feed, team.owner.id, doomed, ["gone"])
    kept = await emit_tasks(feed, team.editor.id, team.project, ["kept"])
    await db.execute("delete from projects where id = %s", (doomed,))
    await publish(db, gone + kept, ago=LATER)

    assert await feed.recover_lost_events() == 1
    assert await stored_titles(db) == ["kept"]
    assert await mark(db) == kept[-1], "the dropped event is behind the mark: never tried again"


async def test_the_mark_moves_batch_by_batch(
    db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    ids = await emit_tasks(feed, team.editor.id, team.project, [f"T{n}" for n in range(5)])
    await publish(db, ids, ago=LATER)

    assert await recover_lost_events(feed.db, feed.record_batch, batch=2) == 5
    assert await stored_titles(db) == [f"T{n}" for n in range(5)]
    assert await mark(db) == ids[-1]


async def test_an_event_that_cannot_be_recorded_does_not_hold_the_mark_back(
    db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    """A payload the writer refuses (here: no verb; one that is no object the outbox refuses) fails
    its batch every time; alone, it is logged and passed over, and the events around it are recorded."""
    first = await emit_tasks(feed, team.editor.id, team.project, ["A"])
    content = {"actor_id": team.editor.id, "project_id": team.project}
    bad = await (
        await db.execute(
            "insert into outbox (queue, task, payload) values ('feed', 'record_activity', %s) returning id",
            (Jsonb(content),),
        )
    ).fetchone()
    assert bad is not None
    last = await emit_tasks(feed, team.editor.id, team.project, ["B"])
    await publish(db, [*first, bad[0], *last], ago=LATER)

    assert await feed.recover_lost_events() == 2
    assert await stored_titles(db) == ["A", "B"]
    assert await mark(db) == last[-1]


async def test_an_event_that_cannot_be_recorded_is_found_by_halving_its_batch(
    db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    """Scaling review: a refused batch was retried one write per event (a thousand writes for one
    bad payload in a step). Halving finds it in a few writes, and every other event is recorded."""
    titles = [f"T{n}" for n in range(31)]
    before = await emit_tasks(feed, team.editor.id, team.project, titles[:20])
    bad = await (
        await db.execute(
            "insert into outbox (queue, task, payload) values ('feed', 'record_activity', %s) returning id",
            (Jsonb({"actor_id": team.editor.id, "project_id": team.project}),),
        )
    ).fetchone()
    assert bad is not None
    after = await emit_tasks(feed, team.editor.id, team.project, titles[20:])
    await publish(db, [*before, bad[0], *after], ago=LATER)
    writes: list[int] = []

    async def record(events: Sequence[Mapping[str, Any]]) -> int:
        writes.append(len(events))
        return await feed.record_batch(events)

    assert await recover_lost_events(feed.db, record) == 31
    assert sorted(await stored_titles(db)) == sorted(titles)
    assert writes[0] == 32
    assert len(writes) <= 1 + 2 * 5, f"{len(writes)} writes for 32 events: {writes}"


async def test_a_row_committed_late_is_not_passed_while_its_transaction_is_open(
    db: AsyncConnection[Any], database_url: str, feed: ActivityService, team: Team
) -> None:
    """Outbox ids are taken at insert, rows become visible at commit: a transaction still open holds
    an id below rows already published. The walk passes no row published after the oldest open
    writing transaction began (here with no grace, so that the open transaction alone decides)."""
    async with await AsyncConnection.connect(database_url) as slow:
        async with slow.transaction():
            await slow.execute(
                "insert into outbox (queue, task, payload) values ('feed', 'record_activity', %s)",
                (
                    Jsonb(
                        {
                            "actor_id": team.editor.id,
                            "verb": "task.created",
                            "object_type": "task",
                            "object_id": 1,
                            "project_id": team.project,
                            "data": {"title": "Slow"},
                            "occurred_at": "2026-12-01T00:00:00Z",
                        }
                    ),
                ),
            )
            fast = await emit_tasks(feed, team.editor.id, team.project, ["Fast"])
            await publish(db, fast)
            assert await recover_lost_events(feed.db, feed.record_batch, grace=timedelta(0)) == 0
            assert await mark(db) == 0
        await db.execute("update outbox set published_at = now() where published_at is null")
    assert await recover_lost_events(feed.db, feed.record_batch, grace=timedelta(0)) == 2
    assert sorted(await stored_titles(db)) == ["Fast", "Slow"]


async def test_a_transaction_open_in_another_database_does_not_hold_the_walk_back(
    db: AsyncConnection[Any], database_url: str, feed: ActivityService, team: Team
) -> None:
    """Only this database's open transactions can hold an outbox row back: another application's on the
    same server (here the maintenance database's) held the recovery back while it stayed open, and
    made the test above flaky beside another test worker's database."""
    elsewhere = make_conninfo(database_url, dbname="postgres")
    async with await AsyncConnection.connect(elsewhere) as other, other.transaction():
        await other.execute("select txid_current()")  # a writing transaction: it holds an xid
        lost = await emit_tasks(feed, team.editor.id, team.project, ["Lost"])
        await publish(db, lost)
        assert await recover_lost_events(feed.db, feed.record_batch, grace=timedelta(0)) == 1
    assert await stored_titles(db) == ["Lost"]


async def test_a_writing_session_the_app_role_cannot_see_into_holds_the_walk_back(
    db: AsyncConnection[Any], database_url: str
) -> None:
    """A role without pg_read_all_stats (the deploy's app role) sees other roles' sessions without their
    xact_start: min() skipped them, and a migration's or an operator's open transaction did not hold the
    walk back (a review). Here a NOINHERIT role reads while the session's superuser writes."""
    role = "recovery_reader_test"
    await db.execute(f"drop role if exists {role}")
    await db.execute(f"create role {role} login noinherit")
    try:
        reader = make_conninfo(database_url, user=role)
        async with await AsyncConnection.connect(database_url) as writer, writer.transaction():
            await writer.execute("select txid_current()")
            async with await AsyncConnection.connect(reader, autocommit=True) as app:
                row = await (
                    await app.execute("select oldest_open_write_started_at() = '-infinity'")
                ).fetchone()
        assert row == (True,)
    finally:
        await db.execute(f"drop role if exists {role}")


async def test_a_walk_held_back_by_an_open_transaction_says_so(
    db: AsyncConnection[Any],
    database_url: str,
    feed: ActivityService,
    team: Team,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a transaction older than the next row stays open, the walk settles nothing and lost events
    wait: nothing said so (a review). Here the grace is a microsecond, so the row published after the
    transaction began has waited far longer than twice it."""
    monkeypatch.setattr(recovery, "_held_back_warnings", OncePerInterval(600.0))
    async with await AsyncConnection.connect(database_url) as open_writer, open_writer.transaction():
        await open_writer.execute("select txid_current()")
        lost = await emit_tasks(feed, team.editor.id, team.project, ["Held"])
        await publish(db, lost)
        with captured_logs() as logs:
            held = await recover_lost_events(feed.db, feed.record_batch, grace=timedelta(microseconds=1))
        assert held == 0
        [warning] = logs.events("feed_recovery_held_back")
        assert warning["outbox_id"] == lost[0]
    assert await recover_lost_events(feed.db, feed.record_batch, grace=timedelta(microseconds=1)) == 1


async def test_the_worker_metrics_say_how_long_the_row_after_the_mark_has_waited(
    db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    """A held-back walk was only a log line every ten minutes (a review): the gauge gives the walk's
    lag at every run, and comes back to 0 once the walk has caught up."""
    lost = await emit_tasks(feed, team.editor.id, team.project, ["Waiting"])
    await publish(db, lost, ago=GRACE / 2)
    assert await feed.recover_lost_events() == 0
    waiting = REGISTRY.get_sample_value("app_feed_recovery_waiting_seconds")
    assert waiting is not None and waiting >= (GRACE / 2).total_seconds()

    await publish(db, lost, ago=LATER)
    assert await feed.recover_lost_events() == 1
    assert REGISTRY.get_sample_value("app_feed_recovery_waiting_seconds") == 0


async def test_a_change_recorded_late_does_not_bring_an_old_title_back(
    db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    """A task created, then renamed: the rename's event is recorded by its job, the creation's job was
    lost and the cron records it later. The feed keeps the title of the later change."""
    created, renamed = await emit_task_changes(
        feed, team.editor.id, team.project, 7, ["Fire Bob", "Team restructure"]
    )
    await run_jobs(db, feed, [renamed])
    await publish(db, [created, renamed], ago=LATER)

    assert await feed.recover_lost_events() == 1
    assert await stored_titles(db) == ["Fire Bob", "Team restructure"]
    assert await task_title(db, 7) == "Team restructure"


async def test_a_rename_recorded_after_the_rename_back_stays_older(
    db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    """Created "A", renamed "B", renamed back "A"; the first rename's job is lost. The rename back
    repeats the title the feed has, yet it is newer than the lost rename: recorded later, "B" must
    not replace it."""
    created, renamed, renamed_back = await emit_task_changes(
        feed, team.editor.id, team.project, 8, ["A", "B", "A"]
    )
    await run_jobs(db, feed, [created, renamed_back, renamed])
    assert await task_title(db, 8) == "A"


async def test_the_backfill_gives_older_objects_the_outbox_id_of_their_event(
    database_url: str, db: AsyncConnection[Any], feed: ActivityService, team: Team
) -> None:
    """Objects stored before ``activity_objects.outbox_id`` existed get the outbox id of the event
    whose feed id their ``seq`` holds, in batches, and may be backfilled again; one whose event is gone
    keeps none."""
    ids = await emit_tasks(feed, team.editor.id, team.project, ["A", "B"])
    await run_jobs(db, feed, ids)
    await db.execute("update activity_objects set outbox_id = null")
    ceiling = 10_000_000_000  # ids no event has
    # Walked first (file < task): the tasks' rows are in the third batch of 1,000.
    await db.execute(
        "insert into activity_objects (object_type, object_id, title, deleted, seq)"
        " select 'file', n, 'purged ' || n, false, %s + n from generate_series(1, 2100) n",
        (ceiling,),
    )
    up = migration_up("activity_objects_outbox_order_backfill")

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(up)
        conn.execute(up)

    backfilled = await (
        await db.execute(
            "select o.object_id, o.outbox_id, e.outbox_id from activity_objects o"
            " join activity_events e on e.id = o.seq where o.object_type = 'task' order by 1"
        )
    ).fetchall()
    assert [(n, outbox, outbox) for n, outbox in enumerate(ids, start=1)] == backfilled
    left = await (
        await db.execute(
            "select count(*), count(outbox_id), count(distinct xmin::text) from activity_objects"
            " where object_type = 'file'"
        )
    ).fetchone()
    assert left == (2_100, 0, 1), "no event, no outbox id (and the backfill wrote none of them)"


async def test_the_walk_reads_only_the_feeds_rows_after_its_mark_whatever_the_plan(
    db: AsyncConnection[Any],
) -> None:
    """The other tasks' rows after the feed's last one are not read (was: every one of them, on the
    primary key, once a minute: the whole retained outbox when the feed is quiet)."""
    await db.execute(
        "insert into outbox (queue, task, published_at)"
        " select 'orders', 'reserve_order', now() - interval '1 hour' from generate_series(1, %s)",
        (OTHER_ROWS,),
    )
    await db.execute("analyze outbox")
    arguments = (GRACE.total_seconds(), 0, 500)
    for run in (run_custom, run_generic):
        plan = await run(db, queries.SETTLED_FEED_OUTBOX, arguments)
        assert plan["Actual Rows"] == 0
        assert rows_read(plan, "outbox") < OTHER_ROWS / 10, run.__name__
