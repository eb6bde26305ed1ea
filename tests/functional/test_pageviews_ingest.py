"""The public page-view ingest endpoints over HTTP: what is stored, what is refused (as a problem
naming the field), and that one client's bad view never fails another client's.

The app is served in the test's own event loop (httpx's ASGI transport), so that requests really run
concurrently and the sink can be observed between them; the ``x-test-peer`` harness gives each test
its own client address (the ingest token bucket is per address).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.modules import Module
from app.core.services import open_services
from app.core.types import NO_NUL
from app.db import accounts as account_queries
from app.db import pageviews as pageview_queries
from app.db import sites as queries
from app.db.models import UserRole
from app.domains.pageviews.keys import SiteKeys
from app.domains.pageviews.rows import Row
from app.domains.pageviews.schemas import MAX_BATCH, SITE_KEY, PageView, PageViewBatch
from app.domains.pageviews.services import PageViewService
from app.domains.pageviews.writers import Writer
from app.domains.sites.services import SiteService
from app.main import create_app
from app.modules import MODULES
from tests.factories import create_user, make_site, with_test_peer
from tests.fakes.clock import FakeClock

FAKE_HASH = "$argon2id$v=19$m=65536,t=3,p=4$bm90LWEtcmVhbC1zYWx0$bm90LWEtcmVhbC1oYXNoLW5vdC1hLXJlYWwtaGFzaA"
SINGLE = "/api/page-views"
BATCH = "/api/page-views/batch"
LIMIT_PER_MINUTE = 5
_peers = (f"198.51.100.{i % 250}" if i < 250 else f"2001:db8::{i:x}" for i in itertools.count(1))


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    """The app with its lifespan entered in this event loop, and an HTTP client for it."""
    app = create_app(settings)
    app.asgi_handler = with_test_peer(app.asgi_handler)
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:  # entered and left in one task (anyio's cancel scopes insist)
        async with app.lifespan():
            started.set()
            await stop.wait()

    running = asyncio.create_task(lifespan())
    await asyncio.wait_for(started.wait(), 30)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


@pytest.fixture(scope="module")
async def ingest_app(settings: Settings) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    async with served(
        msgspec.structs.replace(settings, rate_limit_ingest_per_minute=1_000_000)
    ) as served_app:
        yield served_app


@pytest.fixture(scope="module")
async def limited_app(settings: Settings) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    async with served(
        msgspec.structs.replace(settings, rate_limit_ingest_per_minute=LIMIT_PER_MINUTE)
    ) as served_app:
        yield served_app


class Tracker(msgspec.Struct):
    """A tracked site and an HTTP client that speaks from its own address."""

    app: Litestar
    client: httpx.AsyncClient
    site_id: int
    key: str
    peer: str

    async def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.client.post(
            path,
            content=content,
            headers={"content-type": "application/json", "x-test-peer": self.peer, **headers},
        )

    def view(self, **fields: Any) -> dict[str, Any]:
        return {"site_key": self.key, "url": "https://shop.example.com/", **fields}


async def create_site(db: AsyncConnection[Any]) -> tuple[int, str]:
    user = await account_queries.create_user(
        db,
        email=f"owner-{uuid.uuid4().hex[:10]}@example.com",
        display_name="Owner",
        password_hash=FAKE_HASH,
        role=UserRole.MEMBER,
    )
    assert user is not None
    key = secrets.token_urlsafe(24)  # what the API issues
    site = await queries.create_site(
        db, owner_id=user.id, domain="shop.example.com", ingest_key=key, timezone="UTC"
    )
    assert site is not None
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    return site.id, key


async def tracker_for(served_app: tuple[Litestar, httpx.AsyncClient], db: AsyncConnection[Any]) -> Tracker:
    site_id, key = await create_site(db)
    app, client = served_app
    return Tracker(app=app, client=client, site_id=site_id, key=key, peer=next(_peers))


@pytest.fixture
async def tracker(
    ingest_app: tuple[Litestar, httpx.AsyncClient], db: AsyncConnection[Any], valkey: Valkey
) -> Tracker:
    return await tracker_for(ingest_app, db)


async def stored(db: AsyncConnection[Any]) -> list[dict[str, Any]]:
    cursor = await db.execute(
        "select site_id, path, title, referrer_host, referrer_source, utm_source, utm_medium, utm_campaign,"
        " screen_width, device, browser, os, is_bot, event_id, ts, received_at from page_views order by path"
    )
    names = [column.name for column in cursor.description or ()]
    return [dict(zip(names, values, strict=True)) for values in await cursor.fetchall()]


def problem_fields(response: httpx.Response, status: int = 400) -> set[str]:
    """The fields a problem+json answer names; asserts the status and the problem's shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status and problem["type"].startswith("/problems/")
    return {error["field"] for error in problem.get("errors") or []}


