"""A PostgreSQL outage told to Telegram while it lasts, around the database.

Alerts are recorded in PostgreSQL and delivered from it, so while PostgreSQL is down the events wait
in memory and Telegram hears nothing until it is back: the one outage an operator most needs to hear
about. So when a flush fails because PostgreSQL is unreachable (the pool timed out, the connection was
refused or lost, the server is shutting down: ``database_down``), the process sends one plain message
straight to the configured chats (``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_CHAT_ID``) through
``TelegramClient``:

- at once when it holds ``unavailable`` aggregates (requests answered 503, jobs that failed for the
  outage): the outage has already met the site's traffic;
- otherwise (only other events held: a worker whose jobs are still retrying sees the outage first in
  its own flush) once it lasts: ``LASTING_FLUSHES`` flushes in a row failing for the database. A pool
  exhausted for a moment while PostgreSQL is fine (one flush times out, the next writes) is no outage;
  telling it would send a notice and an "over" per blip.

A pool timeout with every connection of the pool in use (``Database.exhausted``) is told as that, not
as PostgreSQL unreachable: PostgreSQL may be up, and the pool too small for the load (or its
connections hung on a frozen server).

An error of one event's content is never an outage, even without a SQLSTATE (psycopg refusing a value
it cannot send: ``app.core.errors.DRIVER_REFUSALS``): only connection and pool errors count.

Once per outage per deployment: the notice is claimed in Valkey (``SET NX`` with a TTL of
``NOTICE_INTERVAL_S``: a longer outage is told again once per interval); with Valkey down too, once per
process per interval. When a flush writes again, the process that removes the claim sends an "over"
message. A claim whose message did not leave for a passing reason (a 429, a refused connection) is
released, and no process tries again before the 429's ``retry_after`` has passed (or, with none given,
a pause doubling from ``RETRY_FIRST_S`` to ``RETRY_MAX_S``): Telegram holds the chat, not one process,
to it, so the wait is shared in Valkey (``WAIT_KEY``) as well as kept by this process. A 429's
window is also the sender's business (``delivery.py`` paces each chat by
``monitoring_telegram_chats.blocked_until``): the notice stores the windows it learned once the
database is back, and honours the ones the sender stored (read with the routes, below). Nothing here
sleeps. A chat that refuses it for good (``failed``: 403 bot blocked, 400 chat not found) is asked
nothing more by this process for an interval, and a claim every chat refused so is kept for its
TTL: no flush asks again in the meantime, in any process. Nothing here raises either: a failure is
logged (rate-limited) and the flush's own outcome stands.

A group upgraded to a supergroup is followed as the sender follows it (``delivery.py``), without the
database: Telegram's 400 with ``migrate_to_chat_id`` (``SendResult.outcome == "migrated"``) sends the
message to the new chat at once, and the route is kept in memory for the outage's later messages
(and written to ``monitoring_telegram_chats.migrated_to`` once the database is back,
``MonitoringService.load_chat_routes``). The routes the sender stored are loaded when the database is
reachable (at start, at every check interval, and before the "over" message), so a chat that moved
before the outage is sent to its new id straight away.

The notice counts the ``unavailable`` events held by where they were captured (their aggregates'
``sources``: requests answered 503, jobs failed), or else every event held ("N events held", also
when some of them have no known source); all of them, and an outage's group itself, are written and
alerted the usual way once the database is back.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg_pool
import structlog
from valkey.asyncio import Valkey
from valkey.exceptions import ValkeyError

from app.core.errors import database_down, database_error
from app.core.logging import OncePerInterval, error_message
from app.db.models import MonitoringGroupKind
from app.domains.monitoring.delivery import MAX_MIGRATIONS, current_chat, warn_chat_migrated
from app.domains.monitoring.groups import Aggregate
from app.domains.monitoring.telegram import Part, SendResult, TelegramClient, render

log = structlog.get_logger("app.monitoring")

CLAIM_KEY = "monitoring:outage:postgresql"
WAIT_KEY = "monitoring:outage:telegram-wait"
"""Set (with the time left as its TTL) while Telegram's last answer to a notice asks every process to
wait: a 429's ``retry_after`` (the Bot API holds the chat, not one process, to it) or the pause after
another passing failure."""
NOTICE_INTERVAL_S = 900.0
"""At most one notice per outage per deployment in this time (the claim's TTL)."""
LASTING_FLUSHES = 2
"""Flushes in a row failing for the database before an outage with nothing ``unavailable`` held is
told (a flush that writes, or fails for another reason, starts the count again)."""
VALKEY_TIMEOUT_S = 2.0
"""A frozen Valkey must not hold the notice back longer than this: then it is decided per process."""
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 60.0
"""After a passing failure Telegram gave no ``retry_after`` for (a 401 while a token is rotated, a
refused connection), this process asks again only after a pause that doubles from ``RETRY_FIRST_S``
up to ``RETRY_MAX_S``, not at every flush (every second, in every process)."""
_CLAIM = """
local wait = redis.call('pttl', KEYS[2])
if wait > 0 then return -wait end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
return 0
"""
_WAIT_AND_RELEASE = """
if redis.call('pttl', KEYS[1]) < tonumber(ARGV[2]) then redis.call('set', KEYS[1], '1', 'PX', ARGV[2]) end
if redis.call('get', KEYS[2]) == ARGV[1] then redis.call('del', KEYS[2]) end
return 1
"""


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _held_summary(held: list[Aggregate]) -> str:
    """What the process holds for the database: its ``unavailable`` events (requests answered 503,
    jobs failed, as the aggregates counted their sources) when it has any, else every event held; the
    five first aggregates listed."""
    outage = [aggregate for aggregate in held if aggregate.kind == MonitoringGroupKind.UNAVAILABLE]
    listed = outage or held
    if not listed:
        return ""
    events = sum(aggregate.count for aggregate in listed)
    first = min(aggregate.first for aggregate in listed)
    lines = "".join(f"• {aggregate.title}: {aggregate.count}\n" for aggregate in listed[:5])
    requests = sum(aggregate.sources.get("request", 0) for aggregate in outage)
    jobs = sum(aggregate.sources.get("job", 0) for aggregate in outage)
    if not outage or requests + jobs != events:
        what = f"{_count(events, 'event')} held"
    elif requests and jobs:
        what = f"{_count(requests, 'request')} answered 503 and {_count(jobs, 'job')} failed"
    elif jobs:
        what = f"{_count(events, 'job')} failed"
    else:
        what = f"{_count(events, 'request')} answered 503"
    return f"{what} since {_when(first)}:\n{lines}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s" if secs else ""]
    return " ".join(part for part in parts if part) or "0 s"


