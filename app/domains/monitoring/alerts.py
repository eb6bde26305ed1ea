"""Alert rules and the noise budget.

A rule is a list of conditions that must all hold (so rules combine: "frequency AND users"), the group
kinds it watches and an action interval: once it fires for a group it stays silent for that group
until the interval has passed (then a later spike alerts again, unlike GlitchTip, which never
re-notifies an issue already notified for a rule). Conditions: ``new`` (the group was just created),
``regression``, ``reopened`` (an ignore ended: N more events, a date, or escalation), ``escalation``
(events over a window above k times the group's own baseline rate), ``frequency`` (N events in T) and
``users`` (N distinct users in T) — the last three also alert on the growth of a known problem.

On top of each rule's own interval, a group has one gap (``MONITORING_ACTION_INTERVAL_S``): a rule on
the group's volume (escalation, frequency, users) does not alert a group that had any alert within
it, so one new error turning into a storm sends one alert, not new-group then frequency then users
seconds apart. A rule on a change of the group's state (new, regression, reopened) always alerts:
each is news (``always_alerts``). But not the regression of a group the system resolved itself (a cron
monitor's recovery, or its job no longer scheduled: ``RuleContext.resolved_by_system``), which waits
for the gap too: a cron job failing every other run is resolved and regressed every other minute,
and would otherwise alert each failure and spend the noise budget that a new error needs. A
regression after a person's resolve still alerts at once (they said it was fixed).

``MONITORING_ALERT_RULES`` (JSON, a list of rules) replaces the defaults built from the settings, e.g.
``[{"name": "spreading", "conditions": [{"type": "frequency", "events": 50, "window_s": 600},
{"type": "users", "users": 10, "window_s": 600}], "action_interval_s": 1800}]``.

The budget: at most ``MONITORING_ALERT_BUDGET`` alert messages per channel per period
(``MONITORING_ALERT_BUDGET_WINDOW_S``, opened by the first alert); the alerts over it are recorded and
listed in one digest message sent when the period ends. Once that digest is rendered its period is
closed: a later alert (one whose writer's clock lags the sender's) counts in the next period.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import msgspec
from prometheus_client import Counter

from app.config import Settings, SettingsError
from app.core.db import UnitOfWork
from app.core.outbox import enqueue
from app.core.types import whole
from app.db import monitoring as queries
from app.db.models import MonitoringAlert, MonitoringGroupKind
from app.domains.monitoring.telegram import Rendered

CHANNEL = "telegram"
BUDGET_LOCK = f"monitoring-budget:{CHANNEL}"
"""Held by a write that counts an alert against the budget and by the sender rendering a digest."""
BASELINE = timedelta(days=7)
DELIVER_TASK = "deliver_alerts"

Window = Annotated[int, msgspec.Meta(ge=60, le=30 * 86_400)]
Count = Annotated[int, msgspec.Meta(ge=1)]


class NewGroup(msgspec.Struct, frozen=True, tag="new", tag_field="type", forbid_unknown_fields=True):
    pass


class Regression(msgspec.Struct, frozen=True, tag="regression", tag_field="type", forbid_unknown_fields=True):
    pass


class Reopened(msgspec.Struct, frozen=True, tag="reopened", tag_field="type", forbid_unknown_fields=True):
    pass


class Escalation(msgspec.Struct, frozen=True, tag="escalation", tag_field="type", forbid_unknown_fields=True):
    factor: Annotated[float, msgspec.Meta(gt=1)]
    window_s: Window
    min_events: Count


class Frequency(msgspec.Struct, frozen=True, tag="frequency", tag_field="type", forbid_unknown_fields=True):
    events: Count
    window_s: Window


class UsersAffected(msgspec.Struct, frozen=True, tag="users", tag_field="type", forbid_unknown_fields=True):
    users: Count
    window_s: Window


Condition = NewGroup | Regression | Reopened | Escalation | Frequency | UsersAffected


class AlertRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=whole(r"[a-z0-9][a-z0-9_-]{0,49}"))]
    conditions: Annotated[list[Condition], msgspec.Meta(min_length=1)]
    action_interval_s: Annotated[int, msgspec.Meta(ge=0, le=30 * 86_400)] = 3600
    kinds: list[MonitoringGroupKind] | None = None
    """Group kinds the rule watches (all when omitted)."""


SYSTEM_RESOLUTIONS = ("recovered", "unscheduled")
"""The group activities of a resolve the system makes itself (``monitors.CronMonitors``: the job
recovered, or is no longer scheduled); a person's is ``resolved``."""

GROUP_GAP_RULE = "*group*"
"""The pseudo-rule whose firing (``monitoring_rule_fires``) is a group's last alert, of any rule: no
configured rule can have this name."""


def always_alerts(rule: AlertRule, context: RuleContext | None = None) -> bool:
    """Whether ``rule`` alerts even within its group's gap: a rule on a change of the group's state
    (new, regressed, reopened). Rules on volume alone wait for the gap, and so does a regression
    when ``context`` says the system resolved the group itself (``RuleContext.resolved_by_system``)."""
    system_resolve = context is not None and context.resolved_by_system
    return any(
        isinstance(condition, (NewGroup, Reopened))
        or (isinstance(condition, Regression) and not system_resolve)
        for condition in rule.conditions
    )


