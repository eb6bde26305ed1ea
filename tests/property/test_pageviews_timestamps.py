"""Any ``ts`` the ingest decoder accepts is stored, and stored alike by both of the sink's writes: the
one-statement JSON write (fewer than ``COPY_FROM`` rows, the row as JSON text) and the binary COPY.

The decoder (msgspec, like the published schema) accepts UTC offsets up to ±23:59; PostgreSQL's
timestamptz text input refuses offsets above ±15:59 (SQLSTATE 22009). A row that kept its client's
offset was therefore refused by the JSON write and stored by the COPY, so a view's fate depended on
how many other views it was written with (and the sink split a whole shared write in halves to find
it). The rows carry the instant in UTC: both writes receive one value, which either stores.

Each example draws timestamps as a client could write them (offsets across ±23:59 in both spellings,
``Z``, any separator the decoder takes, 0 to 9 fractional digits; instants from 25 hours ago to an
hour ahead, so some are clamped), decodes them with the ingest's decoder, derives the rows with the
service (``PageViewService.rows``, on a fixed clock), writes them once through each path of one
writer, and compares what PostgreSQL stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection

from app.config import Settings
from app.core.modules import Module
from app.core.services import open_services
from app.domains.pageviews.decoding import decode_batch
from app.domains.pageviews.derive import clamp_timestamp
from app.domains.pageviews.schemas import PageView
from app.domains.pageviews.services import PageViewService
from app.domains.pageviews.writers import COPY_FROM, Writer, make_writer
from app.domains.sites.services import SiteService
from app.modules import MODULES
from tests.factories import create_user, make_site, scaled_examples
from tests.fakes.clock import FakeClock

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
CLIENT = "203.0.113.40"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MOST_MINUTES = 23 * 60 + 59
"""The largest UTC offset, in minutes, that RFC 3339 (so the decoder and the schema) allows."""
COLUMNS = (
    "ts, received_at, event_id, visitor_id, title, referrer_host, referrer_source, utm_source,"
    " utm_medium, utm_campaign, screen_width, device, browser, os, is_bot"
)


class Stamp(msgspec.Struct, frozen=True):
    """A ``ts`` as a client writes it: an instant (nanoseconds before the example's now; negative:
    in the future), the offset it is written in, and its spelling."""

    before_now_ns: int
    offset_minutes: int
    fraction_digits: int
    separator: str
    basic_offset: bool
    zulu: str

    def text(self, now: datetime) -> str:
        epoch_ns = (now - EPOCH) // timedelta(microseconds=1) * 1000
        instant_ns = epoch_ns - self.before_now_ns
        local_ns = instant_ns + self.offset_minutes * 60 * 10**9
        seconds, nanos = divmod(local_ns, 10**9)
        local = EPOCH.replace(tzinfo=None) + timedelta(seconds=seconds)
        text = local.strftime(f"%Y-%m-%d{self.separator}%H:%M:%S")
        if self.fraction_digits:
            text += "." + f"{nanos:09d}"[: self.fraction_digits]
        if self.offset_minutes == 0 and self.zulu:
            return text + self.zulu
        sign = "-" if self.offset_minutes < 0 else "+"
        hours, minutes = divmod(abs(self.offset_minutes), 60)
        return text + f"{sign}{hours:02d}{'' if self.basic_offset else ':'}{minutes:02d}"


HOUR_NS = 3600 * 10**9
stamps = st.builds(
    Stamp,
    before_now_ns=st.one_of(
        st.integers(-HOUR_NS, 25 * HOUR_NS),
        st.integers(0, 24 * HOUR_NS).map(lambda ns: ns - ns % 10**9),  # whole seconds
    ),
    offset_minutes=st.one_of(
        st.integers(-MOST_MINUTES, MOST_MINUTES),
        st.sampled_from([0, 16 * 60, -16 * 60, 20 * 60, -20 * 60, MOST_MINUTES, -MOST_MINUTES]),
    ),
    fraction_digits=st.integers(0, 9),
    separator=st.sampled_from("Tt "),
    basic_offset=st.booleans(),
    zulu=st.sampled_from(["Z", "z", ""]),
)


@pytest.fixture(params=["asyncpg", "psycopg", "hybrid"])
async def writer(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[Writer]:
    """A writer of each driver (``hybrid``: asyncpg's statement, psycopg's COPY; the default)."""
    writer = make_writer(request.param, database_url, 1, timeout_s=10.0)
    await writer.open()
    try:
        yield writer
    finally:
        await writer.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
async def pageviews(settings: Settings, clock: FakeClock) -> AsyncIterator[PageViewService]:
    """The service as the app builds it, its ``now`` the fixed ``clock``: rows only, no request."""
    clocked = Module(
        name="pageviews",
        service=lambda s: PageViewService(s.db, s.settings, s[SiteService], s.valkey, clock=clock),
    )
    modules = [clocked if module.name == "pageviews" else module for module in MODULES]
    async with open_services(settings, modules) as services:
        yield services[PageViewService]


@pytest.fixture
async def site_key(db: AsyncConnection[Any], clock: FakeClock) -> str:
    await db.execute("select ensure_page_view_partitions(%s::date - 2, 5)", (clock.now.date(),))
    site = await make_site(db, await create_user(db))
    return site.ingest_key


async def stored(db: AsyncConnection[Any], prefix: str) -> list[tuple[Any, ...]]:
    cursor = await db.execute(
        f"select {COLUMNS} from page_views where path like %s order by split_part(path, '/', 3)::integer",
        (prefix + "/%",),
    )
    return await cursor.fetchall()


@settings(
    max_examples=scaled_examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(drawn=st.lists(stamps, min_size=1, max_size=6))
async def test_any_accepted_ts_is_stored_alike_by_the_statement_and_the_copy(
    writer: Writer,
    pageviews: PageViewService,
    db: AsyncConnection[Any],
    site_key: str,
    clock: FakeClock,
    drawn: list[Stamp],
) -> None:
    await db.execute("delete from page_views")
    now = clock.now
    body = {
        "views": [
            {"site_key": site_key, "url": f"https://example.com/statement/{i}", "ts": stamp.text(now)}
            for i, stamp in enumerate(drawn)
        ]
    }
    views = decode_batch(msgspec.json.encode(body)).views
    assert all(view.ts is not None for view in views)
    copied = [
        msgspec.structs.replace(view, url=f"https://example.com/copy/{i}") for i, view in enumerate(views)
    ]
    fillers = [PageView(site_key=site_key, url=f"https://example.com/filler/{i}") for i in range(COPY_FROM)]
    statement_rows, _ = await pageviews.rows(views, CLIENT, FIREFOX, batched=True)
    copy_rows, _ = await pageviews.rows(copied + fillers, CLIENT, FIREFOX, batched=True)
    assert len(statement_rows) < COPY_FROM <= len(copy_rows)

    assert await writer.write(statement_rows) == len(views)
    assert await writer.write(copy_rows) == len(copy_rows)

    by_statement, by_copy = await stored(db, "/statement"), await stored(db, "/copy")
    assert by_statement == by_copy
    expected = [clamp_timestamp(view.ts, now) for view in views]
    assert [row[0] for row in by_statement] == expected, "not stored at the decoded (clamped) instant"