class OutageNotifier:
    """Tells Telegram, without PostgreSQL, that PostgreSQL is down (and when it is back)."""

    def __init__(
        self,
        telegram: TelegramClient,
        chats: Sequence[str],
        valkey: Valkey,
        *,
        environment: str,
        release: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        interval_s: float = NOTICE_INTERVAL_S,
        exhausted: Callable[[], dict[str, int] | None] = lambda: None,
    ) -> None:
        self.telegram = telegram
        self.exhausted = exhausted
        """The pool's figures when all its connections are in use (``Database.exhausted``)."""
        self.chats = tuple(chats)
        self.valkey = valkey
        self.environment = environment
        self.release = release
        self.clock = clock
        self.monotonic = monotonic
        self.interval_s = interval_s
        self.host = socket.gethostname()
        self._token = f"{self.host}:{id(self):x}:{time.time_ns()}"
        self._claim_script = valkey.register_script(_CLAIM)
        self._wait_script = valkey.register_script(_WAIT_AND_RELEASE)
        self._down_since: float | None = None
        """When this process first saw the flush fail for the database (None: no outage seen)."""
        self._told = False
        """This process sent a notice of the current outage."""
        self._failing_flushes = 0
        """Flushes in a row that failed because the database is down (``LASTING_FLUSHES``)."""
        self._local_next = float("-inf")
        """Without Valkey: no notice from this process before this (monotonic) time."""
        self._not_before = float("-inf")
        """After a 429 or another passing failure: no request before this (monotonic) time."""
        self._pause_s = RETRY_FIRST_S
        """The next pause after a passing failure without ``retry_after`` (doubles up to the max)."""
        self._routes: dict[str, str] = {}
        """Configured chat -> the chat it migrated to (``monitoring_telegram_chats.migrated_to``)."""
        self._unsaved_routes: dict[str, str] = {}
        """Routes learned from Telegram that the database does not hold yet."""
        self._refused_until: dict[str, float] = {}
        """Configured chat -> no request to it before this (monotonic) time: it refused for good."""
        self._windows: dict[str, float] = {}
        """Chat (where Telegram has it now) -> the end (``clock``) of the window a 429 announced for it:
        the notice's own, or the sender's (``monitoring_telegram_chats.blocked_until``)."""
        self._unsaved_windows: dict[str, float] = {}
        """Windows Telegram gave this notifier that the database does not hold yet."""
        self._busy = asyncio.Lock()
        self._warnings = OncePerInterval(60.0)

    @property
    def enabled(self) -> bool:
        return self.telegram.configured and bool(self.chats)

    @property
    def outage_seen(self) -> bool:
        """This process saw a flush fail for the database and has not told it over yet."""
        return self._down_since is not None

    def learned_routes(self) -> dict[str, str]:
        """Routes Telegram gave this notifier that the database does not hold yet (configured chat ->
        the chat it migrated to)."""
        return dict(self._unsaved_routes)

    def learned_windows(self) -> dict[str, float]:
        """Windows Telegram's 429s gave this notifier that the database does not hold yet (chat -> the
        window's end, ``clock``): the sender's pacing must honour them too."""
        return dict(self._unsaved_windows)

    def remember_windows(self, stored: Mapping[str, float], saved: Mapping[str, float]) -> None:
        """The windows the database holds (``stored``, the sender's), read once ``saved`` (from
        ``learned_windows``) was written to it."""
        _forget_saved(self._unsaved_windows, saved)
        for chat, until in stored.items():
            self._windows[chat] = max(self._windows.get(chat, until), until)

    def remember_routes(self, stored: Mapping[str, str], saved: Mapping[str, str] | None = None) -> None:
        """The routes the database holds (``stored``), read once ``saved`` (from ``learned_routes``)
        was written to it."""
        _forget_saved(self._unsaved_routes, saved or {})
        self._routes.update(stored)
        self._routes.update(self._unsaved_routes)  # learned since the read began: newer

    async def flush_failed(self, exc: BaseException, held: Iterable[Aggregate]) -> bool:
        """After a failed flush: send the notice when due. True when a message left. Never raises."""
        return await _quietly(self._flush_failed(exc, list(held)))

    async def flush_succeeded(self) -> bool:
        """After a flush that wrote: the outage this process saw is over. True when "over" was sent.
        Never raises."""
        return await _quietly(self._flush_succeeded())

    async def _flush_failed(self, exc: BaseException, held: list[Aggregate]) -> bool:
        if not database_down(exc):
            self._failing_flushes = 0  # the database answered
            return False
        self._failing_flushes += 1
        if not self.enabled or self._busy.locked():
            return False
        async with self._busy:
            unavailable = [
                aggregate for aggregate in held if aggregate.kind == MonitoringGroupKind.UNAVAILABLE
            ]
            if self._down_since is None:  # since the first request it failed, else this first flush
                firsts = [aggregate.first for aggregate in unavailable if _of_postgresql(aggregate)]
                self._down_since = min([self.clock(), *firsts])
            met_by_traffic = bool(unavailable)
            if not met_by_traffic and self._failing_flushes < LASTING_FLUSHES:
                return False
            if self.monotonic() < self._not_before or not self._askable():
                return False
            claim = await self._claim()
            if claim is None:
                return False
            sent, passing = await self._send(self._notice(exc, held))
            if sent:
                self._told = True
            if sent or not passing:
                # told, or refused for good by every chat: the claim stays for its TTL
                self._local_next = self.monotonic() + self.interval_s
            elif claim:
                await self._wait_and_release(self._not_before - self.monotonic())
            return sent

    async def _flush_succeeded(self) -> bool:
        self._failing_flushes = 0
        if self._down_since is None or self._busy.locked():
            return False
        async with self._busy:
            since, self._down_since = self._down_since, None
            told, self._told = self._told, False
            self._local_next = float("-inf")
            if not self.enabled:
                return False
            try:
                async with asyncio.timeout(VALKEY_TIMEOUT_S):
                    removed = await self.valkey.delete(CLAIM_KEY)
                ours = removed == 1  # the process that removes the claim tells it is over
            except (ValkeyError, OSError, TimeoutError):
                ours = told
            if not ours or self.monotonic() < self._not_before:
                return False
            sent, _ = await self._send(self._over(since))
            return sent

    async def _claim(self) -> bool | None:
        """True: claimed in Valkey; False: claimed for this process only (Valkey down); None: not ours
        (another process holds the claim, or Telegram asked every process to wait: ``WAIT_KEY``)."""
        try:
            async with asyncio.timeout(VALKEY_TIMEOUT_S):
                won = await self._claim_script(
                    keys=[CLAIM_KEY, WAIT_KEY], args=[self._token, round(self.interval_s)]
                )
        except (ValkeyError, OSError, TimeoutError):
            return False if self.monotonic() >= self._local_next else None
        if won < 0:  # milliseconds left of the wait
            self._not_before = max(self._not_before, self.monotonic() - won / 1000)
        return True if won == 1 else None

    async def _wait_and_release(self, wait_s: float) -> None:
        """Release the claim, and hold every process (``WAIT_KEY``) to the wait Telegram asked for."""
        try:
            async with asyncio.timeout(VALKEY_TIMEOUT_S):
                await self._wait_script(
                    keys=[WAIT_KEY, CLAIM_KEY], args=[self._token, max(1, math.ceil(wait_s * 1000))]
                )
        except (ValkeyError, OSError, TimeoutError):
            pass

    def _askable(self) -> bool:
        """Whether a chat may be asked now (not every one refused the notice for good lately)."""
        now = self.monotonic()
        return any(self._refused_until.get(chat, float("-inf")) <= now for chat in self.chats)

    async def _send(self, parts: list[Part]) -> tuple[bool, bool]:
        """Send to every chat as plain text, following a chat that migrated (``migrate_to_chat_id``)
        at once. Returns (at least one message may have arrived, a chat failed for a passing reason:
        worth another try soon). A chat that refused for good is not asked again for an interval."""
        text = render(parts).plain
        delivered = passing = False
        for configured in self.chats:
            if self._refused_until.get(configured, float("-inf")) > self.monotonic():
                continue
            chat = current_chat(self._routes, configured)
            window_left = self._windows.get(chat, float("-inf")) - self.clock()
            if window_left > 0:  # Telegram asked to be left alone (this notice's 429, or the sender's)
                passing = True
                self._not_before = max(self._not_before, self.monotonic() + window_left)
                continue
            result: SendResult = await self.telegram.send(chat, text, html_mode=False)
            for _ in range(MAX_MIGRATIONS):
                if result.outcome != "migrated" or result.migrate_to_chat_id is None:
                    break
                previous, chat = chat, result.migrate_to_chat_id
                self._routes[configured] = self._unsaved_routes[configured] = chat
                warn_chat_migrated(configured, previous, chat)
                result = await self.telegram.send(chat, text, html_mode=False)
            if result.outcome in ("sent", "uncertain"):
                delivered = True
                self._pause_s = RETRY_FIRST_S
                continue
            if result.outcome == "retry":
                passing = True
                wait = result.retry_after_s
                if wait is None:
                    wait, self._pause_s = self._pause_s, min(2 * self._pause_s, RETRY_MAX_S)
                else:
                    until = max(self._windows.get(chat, float("-inf")), self.clock() + wait)
                    self._windows[chat] = self._unsaved_windows[chat] = until
                self._not_before = max(self._not_before, self.monotonic() + wait)
            else:  # failed (or a chat still moving after MAX_MIGRATIONS): Telegram will say it again
                self._refused_until[configured] = self.monotonic() + self.interval_s
            if self._warnings.due(result.outcome):
                log.warning(
                    "outage_notice_not_sent",
                    outcome=result.outcome,
                    status=result.status,
                    chat_id=chat,
                    detail=result.description,
                )
        return delivered, passing

    def _notice(self, exc: BaseException, held: list[Aggregate]) -> list[Part]:
        since = self._down_since if self._down_since is not None else self.clock()
        return [
            Part(f"🚨 Outage · {self.environment} · {self.release}\n"),
            Part(self._what_failed(exc)),
            Part(f" ({_cause_name(exc)}, seen from {self.host} since {_when(since)})\n"),
            Part(_held_summary(held)),
            Part(
                "Alerts are held until the database is back. Sent around the database, at most once "
                f"per {_duration(self.interval_s)}.\n"
            ),
        ]

    def _what_failed(self, exc: BaseException) -> str:
        """PostgreSQL unreachable, unless the pool timed out with every connection it may open in
        use: then PostgreSQL may be up and the pool too small for the load (or its connections hung
        on a frozen server, or PostgreSQL giving it no more than it holds), and "unreachable" would
        send the operator to the wrong place."""
        figures = self.exhausted() if isinstance(database_error(exc), psycopg_pool.PoolTimeout) else None
        if figures is None:
            return "PostgreSQL is unreachable"
        lent, may_open = figures["lent"], figures["pool_max"]
        fewer = f"; it may open {may_open}, PostgreSQL gave it no more" if lent < may_open else ""
        return f"No PostgreSQL connection to be had: all {lent} of the pool's connections are in use{fewer}"

    def _over(self, since: float) -> list[Part]:
        return [
            Part(f"✅ Outage over · {self.environment} · {self.release}\n"),
            Part(f"PostgreSQL answers again (failing from {_when(since)}, "),
            Part(f"{_duration(self.clock() - since)}). The held events are being written and alerted.\n"),
        ]