# --- accepted --------------------------------------------------------------------------------------

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"


async def test_a_view_is_stored_with_what_the_server_derives(
    tracker: Tracker, db: AsyncConnection[Any]
) -> None:
    event = uuid.uuid4()
    response = await tracker.post(
        SINGLE,
        tracker.view(
            url="https://Shop.Example.com/sale?utm_source=news&utm_medium=email&utm_campaign=bf",
            referrer="https://www.google.com/search?q=x",
            title="Sale",
            screen_width=390,
            ts="2020-01-01T00:00:00+02:00",  # older than a day: clamped
            event_id=str(event),
        ),
        **{"user-agent": FIREFOX},
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1}
    (row,) = await stored(db)
    assert row["site_id"] == tracker.site_id and row["event_id"] == event
    assert (row["path"], row["title"], row["referrer_host"], row["referrer_source"]) == (
        "/sale",
        "",  # accepted, never stored: no report reads it, and a title often names a person
        "www.google.com",
        "Google",
    )
    assert (row["utm_source"], row["utm_medium"], row["utm_campaign"]) == ("news", "email", "bf")
    assert (row["screen_width"], row["device"], row["browser"], row["os"], row["is_bot"]) == (
        390,
        "mobile",
        "Firefox",
        "Linux",
        False,
    )
    assert row["received_at"] - row["ts"] <= timedelta(hours=24)


async def test_the_agent_is_the_requests_own_and_none_is_a_bot(
    tracker: Tracker, db: AsyncConnection[Any]
) -> None:
    """The handlers read the agent from the raw headers (``_client``): a batch's agent is the
    sender's, and a request without one is a bot's."""
    assert (
        await tracker.post(BATCH, {"views": [tracker.view()]}, **{"user-agent": FIREFOX})
    ).status_code == 202
    request = tracker.client.build_request(
        "POST",
        SINGLE,
        content=json.dumps(tracker.view()).encode(),
        headers={"content-type": "application/json", "x-test-peer": tracker.peer},
    )
    del request.headers["user-agent"]
    assert (await tracker.client.send(request)).status_code == 202
    rows = await stored(db)
    assert sorted((row["browser"], row["is_bot"]) for row in rows) == [("Firefox", False), ("Other", True)]


async def test_a_retried_event_is_stored_once(tracker: Tracker, db: AsyncConnection[Any]) -> None:
    view = tracker.view(event_id=str(uuid.uuid4()))
    for _ in range(3):
        assert (await tracker.post(SINGLE, view)).status_code == 202
    assert len(await stored(db)) == 1


async def test_a_whole_number_written_as_a_float_is_an_integer(
    tracker: Tracker, db: AsyncConnection[Any]
) -> None:
    """JSON Schema (so the published contract) counts 1440.0 as an integer; 1440.5 is not one."""
    assert (await tracker.post(SINGLE, tracker.view(screen_width=1440.0))).status_code == 202
    batch = {"views": [tracker.view(screen_width=1e3), tracker.view(screen_width=390)]}
    assert (await tracker.post(BATCH, batch)).status_code == 202
    assert sorted(row["screen_width"] for row in await stored(db)) == [390, 1000, 1440]
    assert problem_fields(await tracker.post(SINGLE, tracker.view(screen_width=1440.5))) == {"screen_width"}


async def test_a_batch_is_stored(tracker: Tracker, db: AsyncConnection[Any]) -> None:
    views = [tracker.view(url=f"https://shop.example.com/{i}", title=f"Page {i}") for i in range(5)]
    response = await tracker.post(BATCH, {"views": views})
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 5}
    assert [row["path"] for row in await stored(db)] == [f"/{i}" for i in range(5)]