EVENT_KINDS = [MonitoringGroupKind.ERROR, MonitoringGroupKind.JOB, MonitoringGroupKind.UNAVAILABLE]


def default_rules(settings: Settings) -> list[AlertRule]:
    interval = settings.monitoring_action_interval_s
    return [
        AlertRule(name="new-group", conditions=[NewGroup()], action_interval_s=0),
        AlertRule(name="regression", conditions=[Regression()], action_interval_s=0),
        AlertRule(name="reopened", conditions=[Reopened()], action_interval_s=0),
        AlertRule(
            name="escalation",
            conditions=[
                Escalation(
                    factor=settings.monitoring_escalation_factor,
                    window_s=settings.monitoring_escalation_window_s,
                    min_events=settings.monitoring_escalation_min_events,
                )
            ],
            action_interval_s=interval,
            kinds=EVENT_KINDS,
        ),
        AlertRule(
            name="frequency",
            conditions=[
                Frequency(
                    events=settings.monitoring_frequency_events,
                    window_s=settings.monitoring_frequency_window_s,
                )
            ],
            action_interval_s=interval,
            kinds=EVENT_KINDS,
        ),
        AlertRule(
            name="users",
            conditions=[
                UsersAffected(
                    users=settings.monitoring_users_threshold, window_s=settings.monitoring_users_window_s
                )
            ],
            action_interval_s=interval,
            kinds=EVENT_KINDS,
        ),
    ]


def load_rules(settings: Settings) -> list[AlertRule]:
    """The rules of ``MONITORING_ALERT_RULES`` (JSON), or the defaults; invalid JSON stops start-up
    (``check_rules``, before anything starts)."""
    if not settings.monitoring_alert_rules.strip():
        return default_rules(settings)
    try:
        rules = msgspec.json.decode(settings.monitoring_alert_rules, type=list[AlertRule])
    except msgspec.DecodeError as exc:
        raise SettingsError(f"MONITORING_ALERT_RULES is not a valid rule list: {exc}") from None
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        raise SettingsError("MONITORING_ALERT_RULES: rule names must be unique")
    return rules


def check_rules(settings: Settings) -> None:
    """The module's settings check: the rules load (found only once the service was built, after
    the migrations, in a traceback; in the image, a crash loop of every worker)."""
    load_rules(settings)


@dataclass(slots=True)
class RuleContext:
    """What the rules see of one group write (counts are read lazily, once each)."""

    kind: MonitoringGroupKind
    new: bool
    regressed: bool
    reopened: bool
    first_seen_at: datetime
    now: datetime
    events_between: Callable[[datetime, datetime], Awaitable[int]]
    """The group's events counted per minute: those of the minutes that begin in [since, until)."""
    users_since: Callable[[datetime, int], Awaitable[int]]
    """The group's users seen since a moment, counted up to a bound (a threshold is all a rule asks)."""
    resolved_by_system: bool = False
    """The group regressed from a resolve the system made itself (``SYSTEM_RESOLUTIONS``), not a
    person's: its regression waits for the group's gap (``always_alerts``)."""


@dataclass(frozen=True, slots=True)
class Fired:
    rule: AlertRule
    reason: str


