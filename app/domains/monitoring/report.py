"""The daily report: the time since the previous report time, in the report's time zone (a local day).

It lists new and regressed groups, the top errors, slow routes, job failures, cron problems and the
day's business figures (``BusinessFigures``: each counted by the domain that owns it, through its
service, and passed in by ``MonitoringService``).

``DailyReport`` (at the end) records it once its time has passed: it claims the day, renders the
report and records it as an alert for Telegram. ``MonitoringService.send_report_if_due`` (called by
the periodic checks) delegates to it; it moved here from ``services.py`` to keep the report in one
module.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec
from psycopg import AsyncConnection

from app.config import Settings
from app.core.db import Database, UnitOfWork
from app.db import monitoring as queries
from app.domains.accounts.services import AccountService
from app.domains.monitoring import alerts
from app.domains.monitoring.groups import utc
from app.domains.monitoring.latency import BUCKETS, percentiles
from app.domains.monitoring.messages import ADMIN_PATH, KIND_LABELS
from app.domains.monitoring.telegram import Part, Rendered, render
from app.domains.orders.services import OrderService
from app.domains.reports.services import ReportService

TOP = 5

FIGURES_LAG = timedelta(minutes=10)
"""How far back the business figures' period is shifted (sign-ups, orders, revenue), as the page
views' is (``DAILY_TOTAL_LAG``): a row is stamped when its transaction begins and seen once it
commits, so a report computed right after its end might not see one stamped just before it, and the
next period would not include it either (the time reviewer). Consecutive reports chain on their
unshifted ends, so each row still falls in exactly one; a change of this shift loses (or counts
twice) what lies between the old and the new one, once."""


def report_period(now: datetime, report_time: str, zone: ZoneInfo) -> tuple[date, datetime, datetime]:
    """(local day, start, end) of the latest report due at ``now``: today's once its time has passed,
    else yesterday's. A check that comes late (after midnight, after an outage, or an hourly check
    with a report time of 23:30) still finds the report it missed; before, only a check between the
    report time and local midnight did, and the day's report was never sent.

    The report of local day D is due at ``report_time`` on D in ``zone`` (``due_at``) and covers
    from the previous report's due instant to its own. Every comparison is between instants, never
    between wall-clock times, so across a DST change a report never covers time after the moment it
    is computed (``end <= now``) and each starts where the previous one ended (the local day's 23 or
    25 hours). A report time that falls in a gap (the spring-forward hour) is due when the same
    time on the other side of the gap would be (02:30 becomes 03:30); in an overlap, at its first
    occurrence.
    """
    hour, minute = report_clock(report_time)
    today = now.astimezone(zone).date()
    day = today
    while (end := due_at(day, hour, minute, zone)) > now:  # a gap may push yesterday's past midnight
        day -= timedelta(days=1)
    start = due_at(day - timedelta(days=1), hour, minute, zone)
    back = day - timedelta(days=1)
    while start >= end:  # a skipped local day (Pacific/Apia, 2011-12-30): no report of its own
        back -= timedelta(days=1)
        start = due_at(back, hour, minute, zone)
    return day, start.astimezone(zone), end.astimezone(zone)


def report_clock(report_time: str) -> tuple[int, int]:
    """``MONITORING_REPORT_TIME`` (``HH:MM``) as (hour, minute)."""
    hour, minute = (int(part) for part in report_time.split(":"))
    return hour, minute


def due_at(day: date, hour: int, minute: int, zone: ZoneInfo) -> datetime:
    """The instant (UTC) the report of local ``day`` is due: its wall time resolved with ``fold=0``
    (in a gap, the offset before it: as much later as the gap is long; in an overlap, the first)."""
    return datetime.combine(day, time(hour, minute), tzinfo=zone).astimezone(UTC)


class BusinessFigures(msgspec.Struct, frozen=True):
    """The period's sign-ups, orders placed, money kept per currency (``OrderService.totals_between``:
    paid in the period, never a reservation that may still expire, net of paid orders cancelled in
    it, so possibly negative), and page views received; None where the owning domain is not part of
    this assembly (the report then says "n/a")."""

    signups: int | None = None
    orders: int | None = None
    revenue: dict[str, Decimal] | None = None
    pageviews: int | None = None


def _figure(value: object) -> str:
    return "n/a" if value is None else str(value)


def _revenue(revenue: dict[str, Decimal] | None) -> str:
    """Each currency's total on its own (``12.50 EUR, 3.00 USD``): amounts in different currencies
    do not add up; ``0`` when nothing was paid. The money paid in the period net of the money of paid
    orders cancelled in it (``totals_between``), so a figure may be negative; labelled so in the report
    ("paid net of refunds after payment")."""
    if revenue is None:
        return "n/a"
    return ", ".join(f"{total} {currency}" for currency, total in sorted(revenue.items())) or "0"


async def build_report(
    conn: AsyncConnection[object],
    day: date,
    since: datetime,
    until: datetime,
    environment: str,
    figures: BusinessFigures,
) -> Rendered:
    """The report of ``day``; ``figures`` are the other domains' counts of the period."""
    new_count = await queries.count_new_groups_between(conn, since=since, until=until) or 0
    new = await queries.new_groups_between(conn, since=since, until=until, row_limit=TOP)
    regressed_count = await queries.count_regressed_between(conn, since=since, until=until) or 0
    regressed = await queries.regressed_between(conn, since=since, until=until, row_limit=TOP)
    top = await queries.top_groups_between(conn, since=since, until=until, row_limit=TOP)
    jobs = await queries.job_runs_between(conn, since=since, until=until)
    crons = await queries.cron_problems_between(conn, since=since, until=until)
    latency = await queries.route_latency_between(conn, since=since, until=until)

    parts = [Part(f"📊 Daily report {day.isoformat()} · {environment}", "b"), Part("\n")]
    parts.append(Part(f"{since:%Y-%m-%d %H:%M %Z} to {until:%Y-%m-%d %H:%M %Z}"))
    if (days := (until - since) / timedelta(days=1)) > 1.1:  # a DST day has 25 hours, not 26
        parts.append(Part(f" ({days:.1f} days: no report was sent at the times between)"))
    parts.append(Part("\n\n"))
    parts.append(Part("Business", "b"))
    parts.append(
        Part(
            f"\nsign-ups {_figure(figures.signups)} · orders {_figure(figures.orders)} · paid net of "
            f"refunds after payment {_revenue(figures.revenue)} · page views {_figure(figures.pageviews)}\n\n"
        )
    )
    parts.append(Part(f"New groups: {new_count}", "b"))
    parts += [Part(f"\n• #{g.id} {KIND_LABELS[g.kind]}: {g.title[:120]} ({g.events})") for g in new]
    parts.append(Part("\n\n"))
    parts.append(Part(f"Regressed: {regressed_count}", "b"))
    parts += [Part(f"\n• #{g.id} {KIND_LABELS[g.kind]}: {g.title[:120]}") for g in regressed]
    parts.append(Part("\n\n"))
    parts.append(Part("Top problems", "b"))
    parts += [Part(f"\n• #{g.id} {g.events}x {g.title[:120]}") for g in top] or [Part("\nnone")]
    parts.append(Part("\n\n"))

    routes: dict[tuple[str, str], list[int]] = {}
    for row in latency:
        routes.setdefault((row.method, row.route), [0] * BUCKETS)[row.bucket] += row.requests
    slow = sorted(
        ((key, percentiles(counts)) for key, counts in routes.items()), key=lambda item: -item[1].p95_ms
    )[:TOP]
    parts.append(Part("Slowest routes (p95)", "b"))
    parts += [
        Part(
            f"\n• {method} {route}: p95 {stats.p95_ms:.0f} ms, p99 {stats.p99_ms:.0f} ms"
            f" ({stats.requests} req)"
        )
        for (method, route), stats in slow
    ] or [Part("\nno traffic")]
    parts.append(Part("\n\n"))

    failures = [row for row in jobs if row.outcome in ("failed", "retried")]
    parts.append(Part("Job failures", "b"))
    parts += [Part(f"\n• {row.job}: {row.runs} {row.outcome}") for row in failures] or [Part("\nnone")]
    parts.append(Part("\n\n"))
    parts.append(Part("Cron problems", "b"))
    parts += [Part(f"\n• {row.name}: {row.times}x {row.status}") for row in crons] or [Part("\nnone")]
    parts.append(Part(f"\n\n{ADMIN_PATH}/errors"))
    return render(parts, pointer=f"{ADMIN_PATH}/errors")


