"""Telegram: the Bot API's ``sendMessage`` over one httpx client per process, and the messages.

Messages use HTML parse mode, where only ``<``, ``>`` and ``&`` must be escaped. Telegram limits the
text to 4,096 characters *after* entity parsing (the visible text, tags removed and entities decoded),
and counts them as UTF-16 code units (an emoji outside the BMP counts twice): ``render`` measures
exactly that and truncates the longest blocks, ending the text with a pointer to the admin API.

The bot token is part of the request path, so it appears in no log line: httpx's own request log is
filtered (``_RedactToken``), and errors are reported by type and status only.

One request takes at most ``timeout_s`` in all (httpx's own timeouts bound each phase, not their
sum): the sender plans its deadline on that bound. A request cut by it before it could leave (waiting
for a connection, connecting) is a ``retry``; once its headers may have been written it is
``uncertain``, as any failure after the request may have reached Telegram.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import msgspec
from prometheus_client import Counter

MAX_MESSAGE = 4096
"""Telegram's limit for ``text`` after entity parsing, in UTF-16 code units."""

Tag = Literal["b", "i", "code", "pre"]

OUTCOMES = Counter(
    "app_monitoring_telegram_requests", "Telegram sendMessage requests by outcome", ["outcome"]
)

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_TOKEN_IN_PATH = re.compile(r"/bot[^/\s]+/")


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def clean(text: str) -> str:
    """Text Telegram (and JSON) accepts: lone surrogates become U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


@dataclass(frozen=True, slots=True)
class Part:
    text: str
    tag: Tag | None = None


@dataclass(frozen=True, slots=True)
class Rendered:
    html: str
    plain: str


def _cut(text: str, units: int) -> str:
    """The longest prefix of ``text`` of at most ``units`` UTF-16 code units (never half a pair)."""
    if units <= 0:
        return ""
    if utf16_length(text) <= units:
        return text
    low, high = 0, min(len(text), units)
    while low < high:  # the longest prefix that fits
        middle = (low + high + 1) // 2
        if utf16_length(text[:middle]) <= units:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def render(parts: list[Part], pointer: str = "", limit: int = MAX_MESSAGE) -> Rendered:
    """HTML and plain text of ``parts``; over ``limit``, the parts are cut from the end and the text
    ends with ``pointer`` (where the whole story is)."""
    parts = [Part(clean(part.text), part.tag) for part in parts if part.text]
    if sum(utf16_length(part.text) for part in parts) > limit:
        tail = Part(clean(f"\n… truncated; full details: {pointer}" if pointer else "\n… truncated"))
        budget = limit - utf16_length(tail.text)
        kept: list[Part] = []
        for part in parts:
            size = utf16_length(part.text)
            if size <= budget:
                kept.append(part)
                budget -= size
                continue
            piece = _cut(part.text, budget - 1)
            if piece:
                kept.append(Part(piece + "…", part.tag))
            break
        parts = [*kept, tail]
    html_text = "".join(
        f"<{part.tag}>{html.escape(part.text, quote=False)}</{part.tag}>"
        if part.tag
        else html.escape(part.text, quote=False)
        for part in parts
    )
    return Rendered(html=html_text, plain="".join(part.text for part in parts))


# ------------------------------------------------------------------------------------------ client


class SendResult(msgspec.Struct, frozen=True):
    """What became of one request.

    ``outcome``: ``sent``; ``retry`` (not delivered, safe to send again after ``retry_after_s``);
    ``bad_entities`` (HTML refused: send as plain text); ``migrated`` (not delivered: the group was
    upgraded to a supergroup, whose id is ``migrate_to_chat_id``: send there); ``failed``
    (permanently refused); ``uncertain`` (the request may have reached Telegram: never resent).
    """

    outcome: Literal["sent", "retry", "bad_entities", "migrated", "failed", "uncertain"]
    status: int | None = None
    description: str = ""
    retry_after_s: float | None = None
    message_id: int | None = None
    migrate_to_chat_id: str | None = None


class _Answer(msgspec.Struct):
    ok: bool = False
    description: str = ""
    error_code: int | None = None
    parameters: dict[str, Any] | None = None
    result: dict[str, Any] | None = None


class _RedactToken(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                _TOKEN_IN_PATH.sub("/bot***/", str(arg)) if "/bot" in str(arg) else arg
                for arg in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        if isinstance(record.msg, str) and "/bot" in record.msg:
            record.msg = _TOKEN_IN_PATH.sub("/bot***/", record.msg)
        return True


_REDACTOR = _RedactToken()
for _name in ("httpx", "httpcore"):
    if _REDACTOR not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_REDACTOR)

# Request not sent at all (or not completely): Telegram cannot have acted on it.
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.PoolTimeout,
)


class _Progress:
    """Whether a request may have left: set by httpcore's ``trace`` extension when it starts writing."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = False

    async def trace(self, event: str, _info: dict[str, Any]) -> None:
        if event.endswith("send_request_headers.started"):
            self.left = True


