"""Alerts to a fake Telegram that enforces the Bot API's limits: budget and digest, 429 and
``retry_after``, HTML refused, pacing, no token; cron monitors, job hooks, slow routes, the report."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from psycopg import AsyncConnection
from saq.job import Job, Status
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.db import transaction
from app.db import monitoring as queries
from app.db.models import MonitoringGroupKind
from app.domains.monitoring import alerts
from app.domains.monitoring.capture import RawEvent
from app.domains.monitoring.crons import CronSpec
from app.domains.monitoring.delivery import DIGEST_LINES
from app.domains.monitoring.fingerprint import RawException
from app.domains.monitoring.performance import EXEMPLARS_PER_ROUTE
from app.domains.monitoring.services import MonitoringService
from app.domains.monitoring.telegram import Rendered, TelegramClient
from app.modules import MODULES
from tests.factories import scalar
from tests.fakes.telegram import FakeTelegramServer, Scripted, parse_html, serve_fake_telegram
from tests.functional.test_monitoring_groups import error_event, open_monitoring
from tests.unit.test_monitoring_fingerprint import raise_bug

TOKEN = "123456:TEST-TOKEN-not-a-real-one"
# The session app's own background checks may add cron groups (no worker runs in the tests): the
# assertions look at the groups they made.
ERROR_GROUPS = "group_id in (select id from monitoring_groups where kind = 'error')"
JOB_GROUPS = "group_id in (select id from monitoring_groups where kind = 'job')"
GROUP_CHAT = "-1001234567890"
PRIVATE_CHAT = "4242"
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def telegram() -> Iterator[FakeTelegramServer]:
    with serve_fake_telegram(TOKEN) as server:
        yield server


def with_telegram(server: FakeTelegramServer, chats: list[str], **changes: Any) -> dict[str, Any]:
    return {
        "telegram_bot_token": TOKEN,
        "telegram_chat_id": chats,
        "telegram_api_url": server.url,
        "telegram_timeout_s": 2.0,  # a delivery's worst case (2 x 2 s + 1.1 s) fits the tests' budgets
        **changes,
    }


def storm_event(group: int, at: float) -> RawEvent:
    return RawEvent(
        kind=MonitoringGroupKind.ERROR,
        occurred_at=at,
        chain=(RawException(f"StormError{group}", f"storm {group}", ()),),
        context={"source": "request"},
    )


async def test_ten_thousand_events_in_a_minute_send_the_budget_and_one_digest(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    budget = 5
    window = 300
    changes = with_telegram(
        telegram, [GROUP_CHAT], monitoring_alert_budget=budget, monitoring_alert_budget_window_s=window
    )
    async with open_monitoring(settings, **changes) as service:
        start = time.time() - 60
        for chunk in range(10):  # 10,000 events of 400 different errors over the last minute
            for n in range(1000):
                index = chunk * 1000 + n
                service.buffer.add(storm_event(index % 400, start + index * 0.006))
            await service.flush()  # the dedup gate: one write per group per window
        await service.flush(force=True)  # (the rest, as at shutdown)
        assert await scalar(db, "select count(*) from monitoring_groups where kind = 'error'") == 400
        assert await scalar(db, "select sum(events) from monitoring_groups where kind = 'error'") == 10_000
        service.clock = lambda: time.time() + window  # the budget period is over: its digest is due
        delivered = await service.deliver(budget_s=60)
    assert delivered == budget + 1
    received = telegram.fake.messages()
    assert all(r.accepted for r in received), [r.description for r in received if not r.accepted]
    assert len(received) == budget + 1
    digest, _ = parse_html(received[-1].text)
    assert digest.startswith(f"🧾 {400 - budget} more alerts")
    assert (
        await scalar(db, "select count(*) from monitoring_alerts where digest_id is not null") == 400 - budget
    )
    # The digest is written from its first DIGEST_LINES alerts (a message lists far fewer), with the total.
    digest_id = await scalar(db, "select max(digest_id) from monitoring_alerts")
    listed = await queries.digest_summaries(db, digest_id=digest_id, row_limit=DIGEST_LINES)
    assert 400 - budget > DIGEST_LINES == len(listed)
    assert {row.total for row in listed} == {400 - budget}


async def test_an_alert_recorded_late_after_its_periods_digest_was_sent_is_delivered(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    changes = with_telegram(
        telegram, [PRIVATE_CHAT], monitoring_alert_budget=1, monitoring_alert_budget_window_s=60
    )
    async with open_monitoring(settings, **changes) as service:
        start = time.time()

        async def record(summary: str, at: float) -> None:
            async with transaction(service.db.pool) as uow:
                await alerts.record_alert(
                    uow,
                    service.channel,
                    key=summary,
                    rule="test",
                    group_id=None,
                    summary=summary,
                    rendered=Rendered(html=summary, plain=summary),
                    now=datetime.fromtimestamp(at, UTC),
                )

        await record("first alert", start)
        await record("second alert", start + 1)
        service.clock = lambda: time.time() + 61  # the period is over: its digest is due
        assert await service.deliver(budget_s=30) == 2
        await record("third alert", start + 2)  # its writer took its clock before the digest went out
        assert await service.deliver(budget_s=30) == 1
    texts = [parse_html(message.text)[0] for message in telegram.fake.messages()]
    assert texts[0] == "first alert"
    assert texts[1].startswith("🧾 1 more alerts") and "second alert" in texts[1]
    assert texts[2:] == ["third alert"]


async def test_an_alert_recorded_as_the_sender_lets_go_is_sent_by_it(
    settings: Settings,
    db: AsyncConnection[Any],
    valkey: Valkey,
    telegram: FakeTelegramServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender whose last look found nothing is about to let the lock go when an alert is recorded
    and the alert's own delivery finds the lock still taken: nobody sent it until the next cron or
    fallback (up to a minute). The sender now looks once more after letting go."""
    chats = with_telegram(telegram, [PRIVATE_CHAT])
    looks = queries.pending_deliveries
    async with open_monitoring(settings, **chats) as sender, open_monitoring(settings, **chats) as other:
        found_the_lock_taken: list[int] = []

        async def last_look(*args: Any, **kwargs: Any) -> list[queries.PendingDeliveriesRow]:
            rows = await looks(*args, **kwargs)
            if not rows and len(found_the_lock_taken) < 2:  # an alert between this look and the unlock
                await other.write_now([storm_event(len(found_the_lock_taken), time.time())])
                found_the_lock_taken.append(await other.deliver(budget_s=30))
            return rows

        monkeypatch.setattr(queries, "pending_deliveries", last_look)
        delivered = await sender.deliver(budget_s=30)

    assert found_the_lock_taken == [0, 0], "each alert's own delivery found the sender active"
    assert delivered == 2 and len(telegram.fake.messages(accepted_only=True)) == 2
    assert await scalar(db, "select count(*) from monitoring_deliveries where status = 'pending'") == 0


