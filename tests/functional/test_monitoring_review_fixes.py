"""Error monitoring after its review: merged groups' alerts and releases, the report's regressed count,
bounded inputs, PostgreSQL's DETAIL kept out of events and alerts, and the scrubber's gaps."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.scrub import MASK, scrub_text
from app.db.models import UserRole
from app.domains.monitoring.delivery import MAX_ATTEMPTS
from app.domains.monitoring.fingerprint import capture_chain
from app.domains.monitoring.report import TOP, BusinessFigures, build_report
from app.domains.monitoring.schemas import MAX_RELEASE_NAME, RELEASE_NAME
from tests.factories import Client, assert_problem, make_user, scalar, wait_until
from tests.fakes.telegram import FakeTelegramServer, serve_fake_telegram
from tests.functional.test_monitoring_alerts import (
    PRIVATE_CHAT,
    TOKEN,
    delivery_state,
    record_html_telegram_refuses,
    with_telegram,
)
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.functional.test_monitoring_http import ADMIN, write
from tests.unit.test_monitoring_fingerprint import raise_bug


def bug(name: str) -> BaseException:
    """An exception of a problem of its own (its own module and line: a group of its own)."""
    return raise_bug(
        0, module=f"app.domains.review.{name}", source=f"def handler(v):\n    raise KeyError(v, {name!r})\n"
    )


async def test_the_alerts_of_a_merged_group_are_its_own(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN)
    target = await write(client, app, bug("alerts_target"))
    source = await write(client, app, bug("alerts_source"))
    before = (await client.get(f"{ADMIN}/alerts?group_id={source}", headers=admin.headers)).json()["items"]
    assert [alert["group_id"] for alert in before] == [source]  # a new group's alert

    merged = await client.post(
        f"{ADMIN}/errors/{target}/merge", json={"source_ids": [source]}, headers=admin.headers
    )
    assert merged.status_code == 200, merged.text

    of_source = (await client.get(f"{ADMIN}/alerts?group_id={source}", headers=admin.headers)).json()["items"]
    assert [alert["id"] for alert in of_source] == [alert["id"] for alert in before]
    of_target = (await client.get(f"{ADMIN}/alerts?group_id={target}", headers=admin.headers)).json()["items"]
    assert {alert["group_id"] for alert in of_target} == {target, source}  # the whole tree rooted there


async def _write_in(settings: Settings, release: str, exc: BaseException, count: int) -> int:
    async with open_monitoring(settings, monitoring_release=release) as service:
        results = await service.write_now([error_event(exc) for _ in range(count)])
        return results[0].root_id


def _releases(detail: dict[str, Any]) -> list[tuple[str, int]]:
    return [(release["name"], release["events"]) for release in detail["releases"]]


async def test_a_merged_tree_lists_each_release_once_with_the_trees_counts(
    client: Client, app: Litestar, db: AsyncConnection[Any], settings: Settings
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN)
    target_bug, source_bug = bug("releases_target"), bug("releases_source")
    target = await _write_in(settings, "review-r1", target_bug, 3)
    source = await _write_in(settings, "review-r1", source_bug, 2)
    await _write_in(settings, "review-r2", source_bug, 1)

    merged = await client.post(
        f"{ADMIN}/errors/{target}/merge", json={"source_ids": [source]}, headers=admin.headers
    )
    assert merged.status_code == 200, merged.text
    assert _releases(merged.json()) == [("review-r1", 5), ("review-r2", 1)]
    first_seen = await scalar(
        db,
        "select min(first_seen_at) from monitoring_group_releases where group_id in (%s, %s)",
        target,
        source,
    )
    assert datetime.fromisoformat(merged.json()["releases"][0]["first_seen_at"]) == first_seen


async def test_a_merged_group_lists_only_its_own_releases(
    client: Client, app: Litestar, db: AsyncConnection[Any], settings: Settings
) -> None:
    """Passes once ``MonitoringService._detail`` reads ``releases_of_group`` for the group itself."""
    admin = await make_user(db, app, UserRole.ADMIN)
    target_bug, source_bug = bug("own_releases_target"), bug("own_releases_source")
    target = await _write_in(settings, "review-r1", target_bug, 3)
    source = await _write_in(settings, "review-r2", source_bug, 2)

    merged = await client.post(
        f"{ADMIN}/errors/{target}/merge", json={"source_ids": [source]}, headers=admin.headers
    )
    assert merged.status_code == 200, merged.text
    detail = (await client.get(f"{ADMIN}/errors/{source}", headers=admin.headers)).json()
    assert _releases(detail) == [("review-r2", 2)]  # not its target's review-r1


async def test_the_report_counts_every_regressed_group(settings: Settings, db: AsyncConnection[Any]) -> None:
    regressing = TOP + 3
    async with open_monitoring(settings) as service:
        since = datetime.now(UTC) - timedelta(seconds=1)
        bugs = [bug(f"regressed{i}") for i in range(regressing)]
        ids = [(await service.write_now([error_event(exc)]))[0].root_id for exc in bugs]
        for group_id in ids:
            await service.resolve(group_id, None)
        for exc in bugs:
            await service.write_now([error_event(exc)])
        until = datetime.now(UTC) + timedelta(seconds=1)
        async with service.db.transaction() as uow:
            report = await build_report(uow.conn, since.date(), since, until, "test", BusinessFigures())
    regressed = await scalar(
        db,
        "select count(distinct group_id) from monitoring_group_activity"
        " where action = 'regressed' and at >= %s",
        since,
    )
    assert regressed >= regressing
    lines = report.plain.splitlines()
    assert f"Regressed: {regressed}" in lines
    listed = lines[lines.index(f"Regressed: {regressed}") + 1 :]
    assert len(listed[: listed.index("")]) == TOP  # the list stays the TOP groups; the count is all


@pytest.mark.parametrize(
    "until",
    [
        "9999-12-31T23:59:59-23:59",  # year 10000 in UTC
        "0001-01-01T00:00:00+23:59",  # year 0 in UTC
    ],
)
async def test_an_ignore_until_past_the_calendar_is_refused_naming_the_field(
    client: Client, app: Litestar, db: AsyncConnection[Any], until: str
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN)
    group = await write(client, app, bug("ignore_until"))
    answer = await client.post(
        f"{ADMIN}/errors/{group}/ignore", json={"mode": "until_time", "until": until}, headers=admin.headers
    )
    problem = assert_problem(answer, 400, "validation")
    assert [(error["field"], error["message"]) for error in problem["errors"]] == [
        (
            "until",
            "must fall between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in UTC - at `$.until`",
        )
    ]


async def test_an_ignore_until_at_the_calendars_ends_is_taken(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN)
    group = await write(client, app, bug("ignore_until_edge"))
    answer = await client.post(
        f"{ADMIN}/errors/{group}/ignore",
        json={"mode": "until_time", "until": "9999-12-31T23:59:59Z"},
        headers=admin.headers,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["ignore_until"].startswith("9999-12-31T23:59:59")


@pytest.mark.parametrize("release", ["a" * 201, "%00", "%01abc", ""])
async def test_a_release_filter_outside_the_release_names_is_refused(
    client: Client, app: Litestar, db: AsyncConnection[Any], release: str
) -> None:
    """Passes once ``list_errors`` declares the bounds on its ``QueryParameter``."""
    admin = await make_user(db, app, UserRole.ADMIN)
    answer = await client.get(f"{ADMIN}/errors?release={release}", headers=admin.headers)
    problem = assert_problem(answer, 400, "validation")
    assert [error["field"] for error in problem["errors"]] == ["query.release"]


async def test_the_release_filter_is_documented_with_its_bounds(client: Client) -> None:
    """Passes once ``list_errors`` declares the bounds on its ``QueryParameter``."""
    spec = (await client.get("/schema/openapi.json")).json()
    (release,) = [p for p in spec["paths"][f"{ADMIN}/errors"]["get"]["parameters"] if p["name"] == "release"]
    schema = release["schema"]
    string: dict[str, Any] = next(
        (option for option in schema.get("oneOf", []) if option.get("type") == "string"), {}
    )
    bounds = {key: string.get(key, schema.get(key)) for key in ("minLength", "maxLength", "pattern")}
    assert bounds == {"minLength": 1, "maxLength": MAX_RELEASE_NAME, "pattern": RELEASE_NAME}


EMAIL = "leak@example.org"
PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


async def test_postgresqls_detail_never_reaches_an_event_or_an_alert(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    await db.execute("create temp table review_accounts (email text unique, password_hash text not null)")
    await db.execute("insert into review_accounts values (%s, %s)", (EMAIL, PASSWORD_HASH))
    try:
        await db.execute("insert into review_accounts values (%s, %s)", (EMAIL, PASSWORD_HASH))
    except psycopg.errors.UniqueViolation as exc:
        violation: BaseException = exc
    await db.rollback()
    assert EMAIL in str(violation)  # the DETAIL line: the whole key, as rows' values often are

    assert capture_chain(violation)[-1].message == (
        'duplicate key value violates unique constraint "review_accounts_email_key"'
    )
    async with open_monitoring(settings) as service:
        (result,) = await service.write_now([error_event(violation)])
    stored = await scalar(
        db,
        "select string_agg(message || exception::text, ' ') from monitoring_events where group_id = %s",
        result.root_id,
    )
    alerts = await scalar(
        db,
        "select string_agg(text_html || text_plain, ' ') from monitoring_alerts where group_id = %s",
        result.root_id,
    )
    assert "review_accounts_email_key" in stored
    assert "review_accounts_email_key" in alerts
    for text in (stored, alerts):
        assert EMAIL not in text
        assert "DETAIL" not in text


async def test_a_not_null_violation_keeps_the_failing_row_out(db: AsyncConnection[Any]) -> None:
    await db.execute("create temp table review_roles (email text, password_hash text, role text not null)")
    try:
        await db.execute("insert into review_roles values (%s, %s, null)", (EMAIL, PASSWORD_HASH))
    except psycopg.errors.NotNullViolation as exc:
        violation: BaseException = exc
    await db.rollback()
    message = capture_chain(violation)[-1].message
    assert message == 'null value in column "role" of relation "review_roles" violates not-null constraint'


def test_a_client_side_psycopg_error_keeps_its_first_line() -> None:
    """No server diagnostics (a connection that failed): the first line, as a log line keeps."""
    error = psycopg.OperationalError(
        "connection failed: server closed the connection\nIs the server running?"
    )
    assert capture_chain(error)[-1].message == "connection failed: server closed the connection"


SCRUBBED = {
    "PGPASSWORD='x' psql -h db": "PGPASSWORD=[Filtered] psql -h db",
    "PGPASSWORD=hunter2 pg_dump": "PGPASSWORD=[Filtered] pg_dump",
    "pass=x": "pass=[Filtered]",
    "user=app pass: hunter2": "user=app pass: [Filtered]",
    "DB_PASSWORD=hunter2": "DB_PASSWORD=[Filtered]",
    "export MYSQL_PWD=hunter2": "export MYSQL_PWD=[Filtered]",
    "AWS_SECRET_ACCESS_KEY=abc123": "AWS_SECRET_ACCESS_KEY=[Filtered]",
    "x-api-key: abc123": "x-api-key: [Filtered]",
    "Authorization: Token abc123": "Authorization: [Filtered]",
    "authorization=Token abc123 next": "authorization=[Filtered] next",
    "Authorization: Bearer abcdefghijklmnop": "Authorization: [Filtered]",
    'headers={"Authorization": "Token abc"}': 'headers={"Authorization": [Filtered]}',
}


@pytest.mark.parametrize("text", list(SCRUBBED))
def test_credentials_named_in_environment_and_header_style_are_masked(text: str) -> None:
    assert scrub_text(text) == SCRUBBED[text]


@pytest.mark.parametrize(
    "text",
    [
        "tokens_used=5 passed=3 compass=north bypass=1",
        "3 tests pass, 1 failed",
        "password reset sent to the user",
        "invalid token provided by the client",
        "passenger=12 session count 4",
        "Authorization header missing",
    ],
)
def test_words_that_only_contain_a_key_are_left_as_they_are(text: str) -> None:
    assert scrub_text(text) == text
    assert MASK not in scrub_text(text)


@pytest.fixture
def telegram() -> Iterator[FakeTelegramServer]:
    with serve_fake_telegram(TOKEN) as server:
        yield server


async def test_a_stop_between_the_html_refusal_and_the_plain_text_gives_the_attempt_back(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """A SIGTERM while the sender paces before resending a refused HTML text as plain text: nothing
    reached the chat and the stop alone cut it, so the delivery is ``pending`` with the attempt it
    claimed given back, even on its last attempt (it was ``failed`` before: an alert never sent)."""
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        await record_html_telegram_refuses(service)
        await db.execute("update monitoring_deliveries set attempts = %s", (MAX_ATTEMPTS - 1,))
        delivering = asyncio.create_task(service.deliver(budget_s=30))

        async def html_refused() -> bool:
            return [message.status for message in telegram.fake.messages()] == [400]

        # the plain text waits for the chat's pace (MIN_INTERVAL_S) after the refusal's answer
        await wait_until(html_refused, 10.0, "Telegram refused the HTML")
        service.stopping()  # SIGTERM: run_workers -> Services.stopping -> Sender.stop
        assert await delivering == 0
        status, attempts, _ = await delivery_state(db)
        assert (status, attempts) == ("pending", MAX_ATTEMPTS - 1)
        assert [message.parse_mode for message in telegram.fake.messages()] == ["HTML"], "no plain text"

    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        assert await service.deliver(budget_s=30) == 1, "the next sender delivers it"
    status, _, _ = await delivery_state(db)
    assert status == "sent"


async def test_the_report_labels_revenue_as_paid_net_of_refunds(settings: Settings) -> None:
    """``totals_between`` subtracts, in the period of the cancel, the money of paid orders an
    administrator cancelled: the report says so, a figure that may be negative."""
    async with open_monitoring(settings) as service:
        now = datetime.now(UTC)
        figures = BusinessFigures(revenue={"EUR": Decimal("-5.00"), "USD": Decimal("3.00")})
        async with service.db.transaction() as uow:
            report = await build_report(uow.conn, now.date(), now - timedelta(days=1), now, "test", figures)
    assert "paid net of refunds after payment -5.00 EUR, 3.00 USD" in report.plain, report.plain
