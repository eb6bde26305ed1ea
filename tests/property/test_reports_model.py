"""Every report against a pure-Python model of the raw page views, across the rollup boundary.

Each example inserts random page views of one site with SQL (visitors, paths, referrers, campaigns,
devices, browsers, some bots; ``ts`` over the last 26 hours, ``received_at`` a few seconds later or,
for late rows, hours later), rolls up at a random moment (so part of the data is in the rollups and
the rest is raw), maybe inserts late rows after that and rolls up again (twice: the second run must
change nothing), then compares every report with the model, for a random period and time zone
(including zones with fractional offsets, whose day boundaries cut rollup hours). Finally everything
is rolled up and the stored visits must be the visits of a one-shot sessionization of all rows.

The visitor id of a person changes at UTC midnight (the daily salt): the model counts distinct
visitor ids, so a person seen on two days is two visitors.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.services import open_services
from app.db import accounts as account_queries
from app.db import pageviews as pageview_queries
from app.db import sites as site_queries
from app.db.models import UserRole
from app.domains.pageviews.derive import MAX_AGE
from app.domains.reports.schemas import Period
from app.domains.reports.services import ReportService, resolve_range
from app.modules import MODULES
from tests.factories import ANALYTICS_ROLLUP_TABLES, answer_racing

FAKE_HASH = "$argon2id$v=19$m=65536,t=3,p=4$bm90LWEtcmVhbC1zYWx0$bm90LWEtcmVhbC1oYXNoLW5vdC1hLXJlYWwtaGFzaA"
PATHS = ("/p1", "/p2", "/p3", "/p4")
REFERRERS = ("", "bing", "google")
CAMPAIGNS = ("", "launch", "spring")
DEVICES = ("desktop", "mobile", "tablet")
BROWSERS = ("chrome", "firefox", "safari")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu")
VISIT_GAP = timedelta(minutes=30)
CURRENT_WINDOW = timedelta(minutes=5)


class Spec(msgspec.Struct, frozen=True):
    """A view ``age_s`` seconds before now, received ``delay_s`` later (at most now)."""

    person: int
    age_s: int
    delay_s: int
    path: str
    referrer: str
    campaign: str
    device: str
    browser: str
    is_bot: bool


class View(msgspec.Struct, frozen=True):
    visitor_id: int
    ts: datetime
    received_at: datetime
    path: str
    referrer_source: str
    utm_campaign: str
    device: str
    browser: str
    is_bot: bool


class Visit(msgspec.Struct, frozen=True):
    visitor_id: int
    started_at: datetime
    last_seen_at: datetime
    pageviews: int
    entry_path: str


# Gaps between a person's consecutive views: around the 30-minute visit timeout, and some others.
GAPS_S = (60, 600, 1500, 1740, 1800, 1860, 2400)


@st.composite
def chain(draw: st.DrawFn, max_age_s: int) -> list[Spec]:
    """A person's views, newest first, separated by gaps near the visit timeout (visits, bounces,
    visits that a view in between joins), starting in the last minutes (current visitors) or anywhere."""
    person = draw(st.integers(1, 4))
    age = draw(st.one_of(st.integers(0, 400), st.integers(0, max_age_s)))
    specs = []
    for _ in range(draw(st.integers(1, 5))):
        specs.append(
            Spec(
                person=person,
                age_s=age,
                # received a few seconds later, or hours later (a late row for a rolled-up hour)
                delay_s=draw(st.one_of(st.integers(0, 5), st.integers(0, 5 * 3600))),
                path=draw(st.sampled_from(PATHS)),
                referrer=draw(st.sampled_from(REFERRERS)),
                campaign=draw(st.sampled_from(CAMPAIGNS)),
                device=draw(st.sampled_from(DEVICES)),
                browser=draw(st.sampled_from(BROWSERS)),
                is_bot=draw(st.integers(0, 5)) == 0,
            )
        )
        age += draw(st.sampled_from(GAPS_S)) + draw(st.sampled_from((0, 0, 1, 37)))
        if age > max_age_s:
            break
    return specs


def views_strategy(max_age_s: int, min_chains: int, max_chains: int) -> st.SearchStrategy[list[Spec]]:
    return st.lists(chain(max_age_s), min_size=min_chains, max_size=max_chains).map(
        lambda chains: [spec for specs in chains for spec in specs]
    )


def to_view(spec: Spec, now: datetime, not_received_before: datetime | None = None) -> View:
    ts = now - timedelta(seconds=spec.age_s)
    received_at = min(ts + timedelta(seconds=spec.delay_s), now)
    if not_received_before is not None and received_at < not_received_before:
        received_at = not_received_before  # arrives after the rollup: late for its (rolled-up) hour
    ts = min(ts, received_at)
    ts = max(ts, received_at - MAX_AGE)  # the ingest's clamp, which the rollups rely on
    # The daily salt: one person has a different visitor id on each UTC day.
    visitor_id = spec.person * 100_000 + ts.date().toordinal() % 100_000
    return View(
        visitor_id=visitor_id,
        ts=ts,
        received_at=received_at,
        path=spec.path,
        referrer_source=spec.referrer,
        utm_campaign=spec.campaign,
        device=spec.device,
        browser=spec.browser,
        is_bot=spec.is_bot,
    )


# -- the model -----------------------------------------------------------------------------------


def sessionize(views: Iterable[View]) -> list[Visit]:
    """One-shot: per visitor, views in time order; a gap of more than 30 minutes starts a visit."""
    by_visitor: dict[int, list[View]] = defaultdict(list)
    for view in views:
        if not view.is_bot:
            by_visitor[view.visitor_id].append(view)
    visits = []
    for visitor_id, own in by_visitor.items():
        own.sort(key=lambda v: (v.ts, v.path))
        group = [own[0]]
        for view in own[1:]:
            if view.ts - group[-1].ts > VISIT_GAP:
                visits.append(_visit(visitor_id, group))
                group = []
            group.append(view)
        visits.append(_visit(visitor_id, group))
    return visits


def _visit(visitor_id: int, group: list[View]) -> Visit:
    return Visit(visitor_id, group[0].ts, group[-1].ts, len(group), group[0].path)


def ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def local_hour(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(minute=0, second=0, microsecond=0).astimezone(UTC)


def local_day(moment: datetime, zone: ZoneInfo) -> datetime:
    return datetime.combine(moment.astimezone(zone).date(), time(), tzinfo=zone).astimezone(UTC)


def expected_reports(views: list[View], start: datetime, end: datetime, zone: ZoneInfo) -> dict[str, Any]:
    inside = [v for v in views if start <= v.ts < end]
    humans = [v for v in inside if not v.is_bot]
    visits = [v for v in sessionize(views) if start <= v.started_at < end]
    bounces = sum(1 for v in visits if v.pageviews == 1)
    visit_views = sum(v.pageviews for v in visits)
    summary = {
        "pageviews": len(humans),
        "bot_pageviews": len(inside) - len(humans),
        "visitors": len({v.visitor_id for v in humans}),
        "visits": len(visits),
        "bounces": bounces,
        "bounce_rate": ratio(bounces, len(visits)),
        "views_per_visit": ratio(visit_views, len(visits)),
    }
    series = {}
    for interval, bucket_of in (("hour", local_hour), ("day", local_day)):
        buckets: list[datetime] = []
        cursor = start
        while cursor < end:  # no DST change near the generated data: steps of the bucket length
            buckets.append(bucket_of(cursor, zone))
            cursor = buckets[-1] + (timedelta(hours=1) if interval == "hour" else timedelta(days=1))
            if interval == "day":
                cursor = local_day(cursor + timedelta(hours=12), zone)
        views_in = Counter(bucket_of(v.ts, zone) for v in humans)
        visitors_in: dict[datetime, set[int]] = defaultdict(set)
        for v in humans:
            visitors_in[bucket_of(v.ts, zone)].add(v.visitor_id)
        visits_in = Counter(bucket_of(v.started_at, zone) for v in visits)
        series[interval] = [(b, views_in[b], len(visitors_in[b]), visits_in[b]) for b in buckets]
    breakdowns = {}
    for dimension in ("path", "referrer_source", "utm_campaign", "device", "browser"):
        counts = Counter(getattr(v, dimension) for v in humans)
        if dimension == "utm_campaign":
            counts.pop("", None)
        breakdowns[dimension] = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    entries: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for visit in visits:
        entries[visit.entry_path][0] += 1
        entries[visit.entry_path][1] += visit.pageviews == 1
    entry_pages = sorted(((p, n, b) for p, (n, b) in entries.items()), key=lambda item: (-item[1], item[0]))
    return {"summary": summary, "series": series, "breakdowns": breakdowns, "entry_pages": entry_pages}


# -- the system ----------------------------------------------------------------------------------


async def insert(db: AsyncConnection[Any], site_id: int, views: list[View]) -> None:
    async with db.cursor() as cur:
        await cur.executemany(
            "insert into page_views (site_id, ts, received_at, visitor_id, path, referrer_source,"
            " utm_campaign, device, browser, os, is_bot)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'linux', %s)",
            [
                (
                    site_id,
                    v.ts,
                    v.received_at,
                    v.visitor_id,
                    v.path,
                    v.referrer_source,
                    v.utm_campaign,
                    v.device,
                    v.browser,
                    v.is_bot,
                )
                for v in views
            ],
        )


async def rollup_tables(db: AsyncConnection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    snapshot = {}
    for table in (*ANALYTICS_ROLLUP_TABLES, "analytics_rollup_state"):
        cursor = await db.execute(f"select * from {table}")
        snapshot[table] = sorted(await cursor.fetchall())
    return snapshot


async def stored_visits(db: AsyncConnection[Any], site_id: int) -> list[Visit]:
    cursor = await db.execute(
        "select visitor_id, started_at, last_seen_at, pageviews, entry_path from page_view_visits"
        " where site_id = %s",
        (site_id,),
    )
    return [Visit(*row) for row in await cursor.fetchall()]


async def check_reports(
    reports: ReportService,
    site_id: int,
    views: list[View],
    now: datetime,
    period: Period,
    days: tuple[int, int],
    tz: str,
) -> None:
    await reports.cache.invalidate_all()  # every read below computes
    zone = ZoneInfo(tz)
    today = now.astimezone(zone).date()
    first, last = (
        (today - timedelta(days=days[0]), today - timedelta(days=days[1]))
        if period == "custom"
        else (None, None)
    )
    rng = resolve_range(period, first, last, tz, now=now)
    length = {"today": 1, "7d": 7, "30d": 30}.get(period)
    first_day = first if first is not None else today - timedelta(days=(length or 1) - 1)
    last_day = last if last is not None else today
    start = datetime.combine(first_day, time(), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(last_day + timedelta(days=1), time(), tzinfo=zone).astimezone(UTC)
    assert (rng.start, rng.end) == (start, end)
    expected = expected_reports(views, start, end, zone)

    summary = await reports.summary(site_id, rng)
    got = {name: getattr(summary, name) for name in expected["summary"]}
    assert got == expected["summary"], period

    for interval in ("hour", "day"):
        series = await reports.timeseries(site_id, rng, interval)  # type: ignore[arg-type]
        points = [(p.start, p.pageviews, p.visitors, p.visits) for p in series.points]
        assert points == expected["series"][interval], interval

    for dimension, counts in expected["breakdowns"].items():
        full = await reports.breakdown(site_id, rng, dimension, 100)
        assert [(item.value, item.views) for item in full.items] == counts, dimension
    top = await reports.breakdown(site_id, rng, "path", 2)
    assert [(item.value, item.views) for item in top.items] == expected["breakdowns"]["path"][:2]

    entry = await reports.entry_pages(site_id, rng, 100)
    assert [(item.path, item.visits, item.bounces) for item in entry.items] == expected["entry_pages"]

    current = await reports.current_visitors(site_id, now=now)
    assert current.visitors == len(
        {v.visitor_id for v in views if not v.is_bot and v.ts >= now - CURRENT_WINDOW}
    )


@pytest.fixture
async def reports(settings: Settings, valkey: Valkey) -> AsyncIterator[ReportService]:
    """The service as the app builds it, on this test's event loop."""
    async with open_services(settings, MODULES) as services:
        yield services[ReportService]