def minute_start(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _window(context: RuleContext, window: timedelta) -> tuple[datetime, datetime]:
    """The minutes of the last ``window``: from the one ``now - window`` falls in (events are counted
    per minute, and leaving that one out counted up to 59 seconds less than the window: a burst over
    the rule's count was missed) through the current one (and the next, written by a clock ahead)."""
    return minute_start(context.now - window), context.now + timedelta(minutes=1)


async def escalating(context: RuleContext, condition: Escalation) -> str | None:
    """A reason when the rate over the window exceeds ``factor`` x the group's own baseline (the
    minutes before the window's, from the one the group was first seen in)."""
    window = timedelta(seconds=condition.window_s)
    if context.first_seen_at > context.now - window:
        return None  # younger than one window: it has no baseline (the new-group rule covers it)
    recent_start, end = _window(context, window)
    recent = await context.events_between(recent_start, end)
    if recent < condition.min_events:
        return None
    baseline_start = minute_start(max(context.first_seen_at, context.now - BASELINE))
    baseline_span = recent_start - baseline_start
    if baseline_span <= timedelta(0):
        return None
    before = await context.events_between(baseline_start, recent_start)
    per_window = before * (window / baseline_span)
    if recent > condition.factor * max(per_window, 1.0):
        ratio = recent / max(per_window, 1.0)
        return f"{recent} events in {_span(condition.window_s)}, {ratio:.0f}x its usual rate"
    return None


async def _holds(context: RuleContext, condition: Condition) -> str | None:
    if isinstance(condition, NewGroup):
        return "first seen" if context.new else None
    if isinstance(condition, Regression):
        return "regressed after it was resolved" if context.regressed else None
    if isinstance(condition, Reopened):
        return "reopened: its ignore ended" if context.reopened else None
    if isinstance(condition, Escalation):
        return await escalating(context, condition)
    if isinstance(condition, Frequency):
        events = await context.events_between(*_window(context, timedelta(seconds=condition.window_s)))
        return f"{events} events in {_span(condition.window_s)}" if events >= condition.events else None
    users = await context.users_since(context.now - timedelta(seconds=condition.window_s), condition.users)
    return f"{users}+ users in {_span(condition.window_s)}" if users >= condition.users else None


async def matching(rules: Sequence[AlertRule], context: RuleContext) -> list[Fired]:
    """The rules whose every condition holds (action intervals are checked by the caller)."""
    fired = []
    for rule in rules:
        if rule.kinds is not None and context.kind not in rule.kinds:
            continue
        reasons = []
        for condition in rule.conditions:
            reason = await _holds(context, condition)
            if reason is None:
                break
            reasons.append(reason)
        else:
            fired.append(Fired(rule=rule, reason="; ".join(reasons)))
    return fired


def _span(seconds: int) -> str:
    if seconds % 86_400 == 0:
        return f"{seconds // 86_400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


# ------------------------------------------------------------------------------------------ recording


UNDELIVERABLE = Counter(
    "app_monitoring_alerts_undeliverable",
    "Alerts recorded with no delivery because TELEGRAM_BOT_TOKEN or TELEGRAM_CHAT_ID is unset",
)


@dataclass(frozen=True, slots=True)
class Channel:
    """Where alerts go: the chats, whether they can be sent (a token), and the noise budget."""

    chats: tuple[str, ...]
    sendable: bool
    budget: int
    budget_window: timedelta

    def missing_settings(self) -> list[str]:
        """The settings without which no alert is sent (empty when alerts can be delivered)."""
        needed = (("TELEGRAM_BOT_TOKEN", self.sendable), ("TELEGRAM_CHAT_ID", bool(self.chats)))
        return [name for name, present in needed if not present]


async def record_alert(
    uow: UnitOfWork,
    channel: Channel,
    *,
    key: str,
    rule: str,
    group_id: int | None,
    summary: str,
    rendered: Rendered,
    now: datetime,
    kind: str = "alert",
) -> MonitoringAlert | None:
    """Record an alert in ``uow``'s transaction and queue its delivery (or its place in a digest).

    Without a token or chats the alert is only recorded (and counted in
    ``app_monitoring_alerts_undeliverable``). ``key`` makes recording idempotent.
    """
    if not channel.sendable or not channel.chats:
        recorded = await queries.insert_alert(
            uow.conn,
            key=key,
            kind=kind,
            rule=rule,
            group_id=group_id,
            summary=summary,
            text_html=rendered.html,
            text_plain=rendered.plain,
            digest_id=None,
            created_at=now,
        )
        if recorded is not None:
            UNDELIVERABLE.inc()  # counted at the insert: a rolled-back one may be counted too
        return recorded
    digest_id: int | None = None
    if kind == "alert":
        digest_id = await _over_budget_digest(uow, channel, now)
    alert = await queries.insert_alert(
        uow.conn,
        key=key,
        kind=kind,
        rule=rule,
        group_id=group_id,
        summary=summary,
        text_html=rendered.html,
        text_plain=rendered.plain,
        digest_id=digest_id,
        created_at=now,
    )
    if alert is not None and digest_id is None:
        await queries.insert_deliveries(
            uow.conn, alert_id=alert.id, chat_ids=list(channel.chats), not_before=now
        )
        await enqueue(uow, "default", DELIVER_TASK, {})
    return alert


async def _over_budget_digest(uow: UnitOfWork, channel: Channel, now: datetime) -> int | None:
    """None while the period's budget lasts; past it, the id of the period's digest (created once,
    delivered when the period ends).

    Whether a period still takes alerts is decided in SQL under the budget lock, which the sender also
    takes to render a digest: an alert never joins a digest already rendered, whatever its ``now``."""
    await queries.lock_key(uow.conn, key=BUDGET_LOCK)
    period = await queries.current_budget_period(uow.conn, channel=CHANNEL, now=now)
    if period is None:
        period = await queries.open_budget_period(
            uow.conn, channel=CHANNEL, window_s=channel.budget_window.total_seconds(), now=now
        )
        assert period is not None
    used = await queries.use_budget(uow.conn, channel=CHANNEL, started_at=period.started_at)
    assert used is not None
    if used.used <= channel.budget:
        return None
    if period.digest_id is not None:
        return period.digest_id
    digest = await queries.insert_alert(
        uow.conn,
        key=f"digest:{CHANNEL}:{period.started_at.isoformat()}",
        kind="digest",
        rule="digest",
        group_id=None,
        summary="digest of the alerts over the noise budget",
        text_html="",
        text_plain="",
        digest_id=None,
        created_at=now,
    )
    assert digest is not None
    await queries.set_budget_digest(
        uow.conn, digest_id=digest.id, channel=CHANNEL, started_at=period.started_at
    )
    await queries.insert_deliveries(
        uow.conn, alert_id=digest.id, chat_ids=list(channel.chats), not_before=period.ends_at
    )
    await enqueue(uow, "default", DELIVER_TASK, {})
    return digest.id
