"""The grouping rule chooses groups by time: a late delivery joins the burst it happened in and does
not split the burst still going on (the feed reviewer: a burst, one event recovered late and the
burst after it made four groups where two belong; the rule joined "the newest group made")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domains.activity.grouping import (
    OPEN_GROUPS_PER_STREAM,
    GroupingRule,
    OpenGroup,
    StreamEvent,
    assign_groups,
)

RULE = GroupingRule(version=1, window_s=1800, max_span_s=6 * 3600)
START = datetime(2026, 12, 5, tzinfo=UTC)


def event(outbox_id: int, minutes: float, actor: int = 1) -> StreamEvent:
    return StreamEvent(
        outbox_id=outbox_id,
        actor_id=actor,
        verb="task.created",
        object_type="task",
        project_id=7,
        audience_user_id=None,
        target_type=None,
        target_id=None,
        occurred_at=START + timedelta(minutes=minutes),
    )


def delivered(batches: list[list[StreamEvent]]) -> dict[int, str]:
    """Each event's group, the batches recorded one after another; every group made stays open
    (the stored groups ``OpenActivityGroups`` reads)."""
    stored: dict[str, list[OpenGroup]] = {}
    groups: dict[int, str] = {}
    for batch in batches:
        keys, created = assign_groups(batch, stored, RULE)
        for group in created:
            group.is_new = False
        groups.update((e.outbox_id, key) for e, key in zip(batch, keys, strict=True))
    return groups


def test_a_late_event_joins_its_burst_and_the_ongoing_burst_stays_one_group() -> None:
    t0, t2, t1, t3 = event(9000, 0), event(9002, 120), event(9001, 1), event(9003, 121)
    groups = delivered([[t0], [t2], [t1], [t3]])
    assert groups[9001] == groups[9000] == "1-9000"
    assert groups[9003] == groups[9002] == "1-9002"


def test_a_late_event_with_no_burst_of_its_own_starts_a_group_that_the_burst_after_ignores() -> None:
    groups = delivered([[event(1, 120)], [event(2, 0)], [event(3, 121)]])
    assert groups == {1: "1-1", 2: "1-2", 3: "1-1"}


@given(
    bursts=st.lists(
        st.lists(st.floats(min_value=0, max_value=30), min_size=1, max_size=5), min_size=1, max_size=4
    ),
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(min_value=1, max_value=20), max_size=6),
)
def test_bursts_apart_are_one_group_each_in_any_delivery_order(
    bursts: list[list[float]], order: object, cuts: list[int]
) -> None:
    """Bursts of at most a window each, more than two windows apart: one group per burst, however the
    events are ordered and cut into batches."""
    events = [
        event(outbox_id, 90 * index + offset)
        for outbox_id, (index, offset) in enumerate(
            ((index, offset) for index, burst in enumerate(bursts) for offset in burst), start=1
        )
    ]
    burst_of = {e.outbox_id: int((e.occurred_at - START).total_seconds() // 60 // 90) for e in events}
    shuffled = list(events)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    batches, at = [], 0
    for cut in [*cuts, len(shuffled)]:
        if at < len(shuffled):
            batches.append(shuffled[at : at + cut])
            at += cut
    groups = delivered(batches)
    for burst in set(burst_of.values()):
        assert len({groups[i] for i, b in burst_of.items() if b == burst}) == 1, groups
    assert len(set(groups.values())) == len(bursts)


@pytest.mark.parametrize("later_bursts", [OPEN_GROUPS_PER_STREAM - 1, OPEN_GROUPS_PER_STREAM])
def test_a_late_event_reaches_back_as_many_groups_in_one_batch_as_delivered_alone(later_bursts: int) -> None:
    """A batch keeps the stream's latest ``OPEN_GROUPS_PER_STREAM`` groups, as the next batch reads
    them: a late event joins the first burst's group only while it is among them, however the
    events were batched. (Unbounded, one batch compared each event with every group it had made.)"""
    bursts = [event(outbox_id, 90 * outbox_id) for outbox_id in range(1, later_bursts + 2)]
    late = event(1000, 90 + 1)  # in the first burst's window
    joined = later_bursts < OPEN_GROUPS_PER_STREAM
    for batches in ([[*bursts, late]], [[e] for e in [*bursts, late]]):
        groups = delivered(batches)
        assert len({groups[e.outbox_id] for e in bursts}) == len(bursts)
        assert groups[1000] == ("1-1" if joined else "1-1000"), (later_bursts, len(batches))