def _forget_saved(unsaved: dict[str, Any], saved: Mapping[str, Any]) -> None:
    """Drop from ``unsaved`` what ``saved`` wrote to the database, unless it changed since."""
    for chat, value in saved.items():
        if unsaved.get(chat) == value:
            del unsaved[chat]


_failures = OncePerInterval(60.0)


async def _quietly(work: Awaitable[bool]) -> bool:
    """``work``'s answer, or False when it failed (logged at most once a minute): a notice's own
    failure never replaces the flush's outcome."""
    try:
        return await work
    except Exception as exc:
        if _failures.due():
            log.warning("outage_notice_failed", error=type(exc).__name__, detail=error_message(exc))
        return False


def _of_postgresql(aggregate: Aggregate) -> bool:
    """Whether an ``unavailable`` aggregate is PostgreSQL's (its fixed fingerprint's dependency): a
    Valkey outage's, held alongside, dates nothing of this one."""
    fixed = aggregate.samples[0].fixed if aggregate.samples else None
    return fixed is not None and fixed[0] == "postgresql"


def _cause_name(exc: BaseException) -> str:
    """The name of the failure that says the database is down (``exc`` or the first of its causes
    that is psycopg's or the pool's): a flush's own wrapper (``CheckInsNotAppliedError``) says
    nothing of the outage."""
    return type(database_error(exc) or exc).__name__