class TelegramClient:
    """``sendMessage`` with one ``httpx.AsyncClient`` per process (created on first use)."""

    def __init__(self, token: str, api_url: str, timeout_s: float) -> None:
        self._token = token
        self._base = api_url.rstrip("/")
        self.timeout_s = timeout_s
        """The most one ``send`` takes, connection and answer included."""
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
        self._client: httpx.AsyncClient | None = None

    @property
    def configured(self) -> bool:
        return bool(self._token)

    def __repr__(self) -> str:
        return f"TelegramClient(api_url={self._base!r}, token=***)"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, chat_id: str, text: str, *, html_mode: bool) -> SendResult:
        """One ``sendMessage`` request, counted by outcome (``OUTCOMES``): every request counts here,
        an alert's, its plain-text retry's, a report's and the outage notice's alike."""
        result = await self._send(chat_id, text, html_mode=html_mode)
        OUTCOMES.labels(outcome=result.outcome).inc()
        return result

    async def _send(self, chat_id: str, text: str, *, html_mode: bool) -> SendResult:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        payload: dict[str, Any] = {
            "chat_id": chat_id,
            "text": text,
            "link_preview_options": {"is_disabled": True},
        }
        if html_mode:
            payload["parse_mode"] = "HTML"
        progress = _Progress()
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.post(
                    f"{self._base}/bot{self._token}/sendMessage",
                    json=payload,
                    extensions={"trace": progress.trace},
                )
        except TimeoutError:
            return SendResult(outcome="uncertain" if progress.left else "retry", description="TotalTimeout")
        except _NOT_SENT as exc:
            return SendResult(outcome="retry", description=type(exc).__name__)
        except httpx.HTTPError as exc:
            return SendResult(outcome="uncertain", description=type(exc).__name__)
        return _result(response)


def _result(response: httpx.Response) -> SendResult:
    """The outcome of Telegram's answer. A 4xx is the Bot API refusing the message (a 401, a token
    being rotated, is worth another try; a 400 with ``parameters.migrate_to_chat_id``, a group
    upgraded to a supergroup, is worth sending to that chat); a 5xx may come from Telegram's front
    after the bot sent the message (a 502 or 504 on a slow answer), so it is ``uncertain``, never
    resent."""
    try:
        answer = msgspec.json.decode(response.content, type=_Answer)
    except msgspec.DecodeError:
        answer = _Answer(description=response.reason_phrase)
    status = response.status_code
    description = answer.description[:300]
    if status == 200 and answer.ok:
        message_id = (answer.result or {}).get("message_id")
        return SendResult(
            outcome="sent", status=status, message_id=message_id if isinstance(message_id, int) else None
        )
    if status == 429:
        retry_after = (answer.parameters or {}).get("retry_after")
        seconds = float(retry_after) if isinstance(retry_after, int | float) else 5.0
        return SendResult(
            outcome="retry", status=status, description=description, retry_after_s=math.ceil(seconds)
        )
    migrate_to = (answer.parameters or {}).get("migrate_to_chat_id")
    if 400 <= status < 500 and isinstance(migrate_to, int) and not isinstance(migrate_to, bool):
        # ResponseParameters.migrate_to_chat_id: "The group has been migrated to a supergroup with
        # the specified identifier" (an integer of up to 52 bits; chat ids travel as text here).
        return SendResult(
            outcome="migrated", status=status, description=description, migrate_to_chat_id=str(migrate_to)
        )
    if status == 400 and "can't parse entities" in description.lower():
        return SendResult(outcome="bad_entities", status=status, description=description)
    if status >= 500:
        return SendResult(outcome="uncertain", status=status, description=description)
    if status == 401:
        return SendResult(outcome="retry", status=status, description=description)
    return SendResult(outcome="failed", status=status, description=description)
