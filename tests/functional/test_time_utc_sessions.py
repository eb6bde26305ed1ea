"""Every session the app opens is in UTC, and a text that says UTC shows a UTC time.

psycopg hands a ``timestamptz`` back in its session's ``TimeZone``, which is the server's unless the
session sets its own: a server initialised in another zone (the embedded PostgreSQL's initdb takes
the developer's) or a database configured so made alerts print local times labelled UTC. Here the
test database's default is set to New York for the test (``ALTER DATABASE``), as such a server's
would be. An operator's own ``TimeZone`` in the URL's ``options`` still wins, as every option there
does, and the texts convert what they print.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import pytest
from psycopg import AsyncConnection, sql
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.db import create_pool
from app.domains.monitoring.messages import digest_message, loss_notice
from app.domains.pageviews.writers import AsyncpgWriter, PsycopgWriter
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.unit.test_monitoring_fingerprint import raise_bug

NEW_YORK = "America/New_York"
AT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def with_options(url: str, options: str) -> str:
    """``url`` with libpq ``options`` added to its query (the embedded server's has ``host`` there)."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("options", options)]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@pytest.fixture
async def database_in_new_york(db: AsyncConnection[Any], database_url: str) -> AsyncIterator[None]:
    """New sessions of the test database default to New York time while the test runs."""
    name = (await (await db.execute("select current_database()")).fetchone() or ("",))[0]
    database = sql.Identifier(name)
    await db.execute(sql.SQL("alter database {} set timezone = 'America/New_York'").format(database))
    try:
        async with await AsyncConnection.connect(database_url) as plain:
            shown = await (await plain.execute("show timezone")).fetchone()
        assert shown == (NEW_YORK,), "a session that sets nothing gets the database's default"
        yield
    finally:
        await db.execute(sql.SQL("alter database {} reset timezone").format(database))


async def zone_and_offset(conn: AsyncConnection[Any]) -> tuple[str, timedelta | None]:
    """The session's ``TimeZone`` and the offset of a ``timestamptz`` it hands back."""
    zone = await (await conn.execute("show timezone")).fetchone()
    moment = await (await conn.execute("select %s::timestamptz", (AT,))).fetchone()
    assert zone is not None and moment is not None
    assert moment[0] == AT, "the same instant either way"
    return zone[0], moment[0].utcoffset()


async def test_every_pooled_session_is_in_utc_whatever_the_database_default(
    settings: Settings, database_url: str, database_in_new_york: None
) -> None:
    pool = create_pool(settings, database_url)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            assert await zone_and_offset(conn) == ("UTC", timedelta(0))
    finally:
        await pool.close()


async def test_the_page_view_sinks_sessions_are_in_utc_too(
    database_url: str, database_in_new_york: None
) -> None:
    asyncpg_writer = AsyncpgWriter(database_url, 1, 10.0)
    psycopg_writer = PsycopgWriter(database_url, 1, 10.0)
    await asyncpg_writer.open()
    await psycopg_writer.open()
    try:

        async def asyncpg_zone(conn: Any) -> str:
            return str(await conn.fetchval("show timezone"))

        assert await asyncpg_writer._on_a_connection(asyncpg_zone) == "UTC"
        async with psycopg_writer._pool.connection() as conn:
            assert await zone_and_offset(conn) == ("UTC", timedelta(0))
    finally:
        await asyncpg_writer.close()
        await psycopg_writer.close()


async def test_an_operators_time_zone_in_the_url_still_wins(settings: Settings, database_url: str) -> None:
    pool = create_pool(settings, with_options(database_url, f"-c TimeZone={NEW_YORK}"))
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            assert await zone_and_offset(conn) == (NEW_YORK, timedelta(hours=-5))
    finally:
        await pool.close()


async def first_seen_of_the_alert(db: AsyncConnection[Any]) -> str:
    [(text,)] = await (
        await db.execute("select text_plain from monitoring_alerts where kind = 'alert'")
    ).fetchall()
    assert "first seen" in text
    return str(text).split("first seen ", 1)[1].split("\n", 1)[0]


async def test_an_alert_says_when_it_was_first_seen_in_utc_under_an_operators_zone(
    settings: Settings, database_url: str, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    url = with_options(database_url, f"-c TimeZone={NEW_YORK}")
    async with open_monitoring(settings, database_url=url) as service:
        service.clock = lambda: AT.timestamp()
        await service.write_now([error_event(raise_bug(0), at=AT.timestamp())])
    assert await first_seen_of_the_alert(db) == "2026-12-06 12:00:00 UTC"


async def test_an_alert_says_when_it_was_first_seen_in_utc_on_a_server_in_another_zone(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, database_in_new_york: None
) -> None:
    async with open_monitoring(settings) as service:
        service.clock = lambda: AT.timestamp()
        await service.write_now([error_event(raise_bug(0), at=AT.timestamp())])
    assert await first_seen_of_the_alert(db) == "2026-12-06 12:00:00 UTC"


def test_the_digest_and_the_loss_notice_say_utc_of_utc_times() -> None:
    start = AT.astimezone(ZoneInfo(NEW_YORK))  # as a session in New York hands them back
    end = (AT + timedelta(hours=1)).astimezone(ZoneInfo(NEW_YORK))
    digest = digest_message(["🆕 New error #1: boom"], start, end).plain
    assert "between 2026-12-06 12:00:00 UTC and 2026-12-06 13:00:00 UTC" in digest
    notice = loss_notice(2, start, end).plain
    assert "between 2026-12-06 12:00:00 UTC and 2026-12-06 13:00:00 UTC" in notice
    assert "at 2026-12-06 12:00:00 UTC" in loss_notice(1, start, start).plain
