"""A GitHub lookup's flight (one per login, shared by requests and jobs: ``cold_lookup``, the refresh
job, the snapshot cron) borrows connections as a request does, whoever started it, and a job it
refused with ``DatabaseUnreachable`` fetches again on its own, patiently (``shared_load_context``).

Diffreview8, during an outage of PostgreSQL (a pool refused for longer than its 1 s wait): a request
that joined a job's flight waited the whole wait (``PoolTimeout`` after 1.00 s) where alone it is told
at once; a job that joined a request's flight was refused at once where alone it waits.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from psycopg_pool import PoolTimeout
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.db import Database
from app.core.pool import DatabaseUnreachable
from app.core.queues import bind_job_context
from app.domains.github.governor import Priority
from app.domains.github.lookups import ProfileLookups
from tests.factories import OpenPool
from tests.functional.test_core_db_refused import (
    NOBODY_LISTENS,
    brief,
    refused_longer_than_a_wait,
    waited_it_out,
)

LOGIN = "octo-outage"


async def lookup(lookups: ProfileLookups, *, as_job: bool) -> BaseException | None:
    """The caller's outcome (None: served): a job's (``bind_job_context``) or a request's."""
    if as_job:
        await bind_job_context({})
    priority = Priority.BACKGROUND if as_job else Priority.INTERACTIVE
    try:
        await lookups.fetch_shared(LOGIN, priority, newer_than=None)
    except PoolTimeout as exc:
        return exc
    return None


@pytest.mark.parametrize(
    "job_starts", [True, False], ids=["a-request-joins-a-jobs", "a-job-joins-a-requests"]
)
async def test_a_flight_tells_a_request_at_once_and_a_job_fetches_again_alone(
    open_pool: OpenPool, settings: Settings, valkey: Valkey, job_starts: bool
) -> None:
    async with open_pool(NOBODY_LISTENS, wait=False, **brief()) as pool:
        await refused_longer_than_a_wait(pool)
        client: Any = SimpleNamespace(token_id="outage")  # GitHub is never asked: PostgreSQL is first
        lookups = ProfileLookups(
            Database(pool), settings, valkey, client, None, clock=lambda: datetime.now(UTC)
        )
        flights = 0
        start_flight = lookups._start_flight

        def counted(*args: Any) -> asyncio.Future[Any]:
            nonlocal flights
            flights += 1
            return start_flight(*args)

        lookups._start_flight = counted  # type: ignore[method-assign]
        # Tasks run in the order they were made: the first starts the login's flight before it first
        # waits (no await between its look for a flight and the start), and the second joins it.
        first = asyncio.create_task(lookup(lookups, as_job=job_starts))
        second = asyncio.create_task(lookup(lookups, as_job=not job_starts))
        job, request = (await first, await second) if job_starts else (await second, await first)

        assert flights == 1, "the second caller joined the first one's flight"
        assert isinstance(request, DatabaseUnreachable), request
        assert waited_it_out(job), "the job waited, fetching on its own"