FAR_OFFSETS = [timedelta(hours=h, minutes=m) for h, m in ((20, 0), (-20, 0), (23, 59), (-16, 0))]
"""UTC offsets the body accepts (up to ±23:59) that PostgreSQL's timestamptz input refuses (above
15:59, SQLSTATE 22009)."""


async def test_a_ts_with_any_accepted_offset_is_stored_at_its_instant(
    tracker: Tracker, db: AsyncConnection[Any]
) -> None:
    """A single view and a small batch (both written by the one-statement JSON path) whose ``ts``
    carries an offset PostgreSQL refuses as text: stored, at the instant the client meant. They were
    refused 422 ``page-view-refused``, each splitting the whole shared write in halves to isolate it,
    while a batch of 256 views or more (the binary COPY) stored them."""
    base = datetime.now(UTC).replace(microsecond=123456) - timedelta(hours=2)
    instants: dict[str, datetime] = {}

    def view_at(path: str, minutes_ago: int, offset: timedelta) -> dict[str, Any]:
        instants[path] = base - timedelta(minutes=minutes_ago)
        local = instants[path].astimezone(timezone(offset))
        return tracker.view(url=f"https://shop.example.com{path}", ts=local.isoformat())

    for i, offset in enumerate(FAR_OFFSETS):
        response = await tracker.post(SINGLE, view_at(f"/single/{i}", i, offset))
        assert response.status_code == 202, response.text
    batch = [view_at(f"/batch/{i}", 10 + i, offset) for i, offset in enumerate(FAR_OFFSETS)]
    response = await tracker.post(BATCH, {"views": batch})
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": len(FAR_OFFSETS)}
    cursor = await db.execute("select path, ts at time zone 'UTC' from page_views")
    assert dict(await cursor.fetchall()) == {
        path: instant.replace(tzinfo=None) for path, instant in instants.items()
    }, "stored at another instant than the client's (UTC wall times compared)"


async def test_a_decoded_nul_in_a_utm_value_is_replaced_not_stored(
    tracker: Tracker, db: AsyncConnection[Any]
) -> None:
    """``%00`` is valid in a URL; the decoded NUL (which PostgreSQL refuses) becomes U+FFFD, as
    bytes that are not UTF-8 already do."""
    response = await tracker.post(SINGLE, tracker.view(url="https://shop.example.com/?utm_source=a%00b%FF"))
    assert response.status_code == 202, response.text
    (row,) = await stored(db)
    assert row["utm_source"] == "a\ufffdb\ufffd"


# --- refused: 400 naming the field ------------------------------------------------------------------