class DailyReport:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        channel: alerts.Channel,
        *,
        environment: str,
        zone: ZoneInfo,
        accounts: AccountService | None,
        orders: OrderService | None,
        reports: ReportService | None,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.settings = settings
        self.channel = channel
        self.environment = environment
        self.zone = zone
        self.accounts, self.orders, self.reports = accounts, orders, reports
        """The business figures, each counted by its domain (None: "n/a")."""
        self.clock = clock

    async def send_if_due(self, now: float | None = None) -> int | None:
        """Record (and queue for Telegram) the latest report due (``report_period``) unless it is
        recorded. It covers the time since the previous recorded report's end: days whose reports
        were never sent (the app was down at their time) are in the next one, not lost."""
        moment = utc(self.clock() if now is None else now)
        day, since, until = report_period(moment, self.settings.monitoring_report_time, self.zone)
        async with self.db.transaction() as uow:
            await queries.lock_reports(uow.conn)
            if (last := await queries.last_report(uow.conn)) is not None:
                if last.day >= day:  # recorded (or a later day: by a process whose clock is ahead)
                    return None
                since = self._after(last, until)
                if since >= until:  # the last report, under other settings, covered this one's time
                    return None
            if await queries.claim_report(uow.conn, day=day, since=since, until=until) is None:
                return None
            figures = await self._business_figures(uow, since, until)
            rendered = await build_report(uow.conn, day, since, until, self.environment, figures)
            alert = await alerts.record_alert(
                uow,
                self.channel,
                key=f"report:{day.isoformat()}",
                kind="report",
                rule="daily-report",
                group_id=None,
                summary=f"daily report {day.isoformat()}",
                rendered=rendered,
                now=moment,
            )
            if alert is not None:
                await queries.set_report_alert(uow.conn, alert_id=alert.id, day=day)
        return alert.id if alert is not None else None

    def _after(self, last: queries.LastReportRow, until: datetime) -> datetime:
        """Where the report ending at ``until`` starts: where the last one recorded ended (as it was
        sent: MONITORING_REPORT_TIME or _TIMEZONE may have changed since), but no earlier than the
        data kept (the raw page views and the monitoring events of older days are purged)."""
        ended = last.until or due_at(last.day, *report_clock(self.settings.monitoring_report_time), self.zone)
        kept = max(
            min(self.settings.analytics_retention_days, self.settings.monitoring_retention_days) - 1, 1
        )
        return max(ended, until - timedelta(days=kept)).astimezone(self.zone)

    async def _business_figures(self, uow: UnitOfWork, since: datetime, until: datetime) -> BusinessFigures:
        """The domains' figures of the period, each shifted back by its lag (``FIGURES_LAG``; the page
        views by ``DAILY_TOTAL_LAG``, in ``total_pageviews``)."""
        start, end = since - FIGURES_LAG, until - FIGURES_LAG
        orders, revenue = await self.orders.totals_between(uow, start, end) if self.orders else (None, None)
        return BusinessFigures(
            signups=await self.accounts.count_signups(uow, start, end) if self.accounts else None,
            orders=orders,
            revenue=revenue,
            pageviews=await self.reports.total_pageviews(uow, since, until) if self.reports else None,
        )
