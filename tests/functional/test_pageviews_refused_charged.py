"""What an ingest body the server read and then refused costs its address (review 4, D2), what a
request's failure gives back of its site's quota (M1), and what a long agent leaves in the agent
cache (M2).

D2: an address holding fewer tokens than a batch's views had every batch received and decoded, then
answered 429 without a token taken, and a chunked body cut at the route's limit (413) was received to
4 MiB, uncharged: one address could make the server read and decode without end. Such a body is now
charged as a body refused with a 400 is. The work is counted (the bodies handed to ``decode_batch``,
the statuses), never timed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import httpx
import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.errors import AppError, ServiceUnavailableError
from app.domains.pageviews import derive
from app.domains.pageviews import services as pageview_services
from app.domains.pageviews.decoding import decode_batch
from app.domains.pageviews.derive import MAX_AGENT_CHARS, Agent, classify_agent
from app.domains.pageviews.rows import Row
from app.domains.pageviews.schemas import PageView, PageViewBatch
from app.domains.pageviews.services import BODY_BYTES_PER_TOKEN, PageViewService, body_tokens
from app.domains.pageviews.sink import SinkFullError
from app.domains.pageviews.writers import SitesGoneError, WriteTimeoutError
from tests.factories import assert_problem, create_user, make_site, serve_in_loop, wait_until

BATCH = "/api/page-views/batch"
SINGLE = "/api/page-views"
JSON = {"content-type": "application/json"}
LIMIT = 5
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


def from_address(app: Litestar, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=cast("Any", app), client=(address, 40000)),
        base_url="http://testserver",
    )


async def new_site_key(db: AsyncConnection[Any]) -> str:
    site = await make_site(db, await create_user(db))
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    return site.ingest_key


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[Litestar]:
    """The app, each address allowed ``LIMIT`` views a minute (and an hour)."""
    limits = {"rate_limit_ingest_per_minute": LIMIT, "rate_limit_ingest_per_hour": LIMIT}
    async with serve_in_loop(settings, **limits) as served:
        yield served.app


def view(key: str, path: str = "/") -> dict[str, Any]:
    return {"site_key": key, "url": "https://example.com" + path}


async def singles(sender: httpx.AsyncClient, key: str, count: int = LIMIT) -> list[int]:
    return [(await sender.post(SINGLE, json=view(key))).status_code for _ in range(count)]


# -- D2: bodies read, then refused ------------------------------------------------------------------


async def test_a_batch_refused_after_decoding_takes_the_address_tokens(
    limited: Litestar, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An address with fewer tokens than a 2 MB batch's 1,000 views gets one such batch decoded and
    refused (413 ``batch-too-large`` here: its limit is below a full batch), charged for its size: the
    next ones are refused before being read (429), and so are its single views."""
    key = await new_site_key(db)
    decoded: list[int] = []
    real = decode_batch

    def counting(body: bytes) -> Any:
        decoded.append(len(body))
        return real(body)

    monkeypatch.setattr(pageview_services, "decode_batch", counting)
    body = msgspec.json.encode({"views": [view(key, "/" + "a" * 1900) for _ in range(1000)]})
    async with from_address(limited, "192.0.2.61") as sender:
        assert_problem(await sender.post(BATCH, content=body, headers=JSON), 413, "batch-too-large")
        for _ in range(9):
            assert_problem(await sender.post(BATCH, content=body, headers=JSON), 429, "rate-limited")
        assert len(decoded) == 1, f"{len(decoded)} refused batches decoded, not charged"
        assert await singles(sender, key) == [429] * LIMIT
    async with from_address(limited, "192.0.2.62") as neighbour:
        assert await singles(neighbour, key, 1) == [202]


async def test_a_small_batch_refused_429_takes_one_token(limited: Litestar, db: AsyncConnection[Any]) -> None:
    """A batch of one view more than the address's tokens left is refused and takes a token for its
    body (under 4 KiB): one single view fewer is accepted afterwards."""
    key = await new_site_key(db)
    async with from_address(limited, "192.0.2.63") as sender:
        assert await singles(sender, key, 2) == [202, 202]
        too_many = {"views": [view(key) for _ in range(LIMIT - 1)]}
        assert_problem(await sender.post(BATCH, json=too_many), 429, "rate-limited")
        assert await singles(sender, key, LIMIT - 2) == [202] * (LIMIT - 3) + [429]


@pytest.mark.parametrize("path", [BATCH, SINGLE], ids=["batch", "single"])
async def test_a_chunked_body_cut_at_the_route_limit_takes_the_address_tokens(
    limited: Litestar, db: AsyncConnection[Any], path: str
) -> None:
    """A body without Content-Length is received up to the route's limit, then answered 413: the
    address is charged for what was received, so the next such bodies are refused before any of them
    is read (429), and its single views too."""
    key = await new_site_key(db)
    received: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        yield b'{"views":['
        for _ in range(5):
            received.append(1)
            yield b" " * (1024 * 1024)

    async with from_address(limited, "192.0.2.64") as sender:
        statuses = [(await sender.post(path, content=body(), headers=JSON)).status_code for _ in range(10)]
        assert statuses[0] == 413, statuses
        assert statuses[1:] == [429] * 9, statuses
        assert await singles(sender, key) == [429] * LIMIT


