"""Delivering alerts to Telegram: durable, paced, and never twice.

Deliveries are rows (one per alert and chat) written in the transaction that recorded the alert, so
they survive restarts; a SAQ job (queued through the outbox), a SAQ cron and, as a fallback, every
process's background task run ``Sender.deliver``. One sender runs at a time across all processes: it
holds a session-level PostgreSQL advisory lock on a connection of its own, which PostgreSQL releases
when that connection dies (a killed worker), so a sender never waits on a dead one.

Exactly once is impossible with ``sendMessage`` (no idempotency key, and a bot cannot read back what
it sent), so this is *at most once*, as the issue asks ("never twice"): a delivery is claimed
(``sending``, committed) before its request leaves. If the sender dies between the request and the
record of Telegram's answer, the next sender finds the row still ``sending`` and marks it
``uncertain``: listed by the admin API, never resent, and counted in its chat's pacing as a message
sent at that moment (it may have arrived). A 5xx answer is ``uncertain`` too: it may come from
Telegram's front after the bot sent the message. Requests that certainly did not reach Telegram
(connection refused, a connect timeout, 429, the Bot API's 401) go back to ``pending``, tried again
after ``retry_after`` or a backoff of at most ``MAX_BACKOFF_S``, for as long as the alert is younger
than ``MONITORING_DELIVERY_MAX_AGE_S`` (a day by default; a digest's age counts from the end of its
budget window): an outage of Telegram or of the network shorter than that loses no alert, whatever
the number of tries it takes. A permanent refusal (any other 4xx) is ``failed`` at once.

A process that stops (the worker's SIGTERM: ``Sender.stop`` from ``MonitoringService.stopping``, before
the shutdown grace begins) claims no new delivery: the request in flight finishes and its answer is
recorded, and a delivery claimed but not yet requested goes back to ``pending``, as does one whose
first request Telegram refused without delivering it (the HTML it could not parse, the chat that
migrated) when the stop comes before the second request. The stop is no failure of the delivery: the
attempt its claim counted is given back (``ReleaseDelivery``), so a stop on its last attempt never
makes it ``failed``. Only a request still unanswered when the grace ends is cut, and left
``uncertain``.

A sender given a budget (a SAQ job's timeout less a margin for the bookkeeping) starts a delivery
only when its worst case still fits: both requests of an HTML text refused and resent as plain text
(each bounded in all by ``TELEGRAM_TIMEOUT_S``) and the pause between them. So a job's timeout never
cuts a request in flight, which would strand its delivery as ``uncertain`` even when Telegram would
have answered that it was not delivered.

A group upgraded to a supergroup gets a new chat id: Telegram answers a message to the old one with
400 and ``parameters.migrate_to_chat_id``. Nothing was delivered, so the message is sent to the new
chat at once; the configured chat's row keeps where it moved (``migrated_to``), every later delivery
to it goes there, and one warning asks the operator to put the new id in ``TELEGRAM_CHAT_ID``.
Deliveries keep the configured id (it is what ``TELEGRAM_CHAT_ID`` says); pacing is the current chat's.

Nothing lost goes unsaid: the deliveries of a chat that ended ``uncertain`` or ``failed`` are told
once, in one notice (an alert of kind ``notice``, paced like any other) queued in the transaction that
records the chat's next delivered message, when Telegram answers again. The chat's ``told_through``
(the highest delivery id told) moves past them, never past a delivery still being tried; a lost notice
is not told again.

Pacing follows the Bot API FAQ: one message per second per chat, 20 per minute to a group (a chat id
starting with ``-``), and after a 429 at least ``parameters.retry_after`` seconds. The pacing state is
stored per chat, so a restarted sender keeps it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from psycopg import AsyncConnection

from app.core.db import Database
from app.db import monitoring as queries
from app.db.models import MonitoringDeliveryStatus, MonitoringTelegramChat
from app.domains.monitoring.alerts import BUDGET_LOCK
from app.domains.monitoring.messages import digest_message, loss_notice
from app.domains.monitoring.telegram import SendResult, TelegramClient

log = structlog.get_logger("app.monitoring")

SENDER_LOCK = 0x6D6F6E69746F72
"""The advisory lock key of the one active sender."""
MIN_INTERVAL_S = 1.1
"""Per chat: one message a second (plus a margin for network jitter between our clock and theirs)."""
GROUP_WINDOW_S = 60.5
GROUP_MAX = 20
MAX_BACKOFF_S = 300.0
"""The longest pause between two tries of a delivery that did not reach Telegram (no ``retry_after``)."""
MAX_ATTEMPTS = 10_000
"""Requests of one delivery at most, whatever its age: a bound on a loop, as ``MAX_MIGRATIONS``, that an
outage never reaches (tries are ``MAX_BACKOFF_S`` apart from the ninth on: a day's outage takes some
300). What bounds the tries of a delivery is its alert's age (``MONITORING_DELIVERY_MAX_AGE_S``)."""
DIGEST_LINES = 200
"""Alerts of a digest read to write it: more than a message of 4,096 characters can list."""
MAX_MIGRATIONS = 3
"""Chat moves followed within one delivery (a group upgrades once; this only bounds a loop)."""


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class _SenderStoppedError(Exception):
    """The sender stopped before the second request of a delivery left: nothing reached the chat."""


