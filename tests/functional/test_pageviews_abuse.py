"""Ingest abuse (issue 15, security review M5/L11/L12) on real PostgreSQL and Valkey: a deleted site
stops ingesting in every app instance from its deleting commit on; unknown keys are looked up in
batches and remembered, never one query each; the per-site quota holds across processes, refuses
without spending and fails open when Valkey is gone; an IPv6 /64 is one client.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import TooManyRequestsError
from app.domains.pageviews.keys import SiteKeys, UnknownKeyError
from app.domains.pageviews.quota import FAIL_OPEN_S, SiteQuota, SiteQuotaExceededError
from app.domains.pageviews.rows import Row
from app.domains.pageviews.schemas import MAX_BATCH
from app.domains.pageviews.services import PageViewService
from app.domains.sites.services import SiteService
from tests.factories import Served, assert_problem, create_user, make_site, serve_in_loop, wait_until

SINGLE = "/api/page-views"
BATCH = "/api/page-views/batch"
UNLIMITED = {"rate_limit_ingest_per_minute": 10_000_000, "rate_limit_ingest_per_hour": 100_000_000}
ONE_FLUSHER = {"sink_flushers": 1}  # a gated write then holds every later view in the queue


async def new_site(db: AsyncConnection[Any]) -> tuple[int, str]:
    site = await make_site(db, await create_user(db))
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    return site.id, site.ingest_key


async def stored(db: AsyncConnection[Any], site_id: int) -> int:
    found = await (
        await db.execute("select count(*) from page_views where site_id = %s", (site_id,))
    ).fetchone()
    assert found is not None
    return int(found[0])


def view(key: str, **fields: Any) -> dict[str, Any]:
    return {"site_key": key, "url": "https://shop.example.com/", **fields}


# --- deleted sites ----------------------------------------------------------------------------------


@pytest.fixture
async def two_instances(settings: Settings, db: AsyncConnection[Any]) -> AsyncIterator[tuple[Served, Served]]:
    """Two app instances (two processes' worth of caches and sinks) on one database and Valkey."""
    changes = {**UNLIMITED, **ONE_FLUSHER}
    async with serve_in_loop(settings, **changes) as one, serve_in_loop(settings, **changes) as two:
        yield one, two


async def test_a_deleted_site_stops_ingesting_in_every_instance_from_its_commit(
    two_instances: tuple[Served, Served], db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Both instances have the key cached; the site is deleted by a third connection (as another
    process would, so no instance is told in-process). The very next view to either is refused."""
    site_id, key = await new_site(db)
    for instance in two_instances:
        assert (await instance.client.post(SINGLE, json=view(key))).status_code == 202
    await db.execute("delete from sites where id = %s", (site_id,))  # autocommit: committed here
    for instance in two_instances:
        assert_problem(await instance.client.post(SINGLE, json=view(key)), 422, "unknown-site-key")
        batch = {"views": [view(key), view(key, url="https://shop.example.com/2")]}
        assert_problem(await instance.client.post(BATCH, json=batch), 422, "unknown-site-key")
    assert await stored(db, site_id) == 2

    async def everyone_knows() -> bool:
        return all(i.app.state.services[SiteService].is_deleted(key) for i in two_instances)

    await wait_until(everyone_knows, 30, "every instance's deletion mirror holds the key (NOTIFY)")


async def test_a_deleted_sites_views_already_queued_are_refused_not_stored(
    two_instances: tuple[Served, Served], db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The write itself checks the sites in its own snapshot: a view whose key was accepted before
    the deletion but written after it is answered 422 and not stored; other sites' views in the same
    write are stored."""
    one, _ = two_instances
    gone_id, gone_key = await new_site(db)
    kept_id, kept_key = await new_site(db)
    pageviews: PageViewService = one.app.state.services[PageViewService]
    for key in (gone_key, kept_key):
        assert (await one.client.post(SINGLE, json=view(key))).status_code == 202
    release, entered = asyncio.Event(), asyncio.Event()
    real = pageviews.sink.writer

    class Gated:
        """The real writer, whose next write waits until ``release``: what arrives meanwhile queues."""

        name = real.name

        async def open(self) -> None: ...
        async def close(self) -> None: ...

        async def write(self, rows: Sequence[Row]) -> int:
            if not entered.is_set():
                entered.set()
                await release.wait()
            return await real.write(rows)

    async def queued_rows() -> bool:
        return pageviews.sink.pending_rows == 5

    pageviews.sink.writer = Gated()
    try:
        blocker = asyncio.create_task(one.client.post(SINGLE, json=view(kept_key, url="https://x.example/b")))
        await asyncio.wait_for(entered.wait(), 30)
        queued = [
            asyncio.create_task(one.client.post(SINGLE, json=view(key, url=f"https://x.example/{i}")))
            for i, key in enumerate([gone_key, kept_key, gone_key, kept_key])
        ]
        await wait_until(queued_rows, 30, "the views are queued")
        await db.execute("delete from sites where id = %s", (gone_id,))
        release.set()
        assert (await blocker).status_code == 202
        answers = [await task for task in queued]
    finally:
        pageviews.sink.writer = real
        release.set()
    assert [answer.status_code for answer in answers] == [422, 202, 422, 202]
    assert await stored(db, gone_id) == 1  # the view before the deletion only
    assert await stored(db, kept_id) == 4


# --- unknown keys -----------------------------------------------------------------------------------


async def test_unknown_keys_cost_one_lookup_per_batch_of_keys_and_are_remembered(
    two_instances: tuple[Served, Served], db: AsyncConnection[Any]
) -> None:
    one, _ = two_instances
    site_id, key = await new_site(db)
    keys = SiteKeys(one.app.state.services[SiteService])
    unknown = [secrets.token_urlsafe(24) for _ in range(300)]
    answers = await asyncio.gather(*(keys.site_id(k) for k in [*unknown, key]), return_exceptions=True)
    assert all(isinstance(answer, UnknownKeyError) for answer in answers[:-1])
    assert answers[-1] == site_id
    assert keys.lookups <= 2, f"{keys.lookups} statements for 301 keys arriving together"
    before = keys.lookups
    again = await asyncio.gather(*(keys.site_id(k) for k in unknown), return_exceptions=True)
    assert all(isinstance(answer, UnknownKeyError) for answer in again)
    assert keys.lookups == before, "a key found absent is remembered (no query)"


async def test_the_negative_cache_is_bounded_and_evicts_one_entry_at_a_time(
    two_instances: tuple[Served, Served], db: AsyncConnection[Any]
) -> None:
    one, _ = two_instances
    keys = SiteKeys(one.app.state.services[SiteService], max_unknown=10)
    for k in [secrets.token_urlsafe(24) for _ in range(50)]:
        with pytest.raises(UnknownKeyError):
            await keys.site_id(k)
    assert len(keys._unknown) == 10


async def test_a_malformed_key_is_a_400_before_any_lookup(
    two_instances: tuple[Served, Served], db: AsyncConnection[Any]
) -> None:
    one, _ = two_instances
    keys = one.app.state.services[PageViewService].keys
    before = keys.lookups
    for bad in ("short", "x" * 65, "has spaces in it, sixteen+", "ünïcödé-ünïcödé-ünïcödé"):
        response = await one.client.post(SINGLE, json=view(bad))
        assert_problem(response, 400, fields={"site_key"})
    assert keys.lookups == before


# --- per-site quota ---------------------------------------------------------------------------------


async def clear_of_midnight(valkey: Valkey) -> None:
    """Return at least a minute before the quota's UTC day window (Valkey's clock) ends, so that a
    test counting against the day quota never straddles two windows."""

    async def not_near_midnight() -> bool:
        seconds, _ = await valkey.time()
        return int(seconds) % 86_400 < 86_400 - 60

    await wait_until(not_near_midnight, 120, "the day window has more than a minute left")


async def test_the_day_quota_holds_across_processes_and_refuses_with_retry_after(valkey: Valkey) -> None:
    """Two processes' quotas (each leasing from Valkey) admit at most the day's quota between them,
    and nearly all of it (a lease left unspent in one process is the only slack)."""
    await clear_of_midnight(valkey)
    site = 7
    per_day = 100
    prefix = f"t{uuid.uuid4().hex}"
    first, second = (SiteQuota(valkey, 1_000_000, per_day, prefix=prefix) for _ in range(2))
    admitted = 0
    refusals: list[SiteQuotaExceededError] = []
    for _ in range(150):
        for quota in (first, second):
            try:
                await quota.take(site, 1)
                admitted += 1
            except SiteQuotaExceededError as refused:
                refusals.append(refused)
    assert per_day - 2 * 16 <= admitted <= per_day, admitted
    assert refusals and all(int(r.headers["Retry-After"]) >= 1 for r in refusals)
    assert all(r.status == 429 for r in refusals)


async def test_a_refused_batch_spends_nothing_of_the_quota(valkey: Valkey) -> None:
    await clear_of_midnight(valkey)
    quota = SiteQuota(valkey, 1_000_000, 50, prefix=f"t{uuid.uuid4().hex}")
    await quota.take(1, 40)
    with pytest.raises(SiteQuotaExceededError):
        await quota.take(1, 20)  # 10 left: the batch is refused whole
    quota._leases[1].denied_until = 0.0  # past the one-second denial cache, without waiting for it
    await quota.take(1, 10)  # the 10 are still there
    quota._leases[1].denied_until = 0.0
    with pytest.raises(SiteQuotaExceededError):
        await quota.take(1, 1)


async def test_a_lease_granted_as_its_minute_ends_admits_the_view_that_asked(valkey: Valkey) -> None:
    """The grant comes back with its minute window's end; when that minute is over by the time the
    answer arrives, the view that asked is still admitted from it (its token was counted), not
    refused with a 429 as though the quota were spent (one such refusal showed up in the harness)."""
    times = iter([1_000.0, 1_000.0])

    def clock() -> float:
        return next(times, 2_000.0)  # the take, the renewal's start, then long past its minute

    quota = SiteQuota(valkey, 1_000_000, 1_000_000, prefix=f"t{uuid.uuid4().hex}", clock=clock)
    assert await quota.take(1, 1) == 1


async def test_sites_have_separate_quotas_and_the_lease_memory_is_bounded(valkey: Valkey) -> None:
    quota = SiteQuota(valkey, 1_000_000, 5, prefix=f"t{uuid.uuid4().hex}", max_sites=3)
    for site in range(1, 11):
        await quota.take(site, 5)
    assert len(quota._leases) == 3


async def test_the_quota_fails_open_when_valkey_is_unreachable() -> None:
    unreachable = Valkey(host="127.0.0.1", port=1, socket_connect_timeout=1, socket_timeout=1)
    quota = SiteQuota(unreachable, 1, 1, prefix="t")
    try:
        for _ in range(5):
            await quota.take(1, 1)  # admitted: no quota check is possible
    finally:
        await unreachable.aclose()


async def test_the_quota_fails_open_when_valkey_answers_only_at_its_timeout() -> None:
    """A Valkey that hangs (here a socket that takes the request and never answers) fails the call
    at its socket timeout, as long as the fail-open window (both 1 s): the window was dated from the
    call's start, so it had closed when ``take`` looked again, and the view got a 429 "over quota"
    with the quota never read."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hanging = Valkey(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=FAIL_OPEN_S)
    quota = SiteQuota(hanging, 1, 1, prefix="t")
    try:
        assert await quota.take(1, 1) == 0  # admitted: no quota check is possible
    finally:
        await hanging.aclose()
        server.close()


# --- per address: an IPv6 /64 is one client, and one client cannot spend a site's quota -------------


async def test_one_address_cannot_spend_its_sites_quota(settings: Settings, db: AsyncConnection[Any]) -> None:
    """With the shipped limits, one address sending full batches is refused for itself long before
    its site's quota is spent: the site's other visitors are still stored."""
    _, key = await new_site(db)
    async with serve_in_loop(settings) as served:
        sent = 0
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served.app, client=("203.0.113.7", 5000)),
            base_url="http://testserver",
        ) as flooder:
            while True:
                response = await flooder.post(BATCH, json={"views": [view(key)] * MAX_BATCH})
                if response.status_code != 202:
                    break
                sent += MAX_BATCH
                assert sent <= settings.ingest_site_views_per_minute, "never refused for itself"
        assert_problem(response, 429, "rate-limited")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served.app, client=("203.0.113.8", 5000)),
            base_url="http://testserver",
        ) as visitor:
            answer = await visitor.post(SINGLE, json=view(key))
            assert answer.status_code == 202, answer.text
        assert sent < settings.ingest_site_views_per_minute


async def test_an_ipv6_slash_64_shares_one_bucket(settings: Settings, db: AsyncConnection[Any]) -> None:
    _, key = await new_site(db)
    async with serve_in_loop(settings, rate_limit_ingest_per_minute=3) as served:
        pageviews = served.app.state.services[PageViewService]
        for address in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff:ffff:ffff:ffff"):
            pageviews.admit(address, 1)
        with pytest.raises(TooManyRequestsError):
            pageviews.admit("2001:db8:1:2:abcd::9", 1)
        pageviews.admit("2001:db8:1:3::1", 3)  # the next /64 is another client
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served.app, client=("2001:db8:9:9::1", 5000)),
            base_url="http://testserver",
        ) as client:
            for _ in range(3):
                assert (await client.post(SINGLE, json=view(key))).status_code == 202
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served.app, client=("2001:db8:9:9:1:2:3:4", 5000)),
            base_url="http://testserver",
        ) as client:
            response = await client.post(SINGLE, json=view(key))
            assert_problem(response, 429)
            assert int(response.headers["retry-after"]) >= 1
