"""A repeating round that fails is logged, and the next round comes all the same.

Review opsrev: ``repeating`` ended at the first failure of its work, saying nothing. It renews the
GitHub fetch lock and the governor's turn: one Valkey error stopped the renewal for good, and the lock
lapsed under a holder still working."""

from __future__ import annotations

import asyncio
import logging

from app.core.repeating import repeating
from tests.factories import captured_logs


async def test_a_failed_round_is_logged_once_and_the_rounds_go_on() -> None:
    rounds = 0
    three = asyncio.Event()

    async def renew() -> None:
        nonlocal rounds
        rounds += 1
        if rounds <= 2:
            raise ConnectionError("Valkey went away for a moment")
        if rounds == 3:
            three.set()

    with captured_logs(logging.WARNING) as logs:
        async with repeating(renew, 0.001):
            await asyncio.wait_for(three.wait(), 30)
    failed = logs.events("repeating_work_failed")
    assert len(failed) == 1, failed  # the second failure, within the minute, is not logged again
    assert failed[0]["work"].endswith("renew") and failed[0]["error"] == "ConnectionError"


async def test_a_loop_given_a_name_is_logged_under_it() -> None:
    """A lock's renewal is a ``partial`` of a Valkey script, whose own name is a memory address: the
    loops that renew a lock name themselves (review diffreview37)."""
    failed = asyncio.Event()

    async def renew() -> None:
        failed.set()
        raise ConnectionError("Valkey went away for a moment")

    with captured_logs(logging.WARNING) as logs:
        async with repeating(renew, 0.001, name="github_fetch_lock_renewal"):
            await asyncio.wait_for(failed.wait(), 30)
    assert [line["work"] for line in logs.events("repeating_work_failed")] == ["github_fetch_lock_renewal"]
