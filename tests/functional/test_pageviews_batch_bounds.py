"""A batch larger than this server's limits could ever admit is 413 ``batch-too-large``, not 429.
(Each test takes ``valkey``: flushed, so no site quota counted by an earlier test's site of the same
id is left.)

With ``RATE_LIMIT_INGEST_PER_MINUTE`` (or ``_PER_HOUR``, ``SINK_MAX_PENDING``, a site's quota per
minute or day) set below a full batch of 1,000 views, such a batch was answered 429 with a
``Retry-After``: a client doing as told waited and was refused again, for ever (a bucket never holds
more than its capacity; the sink never takes more than its bound). Each bound is checked here with
the batch one view over it, then one at it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import open_services
from app.modules import MODULES
from tests.factories import assert_problem, captured_logs, serve_in_loop
from tests.functional.test_pageviews_refused_charged import (
    BATCH,
    from_address,
    new_site_key,
    singles,
    view,
)

BOUND = 4


@asynccontextmanager
async def bounded(settings: Settings, **limits: int) -> AsyncIterator[Litestar]:
    async with serve_in_loop(settings, **limits) as served:
        yield served.app


def batch(*keys: str) -> dict[str, Any]:
    return {"views": [view(key, f"/{index}") for index, key in enumerate(keys)]}


async def stored(db: AsyncConnection[Any], key: str) -> int:
    row = await (
        await db.execute(
            "select count(*) from page_views v join sites s on s.id = v.site_id where s.ingest_key = %s",
            (key,),
        )
    ).fetchone()
    assert row is not None
    return int(row[0])


def too_large(response: httpx.Response, most: int) -> None:
    problem = assert_problem(response, 413, "batch-too-large")
    assert f"at most {most:,} views" in problem["detail"], problem
    assert "retry-after" not in response.headers, "no wait admits it"


async def test_a_batch_over_the_address_limit_is_413_and_charged_as_a_refused_body(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Per-minute limit 4: a batch of 5 is 413 (its body, under 4 KiB, takes one token: three single
    views follow, then 429); a batch of 4 from a fresh address is stored."""
    key = await new_site_key(db)
    async with bounded(settings, rate_limit_ingest_per_minute=BOUND) as app:
        async with from_address(app, "192.0.2.81") as sender:
            too_large(await sender.post(BATCH, json=batch(*[key] * (BOUND + 1))), BOUND)
            assert await singles(sender, key, BOUND) == [202] * (BOUND - 1) + [429]
        async with from_address(app, "192.0.2.82") as sender:
            assert (await sender.post(BATCH, json=batch(*[key] * BOUND))).status_code == 202
    assert await stored(db, key) == BOUND - 1 + BOUND


async def test_the_hourly_limit_and_the_sink_bound_also_bound_a_batch(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The smallest of the bounds counts: per-hour limit 4, or a sink taking at most 4 pending rows."""
    key = await new_site_key(db)
    for limits in ({"rate_limit_ingest_per_hour": BOUND}, {"sink_max_pending": BOUND}):
        async with bounded(settings, **limits) as app:
            async with from_address(app, "192.0.2.83") as sender:
                too_large(await sender.post(BATCH, json=batch(*[key] * (BOUND + 1))), BOUND)
            async with from_address(app, "192.0.2.85") as sender:
                assert (await sender.post(BATCH, json=batch(*[key] * BOUND))).status_code == 202
    assert await stored(db, key) == 2 * BOUND


async def test_a_batch_over_a_sites_quota_is_413_and_another_sites_share_does_not_count(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """A site's quota of 4 views a minute: 5 views of that site in one batch are 413 (nothing stored);
    4 of it with 4 of another site in one batch are within each site's bound and stored."""
    first, second = await new_site_key(db), await new_site_key(db)
    async with (
        bounded(settings, ingest_site_views_per_minute=BOUND) as app,
        from_address(app, "192.0.2.84") as sender,
    ):
        response = await sender.post(BATCH, json=batch(*[first] * (BOUND + 1)))
        problem = assert_problem(response, 413, "batch-too-large")
        assert "of one site" in problem["detail"], problem
        both = await sender.post(BATCH, json=batch(*[first, second] * BOUND))
        assert both.status_code == 202, both.text
    assert [await stored(db, first), await stored(db, second)] == [BOUND, BOUND]


async def test_limits_below_a_full_batch_are_told_at_start_up(settings: Settings) -> None:
    """The service says at start-up that larger batches will be refused, and how large they may be;
    with the defaults it says nothing."""
    for limits, expected in (({"sink_max_pending": BOUND}, 1), ({}, 0)):
        with captured_logs(logging.WARNING) as logs:
            async with open_services(msgspec.structs.replace(settings, **limits), MODULES):
                pass
        told = logs.events("ingest_batches_limited")
        assert len(told) == expected, logs.text
        assert all(line["max_views"] == BOUND for line in told), told