async def test_accepted_batches_take_one_token_per_view_as_before(
    limited: Litestar, db: AsyncConnection[Any]
) -> None:
    key = await new_site_key(db)
    async with from_address(limited, "192.0.2.65") as sender:
        for count in (2, 2):
            answer = await sender.post(BATCH, json={"views": [view(key) for _ in range(count)]})
            assert answer.status_code == 202, answer.text
            assert answer.json() == {"accepted": count}
        assert await singles(sender, key, 2) == [202, 429]


def padded(body: dict[str, Any], size: int) -> bytes:
    """``body`` as JSON, padded with whitespace (still valid JSON, the same views) to ``size`` bytes."""
    encoded = msgspec.json.encode(body)
    assert len(encoded) < size
    return encoded[:-1] + b" " * (size - len(encoded)) + encoded[-1:]


@pytest.mark.parametrize("path", [BATCH, SINGLE], ids=["batch", "single"])
@pytest.mark.parametrize("blocks", [2, 3, LIMIT])
async def test_an_accepted_body_takes_a_token_per_4_kib_when_that_is_more_than_its_views(
    limited: Litestar, db: AsyncConnection[Any], path: str, blocks: int
) -> None:
    """A one-view body padded to ``blocks`` times 4 KiB is accepted and takes ``blocks`` tokens, as it
    would if refused. It took one: a client could have the server receive and parse a 4 MiB batch
    (1,024 times what a refused body may cost) per token."""
    key = await new_site_key(db)
    one = view(key, "/padded")
    body = padded({"views": [one]} if path == BATCH else one, blocks * BODY_BYTES_PER_TOKEN)
    async with from_address(limited, f"192.0.2.{80 + blocks}") as sender:
        answer = await sender.post(path, content=body, headers=JSON)
        assert answer.status_code == 202, answer.text
        assert await singles(sender, key, LIMIT - blocks + 1) == [202] * (LIMIT - blocks) + [429]


async def test_a_batch_of_long_views_still_takes_one_token_per_view(
    limited: Litestar, db: AsyncConnection[Any]
) -> None:
    """Four views of about 3 KB each: a body of three tokens' size takes the batch's four tokens."""
    key = await new_site_key(db)
    views = [
        {**view(key, f"/{i}/" + "a" * 1900), "referrer": "https://ref.example/" + "r" * 1000}
        for i in range(4)
    ]
    body = msgspec.json.encode({"views": views})
    assert body_tokens(len(body)) == 3
    async with from_address(limited, "192.0.2.89") as sender:
        answer = await sender.post(BATCH, content=body, headers=JSON)
        assert answer.status_code == 202, answer.text
        assert await singles(sender, key, 2) == [202, 429]


async def test_a_body_worth_more_tokens_than_the_bucket_holds_takes_the_whole_bucket(
    limited: Litestar, db: AsyncConnection[Any]
) -> None:
    """Where the limits are set below what the body limit can hold (here 5 tokens, 8 times 4 KiB), an
    accepted body takes at most a full bucket: a view that large is admitted (with a full bucket),
    never refused 429 for a wait that could not help."""
    key = await new_site_key(db)
    body = padded(view(key, "/large"), 8 * BODY_BYTES_PER_TOKEN)
    async with from_address(limited, "192.0.2.90") as sender:
        answer = await sender.post(SINGLE, content=body, headers=JSON)
        assert answer.status_code == 202, answer.text
        assert await singles(sender, key, 1) == [429]
        assert_problem(await sender.post(SINGLE, content=body, headers=JSON), 429, "rate-limited")


# -- M1: the quota is given back only for views certainly not stored --------------------------------


class Refunds:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []


@pytest.fixture
async def ingest(settings: Settings) -> AsyncIterator[PageViewService]:
    async with serve_in_loop(settings, rate_limit_ingest_per_minute=1_000_000) as served:
        yield served.app.state.services[PageViewService]


@pytest.fixture
def refunds(ingest: PageViewService, monkeypatch: pytest.MonkeyPatch) -> Refunds:
    seen = Refunds()
    real = ingest.quota.refund

    def refund(site_id: int, count: int, lease_number: int) -> None:
        seen.calls.append((site_id, count))
        real(site_id, count, lease_number)

    monkeypatch.setattr(ingest.quota, "refund", refund)
    return seen


async def stored_paths(db: AsyncConnection[Any], key: str) -> list[str]:
    cursor = await db.execute(
        "select path from page_views join sites on sites.id = site_id where ingest_key = %s order by path",
        (key,),
    )
    return [row[0] for row in await cursor.fetchall()]


def a_view(key: str) -> PageView:
    return PageView(site_key=key, url=f"https://example.com/{secrets.token_hex(4)}")