@dataclass(slots=True)
class Pacer:
    """When each chat may receive its next message."""

    blocked: dict[str, float] = field(default_factory=dict)
    recent: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def load(cls, rows: list[MonitoringTelegramChat]) -> Pacer:
        pacer = cls()
        for row in rows:
            if row.blocked_until is not None:
                pacer.blocked[row.chat_id] = row.blocked_until.timestamp()
            pacer.recent[row.chat_id] = sorted(moment.timestamp() for moment in row.recent_sends)[-GROUP_MAX:]
        return pacer

    def ready_at(self, chat_id: str) -> float:
        ready = self.blocked.get(chat_id, 0.0)
        recent = self.recent.get(chat_id, [])
        if recent:
            ready = max(ready, recent[-1] + MIN_INTERVAL_S)
        if chat_id.startswith("-") and len(recent) >= GROUP_MAX:
            ready = max(ready, recent[-GROUP_MAX] + GROUP_WINDOW_S)
        return ready

    def requested(self, chat_id: str, at: float) -> None:
        self.recent[chat_id] = [*self.recent.get(chat_id, []), at][-GROUP_MAX:]

    def block(self, chat_id: str, until: float) -> None:
        self.blocked[chat_id] = max(self.blocked.get(chat_id, 0.0), until)


def current_chat(routes: dict[str, str], chat_id: str) -> str:
    """Where a message to ``chat_id`` goes now: the chat it migrated to, if Telegram said so."""
    for _ in range(MAX_MIGRATIONS):
        if chat_id not in routes:
            break
        chat_id = routes[chat_id]
    return chat_id


def warn_chat_migrated(configured: str, old_chat: str, new_chat: str) -> None:
    """Tell the operator that the chat of ``TELEGRAM_CHAT_ID`` ``configured`` moved (the sender's and
    the outage notice's one warning)."""
    log.warning(
        "monitoring_telegram_chat_migrated",
        chat_id=configured,
        previous_chat_id=old_chat,
        migrated_to=new_chat,
        detail=f"the Telegram group {old_chat} was upgraded to a supergroup with id {new_chat}: "
        f"alerts for {configured} are sent to {new_chat} from now on; replace {configured} by "
        f"{new_chat} in TELEGRAM_CHAT_ID",
    )


async def _save_pacing(conn: AsyncConnection[Any], chat_id: str, pacer: Pacer) -> None:
    blocked = pacer.blocked.get(chat_id)
    await queries.save_chat(
        conn,
        chat_id=chat_id,
        blocked_until=_utc(blocked) if blocked else None,
        recent_sends=[_utc(moment) for moment in pacer.recent.get(chat_id, [])],
    )


async def _tell_losses(conn: AsyncConnection[Any], chat_id: str, now: float) -> int:
    """After a message delivered to the configured chat ``chat_id`` (in the transaction recording it):
    queue one notice of the chat's deliveries lost since the last one (``uncertain`` or ``failed``),
    due at once, and move the chat's ``told_through`` past them. Returns how many were told (0: none,
    or only lost notices, which are never told again)."""
    lost = await queries.lost_deliveries(conn, chat_id=chat_id)
    if lost is None or lost.through_id == 0:
        return 0
    if lost.lost:
        rendered = loss_notice(lost.lost, lost.first_created_at, lost.last_created_at)
        notice = await queries.insert_alert(
            conn,
            key=f"notice:{chat_id}:{lost.through_id}",
            kind="notice",
            rule="loss-notice",
            group_id=None,
            summary=f"{lost.lost} alert(s) lost since the last notice (deliveries uncertain or failed)",
            text_html=rendered.html,
            text_plain=rendered.plain,
            digest_id=None,
            created_at=_utc(now),
        )
        if notice is not None:
            await queries.insert_deliveries(
                conn, alert_id=notice.id, chat_ids=[chat_id], not_before=_utc(now)
            )
    await queries.set_told_through(conn, chat_id=chat_id, told_through=lost.through_id)
    return lost.lost


