"""What a refused ingest body may cost (ingest review: anonymous bodies of the wrong shape held the
event loop for seconds to a minute, and cost the sender nothing).

The work is shown by counting, never timed: the bytes our code hands to msgspec's ``json.decode``
(the one function that turns JSON into Python objects for the naming of bad fields) and its
``convert`` calls, through wrappers of msgspec's own functions. Before the fix a refused body was
decoded whole a second time (and walked in Python) however many of its items the answer could name;
a 300 KB batch of ``{}`` took a minute. And the address's ingest limit was only charged after a body
was decoded, so a client sending bad bodies never met a 429.
"""

from __future__ import annotations

import contextlib
import itertools
import string
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httpx
import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.errors import InvalidFieldsError
from app.core.validation import MAX_REPORTED_ERRORS
from app.domains.pageviews.decoding import decode_batch, decode_view
from app.domains.pageviews.schemas import MAX_BATCH
from tests.factories import Client, assert_problem, create_user, make_site, serve_in_loop

BATCH = "/api/page-views/batch"
SINGLE = "/api/page-views"
JSON = {"content-type": "application/json"}


class Decoded:
    """What our code asked msgspec to decode into Python objects, and to convert."""

    def __init__(self) -> None:
        self.bytes = 0
        self.converts = 0


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> Decoded:
    seen = Decoded()
    decode: Callable[..., Any] = msgspec.json.decode
    convert: Callable[..., Any] = msgspec.convert

    def counting_decode(buffer: Any, *args: Any, **kwargs: Any) -> Any:
        seen.bytes += len(memoryview(buffer))
        return decode(buffer, *args, **kwargs)

    def counting_convert(*args: Any, **kwargs: Any) -> Any:
        seen.converts += 1
        return convert(*args, **kwargs)

    monkeypatch.setattr(msgspec.json, "decode", counting_decode)
    monkeypatch.setattr(msgspec, "convert", counting_convert)
    return seen


def batch_of(item: bytes, count: int) -> bytes:
    return b'{"views":[' + b",".join([item] * count) + b"]}"


BAD_VIEW = b'{"url":0,"site_key":0}'  # two errors per view


@pytest.mark.parametrize(
    ("item", "first_fields"),
    [
        (b"{}", ["views[0].site_key", "views[0].url", "views[1].site_key"]),
        (b"[]", ["views[0]", "views[1]", "views[2]"]),
        (b"1", ["views[0]", "views[1]", "views[2]"]),
        (BAD_VIEW, ["views[0].site_key", "views[0].url", "views[1].site_key"]),
    ],
    ids=["empty objects", "empty arrays", "numbers", "bad views"],
)
async def test_a_refused_batch_is_not_decoded_whole_again(
    client: Client, db: AsyncConnection[Any], decoded: Decoded, item: bytes, first_fields: list[str]
) -> None:
    """The first views are named, and no more of the body is decoded than those views hold."""
    body = batch_of(item, MAX_BATCH)
    response = await client.post(BATCH, content=body, headers=JSON)
    problem = assert_problem(response, 400, "validation")
    assert [error["field"] for error in problem["errors"]][:3] == first_fields
    assert len(problem["errors"]) == MAX_REPORTED_ERRORS
    assert "more errors" in problem["detail"]
    assert decoded.bytes <= (MAX_REPORTED_ERRORS + 1) * len(item), (decoded.bytes, len(body))


async def test_the_views_past_the_reported_errors_are_never_looked_at(
    client: Client, db: AsyncConnection[Any], decoded: Decoded
) -> None:
    """A batch of 30 bad views and one of 1,000 cost the same: the work stops one error past the
    listed ones, whatever follows."""
    work: list[tuple[int, int]] = []
    for count in (30, MAX_BATCH):
        decoded.bytes = decoded.converts = 0
        response = await client.post(BATCH, content=batch_of(BAD_VIEW, count), headers=JSON)
        assert_problem(response, 400, "validation", {"views[0].url", "views[9].site_key"})
        work.append((decoded.bytes, decoded.converts))
    assert work[0] == work[1], work