BAD_VIEWS: list[tuple[str, Callable[[Tracker], bytes], set[str]]] = [
    ("empty body", lambda t: b"", {"body"}),
    ("malformed JSON", lambda t: b'{"site_key": ', {"body"}),
    ("not UTF-8", lambda t: b'{"site_key": "\xff\xfe", "url": "https://a/"}', {"body"}),
    ("not an object", lambda t: b"[]", {"body"}),
    ("unknown field", lambda t: json.dumps({**t.view(), "color": "red"}).encode(), {"color"}),
    ("missing url", lambda t: json.dumps({"site_key": t.key}).encode(), {"url"}),
    ("missing site key", lambda t: json.dumps({"url": "https://a/"}).encode(), {"site_key"}),
    ("naive ts", lambda t: json.dumps(t.view(ts="2026-11-30T10:00:00")).encode(), {"ts"}),
    ("ts not a time", lambda t: json.dumps(t.view(ts="yesterday")).encode(), {"ts"}),
    ("unclosed IPv6 host", lambda t: json.dumps(t.view(url="http://[::1/x")).encode(), {"url"}),
    ("NFKC-invalid host", lambda t: json.dumps(t.view(url="http://a\uff03b/")).encode(), {"url"}),
    ("bad referrer", lambda t: json.dumps(t.view(referrer="http://a]b/")).encode(), {"referrer"}),
    ("NUL in url", lambda t: json.dumps(t.view(url="https://a/\u0000")).encode(), {"url"}),
    ("NUL in title", lambda t: json.dumps(t.view(title="a\u0000b")).encode(), {"title"}),
    ("NUL in referrer", lambda t: json.dumps(t.view(referrer="https://b/\u0000")).encode(), {"referrer"}),
    ("url over 2000 bytes", lambda t: json.dumps(t.view(url="https://a/" + "é" * 996)).encode(), {"url"}),
    ("url over 2000 chars", lambda t: json.dumps(t.view(url="https://a/" + "x" * 1991)).encode(), {"url"}),
    (
        "referrer over 2000 bytes",
        lambda t: json.dumps(t.view(referrer="https://b/" + "é" * 996)).encode(),
        {"referrer"},
    ),
    (
        "referrer host longer than DNS allows",
        lambda t: json.dumps(t.view(referrer="http://" + "中" * 254 + "/")).encode(),
        {"referrer"},
    ),
    (
        "url host longer than DNS allows",
        lambda t: json.dumps(t.view(url="https://" + "a" * 254)).encode(),
        {"url"},
    ),
    ("title too long", lambda t: json.dumps(t.view(title="x" * 501)).encode(), {"title"}),
    ("negative screen", lambda t: json.dumps(t.view(screen_width=-1)).encode(), {"screen_width"}),
    ("huge screen", lambda t: json.dumps(t.view(screen_width=2**63)).encode(), {"screen_width"}),
    ("screen not a number", lambda t: json.dumps(t.view(screen_width="wide")).encode(), {"screen_width"}),
    ("event id not a uuid", lambda t: json.dumps(t.view(event_id="nope")).encode(), {"event_id"}),
    (
        "malformed site key",
        lambda t: json.dumps(t.view(site_key="not a key, but long")).encode(),
        {"site_key"},
    ),
    ("short site key", lambda t: json.dumps(t.view(site_key="abc")).encode(), {"site_key"}),
    (
        "several at once",
        lambda t: json.dumps({**t.view(ts="2026-11-30T10:00:00", title="\u0000"), "x": 1}).encode(),
        {"ts", "title", "x"},
    ),
    (
        "url and referrer",
        lambda t: json.dumps(t.view(url="http://[x", referrer="http://]")).encode(),
        {"url", "referrer"},
    ),
]


@pytest.mark.parametrize(
    ("body", "fields"), [(b, f) for _, b, f in BAD_VIEWS], ids=[n for n, _, _ in BAD_VIEWS]
)
async def test_a_bad_view_is_a_400_naming_the_field(
    tracker: Tracker, db: AsyncConnection[Any], body: Callable[[Tracker], bytes], fields: set[str]
) -> None:
    response = await tracker.post(SINGLE, body(tracker))
    assert problem_fields(response) == fields
    assert response.json()["type"] == "/problems/validation"
    assert await stored(db) == []


@pytest.mark.parametrize(
    ("bad", "fields"),
    [
        ({"title": "a\u0000"}, {"views[3].title"}),
        ({"url": "https://a/\u0000"}, {"views[3].url"}),
        ({"referrer": "\u0000"}, {"views[3].referrer"}),
        ({"ts": "2026-11-30T10:00:00"}, {"views[3].ts"}),
        ({"url": "http://[::1/x"}, {"views[3].url"}),
        ({"referrer": "http://a]b/"}, {"views[3].referrer"}),
    ],
)
async def test_one_bad_view_refuses_the_whole_batch(
    tracker: Tracker, db: AsyncConnection[Any], bad: dict[str, Any], fields: set[str]
) -> None:
    views = [tracker.view(url=f"https://shop.example.com/{i}") for i in range(6)]
    views[3] = {**views[3], **bad}
    assert problem_fields(await tracker.post(BATCH, {"views": views})) == fields
    assert await stored(db) == [], "a batch is all or nothing"


