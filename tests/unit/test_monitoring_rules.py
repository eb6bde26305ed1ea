"""The decisions without I/O: lifecycle, cron monitors, percentiles, pacing, rules, report time."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest

from app.config import SettingsError, load_settings
from app.db.models import MonitoringGroup, MonitoringGroupKind, MonitoringGroupStatus, MonitoringIgnoreMode
from app.domains.monitoring.alerts import (
    GROUP_GAP_RULE,
    AlertRule,
    Frequency,
    UsersAffected,
    always_alerts,
    load_rules,
)
from app.domains.monitoring.crons import MonitorState, Thresholds, check_in, latest_slot, sweep
from app.domains.monitoring.delivery import GROUP_MAX, MIN_INTERVAL_S, Pacer, current_chat
from app.domains.monitoring.latency import BOUNDS_S, BUCKETS, LatencyRecorder, percentiles, quantile_ms
from app.domains.monitoring.lifecycle import ReleaseSeen, decide
from app.domains.monitoring.report import report_period

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def group(**changes: object) -> MonitoringGroup:
    base = MonitoringGroup(
        id=1,
        root_id=1,
        parent_id=None,
        kind=MonitoringGroupKind.ERROR,
        title="t",
        culprit="",
        status=MonitoringGroupStatus.RESOLVED,
        status_changed_at=T0,
        first_seen_at=T0 - timedelta(days=1),
        last_seen_at=T0,
        events=10,
        users=0,
        last_release="1.0",
        resolved_at=T0,
        resolved_in_release_id=None,
        resolved_after_release_id=None,
        ignore_mode=None,
        ignore_until_events=None,
        ignore_until=None,
        created_at=T0,
        ignore_ended_at=None,
        tree_users=0,
    )
    return msgspec.structs.replace(base, **changes)


def seen(order: int, at: datetime) -> list[ReleaseSeen]:
    return [ReleaseSeen(order=order, last_occurred_at=at)]


def test_only_events_after_the_resolve_regress() -> None:
    resolved = group()
    assert (
        decide(resolved, seen(1, T0 - timedelta(microseconds=1)), total_events=11, now=T0, escalating=False)
        is None
    )
    assert decide(resolved, seen(1, T0), total_events=11, now=T0, escalating=False) is None
    after = seen(1, T0 + timedelta(milliseconds=1))
    assert decide(resolved, after, total_events=11, now=T0, escalating=False) == "regressed"


def test_resolved_in_a_release_ignores_older_releases() -> None:
    resolved = group(resolved_in_release_id=5)
    later = T0 + timedelta(hours=1)
    assert decide(resolved, seen(4, later), total_events=11, now=later, escalating=False) is None
    assert decide(resolved, seen(5, later), total_events=11, now=later, escalating=False) == "regressed"
    assert decide(resolved, seen(6, later), total_events=11, now=later, escalating=False) == "regressed"


def test_resolved_in_the_next_release_ignores_the_running_one() -> None:
    resolved = group(resolved_after_release_id=5)
    later = T0 + timedelta(hours=1)
    assert decide(resolved, seen(5, later), total_events=11, now=later, escalating=False) is None
    assert decide(resolved, seen(6, later), total_events=11, now=later, escalating=False) == "regressed"


def test_ignore_variants() -> None:
    later = T0 + timedelta(hours=1)
    ignored = group(status=MonitoringGroupStatus.IGNORED, resolved_at=None)
    forever = msgspec.structs.replace(ignored, ignore_mode=MonitoringIgnoreMode.FOREVER)
    assert decide(forever, seen(1, later), total_events=10**9, now=later, escalating=True) is None
    count = msgspec.structs.replace(
        ignored, ignore_mode=MonitoringIgnoreMode.UNTIL_COUNT, ignore_until_events=20
    )
    assert decide(count, seen(1, later), total_events=19, now=later, escalating=False) is None
    assert decide(count, seen(1, later), total_events=20, now=later, escalating=False) == "unignored"
    timed = msgspec.structs.replace(ignored, ignore_mode=MonitoringIgnoreMode.UNTIL_TIME, ignore_until=later)
    assert (
        decide(timed, seen(1, later), total_events=11, now=later - timedelta(seconds=1), escalating=False)
        is None
    )
    assert decide(timed, seen(1, later), total_events=11, now=later, escalating=False) == "unignored"
    escalating = msgspec.structs.replace(ignored, ignore_mode=MonitoringIgnoreMode.UNTIL_ESCALATING)
    assert decide(escalating, seen(1, later), total_events=11, now=later, escalating=False) is None
    assert decide(escalating, seen(1, later), total_events=11, now=later, escalating=True) == "unignored"


def test_the_first_event_after_an_expired_timed_ignore_reopens_the_group() -> None:
    later = T0 + timedelta(hours=1)
    expired = group(status=MonitoringGroupStatus.UNRESOLVED, resolved_at=None, ignore_ended_at=T0)
    assert decide(expired, seen(1, later), total_events=11, now=later, escalating=False) == "unignored"
    unresolved = group(status=MonitoringGroupStatus.UNRESOLVED, resolved_at=None)
    assert decide(unresolved, seen(1, later), total_events=11, now=later, escalating=False) is None


def limits(schedule: str = "17 3 * * *", **changes: object) -> Thresholds:
    base = Thresholds(
        schedule=schedule,
        margin_s=120,
        max_runtime_s=300,
        failure_threshold=1,
        recovery_threshold=1,
        registered_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_slot_without_a_run_is_missed_after_the_margin_only() -> None:
    slot = datetime(2026, 11, 30, 3, 17, tzinfo=UTC)
    ran_yesterday = MonitorState(last_slot=slot - timedelta(days=1), last_status="ok")
    within_margin = sweep(ran_yesterday, limits(), slot + timedelta(seconds=119))
    assert within_margin.state == ran_yesterday and within_margin.effect is None
    missed = sweep(ran_yesterday, limits(), slot + timedelta(seconds=121))
    assert missed.effect == "failure" and missed.problem == "missed"
    assert missed.state.missed_slot == slot
    again = sweep(missed.state, limits(), slot + timedelta(hours=2))
    assert again.state == missed.state, "one slot is counted once"


def test_a_run_checked_in_for_its_slot_is_not_missed() -> None:
    slot = datetime(2026, 11, 30, 3, 17, tzinfo=UTC)
    started = check_in(MonitorState(), limits(), "in_progress", slot, slot + timedelta(seconds=5), None).state
    done = check_in(started, limits(), "ok", slot, slot + timedelta(seconds=9), 4000.0)
    assert done.effect == "recovery"
    assert sweep(done.state, limits(), slot + timedelta(hours=3)).effect is None


def test_failure_and_recovery_thresholds() -> None:
    strict = limits(failure_threshold=2, recovery_threshold=2)
    at = T0
    first = check_in(MonitorState(), strict, "error", at, at, 10.0)
    assert first.effect is None and first.problem == "error"
    second = check_in(first.state, strict, "error", at, at, 10.0)
    assert second.effect == "failure"
    ok = check_in(second.state, strict, "ok", at, at, 10.0)
    assert ok.effect is None
    assert check_in(ok.state, strict, "ok", at, at, 10.0).effect == "recovery"


def test_an_overrun_is_a_timeout_and_a_long_run_is_no_miss() -> None:
    slot = datetime(2026, 11, 30, 3, 17, tzinfo=UTC)
    running = check_in(MonitorState(), limits("* * * * *"), "in_progress", slot, slot, None).state
    assert sweep(running, limits("* * * * *"), slot + timedelta(seconds=299)).effect is None
    overrun = sweep(running, limits("* * * * *"), slot + timedelta(seconds=301))
    assert overrun.problem == "timeout" and overrun.effect == "failure"


def test_a_monitor_registered_after_the_slot_does_not_miss_it() -> None:
    slot = datetime(2026, 11, 30, 3, 17, tzinfo=UTC)
    fresh = limits(registered_at=slot + timedelta(seconds=1))
    assert sweep(MonitorState(), fresh, slot + timedelta(hours=1)).effect is None


def test_seconds_schedules() -> None:
    at = datetime(2026, 11, 30, 12, 0, 25, tzinfo=UTC)
    assert latest_slot("* * * * * */10", at) == datetime(2026, 11, 30, 12, 0, 20, tzinfo=UTC)
    assert latest_slot("* * * * *", datetime(2026, 11, 30, 12, 1, tzinfo=UTC)) == datetime(
        2026, 11, 30, 12, 1, tzinfo=UTC
    )


def test_percentiles_from_buckets() -> None:
    counts = [0] * BUCKETS
    counts[10] = 95  # ~9.3 ms
    counts[30] = 5  # ~807 ms
    stats = percentiles(counts)
    assert stats.requests == 100
    assert stats.p50_ms == pytest.approx(BOUNDS_S[10] * 1000)
    assert stats.p95_ms == pytest.approx(BOUNDS_S[10] * 1000)
    assert stats.p99_ms == pytest.approx(BOUNDS_S[30] * 1000)
    assert quantile_ms([0] * BUCKETS, 0.5) == 0.0


def test_the_observer_counts_per_route_and_keeps_the_slowest_request() -> None:
    recorder = LatencyRecorder()
    scope = {"path_template": "/api/x/{id:int}", "method": "GET", "state": {"request_id": "a"}}
    recorder.observe(scope, 200, 0.002)  # type: ignore[arg-type]
    recorder.observe({**scope, "state": {"request_id": "b"}}, 500, 0.2)  # type: ignore[arg-type]
    recorder.observe({"path_template": "", "method": "GET", "state": {}}, 404, 0.1)  # type: ignore[arg-type]
    drained = recorder.drain()
    counts = drained["/api/x/{id:int}"]["GET"]
    assert sum(counts.counts) == 2
    assert counts.slowest_request == "b" and counts.slowest_status == 500
    assert list(drained) == ["/api/x/{id:int}"]
    assert recorder.drain() == {}


def test_pacing_per_chat_and_per_group() -> None:
    pacer = Pacer()
    pacer.requested("42", 100.0)
    assert pacer.ready_at("42") == pytest.approx(100.0 + MIN_INTERVAL_S)
    assert pacer.ready_at("43") == 0.0
    for n in range(GROUP_MAX):
        pacer.requested("-100", 200.0 + 2 * n)
    assert pacer.ready_at("-100") == pytest.approx(200.0 + 60.5)
    pacer.block("42", 500.0)
    assert pacer.ready_at("42") == 500.0


def test_a_migrated_chat_is_followed_to_its_current_id() -> None:
    routes = {"-42": "-10042"}
    assert (current_chat(routes, "-42"), current_chat(routes, "-43")) == ("-10042", "-43")
    assert current_chat({"a": "b", "b": "a"}, "a") in ("a", "b"), "a loop in the mapping ends"


SPREADING = (
    '[{"name": "spreading", "conditions": [{"type": "frequency", "events": 50, "window_s": 600},'
    ' {"type": "users", "users": 10, "window_s": 600}], "action_interval_s": 1800}]'
)


def test_rules_from_json_combine_conditions() -> None:
    settings = load_settings(
        {
            "APP_ENV": "test",
            "MONITORING_ALERT_RULES": SPREADING,
        }
    )
    [rule] = load_rules(settings)
    assert rule.conditions == [Frequency(events=50, window_s=600), UsersAffected(users=10, window_s=600)]
    bad = load_settings({"APP_ENV": "test", "MONITORING_ALERT_RULES": '[{"name": "x", "conditions": []}]'})
    with pytest.raises(SettingsError, match="MONITORING_ALERT_RULES"):
        load_rules(bad)


def test_only_rules_on_volume_wait_for_the_group_gap() -> None:
    defaults = load_rules(load_settings({"APP_ENV": "test"}))
    assert {rule.name: always_alerts(rule) for rule in defaults} == {
        "new-group": True,
        "regression": True,
        "reopened": True,
        "escalation": False,
        "frequency": False,
        "users": False,
    }
    new_and_busy = (
        '[{"name": "busy-new", "conditions": [{"type": "new"},'
        ' {"type": "frequency", "events": 5, "window_s": 60}]}]'
    )
    [custom] = msgspec.json.decode(new_and_busy, type=list[AlertRule])
    assert always_alerts(custom)
    assert msgspec.json.decode(SPREADING, type=list[AlertRule])[0].name != GROUP_GAP_RULE
    with pytest.raises(msgspec.ValidationError):  # no configured rule can share the gap's name
        msgspec.json.decode(
            f'[{{"name": "{GROUP_GAP_RULE}", "conditions": [{{"type": "new"}}]}}]', type=list[AlertRule]
        )


def test_the_report_is_due_at_local_time_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    before = datetime(2026, 10, 25, 6, 59, tzinfo=UTC)  # 07:59 CET (DST ended that night)
    assert str(report_period(before, "08:00", berlin)[0]) == "2026-10-24", "the latest due: yesterday's"
    day, start, end = report_period(datetime(2026, 10, 25, 7, 0, tzinfo=UTC), "08:00", berlin)
    assert str(day) == "2026-10-25"
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=25)  # that local day had 25 h
    assert end.astimezone(UTC) == datetime(2026, 10, 25, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "report_time", "checked_at"),
    [
        ("Europe/Berlin", "23:30", datetime(2026, 11, 30, 23, 0, 5, tzinfo=UTC)),  # 00:00:05 local
        ("Europe/Berlin", "08:00", datetime(2026, 12, 1, 23, 5, tzinfo=UTC)),  # after a day's outage
        ("America/New_York", "23:59", datetime(2027, 3, 14, 5, 0, tzinfo=UTC)),  # the spring-forward night
    ],
)
def test_a_check_after_local_midnight_finds_the_report_it_missed(
    zone: str, report_time: str, checked_at: datetime
) -> None:
    """No check ran between the report time and local midnight (an hourly check and a report time of
    23:30; the app down from before the time to after midnight): the first check after it gets the
    day's report (was: none, ever, for that day)."""
    tz = ZoneInfo(zone)
    day, start, end = report_period(checked_at, report_time, tz)
    assert day == checked_at.astimezone(tz).date() - timedelta(days=1)
    assert start < end <= checked_at
    assert end.strftime("%H:%M") == report_time