async def test_a_cancelled_request_whose_view_is_stored_keeps_its_quota_charge(
    ingest: PageViewService, refunds: Refunds, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink writes a cancelled request's rows with their batch (``PageViewSink.submit``): the
    views are stored and counted, so the site's quota is not given back."""
    key = await new_site_key(db)
    entered, release = asyncio.Event(), asyncio.Event()
    write: Callable[[Sequence[Row]], Any] = ingest.sink.writer.write

    async def held(rows: Sequence[Row]) -> int:
        entered.set()
        await release.wait()
        return cast("int", await write(rows))

    monkeypatch.setattr(ingest.sink.writer, "write", held)
    sent = a_view(key)
    request = asyncio.create_task(ingest.record_one(sent, "192.0.2.70", FIREFOX))
    await asyncio.wait_for(entered.wait(), 30)
    request.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await request

    async def written() -> bool:
        return ingest.sink.pending_rows == 0

    await wait_until(written, 30, "the cancelled request's row is written")
    assert len(await stored_paths(db, key)) == 1
    assert refunds.calls == [], "a stored view's quota was given back"


@pytest.mark.parametrize(
    ("failure", "status", "given_back"),
    [
        (lambda site_id: WriteTimeoutError.after(1), 503, False),
        (lambda site_id: ConnectionResetError("lost"), 503, False),
        (lambda site_id: SitesGoneError([site_id]), 422, True),
        (lambda site_id: UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate"), 422, True),
    ],
    ids=["timed out", "connection lost", "site deleted", "data refused"],
)
async def test_a_failed_write_gives_the_quota_back_only_when_it_stored_nothing(
    ingest: PageViewService,
    refunds: Refunds,
    db: AsyncConnection[Any],
    monkeypatch: pytest.MonkeyPatch,
    failure: Callable[[int], Exception],
    status: int,
    given_back: bool,
) -> None:
    """A write that timed out or lost its connection may have committed (``writers.py``): answered
    503, its views stay counted. One refused for a deleted site or its data stored nothing (422)."""
    key = await new_site_key(db)
    site_id = await ingest.keys.site_id(key)

    async def failing(rows: Sequence[Row]) -> int:
        if not rows:  # what the sink writes once a deleted site's rows are dropped
            return 0
        raise failure(site_id)

    monkeypatch.setattr(ingest.sink.writer, "write", failing)
    for record in (
        ingest.record_one(a_view(key), "192.0.2.71", FIREFOX),
        ingest.record(PageViewBatch(views=[a_view(key), a_view(key)]), "192.0.2.71", FIREFOX),
    ):
        with pytest.raises(AppError) as failed:
            await record
        assert failed.value.status == status, failed.value
    assert refunds.calls == ([(site_id, 1), (site_id, 2)] if given_back else [])


async def test_views_the_sink_refuses_give_their_quota_back(
    ingest: PageViewService, refunds: Refunds, db: AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full, or shutting down: refused before the sink takes them, the quota is given back."""
    key = await new_site_key(db)
    batch = PageViewBatch(views=[a_view(key), a_view(key)])
    monkeypatch.setattr(ingest.sink, "max_pending", 0)
    with pytest.raises(SinkFullError):
        await ingest.record_one(a_view(key), "192.0.2.72", FIREFOX)
    with pytest.raises(SinkFullError):
        await ingest.record(batch, "192.0.2.72", FIREFOX)
    monkeypatch.setattr(ingest.sink, "max_pending", 1_000_000)
    monkeypatch.setattr(ingest.sink, "_closed", True)
    with pytest.raises(ServiceUnavailableError):
        await ingest.record(batch, "192.0.2.72", FIREFOX)
    assert [count for _, count in refunds.calls] == [1, 2, 2]


# -- M2: a long agent never enters the agent cache --------------------------------------------------


def _cache_sizes() -> list[int]:
    return [value.cache_info().currsize for value in vars(derive).values() if hasattr(value, "cache_info")]


def test_a_long_agent_is_a_bot_classified_without_the_cache_or_the_patterns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each distinct long agent used to stay in the 4,096-entry cache (400 KB agents: 1.6 GB) after
    the browser and system patterns ran over all of it."""
    searched: list[int] = []

    class Spy:
        def search(self, text: str) -> None:
            searched.append(len(text))

    spies = tuple((name, Spy()) for name in ("Firefox", "Linux"))
    monkeypatch.setattr(derive, "_BROWSERS", spies)
    monkeypatch.setattr(derive, "_SYSTEMS", spies)
    before = _cache_sizes()
    for length in (MAX_AGENT_CHARS + 1, 400_000):
        agent = "Mozilla/5.0 (iPad; Linux; Android) Chrome/1 Mobile " + secrets.token_hex(length)
        assert classify_agent(agent[:length]) == Agent(
            browser="Other", os="Other", device="desktop", is_bot=True
        )
    assert _cache_sizes() == before
    assert searched == []