@pytest.mark.parametrize("url", ["/relative/path", "mailto:a@example.com", "http:///no-host", "file:///etc"])
async def test_a_page_url_without_a_host_is_a_422_naming_it(
    tracker: Tracker, db: AsyncConnection[Any], url: str
) -> None:
    """Analytics review: a relative URL was stored with no host, so the page's own referrers counted
    as another site's traffic. Not the validation 400: the contract admits any text there."""
    single = await tracker.post(SINGLE, tracker.view(url=url))
    assert single.status_code == 422, single.text
    assert single.json()["type"] == "/problems/page-url-without-host"
    assert problem_fields(single, 422) == {"url"}
    views = [tracker.view(url=f"https://shop.example.com/{i}") for i in range(4)]
    views[2] = tracker.view(url=url)
    batch = await tracker.post(BATCH, {"views": views})
    assert problem_fields(batch, 422) == {"views[2].url"}, batch.text
    assert await stored(db) == [], "a batch is all or nothing"


async def test_every_unparsable_url_of_a_batch_is_named(tracker: Tracker, db: AsyncConnection[Any]) -> None:
    views = [tracker.view() for _ in range(5)]
    views[1] = tracker.view(url="http://[::1/x")
    views[4] = tracker.view(referrer="http://a]b/")
    assert problem_fields(await tracker.post(BATCH, {"views": views})) == {
        "views[1].url",
        "views[4].referrer",
    }
    assert await stored(db) == []


@pytest.mark.parametrize(
    ("body", "fields"),
    [({"views": []}, {"views"}), ({}, {"views"}), ({"views": [{}]}, {"views[0].site_key", "views[0].url"})],
)
async def test_a_batch_needs_views(tracker: Tracker, body: dict[str, Any], fields: set[str]) -> None:
    assert problem_fields(await tracker.post(BATCH, body)) == fields


async def test_every_bad_view_of_a_batch_is_named(tracker: Tracker, db: AsyncConnection[Any]) -> None:
    views = [{}, 1, tracker.view(), tracker.view(title="\u0000", ts="2026-11-30T10:00:00", x=1)]
    assert problem_fields(await tracker.post(BATCH, {"views": views})) == {
        "views[0].site_key",
        "views[0].url",
        "views[1]",
        "views[3].title",
        "views[3].ts",
        "views[3].x",
    }
    assert await stored(db) == []


async def test_a_batch_over_the_limit_is_refused(tracker: Tracker, db: AsyncConnection[Any]) -> None:
    views = [tracker.view()] * (MAX_BATCH + 1)
    assert problem_fields(await tracker.post(BATCH, {"views": views})) == {"views"}
    assert await stored(db) == []


# --- 413, 422 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "size"), [(SINGLE, 1_048_576 + 1), (BATCH, 4 * 1_048_576 + 1)])
async def test_an_oversized_body_is_a_413(tracker: Tracker, path: str, size: int) -> None:
    body = json.dumps(tracker.view(title="x" * size)).encode()
    problem_fields(await tracker.post(path, body), status=413)


async def test_the_batch_body_limit_is_documented_and_is_the_one_enforced(
    tracker: Tracker, db: AsyncConnection[Any]
) -> None:
    """A batch valid under the schema can exceed the body limit (1000 views near their longest
    fields): the OpenAPI document says how many bytes fit, and that number is the limit enforced."""
    operation = (await tracker.client.get("/schema/openapi.json")).json()["paths"][BATCH]["post"]
    too_large = operation["responses"]["413"]["description"]
    documented = re.search(r"at most ([\d,]+) bytes", too_large)
    assert documented is not None, too_large
    assert documented.group(0) in operation["description"]
    limit = int(documented.group(1).replace(",", ""))
    body = json.dumps({"views": [tracker.view()]}).encode()
    fits = body[:-1] + b" " * (limit - len(body)) + b"}"
    assert len(fits) == limit
    assert (await tracker.post(BATCH, fits)).status_code == 202
    problem_fields(await tracker.post(BATCH, fits[:-1] + b" }"), status=413)
    assert len(await stored(db)) == 1


async def test_an_unknown_site_key_is_a_422(tracker: Tracker, db: AsyncConnection[Any]) -> None:
    unknown = tracker.view(site_key=secrets.token_urlsafe(24))
    problem_fields(await tracker.post(SINGLE, unknown), status=422)
    batch = [tracker.view(), unknown, tracker.view()]
    problem_fields(await tracker.post(BATCH, {"views": batch}), status=422)
    assert await stored(db) == []