@pytest.mark.parametrize("item", [b"1", b"[]", b"{}"], ids=["numbers", "empty arrays", "empty objects"])
async def test_a_batch_over_its_length_is_one_error_without_decoding_its_items(
    client: Client, db: AsyncConnection[Any], decoded: Decoded, item: bytes
) -> None:
    body = batch_of(item, 100_000)
    response = await client.post(BATCH, content=body, headers=JSON)
    problem = assert_problem(response, 400, "validation")
    assert problem["errors"] == [{"field": "views", "message": f"Expected `array` of length <= {MAX_BATCH}"}]
    assert decoded.bytes == 0, (decoded.bytes, len(body))


async def test_a_refused_single_view_is_not_decoded_whole_again(
    client: Client, db: AsyncConnection[Any], decoded: Decoded
) -> None:
    """A known field holding a long array is wrong for its kind: said without decoding the array."""
    body = b'{"site_key":0,"url":[' + b",".join([b"[]"] * 100_000) + b'],"x":1}'
    response = await client.post(SINGLE, content=body, headers=JSON)
    problem = assert_problem(response, 400, "validation")
    assert {(error["field"], error["message"]) for error in problem["errors"]} == {
        ("x", "Unknown field"),
        ("site_key", "Expected `str`, got `int`"),
        ("url", "Expected `str`, got `array`"),
    }
    assert decoded.bytes <= 10, decoded.bytes


# -- the address's ingest limit -------------------------------------------------------------------


QUOTA = 3
SENDER = ("192.0.2.44", 40000)


def from_sender(app: Litestar, address: tuple[str, int] = SENDER) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=cast("Any", app), client=address), base_url="http://testserver"
    )