@pytest.mark.parametrize(
    ("zone", "report_time", "first", "days"),
    [
        ("Europe/Berlin", "02:30", datetime(2027, 3, 26, tzinfo=UTC), 4),  # in the spring-forward gap
        ("Europe/Berlin", "02:30", datetime(2027, 10, 29, tzinfo=UTC), 4),  # twice on the fall-back day
        ("Europe/Berlin", "08:00", datetime(2027, 3, 26, tzinfo=UTC), 4),
        ("America/Havana", "00:30", datetime(2027, 3, 12, tzinfo=UTC), 4),  # its gap is 00:00-01:00
        ("Pacific/Apia", "08:00", datetime(2011, 12, 28, tzinfo=UTC), 5),  # 2011-12-30 never happened
    ],
)
def test_the_reports_cover_every_instant_once_and_never_the_future(
    zone: str, report_time: str, first: datetime, days: int
) -> None:
    """Checked every minute, as the cron does: each report ends no later than the moment it is
    computed and starts where the previous one ended, whatever the DST change in between."""
    tz = ZoneInfo(zone)
    reports: list[tuple[datetime, datetime, datetime]] = []
    claimed: set[object] = set()
    now = first
    while now < first + timedelta(days=days):
        period = report_period(now, report_time, tz)
        if period[0] not in claimed:
            claimed.add(period[0])
            reports.append((now, period[1].astimezone(UTC), period[2].astimezone(UTC)))
        now += timedelta(minutes=1)
    assert len(reports) >= days - 2
    for sent, start, end in reports:
        assert start < end <= sent, (sent, start, end)
    for sent, _, end in reports[1:]:  # (the first was due before the loop began)
        assert sent - end < timedelta(minutes=1), "sent as soon as it is due"
    for (_, _, end), (_, start, _) in itertools.pairwise(reports):
        assert start == end, "each report starts where the previous one ended"
