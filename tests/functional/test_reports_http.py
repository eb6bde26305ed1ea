"""The report routes over HTTP: who may read them, parameter validation, the answers, the cache.

(The numbers themselves are checked against a model in tests/property/test_reports_model.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar_saq import SAQPlugin
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.cache import Cache
from app.core.queues import build_saq_config
from app.core.services import Services, open_services
from app.db import pageviews as pageview_queries
from app.db.models import UserRole
from app.domains.pageviews.jobs import maintain_partitions
from app.domains.pageviews.services import PageViewService
from app.domains.reports.jobs import purge_rollups, rollup_page_views
from app.domains.reports.services import ReportService
from app.modules import MODULES
from tests.factories import generous_client, make_site, make_user

REPORTS = (
    "summary",
    "timeseries",
    "pages",
    "entry-pages",
    "referrers",
    "campaigns",
    "devices",
    "browsers",
    "current-visitors",
)
Client = AsyncTestClient[Litestar]


async def add_view(
    db: AsyncConnection[Any],
    site_id: int,
    *,
    visitor_id: int = 1,
    path: str = "/",
    ts: datetime | None = None,
    referrer: str = "",
    campaign: str = "",
    device: str = "desktop",
    browser: str = "firefox",
    is_bot: bool = False,
) -> None:
    ts = ts or datetime.now(UTC)
    await db.execute(
        "insert into page_views (site_id, ts, received_at, visitor_id, path, referrer_source, utm_campaign,"
        " device, browser, os, is_bot) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'linux', %s)",
        (site_id, ts, ts, visitor_id, path, referrer, campaign, device, browser, is_bot),
    )


class World:
    def __init__(self, site_id: int, headers: dict[str, dict[str, str]]) -> None:
        self.site_id = site_id
        self.headers = headers


@pytest.fixture
async def world(client: Client, app: Litestar, db: AsyncConnection[Any]) -> World:
    today = datetime.now(UTC).date()
    await pageview_queries.ensure_partitions(db, from_day=today - timedelta(days=2), days=6)
    owner = await make_user(db, app)
    owner_headers = owner.headers
    other_headers = (await make_user(db, app)).headers
    admin_headers = (await make_user(db, app, UserRole.ADMIN)).headers
    site_id = (await make_site(db, owner)).id
    return World(site_id, {"owner": owner_headers, "other": other_headers, "admin": admin_headers})


# -- who may read ----------------------------------------------------------------------------------


@pytest.mark.parametrize("report", REPORTS)
async def test_owner_and_admins_read_others_get_404_anonymous_401(
    client: Client, world: World, report: str
) -> None:
    url = f"/api/sites/{world.site_id}/{report}"
    for caller, status in (("owner", 200), ("admin", 200), ("other", 404)):
        response = await client.get(url, headers=world.headers[caller])
        assert response.status_code == status, (caller, response.text)
    anonymous = await client.get(url)
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    missing = await client.get(f"/api/sites/{world.site_id + 1000}/{report}", headers=world.headers["admin"])
    assert missing.status_code == 404


async def test_every_report_route_documents_its_problems(app: Litestar) -> None:
    schema = app.openapi_schema.to_schema()
    for report in REPORTS:
        responses = schema["paths"][f"/api/sites/{{site_id}}/{report}"]["get"]["responses"]
        assert {"400", "401", "404"} <= set(responses), report


# -- parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("report", "params", "field"),
    [
        ("summary", {"period": "year"}, "period"),
        ("summary", {"period": "custom"}, "from"),
        ("summary", {"period": "custom", "from": "2030-01-02"}, "to"),
        ("summary", {"period": "custom", "from": "2030-01-02", "to": "2030-01-01"}, "to"),
        ("summary", {"period": "custom", "from": "2020-01-01", "to": "2021-06-01"}, "to"),
        ("summary", {"period": "7d", "from": "2030-01-01"}, "from"),
        ("summary", {"period": "custom", "from": "yesterday", "to": "2030-01-01"}, "from"),
        ("summary", {"period": "custom", "from": "20300101", "to": "2030-01-02"}, "from"),
        ("summary", {"period": "custom", "from": "2030-01-01", "to": "2030-W01-3"}, "to"),
        ("summary", {"period": "custom", "from": "2030-01-01", "to": "2030-001"}, "to"),
        ("summary", {"period": "custom", "from": "2030-01-01\n", "to": "2030-01-02"}, "from"),
        ("summary", {"period": "custom", "from": "2030-02-30", "to": "2030-03-01"}, "from"),
        ("summary", {"period": "custom", "from": "9999-12-31", "to": "9999-12-31"}, "to"),
        (
            "summary",
            {"period": "custom", "from": "0001-01-01", "to": "0001-01-01", "tz": "Asia/Tokyo"},
            "from",
        ),
        ("summary", {"tz": "Mars/Olympus_Mons"}, "tz"),
        ("summary", {"tz": "../../etc/passwd"}, "tz"),
        ("summary", {"tz": "Europe"}, "tz"),
        ("summary", {"tz": "x" * 65}, "tz"),
        ("pages", {"limit": "0"}, "limit"),
        ("referrers", {"limit": "101"}, "limit"),
        ("timeseries", {"interval": "week"}, "interval"),
        (
            "timeseries",
            {"interval": "hour", "period": "custom", "from": "2030-01-01", "to": "2030-03-01"},
            "interval",
        ),
    ],
)
async def test_invalid_parameters_are_400_problems_naming_the_field(
    client: Client, world: World, report: str, params: dict[str, str], field: str
) -> None:
    response = await client.get(
        f"/api/sites/{world.site_id}/{report}", params=params, headers=world.headers["owner"]
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 400
    assert any(error["field"] == f"query.{field}" for error in problem["errors"]), problem


async def test_parameters_resolve_to_local_days(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, app)
    headers = owner.headers
    site_id = (await make_site(db, owner, timezone="Asia/Kolkata")).id
    response = await client.get(f"/api/sites/{site_id}/summary", params={"period": "7d"}, headers=headers)
    assert response.status_code == 200, response.text
    rng = response.json()["range"]
    kolkata = ZoneInfo("Asia/Kolkata")
    today = datetime.now(kolkata).date()
    assert rng["tz"] == "Asia/Kolkata"  # the site's zone by default
    assert (rng["first_day"], rng["last_day"]) == ((today - timedelta(days=6)).isoformat(), today.isoformat())
    assert datetime.fromisoformat(rng["start"]) == datetime(
        *(today - timedelta(days=6)).timetuple()[:3], tzinfo=kolkata
    )

    custom = await client.get(
        f"/api/sites/{site_id}/summary",
        params={"period": "custom", "from": "2030-03-30", "to": "2030-03-31", "tz": "Europe/Berlin"},
        headers=headers,
    )
    assert custom.status_code == 200, custom.text
    rng = custom.json()["range"]
    # The night of the clock change: 47 hours, from +01:00 to +02:00.
    assert datetime.fromisoformat(rng["start"]) == datetime(2030, 3, 29, 23, tzinfo=UTC)
    assert datetime.fromisoformat(rng["end"]) == datetime(2030, 3, 31, 22, tzinfo=UTC)

    series = await client.get(
        f"/api/sites/{site_id}/timeseries",
        params={
            "period": "custom",
            "from": "2030-03-30",
            "to": "2030-03-31",
            "tz": "Europe/Berlin",
            "interval": "hour",
        },
        headers=headers,
    )
    assert series.status_code == 200, series.text
    points = series.json()["points"]
    assert len(points) == 47
    assert points[0]["local"] == "2030-03-30T00:00+01:00"
    assert points[-1]["local"] == "2030-03-31T23:00+02:00"


# -- answers ---------------------------------------------------------------------------------------


async def test_the_reports_of_a_few_views(client: Client, world: World, db: AsyncConnection[Any]) -> None:
    now = datetime.now(UTC)
    site = world.site_id
    # Visitor 1: a two-page visit from Google for a campaign; visitor 2: a bounce; a bot.
    await add_view(
        db, site, visitor_id=1, path="/a", ts=now - timedelta(minutes=3), referrer="google", campaign="launch"
    )
    await add_view(
        db, site, visitor_id=1, path="/b", ts=now - timedelta(minutes=2), referrer="google", campaign="launch"
    )
    await add_view(
        db, site, visitor_id=2, path="/b", ts=now - timedelta(minutes=1), device="mobile", browser="safari"
    )
    await add_view(db, site, visitor_id=3, path="/a", ts=now, is_bot=True)
    headers = world.headers["owner"]

    async def get(report: str, **params: str) -> Any:
        params = {"period": "7d", "tz": "UTC", **params}
        response = await client.get(f"/api/sites/{site}/{report}", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    summary = await get("summary")
    assert {k: summary[k] for k in ("pageviews", "bot_pageviews", "visitors", "visits", "bounces")} == {
        "pageviews": 3,
        "bot_pageviews": 1,
        "visitors": 2,
        "visits": 2,
        "bounces": 1,
    }
    assert (summary["bounce_rate"], summary["views_per_visit"]) == (0.5, 1.5)
    pairs = lambda body: [(item["value"], item["views"]) for item in body["items"]]  # noqa: E731
    assert pairs(await get("pages")) == [("/b", 2), ("/a", 1)]
    assert pairs(await get("pages", limit="1")) == [("/b", 2)]
    assert pairs(await get("referrers")) == [("google", 2), ("", 1)]
    assert pairs(await get("campaigns")) == [("launch", 2)]
    assert pairs(await get("devices")) == [("desktop", 2), ("mobile", 1)]
    assert pairs(await get("browsers")) == [("firefox", 2), ("safari", 1)]
    entry = await get("entry-pages")
    assert [(i["path"], i["visits"], i["bounces"], i["bounce_rate"]) for i in entry["items"]] == [
        ("/a", 1, 0, 0.0),
        ("/b", 1, 1, 1.0),
    ]
    for interval, buckets in (("day", 7), ("hour", 7 * 24)):
        points = (await get("timeseries", interval=interval))["points"]
        assert len(points) == buckets
        assert [sum(p[k] for p in points) for k in ("pageviews", "visits")] == [3, 2]
        starts = [datetime.fromisoformat(p["start"]) for p in points]
        assert starts == sorted(starts)
    current = await client.get(f"/api/sites/{site}/current-visitors", headers=headers)
    assert current.json()["visitors"] == 2


# -- the cache -------------------------------------------------------------------------------------


async def test_a_repeated_request_is_served_from_the_cache_until_invalidated(
    client: Client, world: World, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    url = f"/api/sites/{world.site_id}/summary"
    params = {"period": "today", "tz": "UTC"}
    headers = world.headers["owner"]
    await add_view(db, world.site_id, visitor_id=1)
    first = await client.get(url, params=params, headers=headers)
    assert first.json()["pageviews"] == 1

    await add_view(db, world.site_id, visitor_id=2)
    cached = await client.get(url, params=params, headers=headers)
    assert cached.json()["pageviews"] == 1, "served from the cache"
    other_zone = await client.get(url, params={**params, "tz": "Etc/GMT-1"}, headers=headers)
    assert other_zone.json()["pageviews"] == 2, "another range is another key"

    await Cache(valkey).namespace("reports").invalidate_all()  # as another process would
    fresh = await client.get(url, params=params, headers=headers)
    assert fresh.json()["pageviews"] == 2


async def test_the_same_days_asked_as_another_period_answer_with_that_period(
    client: Client, world: World
) -> None:
    url = f"/api/sites/{world.site_id}/summary"
    headers = world.headers["owner"]
    today = (await client.get(url, params={"period": "today", "tz": "UTC"}, headers=headers)).json()
    day = today["range"]["first_day"]
    custom = await client.get(
        url, params={"period": "custom", "from": day, "to": day, "tz": "UTC"}, headers=headers
    )
    assert custom.json()["range"]["period"] == "custom"


@pytest.fixture(scope="module")
async def short_ttl_client(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(settings, report_cache_ttl_s=0.2):
        yield client


async def test_a_cached_report_expires_after_its_ttl(
    short_ttl_client: Client, world: World, db: AsyncConnection[Any]
) -> None:
    url = f"/api/sites/{world.site_id}/pages"
    headers = world.headers["owner"]
    await add_view(db, world.site_id, path="/old")
    first = await short_ttl_client.get(url, params={"period": "today", "tz": "UTC"}, headers=headers)
    assert [item["value"] for item in first.json()["items"]] == ["/old"]
    await add_view(db, world.site_id, path="/new")
    await add_view(db, world.site_id, path="/new", visitor_id=2)
    seen = []
    for _ in range(200):  # polls until the entry has expired (no bound on how long that takes)
        response = await short_ttl_client.get(url, params={"period": "today", "tz": "UTC"}, headers=headers)
        seen = [item["value"] for item in response.json()["items"]]
        if seen != ["/old"]:
            break
        await asyncio.sleep(0.05)
    assert seen == ["/new", "/old"]


# -- the jobs --------------------------------------------------------------------------------------


@pytest.fixture
async def job_ctx(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """The context SAQ hands to a task in the worker process (its own services: pool, Valkey client)."""
    async with open_services(settings, MODULES) as services:
        yield {"services": services}


async def test_the_jobs_are_registered_on_the_default_queue(settings: Settings, valkey_url: str) -> None:
    config = build_saq_config(Services(settings, MODULES), valkey_url, run_workers_in_process=False)
    default = next(queue for queue in config.queue_configs if queue.name == "default")
    jobs = {
        job.function.__name__: (job.cron, job.timeout, job.retries)  # type: ignore[union-attr]
        for job in default.scheduled_tasks
    }
    retries = settings.job_retries
    assert jobs["rollup_page_views"] == ("* * * * *", 600, retries)
    assert jobs["maintain_partitions"] == ("7 * * * *", 300, retries)
    assert jobs["purge_ingest_state"] == ("37 3 * * *", 600, retries)
    assert jobs["purge_rollups"] == ("37 3 * * *", 600, retries)
    worker = SAQPlugin(config).get_workers()["default"]
    assert {"rollup_page_views", "maintain_partitions", "purge_ingest_state", "purge_rollups"} <= set(
        worker.functions
    ), "the default queue's worker runs them"
    await config.queue_instances["default"].redis.aclose()  # type: ignore[index,union-attr]


async def test_concurrent_rollup_jobs_add_every_row_once(
    job_ctx: dict[str, Any], world: World, db: AsyncConnection[Any]
) -> None:
    now = datetime.now(UTC)
    for hours_ago in range(2, 9):  # received well before the last complete hour, whatever the time
        for visitor in range(3):
            ts = now - timedelta(hours=hours_ago, minutes=15)
            await add_view(db, world.site_id, visitor_id=visitor, ts=ts)
    results = await asyncio.gather(*(rollup_page_views(job_ctx) for _ in range(4)))  # type: ignore[arg-type]
    assert sum(results) == 21
    cursor = await db.execute(
        "select sum(pageviews)::int from page_view_hourly where site_id = %s", (world.site_id,)
    )
    assert await cursor.fetchone() == (21,)
    assert await rollup_page_views(job_ctx) == 0  # type: ignore[arg-type]


async def test_partitions_past_retention_are_dropped_and_rollups_purged(
    job_ctx: dict[str, Any], world: World, db: AsyncConnection[Any]
) -> None:
    retention = job_ctx["services"].settings.analytics_retention_days
    today = datetime.now(UTC).date()
    old_day, kept_day = today - timedelta(days=retention + 1), today - timedelta(days=retention - 1)
    await pageview_queries.ensure_partitions(db, from_day=old_day, days=1)
    await pageview_queries.ensure_partitions(db, from_day=kept_day, days=1)
    old = datetime(old_day.year, old_day.month, old_day.day, 12, tzinfo=UTC)
    await db.execute(
        "insert into page_view_hourly (site_id, hour, pageviews, bot_pageviews)"
        " values (%s, %s, 1, 0), (%s, %s, 1, 0)",
        (
            world.site_id,
            old,
            world.site_id,
            now_hour := datetime.now(UTC).replace(minute=0, second=0, microsecond=0),
        ),
    )

    result = await maintain_partitions(job_ctx)  # type: ignore[arg-type]
    assert result["dropped"] >= 1
    names = await (
        await db.execute(
            "select to_regclass(%s), to_regclass(%s), to_regclass(%s)",
            (
                f"page_views_{old_day:%Y%m%d}",
                f"page_views_{kept_day:%Y%m%d}",
                f"page_views_{today + timedelta(days=2):%Y%m%d}",
            ),
        )
    ).fetchone()
    assert names is not None
    assert names[0] is None, "the partition past retention is dropped"
    assert names[1] is not None and names[2] is not None

    purged = await purge_rollups(job_ctx)  # type: ignore[arg-type]
    assert purged["rollups"] == 1
    cursor = await db.execute("select hour from page_view_hourly where site_id = %s", (world.site_id,))
    assert await cursor.fetchall() == [(now_hour,)]


async def test_the_oldest_kept_day_keeps_its_partition_and_all_its_rollups(
    job_ctx: dict[str, Any], world: World, db: AsyncConnection[Any]
) -> None:
    """Partitions are dropped and rollups purged on one boundary, the retention's first kept UTC day:
    the daily purge (03:37) keeps that day's early hours, whose raw rows are kept too."""
    services = job_ctx["services"]
    retention = services.settings.analytics_retention_days
    today = datetime.now(UTC).date()
    first_kept = today - timedelta(days=retention)
    gone = first_kept - timedelta(days=1)
    await pageview_queries.ensure_partitions(db, from_day=gone, days=2)
    hours = [
        datetime(gone.year, gone.month, gone.day, 23, tzinfo=UTC),
        *(datetime(first_kept.year, first_kept.month, first_kept.day, h, tzinfo=UTC) for h in (0, 3, 5, 23)),
    ]
    for hour in hours:
        await db.execute(
            "insert into page_view_hourly (site_id, hour, pageviews, bot_pageviews) values (%s, %s, 1, 0)",
            (world.site_id, hour),
        )
    upkeep = await services[PageViewService].maintain_partitions(today)
    purged = await services[ReportService].purge_rollups(
        now=datetime(today.year, today.month, today.day, 3, 37, tzinfo=UTC)
    )

    assert upkeep.dropped >= 1
    names = await (
        await db.execute(
            "select to_regclass(%s), to_regclass(%s)",
            (f"page_views_{gone:%Y%m%d}", f"page_views_{first_kept:%Y%m%d}"),
        )
    ).fetchone()
    assert names is not None and names[0] is None and names[1] is not None
    assert purged == 1, "the day before the first kept day, and nothing of the kept day"
    cursor = await db.execute(
        "select hour from page_view_hourly where site_id = %s order by hour", (world.site_id,)
    )
    assert await cursor.fetchall() == [(hour,) for hour in hours[1:]]