@pytest.fixture
async def site_id(db: AsyncConnection[Any]) -> int:
    """One site; each example resets the page views and rollups."""
    today = datetime.now(UTC).date()
    await pageview_queries.ensure_partitions(db, from_day=today - timedelta(days=2), days=6)
    owner = await account_queries.create_user(
        db,
        email=f"owner-{uuid.uuid4().hex[:12]}@example.com",
        display_name="owner",
        password_hash=FAKE_HASH,
        role=UserRole.MEMBER,
    )
    assert owner is not None
    site = await site_queries.create_site(
        db, owner_id=owner.id, domain="example.com", ingest_key=uuid.uuid4().hex, timezone="UTC"
    )
    assert site is not None
    return site.id


async def reset(db: AsyncConnection[Any]) -> None:
    await db.execute(f"truncate page_views, analytics_rollup_state, {', '.join(ANALYTICS_ROLLUP_TABLES)}")


MAX_AGE_S = 26 * 3600  # always spans a UTC midnight: persons get two visitor ids


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=views_strategy(MAX_AGE_S, 1, 10),
    late=views_strategy(MAX_AGE_S, 0, 3),
    cut_age_s=st.integers(0, MAX_AGE_S + 3600),
    second_cut=st.none() | st.floats(0, 1),
    period=st.sampled_from(["today", "7d", "30d", "custom"]),
    days=st.tuples(st.integers(0, 2), st.integers(0, 2)).map(lambda d: (max(d), min(d))),
    tz=st.sampled_from(ZONES),
    now_s=st.integers(0, 24 * 3600 - 1),
)
async def test_reports_match_the_model_across_the_rollup_boundary(
    reports: ReportService,
    db: AsyncConnection[Any],
    site_id: int,
    first: list[Spec],
    late: list[Spec],
    cut_age_s: int,
    second_cut: float | None,
    period: Period,
    days: tuple[int, int],
    tz: str,
    now_s: int,
) -> None:
    await reset(db)
    # "now" of the example: a moment of today (UTC), so that the example is reproducible and lands
    # anywhere relative to the hour boundaries of the rollup; nothing reads the clock but the test.
    now = datetime.combine(datetime.now(UTC).date(), time(), tzinfo=UTC) + timedelta(seconds=now_s)
    views = [to_view(spec, now) for spec in first]
    await insert(db, site_id, views)

    cut = now - timedelta(seconds=cut_age_s)
    await reports.rollup(now=cut)
    watermark = (await (await db.execute("select analytics_watermark()")).fetchone() or [None])[0]
    assert watermark is not None
    # Rows arriving after that run (late for hours that may be rolled up already).
    received_floor = max(watermark, now - timedelta(seconds=MAX_AGE_S))
    later = [to_view(spec, now, not_received_before=received_floor) for spec in late]
    await insert(db, site_id, later)
    views += later

    if second_cut is not None:
        again = cut + (now - cut) * second_cut
        await reports.rollup(now=again)
        before = await rollup_tables(db)
        assert await reports.rollup(now=again) == 0
        assert await rollup_tables(db) == before, "a second run at the same moment changed the rollups"

    await check_reports(reports, site_id, views, now, period, days, tz)

    # Everything rolled up (in runs of one hour of received_at): the same reports, and the stored
    # visits are those of a one-shot sessionization.
    rolled = await reports.rollup(now=now + timedelta(hours=2))
    assert rolled <= len(views)
    assert sorted(await stored_visits(db, site_id), key=lambda v: (v.visitor_id, v.started_at)) == sorted(
        sessionize(views), key=lambda v: (v.visitor_id, v.started_at)
    )
    await check_reports(reports, site_id, views, now, period, days, tz)


