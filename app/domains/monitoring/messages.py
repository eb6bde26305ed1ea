"""The text of alerts and digests (Telegram HTML, built from parts so that every value is escaped)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from app.db.models import MonitoringGroupKind
from app.domains.monitoring.telegram import Part, Rendered, render

ADMIN_PATH = "/api/admin/monitoring"

HEADLINES = {
    "new-group": "🆕 New",
    "regression": "🔁 Regressed",
    "reopened": "🔔 Reopened",
    "escalation": "📈 Escalating",
    "frequency": "🔥 Frequent",
    "users": "👥 Spreading",
}
KIND_LABELS = {
    MonitoringGroupKind.ERROR: "error",
    MonitoringGroupKind.JOB: "job failure",
    MonitoringGroupKind.UNAVAILABLE: "outage",
    MonitoringGroupKind.SLOW_ROUTE: "slow route",
    MonitoringGroupKind.CRON: "cron problem",
}
MAX_TITLE = 300
MAX_MESSAGE = 1500
MAX_FRAMES = 12


def group_path(group_id: int) -> str:
    return f"{ADMIN_PATH}/errors/{group_id}"


def _when(moment: datetime) -> str:
    """``moment`` in UTC, said so: a ``timestamptz`` comes back in its session's zone, which an
    operator's ``options`` may set to another one (``app.core.db.session_options``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stack(exception: Sequence[dict[str, Any]]) -> str:
    """The last exception's in-app frames (else its last frames), most recent last."""
    if not exception:
        return ""
    last = exception[-1]
    frames = [f for f in last.get("frames", []) if f.get("in_app")] or last.get("frames", [])
    lines = []
    for frame in frames[-MAX_FRAMES:]:
        lines.append(f"{frame.get('module')} in {frame.get('function')}:{frame.get('lineno')}")
        if frame.get("context_line"):
            lines.append(f"    {frame['context_line']}")
    return "\n".join(lines)


def alert_message(
    *,
    rules: Sequence[tuple[str, str]],
    group_id: int,
    kind: MonitoringGroupKind,
    title: str,
    culprit: str,
    events: int,
    users: int,
    first_seen_at: datetime,
    environment: str,
    release: str,
    context: dict[str, Any] | None,
    message: str,
    exception: Sequence[dict[str, Any]],
) -> tuple[str, Rendered]:
    """(one-line summary for digests, the rendered message) of an alert on a group.

    ``rules``: (rule name, why it fired), the first one gives the headline.
    """
    first_rule = rules[0][0]
    headline = f"{HEADLINES.get(first_rule, '🚨 ' + first_rule)} {KIND_LABELS[kind]}"
    where = " · ".join(
        part
        for part in (
            f"{context.get('method')} {context.get('route')}" if context and context.get("route") else "",
            f"job {context.get('job')}" if context and context.get("job") else "",
            culprit,
        )
        if part
    )
    facts = f"events {events} · users {users} · first seen {_when(first_seen_at)}"
    why = "; ".join(f"{name}: {reason}" for name, reason in rules)
    parts = [
        Part(f"{headline} · {environment} · {release}", "b"),
        Part("\n"),
        Part(_short(title, MAX_TITLE), "b"),
        Part(f"\n{where}" if where else ""),
        Part(f"\n{facts}\n"),
        Part(f"{why}\n", "i"),
        Part(f"{group_path(group_id)}\n"),
        Part(_short(message, MAX_MESSAGE), "pre"),
        Part("\n" if message and exception else ""),
        Part(_stack(exception), "pre"),
    ]
    summary = f"{HEADLINES.get(first_rule, first_rule)} {KIND_LABELS[kind]} #{group_id}: {_short(title, 120)}"
    return summary, render(parts, pointer=group_path(group_id))


def digest_message(
    summaries: Sequence[str], started_at: datetime, ends_at: datetime, total: int | None = None
) -> Rendered:
    """The digest of the alerts over the noise budget: ``total`` of them (default: as many as
    ``summaries``, the first of them; the message is cut to Telegram's length anyway)."""
    parts = [
        Part(f"🧾 {len(summaries) if total is None else total} more alerts", "b"),
        Part(f" between {_when(started_at)} and {_when(ends_at)} (over the noise budget)\n"),
    ]
    parts += [Part(f"• {summary}\n") for summary in summaries]
    return render(parts, pointer=f"{ADMIN_PATH}/alerts")


def loss_notice(lost: int, first_at: datetime, last_at: datetime) -> Rendered:
    """The notice that ``lost`` alert messages of the chat, recorded between ``first_at`` and
    ``last_at``, may not have arrived (their deliveries ended ``uncertain`` or ``failed``)."""
    alerts = "1 alert" if lost == 1 else f"{lost} alerts"
    span = (
        f"at {_when(first_at)}" if first_at == last_at else f"between {_when(first_at)} and {_when(last_at)}"
    )
    parts = [
        Part(f"⚠️ {alerts} may not have arrived", "b"),
        Part(
            f" (recorded {span}): Telegram answered with an error, refused them or could not be reached "
            "in time, or the sender stopped mid-request. They are not sent again.\n"
        ),
        Part(f"They are listed at GET {ADMIN_PATH}/alerts, with a delivery uncertain or failed."),
    ]
    return render(parts, pointer=f"{ADMIN_PATH}/alerts")