class Sender:
    def __init__(
        self,
        db: Database,
        database_url: str,
        client: TelegramClient,
        clock: Callable[[], float] = time.time,
        *,
        max_age_s: float = 86_400.0,
        digest_delay_s: float = 0.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.db = db
        self.database_url = database_url
        self.connect_timeout_s = connect_timeout_s
        """``DATABASE_TIMEOUT_S``: the sender's lock connection gives up connecting after it."""
        self.client = client
        self.clock = clock
        self.max_age_s = max_age_s
        """``MONITORING_DELIVERY_MAX_AGE_S``: a delivery that did not reach Telegram is tried again until
        its alert is this old."""
        self.digest_delay_s = digest_delay_s
        """The noise budget's window: a digest is due at most this long after it was created."""
        self.worst_case_s = 2 * client.timeout_s + MIN_INTERVAL_S
        """The longest one delivery takes: HTML refused, the pause, then the plain text."""
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Claim no new delivery from now on (the process stops): the request in flight finishes and
        its answer is recorded; a delivery claimed but not yet requested goes back to ``pending``.
        Called when the stop begins (SIGTERM), so the one in flight ends within the shutdown grace
        instead of being cancelled by it (a cancelled request is ``uncertain``, never resent)."""
        self._stopping.set()

    async def deliver(self, budget_s: float) -> int:
        """Send what is due within ``budget_s`` seconds; returns how many messages were delivered.

        Returns at once when another sender is active (it will see the new rows) or nothing is due. A
        delivery starts only while its worst case (``worst_case_s``) fits in what is left of the budget.

        The active sender does not see a row recorded after its last look (which found nothing)
        and before it lets the lock go, while that row's own job found the lock taken and returned:
        so a sender looks again after letting the lock go, and runs again while the last run sent
        something and a row is due, or while a row is due that was recorded during it (else the row
        waited for the next cron or fallback, up to a minute). Each run then sends or meets a new
        row, so it cannot spin; what is due and sent by no run waits for its chat's pace or its time.
        """
        if not self.client.configured or self._stopping.is_set():
            return 0
        deadline = time.monotonic() + budget_s
        delivered = 0
        newest = await self._newest_due()
        while not self._stopping.is_set() and deadline - time.monotonic() >= self.worst_case_s:
            sent = await self._run_as_the_sender(deadline - time.monotonic())
            if sent is None:
                break
            delivered += sent
            due = await self._newest_due()
            if due is None or (not sent and due <= (newest or 0)):
                break
            newest = due
        return delivered

    async def _run_as_the_sender(self, budget_s: float) -> int | None:
        """``_run`` holding the sender's lock; None when another sender holds it."""
        async with await AsyncConnection.connect(
            self.database_url, autocommit=True, connect_timeout=max(2, math.ceil(self.connect_timeout_s))
        ) as lock_conn:
            if not await queries.try_advisory_lock(lock_conn, key=SENDER_LOCK):
                return None
            try:
                return await self._run(budget_s)
            finally:
                with suppress(Exception):
                    await queries.advisory_unlock(lock_conn, key=SENDER_LOCK)

    async def _newest_due(self) -> int | None:
        """The id of the row last recorded of those due now (ids grow with time), if any."""
        async with self.db.transaction() as uow:
            return await queries.newest_due_delivery(uow.conn, before=_utc(self.clock()))

    async def _run(self, budget_s: float) -> int:
        deadline = time.monotonic() + budget_s
        async with self.db.transaction() as uow:
            orphaned_chats = await queries.mark_orphans_uncertain(uow.conn)
            chats = await queries.load_chats(uow.conn)
            pacer = Pacer.load(chats)
            routes = {row.chat_id: row.migrated_to for row in chats if row.migrated_to}
            now = self.clock()
            # a dead sender's request reached Telegram by now, if ever
            for chat_id in {current_chat(routes, chat) for chat in orphaned_chats}:
                pacer.requested(chat_id, now)
                await _save_pacing(uow.conn, chat_id, pacer)
        if orphaned_chats:
            log.warning("monitoring_deliveries_uncertain", deliveries=len(orphaned_chats))
        if budget_s < self.worst_case_s:
            log.warning("monitoring_delivery_budget_too_short", budget_s=budget_s, needed_s=self.worst_case_s)
        delivered = 0
        while not self._stopping.is_set():
            spare = deadline - time.monotonic() - self.worst_case_s
            if spare < 0:
                break
            async with self.db.transaction() as uow:
                rows = await queries.pending_deliveries(
                    uow.conn, horizon=_utc(self.clock() + spare), per_chat=100
                )
            if not rows:
                break

            def ready(row: queries.PendingDeliveriesRow) -> float:
                return max(row.not_before.timestamp(), pacer.ready_at(current_chat(routes, row.chat_id)))

            row = min(rows, key=lambda r: (round(ready(r), 3), r.id))  # in order when equally ready
            wait = ready(row) - self.clock()
            if wait > deadline - time.monotonic() - self.worst_case_s:
                break
            if wait > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), wait)
                if self._stopping.is_set():
                    break
            if await self._deliver_one(row, pacer, routes, deadline):
                delivered += 1
        return delivered

    async def _deliver_one(
        self, row: queries.PendingDeliveriesRow, pacer: Pacer, routes: dict[str, str], deadline: float
    ) -> bool:
        async with self.db.transaction() as uow:
            claimed = await queries.claim_delivery(uow.conn, now=_utc(self.clock()), id=row.id)
            if claimed is None:
                return False
            alert = await queries.get_alert(uow.conn, id=row.alert_id)
            assert alert is not None
            due = alert.created_at.timestamp() + (self.digest_delay_s if alert.kind == "digest" else 0.0)
            give_up_at = due + self.max_age_s
            html_text, plain = alert.text_html, alert.text_plain
            if alert.kind == "digest" and not html_text:
                await queries.lock_key(uow.conn, key=BUDGET_LOCK)  # its list is final once rendered
                summaries = await queries.digest_summaries(
                    uow.conn, digest_id=alert.id, row_limit=DIGEST_LINES
                )
                rendered = digest_message(
                    [item.summary for item in summaries],
                    alert.created_at,
                    _utc(self.clock()),
                    total=summaries[0].total if summaries else 0,
                )
                html_text, plain = rendered.html, rendered.plain
                await queries.set_alert_text(uow.conn, text_html=html_text, text_plain=plain, id=alert.id)
        if self._stopping.is_set():  # the stop came while claiming: nothing left, the next sender sends it
            await self._release(row.id, "claimed while the sender stopped; not sent")
            return False
        # The claim is committed: from here on, a crash leaves the row 'sending' (never resent).
        chat = current_chat(routes, row.chat_id)
        result = await self.client.send(chat, html_text, html_mode=True)
        # Paced from the answer, not the request: the request surely arrived before its answer, so
        # our spacing can never be shorter than the spacing Telegram measures.
        pacer.requested(chat, self.clock())
        note = None
        try:
            for _ in range(MAX_MIGRATIONS):
                if result.outcome != "migrated" or result.migrate_to_chat_id is None:
                    break
                chat = await self._follow_migration(row.chat_id, chat, result.migrate_to_chat_id, routes)
                note = f"chat {row.chat_id} migrated to {chat}; set TELEGRAM_CHAT_ID to it"
                result = await self._send_when_ready(chat, html_text, pacer, deadline, html_mode=True)
            if result.outcome == "bad_entities":
                note = f"HTML refused ({result.description}); sent as plain text"
                result = await self._send_when_ready(chat, plain, pacer, deadline, html_mode=False)
        except _SenderStoppedError as stopped:
            await self._release(row.id, str(stopped), chat, pacer)
            return False
        await self._record(row, chat, claimed.attempts, give_up_at, result, pacer, note)
        return result.outcome == "sent"

    async def _follow_migration(
        self, configured: str, old_chat: str, new_chat: str, routes: dict[str, str]
    ) -> str:
        """Record that ``configured`` (the chat of ``TELEGRAM_CHAT_ID``) now lives at ``new_chat``
        (committed at once: later deliveries go there whatever becomes of this one) and tell the
        operator, once: the next sender reads the mapping and never sees the old chat's answer again."""
        async with self.db.transaction() as uow:
            await queries.save_chat_migration(uow.conn, chat_id=configured, migrated_to=new_chat)
        routes[configured] = new_chat
        warn_chat_migrated(configured, old_chat, new_chat)
        return new_chat

    async def _send_when_ready(
        self, chat_id: str, text: str, pacer: Pacer, deadline: float, *, html_mode: bool
    ) -> SendResult:
        """A second request of one delivery (the plain text after Telegram refused the HTML, or the
        message to the chat a group migrated to), once the chat may receive it. A group chat at its
        per-minute limit may need a longer pause than ``worst_case_s`` allows for: the delivery then
        goes back to ``pending`` (nothing reached Telegram) rather than outlive the deadline. Raises
        ``_SenderStoppedError`` when the sender stops before the request leaves."""
        what = "the message to the migrated chat" if html_mode else "plain text"
        wait = max(0.0, pacer.ready_at(chat_id) - self.clock())
        if wait + self.client.timeout_s > deadline - time.monotonic():
            return SendResult(outcome="retry", description=f"{what} not sent in time", retry_after_s=wait)
        if wait > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
        if self._stopping.is_set():
            raise _SenderStoppedError(f"{what} not sent: the sender stopped")
        result = await self.client.send(chat_id, text, html_mode=html_mode)
        pacer.requested(chat_id, self.clock())
        return result

    async def _release(
        self, delivery_id: int, why: str, chat: str | None = None, pacer: Pacer | None = None
    ) -> None:
        """Put a delivery claimed by this sender back to ``pending`` when the sender stopped before it
        reached the chat, giving back the attempt its claim counted; ``chat`` and ``pacer``: a request
        it made (refused) counts in that chat's pacing."""
        async with self.db.transaction() as uow:
            await queries.release_delivery(
                uow.conn, not_before=_utc(self.clock()), last_error=why, id=delivery_id
            )
            if chat is not None and pacer is not None:
                await _save_pacing(uow.conn, chat, pacer)
        log.info("monitoring_delivery_released", delivery_id=delivery_id, reason=why)

    async def _record(
        self,
        row: queries.PendingDeliveriesRow,
        chat: str,
        attempts: int,
        give_up_at: float,
        result: SendResult,
        pacer: Pacer,
        note: str | None,
    ) -> None:
        """Record Telegram's answer. Not delivered (``retry``): pending again while the alert is younger
        than ``give_up_at`` (and ``MAX_ATTEMPTS`` is not reached), ``failed`` after."""
        now = self.clock()
        error = f"{result.status or ''} {result.description}".strip()[:500]
        given_up = False
        told = 0
        async with self.db.transaction() as uow:
            if result.outcome == "sent":
                await queries.mark_delivery_sent(
                    uow.conn, sent_at=_utc(now), message_id=result.message_id, last_error=note, id=row.id
                )
                told = await _tell_losses(uow.conn, row.chat_id, now)
            elif result.outcome == "retry" and now < give_up_at and attempts < MAX_ATTEMPTS:
                if result.retry_after_s is not None:
                    pacer.block(chat, now + result.retry_after_s)
                    not_before = now + result.retry_after_s
                else:
                    not_before = now + min(MAX_BACKOFF_S, 2.0 ** min(attempts, 16))
                await queries.mark_delivery_pending(
                    uow.conn, not_before=_utc(not_before), last_error=error or "retry", id=row.id
                )
            else:
                status = (
                    MonitoringDeliveryStatus.UNCERTAIN
                    if result.outcome == "uncertain"
                    else MonitoringDeliveryStatus.FAILED
                )
                if result.outcome == "retry":
                    given_up = True
                    error = f"{error or 'retry'}; given up after {attempts} tries"[:500]
                await queries.mark_delivery_final(
                    uow.conn, status=status, last_error=error or result.outcome, id=row.id
                )
            await _save_pacing(uow.conn, chat, pacer)
        if told:
            log.warning("monitoring_loss_told", chat_id=row.chat_id, alerts=told)
        if given_up:
            log.error("monitoring_delivery_given_up", delivery_id=row.id, attempts=attempts, last_error=error)
        elif result.outcome != "sent":
            log.warning(
                "monitoring_telegram_not_sent",
                outcome=result.outcome,
                status=result.status,
                description=result.description[:200],
                delivery_id=row.id,
            )