async def test_a_late_row_merges_two_stored_visits(
    reports: ReportService, db: AsyncConnection[Any], site_id: int
) -> None:
    """Two visits 50 minutes apart, rolled up; a row received later in the gap joins them into one."""
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(hours=5)
    spec = {
        "referrer_source": "",
        "utm_campaign": "",
        "device": "desktop",
        "browser": "firefox",
        "is_bot": False,
    }
    early = [
        View(visitor_id=7, ts=start, received_at=start, path="/p1", **spec),
        View(
            visitor_id=7,
            ts=start + timedelta(minutes=50),
            received_at=start + timedelta(minutes=50),
            path="/p2",
            **spec,
        ),
    ]
    await insert(db, site_id, early)
    await reports.rollup(now=now)
    assert len(await stored_visits(db, site_id)) == 2
    bridge = View(visitor_id=7, ts=start + timedelta(minutes=25), received_at=now, path="/p3", **spec)
    await insert(db, site_id, [bridge])

    rng = resolve_range("7d", None, None, "UTC", now=now)
    await reports.cache.invalidate_all()
    summary = await reports.summary(site_id, rng)  # the raw row merged at query time
    assert (summary.visits, summary.bounces, summary.pageviews) == (1, 0, 3)

    await reports.rollup(now=now + timedelta(hours=2))
    assert await stored_visits(db, site_id) == [
        Visit(
            visitor_id=7,
            started_at=start,
            last_seen_at=start + timedelta(minutes=50),
            pageviews=3,
            entry_path="/p1",
        )
    ]
    await reports.cache.invalidate_all()
    assert await reports.summary(site_id, rng) == summary


