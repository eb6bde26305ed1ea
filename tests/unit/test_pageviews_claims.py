"""The sink's in-batch deduplication and claim order (``writers.first_of_each_event``,
``writers.event_claims``), against their definitions: the first row of each (site, event id) kept,
in order; the claims sorted as PostgreSQL sorts (bigint, uuid): by site, then the UUID's 16 bytes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from app.domains.pageviews.rows import Row
from app.domains.pageviews.writers import event_claims, first_of_each_event

NOW = datetime(2026, 12, 4, tzinfo=UTC)
# Few sites and ids, so that repeats are common; ids that differ only in their first or last byte.
EVENT_IDS = (
    st.sampled_from(
        [uuid.UUID(int=0), uuid.UUID(int=1), uuid.UUID(int=1 << 127), uuid.UUID(int=(1 << 128) - 1)]
    )
    | st.uuids()
)
ROWS = st.lists(st.tuples(st.integers(1, 3), st.none() | EVENT_IDS, st.integers(0, 10**6)), max_size=40)


Spec = tuple[int, uuid.UUID | None, int]


def row(site_id: int, event_id: uuid.UUID | None, visitor: int) -> Row:
    return (site_id, NOW, NOW, event_id, visitor, "/", "", "", "", "", "", None, "desktop", "", "", False)


@given(ROWS)
def test_the_first_row_of_each_event_is_kept_in_order(specs: list[Spec]) -> None:
    rows = [row(*spec) for spec in specs]
    seen: set[tuple[int, uuid.UUID]] = set()
    expected = []
    for candidate in rows:
        if candidate[3] is not None:
            if (candidate[0], candidate[3]) in seen:
                continue
            seen.add((candidate[0], candidate[3]))
        expected.append(candidate)
    assert list(first_of_each_event(rows)) == expected


@given(ROWS)
def test_claims_are_every_event_id_in_postgresql_order(
    specs: list[Spec],
) -> None:
    rows = first_of_each_event([row(*spec) for spec in specs])
    expected = sorted(
        ((r[0], r[3]) for r in rows if r[3] is not None), key=lambda claim: (claim[0], claim[1].bytes)
    )
    assert event_claims(rows) == expected
