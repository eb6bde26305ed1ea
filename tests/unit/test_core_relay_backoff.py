"""After failed rounds the outbox relay backs off, doubling its wait, to at most
``RELAY_BACKOFF_MAX_S`` (or its poll interval, if longer).

Fault review: at a 30 s cap, the orders of a minute-long outage stayed pending for 56 s after
PostgreSQL was back; a failing relay must not poll faster than a healthy one either.
"""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from app.core.relay import RELAY_BACKOFF_MAX_S, backoff_after_failure

intervals = st.floats(min_value=0.01, max_value=120.0)


def waits_after_failures(interval: float, failures: int, start: float) -> list[float]:
    waits, delay = [], start
    for _ in range(failures):
        delay = backoff_after_failure(delay, interval)
        waits.append(delay)
    return waits


@given(intervals, st.integers(min_value=1, max_value=40), st.sampled_from([0.0, None]))
def test_the_wait_doubles_up_to_the_cap_or_the_poll_interval(
    interval: float, failures: int, after_full_batch: float | None
) -> None:
    start = interval if after_full_batch is None else after_full_batch  # a quiet round, or a full one
    waits = waits_after_failures(interval, failures, start)
    longest = max(RELAY_BACKOFF_MAX_S, interval)
    assert all(wait <= longest for wait in waits), waits
    assert all(wait >= interval for wait in waits), "never faster than a healthy relay polls"
    assert waits == sorted(waits), "it only grows while rounds fail"
    for before, after in pairwise(waits):
        assert after == min(before * 2, longest)


def test_a_long_outage_leaves_the_relay_waiting_five_seconds() -> None:
    """With the default half-second poll: 1, 2, 4, then 5 s, however long PostgreSQL stays away."""
    assert waits_after_failures(0.5, 6, 0.5) == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
