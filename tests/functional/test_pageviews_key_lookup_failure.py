"""A site-key lookup that PostgreSQL refuses for a reason of its own (its statement cancelled, as a
statement timeout cancels it), while the database is up: ``SiteKeys`` in
``app/domains/pageviews/keys.py``.

What it promises: every request waiting on that lookup is answered 503 (``service-unavailable``,
``Retry-After: 1``); the failure is logged once as ``site_key_lookup_failed`` with the number of keys
it was for (an error of the statement, not ``dependency_unavailable``: PostgreSQL answered, it is not
down, and no outage is counted); and nothing is remembered of those keys, so the next lookup finds
them and the same requests are accepted.

What breaking it would look like: keys of a failed lookup remembered as unknown (a live site's views
refused 422 for ``negative_ttl_s``), the lookup task dying on the failure (the keys that arrived
meanwhile never answered, and no later key looked up in that process), or a statement's failure
counted and logged as PostgreSQL being unreachable.

The failure is real: a transaction of the test holds ``sites`` locked, each lookup's statement waits
for it and is cancelled once it waits (``cancelled_once_blocked``'s way, without a clock).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection

from app.config import Settings
from app.domains.pageviews.keys import SiteKeys
from app.domains.pageviews.services import PageViewService
from app.domains.sites.services import SiteService
from tests.factories import (
    assert_problem,
    blocked_by,
    captured_logs,
    create_user,
    make_site,
    serve_in_loop,
    wait_until,
)

SINGLE = "/api/page-views"
UNLIMITED = {"rate_limit_ingest_per_minute": 10_000_000, "rate_limit_ingest_per_hour": 100_000_000}
OUTAGES = ("app_dependency_unavailable_total", {"dependency": "postgresql", "source": "page-view-keys"})


def view(key: str) -> dict[str, Any]:
    return {"site_key": key, "url": "https://shop.example.com/"}


async def test_a_failed_lookup_answers_its_requests_503_logs_it_and_the_next_lookup_finds_the_keys(
    settings: Settings, database_url: str, db: AsyncConnection[Any]
) -> None:
    owner = await create_user(db)
    first, second, third = [await make_site(db, owner, domain=f"s{n}.example") for n in range(3)]
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    outages = REGISTRY.get_sample_value(*OUTAGES) or 0.0

    async with (
        serve_in_loop(settings, **UNLIMITED) as served,
        await AsyncConnection.connect(database_url) as holder,
    ):
        keys: SiteKeys = served.app.state.services[PageViewService].keys
        post = served.client.post
        with captured_logs() as logs:
            await holder.execute("lock table sites in access exclusive mode")
            alone = asyncio.ensure_future(post(SINGLE, json=view(first.ingest_key)))
            waiting = await blocked_by(db, holder.info.backend_pid, alone)
            # two keys that arrive while a lookup waits are looked up together, by the next statement
            together = [asyncio.ensure_future(post(SINGLE, json=view(s.ingest_key))) for s in (second, third)]

            async def both_wait_for_the_next_lookup() -> bool:
                assert not any(answer.done() for answer in together), "answered before any lookup"
                return len(keys._pending) == 2

            await wait_until(both_wait_for_the_next_lookup, 30, "both keys wait for the next lookup")
            await db.execute("select pg_cancel_backend(%s)", (waiting,))
            alone_answer = await alone
            waiting = await blocked_by(db, holder.info.backend_pid, together[0])  # the next lookup
            await db.execute("select pg_cancel_backend(%s)", (waiting,))
            together_answers: list[httpx.Response] = list(await asyncio.gather(*together))
            await holder.rollback()

            lookups = keys.lookups
            again = [await post(SINGLE, json=view(site.ingest_key)) for site in (first, second, third)]

    for answer in (alone_answer, *together_answers):
        assert_problem(answer, 503, "service-unavailable")
        assert answer.headers["retry-after"] == "1"
    # nothing remembered of the failed keys (not refused as unknown), and the lookups go on
    assert [answer.status_code for answer in again] == [202, 202, 202], [answer.text for answer in again]
    assert keys.lookups > lookups
    failed = logs.events("site_key_lookup_failed")
    assert [(line["level"], line["keys"]) for line in failed] == [("error", 1), ("error", 2)]
    assert all("QueryCanceled" in line.get("exception", "") for line in failed), failed
    assert not [
        line for line in logs.events("dependency_unavailable") if line.get("source") == "page-view-keys"
    ]
    assert (REGISTRY.get_sample_value(*OUTAGES) or 0.0) == outages


async def test_a_bug_in_the_lookup_is_logged_as_a_failed_lookup_not_as_an_outage(
    settings: Settings, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception that is neither PostgreSQL's nor Valkey's (a bug of ours) is ``site_key_lookup_failed``
    with its traceback. Was: ``dependency_down`` called anything that is not psycopg's an outage, so it
    was logged as Valkey being unreachable, at warning, without a traceback, and counted as an outage."""
    site = await make_site(db, await create_user(db))
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    valkey_outages = (
        "app_dependency_unavailable_total",
        {"dependency": "valkey", "source": "page-view-keys"},
    )
    outages = REGISTRY.get_sample_value(*valkey_outages) or 0.0
    async with serve_in_loop(settings, **UNLIMITED) as served:
        sites = served.app.state.services[SiteService]

        async def buggy(ingest_keys: list[str]) -> dict[str, int]:
            raise TypeError("a bug in the lookup")

        monkeypatch.setattr(sites, "ids_for_keys", buggy)  # the fault, injected at the boundary
        with captured_logs() as logs:
            answer = await served.client.post(SINGLE, json=view(site.ingest_key))
    assert_problem(answer, 503, "service-unavailable")
    failed = logs.events("site_key_lookup_failed")
    assert [(line["level"], line["keys"]) for line in failed] == [("error", 1)], logs.text
    assert "TypeError" in failed[0].get("exception", "")
    assert logs.events("dependency_unavailable") == []
    assert (REGISTRY.get_sample_value(*valkey_outages) or 0.0) == outages