async def test_refused_bodies_take_the_address_tokens_until_it_is_answered_429(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """A small refused body takes one token, as a view does: once they are spent, the address is
    answered 429 (with Retry-After) before its body is read, good or bad; another address is not."""
    site = await make_site(db, await create_user(db))
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    good = {"site_key": site.ingest_key, "url": "https://example.com/"}
    limits = {"rate_limit_ingest_per_minute": QUOTA, "rate_limit_ingest_per_hour": QUOTA}
    async with serve_in_loop(settings, **limits) as served, from_sender(served.app) as sender:
        for _ in range(QUOTA):
            refused = await sender.post(BATCH, content=batch_of(b"{}", 2), headers=JSON)
            assert_problem(refused, 400, "validation")
        for path, body in ((SINGLE, msgspec.json.encode(good)), (BATCH, batch_of(b"[]", 5))):
            limited = await sender.post(path, content=body, headers=JSON)
            assert_problem(limited, 429, "rate-limited")
            assert int(limited.headers["retry-after"]) >= 1
        async with from_sender(served.app, ("192.0.2.45", 40000)) as neighbour:
            assert (await neighbour.post(SINGLE, json=good)).status_code == 202


async def test_a_large_refused_body_takes_tokens_for_its_size(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """A refused body is charged as though it held the largest views that fit its size: one refused
    4 MiB batch spends an address's tokens as a full batch of views would."""
    site = await make_site(db, await create_user(db))
    await db.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
    limits = {"rate_limit_ingest_per_minute": 100, "rate_limit_ingest_per_hour": 100}
    async with serve_in_loop(settings, **limits) as served, from_sender(served.app) as sender:
        huge = batch_of(b"[]", (4 * 1024 * 1024 - 20) // 3)
        assert_problem(await sender.post(BATCH, content=huge, headers=JSON), 400, "validation")
        view = {"site_key": site.ingest_key, "url": "https://example.com/"}
        assert_problem(await sender.post(SINGLE, json=view), 429, "rate-limited")


async def test_an_address_without_tokens_is_answered_before_its_body_is_received(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """The 429 comes before the body is read: an address over its limit cannot make the server
    receive 4 MiB per request (counted: the bytes the app pulled from the client before answering)."""
    limits = {"rate_limit_ingest_per_minute": QUOTA, "rate_limit_ingest_per_hour": QUOTA}
    async with serve_in_loop(settings, **limits) as served, from_sender(served.app) as sender:
        for _ in range(QUOTA):
            assert_problem(await sender.post(BATCH, content=batch_of(b"{}", 2), headers=JSON), 400)
        for path in (SINGLE, BATCH):
            received: list[int] = []

            async def body_in_chunks(received: list[int] = received) -> AsyncIterator[bytes]:
                for _ in range(16):
                    received.append(65536)
                    yield b" " * 65536

            limited = await sender.post(path, content=body_in_chunks(), headers=JSON)
            assert_problem(limited, 429, "rate-limited")
            assert sum(received) == 0, (path, sum(received))


# -- objects of many members -----------------------------------------------------------------------


def _member_names(count: int) -> list[bytes]:
    alphabet = (string.ascii_letters + string.digits).encode()
    names = (bytes(letters) for size in (1, 2, 3, 4) for letters in itertools.product(alphabet, repeat=size))
    return list(itertools.islice(names, count))


def _object_of(names: list[bytes]) -> bytes:
    return b"{" + b",".join(b'"' + name + b'":0' for name in names) + b"}"


def _peak_allocated(read: Callable[[bytes], Any], body: bytes) -> int:
    """The most memory Python held while ``read(body)`` ran, above what it held before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        with contextlib.suppress(InvalidFieldsError):
            read(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


MANY = 490_000  # about 4 MiB of `"name":0` members
VALID_VIEW = (
    b'{"site_key":"abcdefghijklmnopqrstuvwx","url":"https://a.example/x","title":"'
    + b"a" * 490
    + b'","referrer":"https://b.example/'
    + b"r" * 1900
    + b'"}'
)


@pytest.mark.parametrize(
    ("read", "body"),
    [
        (decode_batch, _object_of(_member_names(MANY))),
        (decode_view, _object_of(_member_names(MANY))),
        (decode_batch, b'{"views":[' + _object_of(_member_names(MANY)) + b"]}"),
        (decode_view, _object_of(_member_names(MANY // 4))),
    ],
    ids=["batch of many members", "view of many members", "batch of one such view", "1 MiB view"],
)
def test_an_object_of_many_members_costs_what_a_valid_body_does(
    read: Callable[[bytes], Any], body: bytes
) -> None:
    """Its members are not built one by one (a str and a ``Raw`` each, once 180 times the work of a
    valid batch): the answer names its first unknown fields, as the generic walk would, and holds no
    more memory while doing so than the decoding of a valid batch of the same size."""
    valid = batch_of(VALID_VIEW, MAX_BATCH)
    assert len(body) <= 4 * 1024 * 1024 and len(valid) <= 4 * 1024 * 1024
    with pytest.raises(InvalidFieldsError) as refused:
        read(body)
    fields = [error.field for error in refused.value.errors]
    path = "views[0]." if body.startswith(b'{"views"') else ""
    assert fields == [path + name.decode() for name in _member_names(MAX_REPORTED_ERRORS)]
    assert refused.value.unlisted >= 1
    assert not refused.value.counted
    allocated = _peak_allocated(read, body)
    assert allocated <= 2 * _peak_allocated(decode_batch, valid), (allocated, len(body))


def test_an_object_past_the_members_read_one_by_one_repeating_names_is_judged_whole() -> None:
    """Past the members read one by one, repeated names (a dict keeps the last) neither refuse a
    view the contract accepts nor hide an unknown name that follows them."""
    repeated = b",".join([b'"url":"https://example.com/"'] * 40)
    view = b'{"site_key":"abcdefghijklmnopqrstuvwx",' + repeated + b',"screen_width":1440.0}'
    assert decode_view(view).screen_width == 1440
    with pytest.raises(InvalidFieldsError) as refused:
        decode_view(view[:-1] + b',"zz":0}')
    assert [(error.field, error.message) for error in refused.value.errors] == [
        ("body", "Object contains unknown field `zz`")
    ]
    assert not refused.value.counted