async def test_a_site_deleted_while_the_rollup_runs_is_left_out(
    reports: ReportService, db: AsyncConnection[Any], database_url: str, site_id: int
) -> None:
    """The rollup read the site before its deletion committed, then its rollup rows' foreign-key
    check failed the run (retried by the cron; an error in monitoring each time). The sites of the
    window are now locked first: the deleted site is left out, the others rolled up."""
    owner = await (await db.execute("select owner_id from sites where id = %s", (site_id,))).fetchone()
    assert owner is not None
    other = await site_queries.create_site(
        db, owner_id=owner[0], domain="example.org", ingest_key=uuid.uuid4().hex, timezone="UTC"
    )
    assert other is not None
    now = datetime.now(UTC).replace(microsecond=0)
    at = now - timedelta(hours=3)
    spec = {"referrer_source": "", "utm_campaign": "", "device": "desktop", "browser": "firefox"}
    for site, visitor in ((site_id, 1), (other.id, 2)):
        await insert(
            db, site, [View(visitor_id=visitor, ts=at, received_at=at, path="/", is_bot=False, **spec)]
        )

    rolled = await answer_racing(
        database_url, "delete from sites where id = %s", site_id, lambda: reports.rollup(now=now)
    )
    assert rolled == 1
    hourly = await (await db.execute("select site_id, pageviews from page_view_hourly")).fetchall()
    assert hourly == [(other.id, 1)]