async def test_a_deleted_sites_key_is_a_422(tracker: Tracker, db: AsyncConnection[Any]) -> None:
    await queries.delete_site(db, id=tracker.site_id)
    problem_fields(await tracker.post(SINGLE, tracker.view()), status=422)
    assert await stored(db) == []


async def test_a_cached_key_is_checked_again_once_its_entry_expires(
    tracker: Tracker, db: AsyncConnection[Any]
) -> None:
    """A known key is answered from the cache (no query per view) until its entry expires; then it
    is looked up again. (Deletions do not wait for the expiry: see test_pageviews_abuse.py.)"""
    now = [time.monotonic()]
    keys = SiteKeys(tracker.app.state.services[SiteService], known_ttl_s=60.0, clock=lambda: now[0])
    assert await keys.site_id(tracker.key) == tracker.site_id
    assert keys.lookups == 1
    assert await keys.site_id(tracker.key) == tracker.site_id
    assert keys.lookups == 1, "a cached key costs no query"
    now[0] += 61.0
    assert await keys.site_id(tracker.key) == tracker.site_id
    assert keys.lookups == 2, "an expired entry is looked up again"


# --- 429 --------------------------------------------------------------------------------------------


@pytest.fixture
async def limited(
    limited_app: tuple[Litestar, httpx.AsyncClient], db: AsyncConnection[Any], valkey: Valkey
) -> Tracker:
    return await tracker_for(limited_app, db)


def retry_after(response: httpx.Response) -> int:
    problem_fields(response, status=429)
    seconds = int(response.headers["retry-after"])
    assert seconds >= 1
    return seconds


async def test_the_token_bucket_answers_429_with_retry_after(
    limited: Tracker, db: AsyncConnection[Any]
) -> None:
    for _ in range(LIMIT_PER_MINUTE):
        assert (await limited.post(SINGLE, limited.view())).status_code == 202
    assert retry_after(await limited.post(SINGLE, limited.view())) <= 60 / LIMIT_PER_MINUTE + 1
    assert len(await stored(db)) == LIMIT_PER_MINUTE
    other = msgspec.structs.replace(limited, peer=next(_peers))
    assert (await other.post(SINGLE, other.view())).status_code == 202, "the bucket is per address"


async def test_a_batch_takes_one_token_per_view(limited: Tracker, db: AsyncConnection[Any]) -> None:
    views = [limited.view(url=f"https://shop.example.com/{i}") for i in range(LIMIT_PER_MINUTE - 1)]
    assert (await limited.post(BATCH, {"views": views})).status_code == 202
    two = [limited.view(), limited.view()]
    # One token left, two needed: refused, and the body it made the server read takes the last token
    # (a body refused with 429 is charged like one refused with 400: per 4 KiB begun).
    assert retry_after(await limited.post(BATCH, {"views": two})) >= 1
    assert retry_after(await limited.post(SINGLE, limited.view())) >= 1
    assert len(await stored(db)) == LIMIT_PER_MINUTE - 1


# --- one client's bad view never fails another's ----------------------------------------------------


class GatedWriter:
    """Wraps the app's real sink writer: its first write waits for ``release``, so that every view
    posted meanwhile is queued and written in the next batch. Records the size of every write."""

    def __init__(self, inner: Writer) -> None:
        self.inner = inner
        self.name = inner.name
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.sizes: list[int] = []

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, rows: Sequence[Row]) -> int:
        if not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        self.sizes.append(len(rows))
        return await self.inner.write(rows)


