"""The grouping rule: which group each new event joins. The one place it is decided (Python, at write
time, under the feed writer's lock); reads never regroup, so a group is the same for every reader,
every page and every later version of this rule.

Rule version 1:

- Events belong to a *stream*: same verb, object type, project and audience, and the same actor, or,
  for verbs grouped by target (``VerbSpec.target``: comments), the same target object whoever acts.
- Within a stream, events are taken in delivery order (outbox id). An event joins a group of its
  stream that was built by this same rule (version, window and span), whose time range holds the
  event within ``window`` (``first - window <= at <= last + window``) and whose span, event included,
  stays within ``max_span``; of several, the one with the latest last event (of those, the newest: its
  first event's outbox id is the highest, whether it was stored or made in this batch, so a tie is
  decided alike however the events were batched). Otherwise the event
  starts a new group. Groups are chosen by time, not by when they were made: an event delivered late
  (its job lost, then recovered) joins the burst it happened in, and the group it starts when there
  is none does not take the place of the stream's newest, so the burst still going on goes on in its
  own group. (Choosing "the newest group made" turned a burst, one late event and the burst after it
  into four groups: the late event's, then a fresh one for the next on-time event.)
- A group's key is ``<version>-<outbox id of its first event>``: deterministic (redelivering the
  same events yields the same keys), unique, and it names the rule that built the group.

A group built by another rule (an older version, or other ``FEED_GROUP_WINDOW_S`` /
``FEED_GROUP_MAX_SPAN_S`` settings) is never extended: changing the rule only affects new groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.domains.activity.verbs import spec_of

RULE_VERSION = 1
OPEN_GROUPS_PER_STREAM = 20
"""A late event reaches back this many groups of its stream at most (a busy stream makes a group per
``max_span``); past them it starts its own."""


@dataclass(frozen=True, slots=True)
class GroupingRule:
    version: int
    window_s: int
    max_span_s: int

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.window_s)

    @property
    def max_span(self) -> timedelta:
        return timedelta(seconds=self.max_span_s)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """What the rule looks at in an event (normalised: audience and target already resolved)."""

    outbox_id: int
    actor_id: int
    verb: str
    object_type: str
    project_id: int | None
    audience_user_id: int | None
    target_type: str | None
    target_id: int | None
    occurred_at: datetime


@dataclass(slots=True)
class OpenGroup:
    """A group an event may join, as the rule needs it."""

    key: str
    rule: GroupingRule
    first_at: datetime
    last_at: datetime
    is_new: bool = False
    first: StreamEvent | None = field(default=None)  # for a group this batch creates


def stream_of(event: StreamEvent) -> str:
    spec = spec_of(event.verb)
    by_target = spec is not None and spec.target is not None and event.target_id is not None
    who = f"t:{event.target_type}:{event.target_id}" if by_target else f"a:{event.actor_id}"
    project = "-" if event.project_id is None else str(event.project_id)
    audience = "-" if event.audience_user_id is None else str(event.audience_user_id)
    return f"{event.verb}|{event.object_type}|p:{project}|u:{audience}|{who}"


def group_key(rule: GroupingRule, first_outbox_id: int) -> str:
    return f"{rule.version}-{first_outbox_id}"


def first_outbox_id(key: str) -> int:
    """The outbox id of a group's first event, from its key (``group_key``)."""
    return int(key.rsplit("-", 1)[1])


def joins(group: OpenGroup, event: StreamEvent, rule: GroupingRule) -> bool:
    if group.rule != rule:
        return False
    at = event.occurred_at
    if not group.first_at - rule.window <= at <= group.last_at + rule.window:
        return False
    return max(group.last_at, at) - min(group.first_at, at) <= rule.max_span


def assign_groups(
    events: list[StreamEvent], open_groups: dict[str, list[OpenGroup]], rule: GroupingRule
) -> tuple[list[str], list[OpenGroup]]:
    """The group key of each event (in the given order), and the groups to create.

    ``open_groups`` holds, per stream, the stored groups the events may join (``OPEN_GROUPS_PER_STREAM``
    with the latest last events, none that ended more than a window before the stream's earliest
    event); it is updated in place as events join or start groups, and keeps no more than
    ``OPEN_GROUPS_PER_STREAM`` per stream, the latest, as the next batch would read them: an event
    finds the groups it would find delivered alone, and a batch costs its events times that bound.
    (Unbounded, 5,000 events of one busy stream, a group each, compared each event with every group
    made before it: 34 s of CPU, against 0.24 s, inside the write's transaction, and a loaded
    machine's server ended that transaction as idle.)
    """
    keys: list[str] = []
    created: list[OpenGroup] = []
    for event in events:
        groups = open_groups.setdefault(stream_of(event), [])
        group = max(
            (candidate for candidate in groups if joins(candidate, event, rule)), key=_recency, default=None
        )
        if group is not None:
            group.first_at = min(group.first_at, event.occurred_at)
            group.last_at = max(group.last_at, event.occurred_at)
        else:
            at = event.occurred_at
            group = OpenGroup(group_key(rule, event.outbox_id), rule, at, at, is_new=True, first=event)
            groups.append(group)
            created.append(group)
            if len(groups) > OPEN_GROUPS_PER_STREAM:
                groups.remove(min(groups, key=_recency))
        keys.append(group.key)
    return keys, created


def _recency(group: OpenGroup) -> tuple[datetime, int]:
    """The latest last event first; of equals, the newest (``OpenActivityGroups``' order)."""
    return group.last_at, first_outbox_id(group.key)