async def test_a_person_on_two_utc_days_counts_as_two_visitors(
    reports: ReportService, db: AsyncConnection[Any], site_id: int
) -> None:
    """The daily salt: the same person just before and after UTC midnight has two visitor ids, so
    two visitors and two visits (though 20 minutes apart), rolled up or not."""
    now = datetime.now(UTC).replace(microsecond=0)
    midnight = datetime.combine(now.date(), time(), tzinfo=UTC)
    base = Spec(1, 0, 0, "/p1", "", "", "desktop", "chrome", False)
    views = [
        to_view(msgspec.structs.replace(base, age_s=int((now - moment).total_seconds())), now)
        for moment in (midnight - timedelta(minutes=10), midnight + timedelta(minutes=10))
        if moment <= now
    ]
    if len(views) == 1:  # the test runs in the first ten minutes of the day: use yesterday's midnight
        views = [
            to_view(msgspec.structs.replace(base, age_s=int((now - moment).total_seconds())), now)
            for moment in (
                midnight - timedelta(days=1, minutes=10),
                midnight - timedelta(days=1) + timedelta(minutes=10),
            )
        ]
    assert views[0].visitor_id != views[1].visitor_id
    await insert(db, site_id, views)
    rng = resolve_range("7d", None, None, "UTC", now=now)
    for rollup_at in (None, now + timedelta(hours=2)):
        if rollup_at is not None:
            await reports.rollup(now=rollup_at)
        await reports.cache.invalidate_all()
        summary = await reports.summary(site_id, rng)
        assert (summary.visitors, summary.visits, summary.pageviews) == (2, 2, 2)
