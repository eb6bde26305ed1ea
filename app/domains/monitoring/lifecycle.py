"""What a batch of new events does to a group's state: the decisions, without I/O.

The false-regression races that Sentry users report (#30371: resolved right after an event, then marked
regressed by that very event; #104513: resolved "in the next release", then regressed by an event
from the old release still running) cannot happen here by construction: the write path locks the
group's root row and decides with the *occurrence* time and release of each event, so an event that
happened before the resolve, or comes from a release older than the fixing one, is counted and
nothing else.

Release order is the order in which releases first *ran*: every process registers its release when it
starts (``MonitoringService.register_release``), and a release's id is given by its first
registration. "Older than X" means "first ran before X"; a release cannot be named in a resolve before
it has run (it would have no place in that order), and version strings are never compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from app.db.models import MonitoringGroup, MonitoringGroupStatus, MonitoringIgnoreMode

Transition = Literal["regressed", "unignored"]


@dataclass(frozen=True, slots=True)
class ReleaseSeen:
    """Events of one release in a batch: its order (the release's id: the rank of the first time it
    ran) and its latest occurrence."""

    order: int
    last_occurred_at: datetime


def regresses(group: MonitoringGroup, releases: list[ReleaseSeen]) -> bool:
    """True if an event of the batch reopens ``group`` (which must be resolved)."""
    assert group.resolved_at is not None
    for seen in releases:
        if seen.last_occurred_at <= group.resolved_at:
            continue  # happened before the resolve: counted, never a regression
        if group.resolved_in_release_id is not None and seen.order < group.resolved_in_release_id:
            continue  # a release that first ran before the one that fixes it
        if group.resolved_after_release_id is not None and seen.order <= group.resolved_after_release_id:
            continue  # resolved "in the next release": the running one, or one that ran before it
        return True
    return False


def decide(
    group: MonitoringGroup,
    releases: list[ReleaseSeen],
    *,
    total_events: int,
    now: datetime,
    escalating: bool,
) -> Transition | None:
    """The transition of the root ``group`` after a batch (``total_events``: its tree's count now).

    A timed ignore ends with the first event after its time, also when the periodic expiry has made
    the group unresolved already (``ignore_ended_at``): that event is the one that reopens it."""
    if group.status == MonitoringGroupStatus.RESOLVED:
        return "regressed" if regresses(group, releases) else None
    if group.status != MonitoringGroupStatus.IGNORED:
        return "unignored" if group.ignore_ended_at is not None else None
    mode = group.ignore_mode
    if mode == MonitoringIgnoreMode.UNTIL_COUNT and group.ignore_until_events is not None:
        return "unignored" if total_events >= group.ignore_until_events else None
    if mode == MonitoringIgnoreMode.UNTIL_TIME and group.ignore_until is not None:
        return "unignored" if now >= group.ignore_until else None
    if mode == MonitoringIgnoreMode.UNTIL_ESCALATING:
        return "unignored" if escalating else None
    return None