async def test_a_429_delays_the_next_send_by_retry_after(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    telegram.fake.script(Scripted(429, "Too Many Requests: retry after 3", retry_after=3))
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        await service.write_now([storm_event(1, time.time()), storm_event(2, time.time())])
        assert await service.deliver(budget_s=30) == 2
    # The fake refuses (429) every request to the chat until retry_after has passed, and any message
    # within a second of the last: a sender sending early has a request refused inside the window.
    assert telegram.fake.refused_inside_window() == [], "no request before retry_after had passed"
    first, second, third = telegram.fake.messages()
    assert (first.status, first.retry_after) == (429, 3)
    assert second.accepted and third.accepted, "the next send came after the window, paced"
    assert second.text == first.text, "the refused message is the one sent after the wait"


async def test_a_bad_gateway_from_telegram_is_uncertain_and_never_resent(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    telegram.fake.script(Scripted(502, "Bad Gateway"))
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        await service.write_now([storm_event(1, time.time())])
        assert await service.deliver(budget_s=10) == 0
        assert await service.deliver(budget_s=10) == 0
    [request] = telegram.fake.messages()
    assert request.status == 502
    status, error = (
        await (await db.execute("select status::text, last_error from monitoring_deliveries")).fetchone()
    ) or ()
    assert (status, error) == ("uncertain", "502 Bad Gateway")


async def test_a_dead_senders_last_request_counts_in_its_chats_pacing(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        await service.write_now([storm_event(1, time.time()), storm_event(2, time.time())])
        first_id = await scalar(db, "select min(id) from monitoring_deliveries")
        await db.execute(  # a sender claimed the first delivery, its request reached Telegram, it died
            "update monitoring_deliveries set status = 'sending', claimed_at = now(), attempts = 1"
            " where id = %s",
            (first_id,),
        )
        async with httpx.AsyncClient() as client:
            dead_senders = await client.post(
                f"{telegram.url}/bot{TOKEN}/sendMessage", json={"chat_id": PRIVATE_CHAT, "text": "storm 1"}
            )
        assert dead_senders.status_code == 200

        # the second alert, then the notice that the first may not have arrived (its delivery is uncertain)
        assert await service.deliver(budget_s=30) == 2
    received = telegram.fake.messages()
    # (the fake refuses a message within a second of the chat's last one with a 429)
    assert [r.status for r in received] == [200, 200, 200], "paced after the dead sender's request: no 429"
    statuses = await db.execute(
        "select a.kind, d.status::text from monitoring_deliveries d"
        " join monitoring_alerts a on a.id = d.alert_id order by d.id"
    )
    assert await statuses.fetchall() == [("alert", "uncertain"), ("alert", "sent"), ("notice", "sent")]


async def record_html_telegram_refuses(service: MonitoringService) -> None:
    """An alert whose HTML Telegram refuses ("can't parse entities"): it is resent as plain text."""
    async with transaction(service.db.pool) as uow:
        await alerts.record_alert(
            uow,
            service.channel,
            key="broken",
            rule="test",
            group_id=None,
            summary="broken",
            rendered=Rendered(html="<b>unclosed & wrong", plain="unclosed & wrong"),
            now=datetime.now(UTC),
        )


async def test_html_refused_is_resent_as_plain_text(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        await record_html_telegram_refuses(service)
        assert await service.deliver(budget_s=30) == 1
    html_try, plain_try = telegram.fake.messages()
    assert html_try.status == 400 and "can't parse entities" in html_try.description
    assert (plain_try.status, plain_try.parse_mode, plain_try.text) == (200, None, "unclosed & wrong")
    status, note = (
        await (await db.execute("select status::text, last_error from monitoring_deliveries")).fetchone()
    ) or ()
    assert status == "sent" and "plain text" in note


async def delivery_state(db: AsyncConnection[Any]) -> tuple[str, int, str | None]:
    row = await (
        await db.execute("select status::text, attempts, last_error from monitoring_deliveries")
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


async def test_a_delivery_that_could_outlive_the_jobs_timeout_is_not_started(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """SAQ cancels a job at its timeout: a request in flight then would leave its delivery
    ``sending``, hence ``uncertain``, although Telegram would have answered. The sender must not start
    a delivery whose worst case (two requests of 10 s and the pause) outlives its budget."""
    telegram.fake.hold("storm 1", seconds=60)
    changes = with_telegram(telegram, [PRIVATE_CHAT], telegram_timeout_s=10.0)
    async with open_monitoring(settings, **changes) as service:
        await service.write_now([storm_event(1, time.time())])
        budget = 5.0
        delivered = await service.deliver(budget_s=budget)  # a sender that waited would deliver (1)
    assert delivered == 0
    assert telegram.fake.messages() == []
    assert await delivery_state(db) == ("pending", 0, None), "left for a run with the time to send it"


async def test_an_answer_trickling_past_the_timeout_is_cut_there_and_uncertain(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """httpx's timeouts bound each read, not the request: an answer dripping a byte at a time would
    hold the sender past its deadline. ``TELEGRAM_TIMEOUT_S`` bounds the whole request, and a request
    cut after it left may have reached Telegram (the fake has it): ``uncertain``, never resent."""
    telegram.fake.hold("storm 1", seconds=60, drip=True)
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        await service.write_now([storm_event(1, time.time())])
        budget = 10.0
        delivered = await service.deliver(budget_s=budget)  # a sender that waited would deliver (1)
    assert delivered == 0
    [request] = telegram.fake.messages()
    assert request.accepted
    assert await delivery_state(db) == ("uncertain", 1, "TotalTimeout")


async def test_plain_text_that_must_wait_past_the_deadline_goes_back_to_pending(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    """A group chat at its 20 messages a minute: the HTML request uses the last free place, and the
    plain text would have to wait most of a minute. Nothing reached Telegram, so the delivery waits
    for a later run instead of the sender outliving its deadline."""
    now = time.time()
    recent = [now - 61] + [now - 20 + n * 0.5 for n in range(19)]
    await db.execute(
        "insert into monitoring_telegram_chats (chat_id, recent_sends) values (%s, %s)",
        (GROUP_CHAT, [datetime.fromtimestamp(moment, UTC) for moment in recent]),
    )
    async with open_monitoring(settings, **with_telegram(telegram, [GROUP_CHAT])) as service:
        await record_html_telegram_refuses(service)
        budget = 10.0
        delivered = await service.deliver(budget_s=budget)  # a sender that waited would deliver (1)
    assert delivered == 0
    [html_try] = telegram.fake.messages()
    assert html_try.status == 400
    assert await delivery_state(db) == ("pending", 1, "plain text not sent in time")
    not_before = await scalar(db, "select not_before from monitoring_deliveries")
    assert not_before > datetime.fromtimestamp(now + 30, UTC), "when the group may receive it"


async def test_a_request_cut_before_it_left_is_retried() -> None:
    """A server that accepts the connection and never completes TLS: the request never left, so
    the whole-request timeout answers ``retry``, as a refused connection does."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        client = TelegramClient(TOKEN, f"https://127.0.0.1:{port}", timeout_s=1.0)
        try:
            result = await asyncio.wait_for(client.send(PRIVATE_CHAT, "hello", html_mode=False), 10)
        finally:
            await client.close()
    assert result.outcome == "retry"


async def test_without_a_token_alerts_are_recorded_not_sent(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    async with open_monitoring(
        settings, telegram_chat_id=[PRIVATE_CHAT], telegram_api_url=telegram.url
    ) as service:
        [result] = await service.write_now([error_event(raise_bug(0))])
        assert result.alert_id is not None
        assert await service.deliver(budget_s=5) == 0
    assert await scalar(db, f"select count(*) from monitoring_alerts where {ERROR_GROUPS}") == 1
    assert await scalar(db, "select count(*) from monitoring_deliveries") == 0
    assert telegram.fake.messages() == []


async def test_each_chat_gets_one_message_a_second_without_a_single_429(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT, GROUP_CHAT])) as service:
        await service.write_now([storm_event(n, time.time()) for n in range(4)])
        assert await service.deliver(budget_s=30) == 8
    received = telegram.fake.messages()
    # the fake refuses a message within a second of its chat's last one (429): none was
    assert [r.status for r in received] == [200] * 8
    for chat in (PRIVATE_CHAT, GROUP_CHAT):
        assert len([r for r in received if r.chat_id == chat]) == 4
    assert await scalar(db, "select count(*) from monitoring_deliveries where status = 'sent'") == 8


async def test_the_token_never_reaches_the_database_or_the_alert_text(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        exc = RuntimeError(f"POST {telegram.url}/bot{TOKEN}/sendMessage failed")
        await service.write_now([error_event(exc)])
        await service.deliver(budget_s=10)
        assert TOKEN not in repr(service.telegram)
    dump = await scalar(
        db,
        "select string_agg(t::text, ' ') from (select * from monitoring_events) t",
    )
    assert "TEST-TOKEN" not in dump
    assert all("TEST-TOKEN" not in r.text for r in telegram.fake.messages())


def cron_job(
    name: str, slot: float, *, status: Status = Status.COMPLETE, attempts: int = 1
) -> dict[str, Any]:
    job = Job(function=name, key=f"cron:{name}", scheduled=int(slot), attempts=attempts, retries=3)
    job.status = status
    return {"job": job}


async def test_a_stopped_worker_across_a_cron_slot_yields_a_missed_alert(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    yesterday = datetime(2026, 11, 29, 3, 17, tzinfo=UTC).timestamp()
    today = yesterday + 86_400
    async with open_monitoring(settings, **with_telegram(telegram, [PRIVATE_CHAT])) as service:
        service.monitors.crons = {"nightly": CronSpec("nightly", "default", "17 3 * * *", 300)}
        service.clock = lambda: yesterday - 3600
        await service.register_monitors()
        # The worker runs yesterday's slot: check-ins through the job hooks.
        service.clock = lambda: yesterday + 2
        ctx = cron_job("nightly", yesterday)
        service.job_started(ctx)
        service.job_finished(ctx)
        await service.flush(force=True)
        assert await service.check_crons(yesterday + 3600) == []
        # The worker is down across today's slot: nothing checks in.
        assert await service.check_crons(today + 119) == [], "still within the check-in margin"
        assert await service.check_crons(today + 121) == ["nightly"]
        assert await service.check_crons(today + 600) == [], "a missed slot is reported once"
        service.clock = lambda: today + 122
        assert await service.deliver(budget_s=10) == 1
        [monitor] = [m for m in await service.cron_monitors() if m.name == "nightly"]
        assert (monitor.last_status, monitor.consecutive_failures) == ("missed", 1)
        # The worker is back: the next run succeeds and the problem is resolved (recovery threshold 1).
        service.clock = lambda: today + 86_400 + 5
        ctx = cron_job("nightly", today + 86_400)
        service.job_started(ctx)
        service.job_finished(ctx)
        await service.flush(force=True)
    kind, status = (
        await (
            await db.execute(
                "select kind::text, status::text from monitoring_groups where culprit = 'job nightly'"
            )
        ).fetchone()
    ) or ()
    assert (kind, status) == ("cron", "resolved")
    [message] = telegram.fake.messages()
    text, _ = parse_html(message.text)
    assert "🆕 New cron problem" in text
    assert "Cron job nightly: missed" in text
    assert "no run started within 120 s of its slot 2026-11-30 03:17:00 UTC" in text


async def test_a_cron_no_longer_scheduled_is_no_longer_monitored(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    slot = datetime(2026, 11, 30, 3, 17, tzinfo=UTC).timestamp()
    async with open_monitoring(settings) as service:
        service.monitors.crons = {"old": CronSpec("old", "default", "17 3 * * *", 300)}
        service.clock = lambda: slot - 3600
        await service.register_monitors()
        assert await service.check_crons(slot + 121) == ["old"]
        service.monitors.crons = {}  # the job was removed (or renamed) and the app deployed again
        service.clock = lambda: slot + 3600
        await service.register_monitors()
        assert await service.check_crons(slot + 86_400 + 121) == []
        assert await service.check_crons(slot + 7 * 86_400) == []
        assert [m.name for m in await service.cron_monitors()] == []
    status = await scalar(db, "select status::text from monitoring_groups where culprit = 'job old'")
    assert status == "resolved", "the missed problem it left open is closed"
    assert await scalar(db, "select count(*) from monitoring_cron_checkins where name = 'old'") == 1


async def test_job_hooks_record_runs_retries_and_final_failures(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    exc = raise_bug(0)
    async with open_monitoring(settings) as service:
        for attempt, status in ((1, Status.QUEUED), (2, Status.QUEUED), (3, Status.FAILED)):
            job = Job(
                function="reserve_order", key="outbox:7", attempts=attempt, retries=3, kwargs={"order_id": 1}
            )
            job.status = status
            ctx: dict[str, Any] = {"job": job}
            service.job_started(ctx)
            ctx["exception"] = exc
            service.job_finished(ctx)
        ok = Job(function="reserve_order", key="outbox:8", attempts=1)
        ok.status = Status.COMPLETE
        ok_ctx: dict[str, Any] = {"job": ok}
        service.job_started(ok_ctx)
        service.job_finished(ok_ctx)
        await service.flush(force=True)
        await service.ship()
    [(kind, events, title)] = await (
        await db.execute("select kind::text, events, title from monitoring_groups where kind = 'job'")
    ).fetchall()
    assert (kind, events) == ("job", 1), "one failure after the last attempt; the retries are counted apart"
    assert title.startswith("ValueError")
    context = await scalar(db, f"select context from monitoring_events where {JOB_GROUPS}")
    assert context["job"] == "reserve_order" and context["attempts"] == 3
    assert context["arguments"] == ["order_id"], "argument names only, never their values"
    runs = dict(await (await db.execute("select outcome, runs from monitoring_job_runs")).fetchall())
    assert runs == {"retried": 2, "failed": 1, "complete": 1}


async def test_job_runs_and_latency_survive_a_failed_ship(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_job_runs = queries.add_job_runs
    blips = [psycopg.OperationalError("server closed the connection unexpectedly")]

    async def blip_once(*args: Any, **kwargs: Any) -> None:
        if blips:
            raise blips.pop()
        await add_job_runs(*args, **kwargs)

    monkeypatch.setattr(queries, "add_job_runs", blip_once)
    scope = {"path_template": "/api/things", "method": "GET", "state": {"request_id": "r-1"}}
    async with open_monitoring(settings) as service:
        for n in range(3):
            job = Job(function="reserve_order", key=f"outbox:{n}", attempts=5, retries=5)
            job.status = Status.FAILED
            ctx: dict[str, Any] = {"job": job}
            service.job_started(ctx)
            ctx["exception"] = RuntimeError("boom")
            service.job_finished(ctx)
        service.latency.observe(scope, 200, 0.01)  # type: ignore[arg-type]
        with pytest.raises(psycopg.OperationalError):
            await service.ship()  # the latency rows of this transaction are rolled back too
        service.latency.observe(scope, 200, 0.01)  # type: ignore[arg-type]  # between the ships
        await service.ship()
        await service.flush(force=True)
    runs = await scalar(db, "select coalesce(sum(runs), 0) from monitoring_job_runs where outcome = 'failed'")
    assert runs == 3, "the failed ship's job runs are written by the next one"
    requests = await scalar(db, "select coalesce(sum(requests), 0) from monitoring_route_latency")
    assert requests == 2, "the failed ship's latency counts are written once by the next one"


async def test_a_slow_route_opens_a_group_with_exemplar_request_ids(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    async with open_monitoring(
        settings, monitoring_slow_p95_ms=500.0, monitoring_slow_min_requests=20
    ) as service:
        for n in range(100):
            duration = 1.2 if n % 10 == 0 else 0.05  # p95 1.2 s on the slow route
            scope = {"path_template": "/api/slow", "method": "GET", "state": {"request_id": f"slow-{n}"}}
            service.latency.observe(scope, 200, duration)  # type: ignore[arg-type]
            fast = {"path_template": "/api/fast", "method": "GET", "state": {"request_id": f"fast-{n}"}}
            service.latency.observe(fast, 200, 0.003)  # type: ignore[arg-type]
        await service.ship()
        routes = {(r.method, r.route): r for r in await service.route_latency(timedelta(minutes=5))}
        assert routes[("GET", "/api/slow")].slow and not routes[("GET", "/api/fast")].slow
        assert routes[("GET", "/api/slow")].stats.p95_ms >= 1200
        results = await service.evaluate_slow_routes()
        assert len(results) == 1
    kind, title, context = (
        await (
            await db.execute(
                "select g.kind::text, g.title, e.context"
                " from monitoring_groups g join monitoring_events e on e.group_id = g.id"
                " where g.kind = 'slow_route'"
            )
        ).fetchone()
    ) or ()
    assert (kind, title) == ("slow_route", "Slow route: GET /api/slow")
    assert context["exemplar_request_ids"][0].startswith("slow-")
    assert context["p95_ms"] >= 1200


async def test_each_routes_exemplars_are_its_own_slowest_requests_slowest_first(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The exemplars of every route listed are read in one query: each route (and method) gets its
    own slowest requests, at most ``EXEMPLARS_PER_ROUTE``, and no other route's."""
    requests = {("GET", "/api/a"): 12, ("POST", "/api/a"): 3, ("GET", "/api/b"): 8}
    async with open_monitoring(settings) as service:
        for (method, route), count in requests.items():
            for n in range(count):
                request_id = f"{method}{route}-{n}"
                scope = {"path_template": route, "method": method, "state": {"request_id": request_id}}
                service.latency.observe(scope, 200, 0.01 * (n + 1))  # type: ignore[arg-type]
                await service.ship()  # a ship keeps the slowest request of each route: here, this one
        listed = await service.route_latency(timedelta(minutes=5))
    shown = {(r.method, r.route): [e.request_id for e in r.exemplars] for r in listed}
    assert shown == {
        (method, route): [f"{method}{route}-{n}" for n in range(count - 1, -1, -1)][:EXEMPLARS_PER_ROUTE]
        for (method, route), count in requests.items()
    }


async def test_route_latency_counts_the_minute_its_window_begins_in(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """Requests are counted per minute: 45 seconds after them, the last minute's latency holds them
    (the minute the window begins in was left out: the route was not listed)."""
    t0 = (int(time.time()) // 60 - 10) * 60  # a minute boundary, in the past
    async with open_monitoring(settings) as service:
        service.clock = lambda: t0 + 20
        for n in range(5):
            scope = {"path_template": "/api/seen", "method": "GET", "state": {"request_id": f"seen-{n}"}}
            service.latency.observe(scope, 200, 0.05)  # type: ignore[arg-type]
        await service.ship()
        listed = await service.route_latency(timedelta(minutes=1), now=t0 + 65)
    assert [(r.route, r.stats.requests) for r in listed] == [("/api/seen", 5)]


async def test_a_slow_route_resolved_within_its_window_regresses_only_on_later_requests(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    start = time.time()
    async with open_monitoring(
        settings, monitoring_slow_p95_ms=500.0, monitoring_slow_min_requests=20, monitoring_slow_window_s=300
    ) as service:

        async def slow_requests(at: float) -> None:
            service.clock = lambda: at
            for n in range(40):
                scope = {"path_template": "/api/slow", "method": "GET", "state": {"request_id": f"r-{n}"}}
                service.latency.observe(scope, 200, 1.2)  # type: ignore[arg-type]
            await service.ship()

        await slow_requests(start)
        [opened] = await service.evaluate_slow_routes(start)
        service.clock = lambda: start + 60
        await service.resolve(opened.root_id, None)
        [before_resolve] = await service.evaluate_slow_routes(start + 90)
        assert before_resolve.transition is None, "the window's requests were served before the resolve"
        await slow_requests(start + 400)
        [after_resolve] = await service.evaluate_slow_routes(start + 420)
        assert after_resolve.transition == "regressed"


async def test_the_daily_report_is_sent_once_a_day(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey, telegram: FakeTelegramServer
) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # Yesterday's 08:00 in Berlin: always in the past, so the report it schedules is due at once
    # (today's was still ahead between midnight and 08:00 Berlin time, and nothing was delivered).
    until = (datetime.now(berlin) - timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
    during = (until - timedelta(hours=1)).timestamp()
    async with open_monitoring(
        settings,
        modules=MODULES,  # the business figures are counted by accounts, orders and reports
        monitoring_report_time="08:00",
        monitoring_report_timezone="Europe/Berlin",
        **with_telegram(telegram, [PRIVATE_CHAT]),
    ) as service:
        service.clock = lambda: during
        await service.write_now([error_event(raise_bug(0), at=during)])
        await db.execute(
            "insert into users (email, display_name, password_hash, role, created_at)"
            " values ('r@example.com', 'r', 'x', 'member', %s)",
            (until - timedelta(hours=2),),
        )
        await db.execute(  # the day before's was sent: before 08:00 nothing is due
            "insert into monitoring_reports (day) values (%s)", (until.date() - timedelta(days=1),)
        )
        assert await service.send_report_if_due(until.timestamp() - 60) is None, "not before 08:00 local"
        service.clock = lambda: until.timestamp() + 60
        first = await service.send_report_if_due()
        assert first is not None
        assert await service.send_report_if_due(until.timestamp() + 3600) is None, "once per local day"
        await db.execute("delete from monitoring_deliveries where alert_id <> %s", (first,))
        service.clock = time.time
        assert await service.deliver(budget_s=10) == 1
    [message] = telegram.fake.messages()
    text, error = parse_html(message.text)
    assert error is None
    assert text.startswith(f"📊 Daily report {until.date().isoformat()}")
    assert "sign-ups 1 · orders 0" in text
    assert "New groups: 1" in text
    assert "ValueError: invalid literal for int()" in text


async def test_a_sign_up_stamped_just_before_a_report_and_committed_after_it_is_in_the_next(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """A row is stamped when its transaction begins and seen when it commits: one stamped just before
    a report's end that committed after the report was computed was in neither report (the time
    reviewer). The figures' period is shifted back by ``FIGURES_LAG``, so it is in the next one."""
    berlin = ZoneInfo("Europe/Berlin")
    until = (datetime.now(berlin) - timedelta(days=2)).replace(hour=8, minute=0, second=0, microsecond=0)
    async with open_monitoring(
        settings, modules=MODULES, monitoring_report_time="08:00", monitoring_report_timezone="Europe/Berlin"
    ) as service:
        await db.execute(
            "insert into monitoring_reports (day) values (%s)", (until.date() - timedelta(days=1),)
        )
        service.clock = lambda: until.timestamp() + 5
        assert await service.send_report_if_due() is not None
        await db.execute(
            "insert into users (email, display_name, password_hash, role, created_at)"
            " values ('late@example.com', 'l', 'x', 'member', %s)",
            (until - timedelta(milliseconds=100),),
        )
        service.clock = lambda: until.timestamp() + 86_400 + 5
        assert await service.send_report_if_due() is not None
    rows = await (
        await db.execute("select text_plain from monitoring_alerts where kind = 'report' order by id")
    ).fetchall()
    assert ["sign-ups 1" in text for (text,) in rows] == [False, True], rows


def local(day: date, hour: int, zone: ZoneInfo = BERLIN) -> datetime:
    return datetime.combine(day, dt_time(hour), tzinfo=zone)


def period_line(since: datetime, until: datetime) -> str:
    return f"{since:%Y-%m-%d %H:%M %Z} to {until:%Y-%m-%d %H:%M %Z}"


async def report_texts(db: AsyncConnection[Any]) -> list[str]:
    rows = await (
        await db.execute("select text_plain from monitoring_alerts where kind = 'report' order by id")
    ).fetchall()
    return [text for (text,) in rows]


async def test_a_missed_report_is_sent_late_and_the_next_covers_the_days_without_one(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """The app was down at 08:00 on D (and at its next checks): the first check after that sends D's
    report, even past midnight; once more reports were missed, the next one covers the time since the
    last one sent, not only its own day, and says so (before: D's report was never sent, its period
    in none)."""
    day = (datetime.now(BERLIN) - timedelta(days=5)).date()
    async with open_monitoring(
        settings, monitoring_report_time="08:00", monitoring_report_timezone="Europe/Berlin"
    ) as service:
        await db.execute("insert into monitoring_reports (day) values (%s)", (day - timedelta(days=1),))
        assert await service.send_report_if_due(local(day, 7).timestamp() + 59 * 60) is None
        after_midnight = local(day + timedelta(days=1), 0).timestamp() + 300
        assert await service.send_report_if_due(after_midnight) is not None, "D's, after midnight"
        three_days_on = local(day + timedelta(days=3), 9).timestamp()
        assert await service.send_report_if_due(three_days_on) is not None, "D+1's and D+2's were missed"
    days = await (await db.execute("select day from monitoring_reports order by day")).fetchall()
    assert [row[0] for row in days] == [day - timedelta(days=1), day, day + timedelta(days=3)]
    late, catching_up = await report_texts(db)
    assert period_line(local(day - timedelta(days=1), 8), local(day, 8)) in late
    assert "days: no report was sent" not in late
    assert period_line(local(day, 8), local(day + timedelta(days=3), 8)) in catching_up
    assert "(3.0 days: no report was sent at the times between)" in catching_up


async def test_the_next_report_starts_where_the_last_ended_whatever_the_settings_say_now(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """MONITORING_REPORT_TIME moved from 08:00 to 20:00, then to 06:00: each report starts where the
    one before ended, as it was sent (was: recomputed from the new time, 12 hours in no report, then
    14 in two)."""
    day = (datetime.now(BERLIN) - timedelta(days=6)).date()
    for days, report_time in ((0, "08:00"), (1, "20:00"), (2, "06:00")):
        async with open_monitoring(
            settings, monitoring_report_time=report_time, monitoring_report_timezone="Europe/Berlin"
        ) as service:
            hour = int(report_time[:2])
            assert await service.send_report_if_due(local(day + timedelta(days=days), hour).timestamp() + 60)
    _, second, third = await report_texts(db)
    assert period_line(local(day, 8), local(day + timedelta(days=1), 20)) in second
    assert period_line(local(day + timedelta(days=1), 20), local(day + timedelta(days=2), 6)) in third
    periods = await (await db.execute("select since, until from monitoring_reports order by day")).fetchall()
    assert [since for since, _ in periods[1:]] == [until for _, until in periods[:-1]]


async def test_a_clock_behind_never_reports_a_day_before_one_recorded(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """D's report (covering D-1's missed day too) is recorded; a process whose clock is 40 minutes
    behind checks before D's 08:00: nothing (was: D-1's report, the same 24 hours again)."""
    day = (datetime.now(BERLIN) - timedelta(days=4)).date()
    async with open_monitoring(
        settings, monitoring_report_time="08:00", monitoring_report_timezone="Europe/Berlin"
    ) as service:
        await db.execute("insert into monitoring_reports (day) values (%s)", (day - timedelta(days=2),))
        assert await service.send_report_if_due(local(day, 8).timestamp() + 30 * 60) is not None
        assert await service.send_report_if_due(local(day, 7).timestamp() + 55 * 60) is None
    assert len(await report_texts(db)) == 1


async def test_a_catch_up_starts_no_earlier_than_the_data_kept(
    settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    """After months without a report, the next one covers what is kept (the shorter of the raw page
    views' and the monitoring events' retention), not a period whose older days were purged."""
    day = (datetime.now(BERLIN) - timedelta(days=2)).date()
    async with open_monitoring(
        settings,
        monitoring_report_time="08:00",
        monitoring_report_timezone="Europe/Berlin",
        analytics_retention_days=10,
        monitoring_retention_days=30,
    ) as service:
        await db.execute("insert into monitoring_reports (day) values (%s)", (day - timedelta(days=100),))
        assert await service.send_report_if_due(local(day, 9).timestamp()) is not None
    [since] = await (
        await db.execute("select since from monitoring_reports where day = %s", (day,))
    ).fetchone()
    assert since == local(day - timedelta(days=9), 8)