async def until(condition: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    while not condition():
        assert loop.time() < give_up, f"timed out waiting until {what}"
        await asyncio.sleep(0.005)


POISONS: list[tuple[dict[str, Any], str]] = [
    ({"title": "bad\u0000title"}, "title"),
    ({"url": "https://shop.example.com/\u0000"}, "url"),
    ({"referrer": "https://evil.example/\u0000"}, "referrer"),
    ({"ts": "2026-11-30T10:00:00"}, "ts"),
    ({"url": "http://[::1/x"}, "url"),
    ({"referrer": "http://a]b/"}, "referrer"),
]


async def test_poisoned_views_fail_alone_in_a_shared_batch(
    tracker: Tracker, db: AsyncConnection[Any]
) -> None:
    """Clean and poisoned views from many clients at once, while the sink holds one batch open: every
    clean view is stored in ONE batch and acknowledged, every poisoned one is refused (400, naming
    its field) before it reaches the sink."""
    clean_count, poisoned_count = 1800, 200  # the mix of the issue: 2,000 views, 10 % poisoned
    sink = tracker.app.state.services[PageViewService].sink
    gated = GatedWriter(sink.writer)
    sink.writer = gated
    try:
        blocker = asyncio.create_task(
            tracker.post(SINGLE, tracker.view(url="https://shop.example.com/blocker"))
        )
        await until(gated.entered.is_set, "the blocker's write has started")
        views: list[tuple[dict[str, Any], str | None]] = [
            (tracker.view(url=f"https://shop.example.com/clean/{i}", event_id=str(uuid.uuid4())), None)
            for i in range(clean_count)
        ]
        for i in range(poisoned_count):
            poison, named = POISONS[i % len(POISONS)]
            views.insert(i * 10 + 5, (tracker.view(**poison), named))
        posts = [asyncio.create_task(tracker.post(SINGLE, view)) for view, _ in views]
        poisoned_posts = [post for post, (_, field) in zip(posts, views, strict=True) if field]
        await until(lambda: all(post.done() for post in poisoned_posts), "every poisoned view is answered")
        await until(lambda: sink.pending_rows == 1 + clean_count, "every clean view is queued")
        gated.release.set()
        assert (await blocker).status_code == 202
        responses = await asyncio.gather(*posts)
    finally:
        gated.release.set()
        sink.writer = gated.inner
    assert gated.sizes[:2] == [1, clean_count], f"the clean views did not share one batch: {gated.sizes}"
    for response, (_, field) in zip(responses, views, strict=True):
        if field is None:
            assert response.status_code == 202, response.text
        else:
            assert problem_fields(response) == {field}
    paths = [row["path"] for row in await stored(db)]
    assert sorted(paths) == sorted(["/blocker", *(f"/clean/{i}" for i in range(clean_count))])


# --- the contract ------------------------------------------------------------------------------------


async def test_both_bodies_are_documented_as_required(tracker: Tracker) -> None:
    """The handlers decode the body themselves; the schema still declares it, so that a client (or
    a fuzzer) knows an empty POST is not valid."""
    schema = (await tracker.client.get("/schema/openapi.json")).json()
    single = schema["paths"][SINGLE]["post"]["requestBody"]
    batch = schema["paths"][BATCH]["post"]["requestBody"]
    assert single["required"] is True and batch["required"] is True
    view = single["content"]["application/json"]["schema"]
    assert set(view["required"]) == {"site_key", "url"} and view["additionalProperties"] is False
    assert view["properties"]["title"]["pattern"] == NO_NUL
    assert view["properties"]["site_key"]["pattern"] == SITE_KEY
    items = batch["content"]["application/json"]["schema"]["properties"]["views"]
    assert items["maxItems"] == MAX_BATCH and items["items"] == view


# --- never a 5xx ----------------------------------------------------------------------------------------

_specials = st.sampled_from(
    [
        "",
        "\u0000",
        "[",
        "]",
        "[::1",
        "a]b",
        "[::1]",
        "\uff03",
        "\u2100",
        "%00",
        "%ff",
        "?",
        "#",
        "@",
        ":",
        "é",
    ]
)
_text = st.lists(st.text(max_size=6) | _specials, max_size=5).map("".join)
_urls = st.tuples(
    st.sampled_from(["https://", "http://", "//", "", "a:", "mailto:"]),
    _text,
    st.sampled_from(["", "/", "/p?"]),
    _text,
).map("".join)
_offsets = (
    st.none()
    | st.just(UTC)
    | st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23)).map(timezone)
)
_times = st.datetimes(timezones=_offsets).map(datetime.isoformat) | st.sampled_from(
    ["yesterday", "2026-13-01T00:00:00Z"]
)
_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | _text
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "site_key": _text,
    "url": _urls,
    "referrer": _urls,
    "title": _text,
    "screen_width": st.integers(min_value=-10, max_value=200_000)
    | st.integers(min_value=-(2**65), max_value=2**65),
    "ts": _times,
    "event_id": st.uuids().map(str) | _text,
}


