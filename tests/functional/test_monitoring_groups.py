"""Error groups on real PostgreSQL and Valkey: grouping, exact counts, dedup, lifecycle, merges."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.db import UnitOfWork
from app.core.modules import Module
from app.core.services import open_services
from app.db.models import MonitoringGroupKind, MonitoringGroupStatus, MonitoringIgnoreMode
from app.domains.monitoring import ingest as monitoring_ingest
from app.domains.monitoring import triage
from app.domains.monitoring.capture import DEGRADED, RawEvent
from app.domains.monitoring.fingerprint import ExceptionPart, Frame, RawException, capture_chain
from app.domains.monitoring.groups import (
    MAX_STORED_NAME,
    MAX_WRITE_FAILURES,
    Aggregate,
    WriteResult,
    exception_payload,
)
from app.domains.monitoring.module import module as monitoring_module
from app.domains.monitoring.services import MonitoringService
from tests.factories import captured_logs, scalar, wait_until
from tests.unit.test_monitoring_fingerprint import raise_bug


def tuned(settings: Settings, **changes: Any) -> Settings:
    """Settings whose background task stays idle during a test (the test drives every step)."""
    quiet = {
        "monitoring_flush_interval_s": 60.0,
        "monitoring_check_interval_s": 3600.0,
        "monitoring_ship_interval_s": 600.0,
        "monitoring_delivery_fallback_s": 86_400.0,
    }
    return msgspec.structs.replace(settings, **{**quiet, **changes})


@asynccontextmanager
async def open_monitoring(
    settings: Settings, *, modules: Sequence[Module] = (monitoring_module,), **changes: Any
) -> AsyncIterator[MonitoringService]:
    """The monitoring service of a process of its own (started: its background task stays idle);
    ``modules``: the assembly (monitoring alone unless a test needs the other domains' services)."""
    async with open_services(tuned(settings, **changes), modules) as services:
        yield services[MonitoringService]


@pytest.fixture
async def service(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> AsyncIterator[MonitoringService]:
    async with open_monitoring(settings) as opened:
        yield opened


def error_event(
    exc: BaseException,
    *,
    at: float | None = None,
    user_id: int | None = None,
    kind: MonitoringGroupKind = MonitoringGroupKind.ERROR,
    route: str = "/api/things/{thing_id:int}",
) -> RawEvent:
    return RawEvent(
        kind=kind,
        occurred_at=time.time() if at is None else at,
        chain=capture_chain(exc),
        context={"source": "request", "route": route, "method": "POST", "request_id": uuid.uuid4().hex},
        user_id=user_id,
    )


def message_event(message: str, *, at: float | None = None) -> RawEvent:
    return RawEvent(
        kind=MonitoringGroupKind.ERROR,
        occurred_at=time.time() if at is None else at,
        chain=(RawException("PaymentTimeout", message, ()),),
        context={"source": "job"},
    )


async def groups(db: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
    cursor = await db.execute(
        "select id, kind::text, status::text, events, users from monitoring_groups"
        " where kind <> 'cron' order by id"  # the session app's checks may add cron groups
    )
    return await cursor.fetchall()


async def test_the_same_bug_raised_from_shifted_lines_is_one_group(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    for padding in (0, 7, 120):
        service.buffer.add(error_event(raise_bug(padding)))
        assert await service.flush(force=True) == 1
    [(group_id, kind, status, events, _)] = await groups(db)
    assert (kind, status, events) == ("error", "unresolved", 3)
    lines = await scalar(
        db, "select count(distinct (exception->-1->'frames'->-1->>'lineno')) from monitoring_events"
    )
    assert lines == 3, "three events from three different line numbers"
    hashes = await scalar(
        db,
        "select array_agg(variant order by variant) from monitoring_fingerprints where group_id = %s",
        group_id,
    )
    assert hashes == ["all_frames", "in_app"]


async def test_different_exception_types_are_different_groups(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    key_error = raise_bug(0, source=BUG_RAISING.replace("ERROR", "KeyError"))
    type_error = raise_bug(0, source=BUG_RAISING.replace("ERROR", "TypeError"))
    for exc in (key_error, type_error, key_error):
        service.buffer.add(error_event(exc))
    assert await service.flush(force=True) == 2
    assert sorted(row[3] for row in await groups(db)) == [1, 2]


BUG_RAISING = """
def handler(value):
    raise ERROR(value)
"""


async def test_a_thousand_variants_of_one_message_are_one_group(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    for n in range(1000):
        service.buffer.add(
            message_event(
                f"payment {uuid.uuid4()} for user{n}@example.com timed out after {n * 7 % 97}.{n % 10} s "
                f"at 2026-11-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z"
                f" (ref 0x{n * 7919:x}, host 10.0.{n % 256}.{n % 7})"
            )
        )
    assert await service.flush(force=True) == 1
    [(_, _, _, events, _)] = await groups(db)
    assert events == 1000
    assert (
        await scalar(db, "select variant from monitoring_fingerprints where variant <> 'fixed'") == "message"
    )


async def test_counts_and_users_are_exact_and_samples_bounded(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    async with open_monitoring(settings, monitoring_samples_per_group=5) as service:
        exc = raise_bug(0)
        for batch in range(6):
            for n in range(50):
                service.buffer.add(error_event(exc, user_id=(batch * 50 + n) % 70 + 1))
            await service.flush(force=True)
    [(group_id, _, _, events, users)] = await groups(db)
    assert (events, users) == (300, 70)
    assert await scalar(db, "select count(*) from monitoring_events where group_id = %s", group_id) == 5
    assert (
        await scalar(db, "select sum(events) from monitoring_group_counts where group_id = %s", group_id)
        == 300
    )


async def test_a_storm_costs_one_write_per_group_per_window(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    async with open_monitoring(settings, monitoring_dedup_window_s=3600.0) as service:
        exc = raise_bug(0)
        writes = 0
        for _ in range(20):  # 20 flush rounds of a storm: only the first may write
            for _ in range(250):
                service.buffer.add(error_event(exc))
            writes += await service.flush()
        assert writes == 1
        [(_, _, _, events, _)] = await groups(db)
        assert events == 250, "the later events wait for the next window"
        writes += await service.flush(force=True)  # shutdown: nothing is lost
    [(_, _, _, events, _)] = await groups(db)
    assert (events, writes) == (5000, 2)


async def test_without_valkey_capture_still_works_degraded(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    async with open_monitoring(settings, monitoring_dedup_window_s=3600.0) as service:
        service.ingest.valkey = Valkey.from_url(
            "redis://127.0.0.1:9/0", socket_connect_timeout=0.5
        )  # nothing listens
        before = DEGRADED._value.get()
        exc = raise_bug(0)
        service.buffer.add(error_event(exc))
        assert await service.flush() == 1, "written although the dedup gate is unreachable"
        service.buffer.add(error_event(exc))
        assert await service.flush() == 0, "still one write per window, per process"
        assert DEGRADED._value.get() > before
        await service.ingest.valkey.aclose()
    [(_, _, _, events, _)] = await groups(db)
    assert events == 2


async def test_a_change_of_in_app_rules_does_not_split_a_group(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    exc = raise_bug(0, module="vendored.payments")
    async with open_monitoring(settings) as service:
        service.buffer.add(error_event(exc))
        await service.flush(force=True)
    async with open_monitoring(settings, monitoring_in_app_modules=["app", "workers", "vendored"]) as service:
        service.buffer.add(error_event(exc))
        [result] = await service.write_now([error_event(exc)])
        assert not result.created
        await service.flush(force=True)
    [(group_id, _, _, events, _)] = await groups(db)
    assert events == 3
    variants = await scalar(
        db,
        "select array_agg(variant order by variant) from monitoring_fingerprints where group_id = %s",
        group_id,
    )
    assert variants == ["all_frames", "in_app"], (
        "the new in-app hash joined the group found by its all-frames hash"
    )


async def test_resolve_then_an_old_event_does_not_regress_a_new_one_does(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    exc = raise_bug(0)
    [created] = await service.write_now([error_event(exc)])
    before_resolve = time.time()
    await service.resolve(created.root_id, None)
    [late_old] = await service.write_now([error_event(exc, at=before_resolve)])
    assert late_old.transition is None
    assert (await groups(db))[0][2] == "resolved"
    [fresh] = await service.write_now([error_event(exc)])
    assert fresh.transition == "regressed"
    assert (await groups(db))[0][2] == "regressed"
    actions = await scalar(
        db,
        "select array_agg(action order by id) from monitoring_group_activity where group_id = %s",
        created.root_id,
    )
    assert actions == ["created", "resolved", "regressed"]


async def test_resolved_in_the_next_release_ignores_the_old_release(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    exc = raise_bug(0)
    async with open_monitoring(settings, monitoring_release="1.0.0") as old:
        [created] = await old.write_now([error_event(exc)])
        await old.resolve(created.root_id, None, in_next_release=True)
        [still_old] = await old.write_now([error_event(exc)])
        assert still_old.transition is None, "the old release still running in production does not regress it"
    async with open_monitoring(settings, monitoring_release="1.1.0") as new:
        [fixed_not] = await new.write_now([error_event(exc)])
        assert fixed_not.transition == "regressed"


async def test_resolved_in_a_named_release(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    exc = raise_bug(0)
    async with open_monitoring(settings, monitoring_release="2.0.0") as old:
        [created] = await old.write_now([error_event(exc)])
        async with open_monitoring(settings, monitoring_release="2.1.0") as new:  # deployed, rolling
            detail = await old.resolve(created.root_id, None, in_release="2.1.0")
            assert detail.resolved_in_release == "2.1.0"
            assert (await old.write_now([error_event(exc)]))[0].transition is None
            assert (await new.write_now([error_event(exc)]))[0].transition == "regressed"


async def test_ignore_until_n_more_events_reopens_and_alerts(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    exc = raise_bug(0)
    [created] = await service.write_now([error_event(exc)])
    await service.ignore(created.root_id, None, MonitoringIgnoreMode.UNTIL_COUNT, more_events=3)
    assert (await service.write_now([error_event(exc), error_event(exc)]))[0].transition is None
    [reopened] = await service.write_now([error_event(exc)])
    assert reopened.transition == "unignored"
    assert reopened.alert_id is not None
    rules = await scalar(
        db, "select array_agg(rule order by id) from monitoring_alerts where group_id = %s", created.root_id
    )
    assert rules == ["new-group", "reopened"]


async def test_a_merge_or_an_unmerge_leaves_an_ignore_until_n_events_waiting_for_n(
    service: MonitoringService,
) -> None:
    """The target was a number of the tree's events: merging a busy group into one ignored until
    3 more events counted the merged group's 150 past events, and the next event reopened it (and
    alerted). A merge or an unmerge now leaves as many events to come as before it."""
    ignored = raise_bug(0, source=BUG_RAISING.replace("ERROR", "KeyError"))
    busy = raise_bug(0, source=BUG_RAISING.replace("ERROR", "LookupError"))
    [a] = await service.write_now([error_event(ignored)])
    [b] = await service.write_now([error_event(busy)] * 150)
    await service.ignore(a.root_id, None, MonitoringIgnoreMode.UNTIL_COUNT, more_events=3)

    await service.merge(a.root_id, [b.root_id], None)
    [first] = await service.write_now([error_event(ignored)])
    [second] = await service.write_now([error_event(busy)])  # the tree's: 1 more to come
    await service.unmerge(b.root_id, None)
    [own] = await service.write_now([error_event(busy)] * 5)
    [third] = await service.write_now([error_event(ignored)])

    assert (first.root_id, first.transition) == (a.root_id, None), "a merged group's past is not 'more'"
    assert (second.root_id, second.transition) == (a.root_id, None)
    assert (own.root_id, own.transition) == (b.root_id, None)
    assert (third.root_id, third.transition) == (a.root_id, "unignored"), "the third event after the ignore"


async def test_ignore_forever_stays_quiet(service: MonitoringService, db: AsyncConnection[Any]) -> None:
    exc = raise_bug(0)
    [created] = await service.write_now([error_event(exc)])
    await service.ignore(created.root_id, None, MonitoringIgnoreMode.FOREVER)
    events = [error_event(exc, user_id=n) for n in range(200)]
    [result] = await service.write_now(events)
    assert result.transition is None and result.alert_id is None
    assert (await groups(db))[0][2] == "ignored"


async def test_ignore_until_a_time(service: MonitoringService, db: AsyncConnection[Any]) -> None:
    exc = raise_bug(0)
    [created] = await service.write_now([error_event(exc)])
    until = datetime.now(UTC) + timedelta(hours=1)
    await service.ignore(created.root_id, None, MonitoringIgnoreMode.UNTIL_TIME, until=until)
    assert (await service.write_now([error_event(exc)]))[0].transition is None
    service.clock = lambda: until.timestamp() + 1
    assert (await service.write_now([error_event(exc, at=until.timestamp() + 1)]))[
        0
    ].transition == "unignored"


async def test_ignore_until_a_time_expired_by_the_periodic_checks_reopens_with_the_next_event(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    exc = raise_bug(0)
    [created] = await service.write_now([error_event(exc)])
    until = datetime.now(UTC) + timedelta(hours=1)
    await service.ignore(created.root_id, None, MonitoringIgnoreMode.UNTIL_TIME, until=until)
    service.clock = lambda: until.timestamp() + 1
    assert await service.run_periodic()
    assert (await groups(db))[0][2] == "unresolved"
    [reopened] = await service.write_now([error_event(exc, at=until.timestamp() + 1)])
    assert reopened.transition == "unignored"
    assert reopened.alert_id is not None
    [later] = await service.write_now([error_event(exc, at=until.timestamp() + 2)])
    assert later.transition is None, "reopened once"
    rules = await scalar(
        db, "select array_agg(rule order by id) from monitoring_alerts where group_id = %s", created.root_id
    )
    assert rules == ["new-group", "reopened"]
    detail = await scalar(
        db,
        "select detail from monitoring_group_activity where group_id = %s and action = 'unignored'",
        created.root_id,
    )
    assert detail["ignore_mode"] == "until_time"


async def test_merge_and_unmerge_restore_groups_and_counts(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    first = raise_bug(0, source=BUG_RAISING.replace("ERROR", "KeyError"))
    second = raise_bug(0, source=BUG_RAISING.replace("ERROR", "LookupError"))
    [a] = await service.write_now([error_event(first, user_id=1)] * 3)
    [b] = await service.write_now([error_event(second, user_id=1), error_event(second, user_id=2)])
    merged = await service.merge(a.root_id, [b.root_id], None)
    assert (merged.events, merged.users, sorted(merged.members)) == (5, 2, sorted([a.root_id, b.root_id]))
    [again] = await service.write_now([error_event(second, user_id=3)])
    assert again.root_id == a.root_id, "new events of the merged group count for the target"
    with pytest.raises(Exception, match="merged into"):
        await service.resolve(b.root_id, None)
    restored = await service.unmerge(b.root_id, None)
    assert (restored.events, restored.users, restored.members) == (3, 3, [b.root_id])
    target = await service.detail(a.root_id)
    assert (target.events, target.users, target.members) == (3, 1, [a.root_id])
    [after] = await service.write_now([error_event(second)])
    assert after.root_id == b.root_id


async def test_a_merge_past_the_largest_merged_group_is_refused_and_changes_nothing(
    service: MonitoringService, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merged group's detail lists every group in it and its grouping every hash: merges of 100
    sources at a time grew both without bound (a review: 3,001 members, 860 KB of hashes)."""
    monkeypatch.setattr(triage, "MAX_MERGED_GROUPS", 2)
    exceptions = [
        raise_bug(0, source=BUG_RAISING.replace("ERROR", name))
        for name in ("KeyError", "LookupError", "IndexError")
    ]
    a, b, c = [(await service.write_now([error_event(exc)]))[0] for exc in exceptions]
    merged = await service.merge(a.root_id, [b.root_id], None)
    assert sorted(merged.members) == sorted([a.root_id, b.root_id])

    with pytest.raises(triage.MergeTooLargeError, match="would hold 3 groups"):
        await service.merge(a.root_id, [c.root_id], None)
    assert (await service.detail(c.root_id)).members == [c.root_id]
    assert sorted((await service.detail(a.root_id)).members) == sorted([a.root_id, b.root_id])


async def test_concurrent_first_events_create_one_group(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    exc = raise_bug(0)
    async with open_monitoring(settings) as one, open_monitoring(settings) as two:
        results = await asyncio.gather(
            *(service.write_now([error_event(exc)]) for service in (one, two) for _ in range(10))
        )
    assert sum(result[0].created for result in results) == 1
    [(_, _, _, events, _)] = await groups(db)
    assert events == 20


async def test_stackless_job_failures_keep_jobs_apart(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    def job_event(job: str) -> RawEvent:
        return RawEvent(
            kind=MonitoringGroupKind.JOB,
            occurred_at=time.time(),
            chain=(RawException("TimeoutError", "", ()),),
            context={"source": "job", "job": job},
        )

    await service.write_now([job_event("a"), job_event("b"), job_event("a")])
    assert sorted(row[3] for row in await groups(db)) == [1, 2]
    assert {row[1] for row in await groups(db)} == {MonitoringGroupKind.JOB.value}
    assert MonitoringGroupStatus.UNRESOLVED.value in {row[2] for row in await groups(db)}


async def test_text_postgresql_cannot_store_is_made_storable(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    nasty = "NUL \x00 and a lone surrogate \udc80 in password=hunter2"
    results = await service.write_now([error_event(ValueError(nasty)), message_event(nasty)])
    assert [result.created for result in results] == [True, True]
    messages = {
        row[0] for row in await (await db.execute("select message from monitoring_events")).fetchall()
    }
    assert messages == {"NUL \ufffd and a lone surrogate \ufffd in password=[Filtered]"}
    titles = [row[0] for row in await (await db.execute("select title from monitoring_groups")).fetchall()]
    assert all("\ufffd" in title and "hunter2" not in title for title in titles)


async def test_a_write_that_keeps_failing_is_dropped_and_does_not_block_the_others(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    poison = RawEvent(
        kind=MonitoringGroupKind.ERROR,
        occurred_at=time.time(),
        chain=(RawException("Poison", "x", ()),),
        context={"source": "request", "user_id": "not an integer"},
        user_id=2**70,  # out of bigint's range: the write fails every time
    )
    service.buffer.add(poison)
    service.buffer.add(message_event("healthy"))
    for attempt in range(5):
        with pytest.raises(Exception, match=r"out of range|int"):
            await service.flush(force=True)
        if attempt == 0:
            assert [row[3] for row in await groups(db)] == [1], "the healthy aggregate was written anyway"
    assert await service.flush(force=True) == 0, "dropped after five failures"
    assert len(service.ingest._pending) == 0


async def test_an_unavailable_database_never_drops_an_aggregate(
    service: MonitoringService, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    write = service.writer.write
    outage = [
        PoolTimeout("no connection"),
        psycopg.OperationalError("server closed the connection"),
        OSError(),
    ]
    failures = itertools.islice(itertools.cycle(outage), 3 * MAX_WRITE_FAILURES)

    async def down_then_back(uow: UnitOfWork, aggregate: Aggregate, now: datetime) -> WriteResult:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await write(uow, aggregate, now)

    monkeypatch.setattr(service.writer, "write", down_then_back)
    for _ in range(10):
        service.buffer.add(message_event("Database unavailable"))
    for _ in range(3 * MAX_WRITE_FAILURES):  # a long outage: many more failed flushes than the limit
        with pytest.raises((PoolTimeout, psycopg.OperationalError, OSError)):
            await service.flush(force=True)
    assert await service.flush(force=True) == 1, "the outage's events wait for the database"
    assert [row[3] for row in await groups(db)] == [10]


async def test_a_process_whose_clock_is_an_hour_ahead_does_not_silence_the_periodic_checks(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The check slots are PostgreSQL's, the clock every process shares: a host whose clock was
    stepped an hour ahead (then corrected) runs one round of checks, and the next slot is the others'
    as usual (a slot taken from its clock kept every process's checks from running for that hour)."""
    async with (
        open_monitoring(settings, monitoring_check_interval_s=1.0) as ahead,
        open_monitoring(settings, monitoring_check_interval_s=1.0) as on_time,
    ):
        ahead.clock = lambda: time.time() + 3600
        assert await ahead.run_periodic()
        await wait_until(on_time.run_periodic, 30, "a process on the right clock runs the next round")


async def test_new_fingerprints_past_max_pending_are_counted_and_logged_once(
    service: MonitoringService, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``MAX_PENDING`` distinct fingerprints waiting (the database is behind), a new one's events
    are dropped: counted, and said once per interval rather than once per fingerprint."""
    monkeypatch.setattr(monitoring_ingest, "MAX_PENDING", 2)
    dropped = "app_monitoring_pending_events_dropped_total"
    before = REGISTRY.get_sample_value(dropped) or 0.0
    tag = uuid.uuid4().hex[:6]
    with captured_logs() as logs:
        for n in range(5):
            for _ in range(n + 1):  # fingerprint n has n + 1 events
                service.buffer.add(
                    RawEvent(
                        kind=MonitoringGroupKind.ERROR,
                        occurred_at=time.time(),
                        chain=(RawException(f"Overflow{tag}Error{n}", "too many", ()),),
                        context={"source": "request"},
                    )
                )
        assert await service.flush(force=True) == 2
    assert (REGISTRY.get_sample_value(dropped) or 0.0) - before == 3 + 4 + 5
    [warning] = logs.events("monitoring_fingerprints_dropped")
    assert (warning["level"], warning["held"]) == ("warning", 2)


async def test_a_secret_a_long_message_is_cut_through_is_masked_whole(
    service: MonitoringService, db: AsyncConnection[Any]
) -> None:
    """The monitoring reviewer: a message was cut to its 2,000 characters when captured and scrubbed
    when stored, so a URL's password the cut went through (before its ``@``) was stored in part."""
    url = "postgres://app:SuperSecretPassword@db.internal/app"
    for padding in (2000 - 30, 2000 - 20, 2000 - 15):
        try:
            raise RuntimeError("x" * padding + " " + url)
        except RuntimeError as exc:
            await service.write_now([error_event(exc)])
    stored = await scalar(
        db,
        "select string_agg(exception::text || title, ' ')"
        " from monitoring_events e join monitoring_groups g on g.id = e.group_id",
    )
    assert "SuperSecret" not in stored and "SuperSec" not in stored, stored[-300:]


def test_a_frames_names_and_source_line_are_stored_bounded() -> None:
    """The monitoring reviewer: an in-app line holding a 200,000-character literal was stored whole
    in every sample (4 MB a group)."""
    huge = "x = '" + "a" * 200_000 + "'  # password=hunter22"
    frame = Frame(
        module="m" * 1000, function="f", filename="app/x.py", lineno=1, context_line=huge, in_app=True
    )
    [part] = exception_payload([ExceptionPart(type="T" * 1000, message="boom", frames=[frame])])
    [stored] = part["frames"]
    assert max(len(str(value)) for value in stored.values()) <= MAX_STORED_NAME
    assert len(part["type"]) <= MAX_STORED_NAME