@st.composite
def fuzzed_view(draw: st.DrawFn, key: str) -> Any:
    """Mostly a valid view with some fields replaced by hostile values of the field's kind or of any
    JSON type, some fields dropped, an unknown one added; sometimes not an object at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(_json)
    view: dict[str, Any] = {"site_key": key, "url": "https://shop.example.com/"}
    for field, hostile in FIELDS.items():
        change = draw(st.sampled_from(["keep", "keep", "keep", "hostile", "hostile", "any JSON", "drop"]))
        if change == "drop":
            view.pop(field, None)
        elif change == "any JSON":
            view[field] = draw(_json)
        elif change == "hostile":
            view[field] = draw(hostile)
    if draw(st.integers(0, 9)) == 0:
        view[draw(st.text(max_size=8))] = draw(_json)
    return view


@hypothesis_settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_no_ingest_body_is_answered_with_a_5xx(tracker: Tracker, data: st.DataObject) -> None:
    batched = data.draw(st.booleans(), label="batched")
    if batched:
        body: Any = {"views": data.draw(st.lists(fuzzed_view(tracker.key), max_size=4), label="views")}
    else:
        body = data.draw(fuzzed_view(tracker.key), label="view")
    raw = json.dumps(body).encode()
    if data.draw(st.integers(0, 9), label="mangle") == 0:
        cut = data.draw(st.integers(0, len(raw)), label="cut")
        raw = raw[:cut] + data.draw(st.binary(max_size=4), label="junk")
    response = await tracker.post(BATCH if batched else SINGLE, raw)
    assert response.status_code < 500, response.text
    if response.status_code == 400:
        assert problem_fields(response), "a 400 names at least one field"
    else:
        assert response.status_code in (202, 422), response.text


# --- visitors by the UTC day of the view ------------------------------------------------------------


async def test_a_late_view_is_hashed_with_the_salt_of_its_own_utc_day(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """Visitors are counted per UTC day of the view's (clamped) ``ts``, not of its arrival: a view
    held since 23:55 and sent at 00:05 is the same visitor as the one seen at 23:50, and a batch that
    spans midnight gets each day's visitor."""
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    midnight = datetime.combine(today, datetime.min.time(), UTC)
    await pageview_queries.ensure_partitions(db, from_day=yesterday, days=2)
    clock = FakeClock(midnight - timedelta(minutes=10))
    clocked = Module(
        name="pageviews",
        service=lambda s: PageViewService(s.db, s.settings, s[SiteService], s.valkey, clock=clock),
    )
    modules = [clocked if module.name == "pageviews" else module for module in MODULES]
    site = await make_site(db, await create_user(db))

    def view(path: str, ts: datetime | None = None) -> PageView:
        return PageView(site_key=site.ingest_key, url=f"https://example.com/{path}", ts=ts)

    async with open_services(settings, modules) as services:
        pageviews = services[PageViewService]
        await pageviews.record(PageViewBatch(views=[view("a")]), "203.0.113.9", FIREFOX)  # 23:50, live
        clock.now = midnight + timedelta(minutes=5)
        late = view("b", ts=(midnight - timedelta(minutes=5)).astimezone(timezone(timedelta(hours=2))))
        await pageviews.record(PageViewBatch(views=[late, view("c")]), "203.0.113.9", FIREFOX)
        await pageviews.record_one(view("d", ts=midnight - timedelta(minutes=1)), "203.0.113.9", FIREFOX)
        await pageviews.record_one(view("e"), "203.0.113.9", FIREFOX)

    cursor = await db.execute(
        "select path, (ts at time zone 'UTC')::date = %s, visitor_id from page_views"
        " where site_id = %s order by path",
        (yesterday, site.id),
    )
    (a, b, c, d, e) = await cursor.fetchall()
    assert [row[1] for row in (a, b, c, d, e)] == [True, True, False, True, False]
    assert a[2] == b[2] == d[2], "one visitor on the UTC day of the views' ts"
    assert c[2] == e[2] != a[2], "a new day, a new salt: ids are not linkable across days"
