"""A fake Telegram Bot API (``sendMessage``) for the tests, enforcing Telegram's limits.

An ASGI app served by uvicorn on 127.0.0.1 (in a daemon thread for the tests, or on its own:
``python -m tests.fakes.telegram --port 18700 --token 123456:TEST`` and point ``TELEGRAM_API_URL`` at
it). It behaves like the Bot API where our sender depends on it:

- ``POST /bot<token>/sendMessage`` with a JSON or form body (``chat_id``, ``text``, ``parse_mode``);
  a wrong token is a 401.
- ``parse_mode=HTML``: the text is parsed like Telegram does (the supported tags only, properly
  nested; ``&lt; &gt; &amp; &quot;`` and numeric entities; a bare ``<``, ``>`` or ``&`` is an error),
  and a malformed text is refused with ``400 Bad Request: can't parse entities: ...``.
- The text after entity parsing must hold 1 to 4,096 characters, counted as Telegram counts them (UTF-16
  code units: an emoji outside the BMP counts twice), else 400.
- Flood control: at most one message per second per chat, 20 per minute per group chat (a chat id
  starting with ``-``) and 30 per second across all chats (the bot's bulk limit); a message over any
  of them gets ``429`` with ``parameters.retry_after``.
- A chat id that is neither a number nor ``@username`` is ``400 Bad Request: chat not found``.
- A 429 announces a window, and the fake holds the chat to it as the Bot API does: once it answered
  ``retry_after = N`` to a chat (flood control or a scripted 429), every ``sendMessage`` to that chat
  before ``N`` seconds have passed is refused again with 429 and a fresh ``retry_after``, the whole
  seconds still left (rounded up, at least 1), and recorded as refused with ``inside_window`` set (a
  sender that honours ``retry_after`` never has one: ``refused_inside_window()``). The windows are per
  chat. Time is ``clock`` (``time.time`` unless a test gives another: no test sleeps to move it).
- A group upgraded to a supergroup (``migrate(old, new)``): a message to the old chat id is refused as
  the Bot API refuses it, ``400 Bad Request: group chat was upgraded to a supergroup chat`` with
  ``parameters.migrate_to_chat_id`` (an integer, ResponseParameters), and is not delivered.
- Scripted faults (``script``): the next requests answer a given status (e.g. 429 with
  ``retry_after=3``, which opens its chat's window like any 429; a request refused inside a window
  does not use one up); ``hold``: a request whose text contains a marker is recorded (Telegram has it)
  and then answered only after a delay (a client killed meanwhile never learns it was sent); with
  ``drip=True`` the answer's bytes trickle over that delay instead, as on a slow network, so no
  single read waits long (a per-read timeout never fires).
- Every request is recorded with its arrival time (``clock()``), chat, text, parse mode and the
  status answered; ``GET /_fake/messages`` shows them when run on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from tests.fakes.serving import ThreadedServer

MAX_TEXT = 4096
PER_CHAT_INTERVAL_S = 1.0
GROUP_PER_MINUTE = 20
BOT_PER_SECOND = 30
CHAT_ID = re.compile(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31}")

_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "span",
    "tg-spoiler",
    "a",
    "tg-emoji",
    "code",
    "pre",
    "blockquote",
}
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});")
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[a-zA-Z-]+(?:=\"[^\"<>]*\")?)*)\s*>")


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def parse_html(text: str) -> tuple[str, str | None]:
    """(visible text, None) for a message Telegram accepts in HTML mode, else ("", the error)."""
    out: list[str] = []
    stack: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "<":
            match = _TAG.match(text, index)
            if match is None:
                return "", f"Unexpected end of name token at byte offset {index}"
            closing, name, attributes = match.group(1), match.group(2).lower(), match.group(3).strip()
            if closing:
                if not stack or stack[-1] != name:
                    return (
                        "",
                        f'Unmatched end tag at byte offset {index}, expected "</{stack[-1] if stack else ""}>"',  # noqa: E501
                    )
                stack.pop()
            else:
                if name not in _TAGS:
                    return "", f'Unsupported start tag "{name}" at byte offset {index}'
                if stack and stack[-1] in ("code", "pre") and not (stack[-1] == "pre" and name == "code"):
                    return "", f"Entities can't be nested in pre or code at byte offset {index}"
                if name == "a" and 'href="' not in attributes:
                    return "", f"Tag a needs an href at byte offset {index}"
                if name == "span" and attributes != 'class="tg-spoiler"':
                    return "", f'Tag "span" must have class "tg-spoiler" at byte offset {index}'
                stack.append(name)
            index = match.end()
        elif char == "&":
            match = _ENTITY.match(text, index)
            if match is None:
                return "", f"Unsupported HTML entity at byte offset {index}"
            out.append(html.unescape(match.group(0)))
            index = match.end()
        elif char == ">":
            return "", f"Character '>' is reserved at byte offset {index}"
        else:
            out.append(char)
            index += 1
    if stack:
        return "", f'Can\'t find end tag corresponding to start tag "{stack[-1]}"'
    return "".join(out), None


@dataclass
class Received:
    at: float
    chat_id: str
    text: str
    parse_mode: str | None
    status: int
    description: str = ""
    retry_after: int | None = None
    inside_window: bool = False
    """Refused (429) because it came before the ``retry_after`` a previous 429 announced had passed."""

    @property
    def accepted(self) -> bool:
        return self.status == 200


@dataclass
class Scripted:
    status: int
    description: str = ""
    retry_after: int | None = None


@dataclass
class Hold:
    contains: str
    seconds: float
    drip: bool = False


@dataclass
class FakeTelegram:
    token: str
    received: list[Received] = field(default_factory=list)
    scripted: deque[Scripted] = field(default_factory=deque)
    holds: list[Hold] = field(default_factory=list)
    accepted_at: dict[str, list[float]] = field(default_factory=dict)
    migrated: dict[str, str] = field(default_factory=dict)
    blocked_until: dict[str, float] = field(default_factory=dict)
    """Chat -> the end of the window its last 429 announced (``retry_after`` after it)."""
    clock: Callable[[], float] = time.time
    next_message_id: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: bool = False

    def script(self, *responses: Scripted) -> None:
        with self.lock:
            self.scripted.extend(responses)

    def hold(self, contains: str, seconds: float, *, drip: bool = False) -> None:
        with self.lock:
            self.holds.append(Hold(contains, seconds, drip))

    def migrate(self, old_chat_id: str, new_chat_id: str) -> None:
        """The group ``old_chat_id`` becomes the supergroup ``new_chat_id`` (an id like -100...)."""
        with self.lock:
            self.migrated[old_chat_id] = new_chat_id

    def messages(self, *, accepted_only: bool = False) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.accepted or not accepted_only]

    def refused_inside_window(self) -> list[Received]:
        """The requests that came before the ``retry_after`` of a 429 to their chat had passed."""
        with self.lock:
            return [r for r in self.received if r.inside_window]

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.scripted.clear()
            self.holds.clear()
            self.accepted_at.clear()
            self.migrated.clear()
            self.blocked_until.clear()

    def _answer(
        self, chat_id: str, text: str, parse_mode: str | None
    ) -> tuple[int, dict[str, Any], Hold | None]:
        """(status, body, how it is held) of one sendMessage."""
        now = self.clock()
        with self.lock:
            blocked_until = self.blocked_until.get(chat_id)
            if blocked_until is not None and now < blocked_until:
                wait = max(1, math.ceil(blocked_until - now))
                description = f"Too Many Requests: retry after {wait}"
                return self._refuse(
                    now, chat_id, text, parse_mode, 429, description, wait, inside_window=True
                )
            if self.scripted:
                fault = self.scripted.popleft()
                return self._refuse(
                    now, chat_id, text, parse_mode, fault.status, fault.description, fault.retry_after
                )
            if not chat_id:
                return self._refuse(now, chat_id, text, parse_mode, 400, "Bad Request: chat_id is empty")
            if not CHAT_ID.fullmatch(chat_id):
                return self._refuse(now, chat_id, text, parse_mode, 400, "Bad Request: chat not found")
            if chat_id in self.migrated:
                description = "Bad Request: group chat was upgraded to a supergroup chat"
                status, body, hold = self._refuse(now, chat_id, text, parse_mode, 400, description)
                body["parameters"] = {"migrate_to_chat_id": int(self.migrated[chat_id])}
                return status, body, hold
            visible = text
            if parse_mode is not None:
                if parse_mode.upper() != "HTML":
                    return self._refuse(
                        now, chat_id, text, parse_mode, 400, "Bad Request: unsupported parse_mode"
                    )
                visible, error = parse_html(text)
                if error is not None:
                    description = f"Bad Request: can't parse entities: {error}"
                    return self._refuse(now, chat_id, text, parse_mode, 400, description)
            if not visible.strip():
                return self._refuse(now, chat_id, text, parse_mode, 400, "Bad Request: message text is empty")
            if utf16_length(visible) > MAX_TEXT:
                return self._refuse(now, chat_id, text, parse_mode, 400, "Bad Request: message is too long")
            accepted = self.accepted_at.setdefault(chat_id, [])
            if accepted and now - accepted[-1] < PER_CHAT_INTERVAL_S:
                wait = math.ceil(PER_CHAT_INTERVAL_S - (now - accepted[-1]))
                return self._refuse(
                    now, chat_id, text, parse_mode, 429, f"Too Many Requests: retry after {wait}", wait
                )
            if chat_id.startswith("-"):
                last_minute = [moment for moment in accepted if now - moment < 60.0]
                if len(last_minute) >= GROUP_PER_MINUTE:
                    wait = max(1, math.ceil(last_minute[0] + 60.0 - now))
                    description = f"Too Many Requests: retry after {wait}"
                    return self._refuse(now, chat_id, text, parse_mode, 429, description, wait)
            if self._accepted_in_the_last_second(now) >= BOT_PER_SECOND:
                return self._refuse(
                    now, chat_id, text, parse_mode, 429, "Too Many Requests: retry after 1", 1
                )
            accepted.append(now)
            self.received.append(Received(now, chat_id, text, parse_mode, 200))
            message_id = self.next_message_id
            self.next_message_id += 1
            hold = next((h for h in self.holds if h.contains in text), None)
        body = {
            "ok": True,
            "result": {"message_id": message_id, "date": int(now), "chat": {"id": chat_id}, "text": visible},
        }
        return 200, body, hold

    def _accepted_in_the_last_second(self, now: float) -> int:
        accepted = 0
        for request in reversed(self.received):  # in arrival order
            if now - request.at >= 1.0:
                break
            accepted += request.accepted
        return accepted

    def _refuse(
        self,
        now: float,
        chat_id: str,
        text: str,
        parse_mode: str | None,
        status: int,
        description: str,
        retry_after: int | None = None,
        *,
        inside_window: bool = False,
    ) -> tuple[int, dict[str, Any], Hold | None]:
        self.received.append(
            Received(now, chat_id, text, parse_mode, status, description, retry_after, inside_window)
        )
        if status == 429 and retry_after is not None and not inside_window:
            self.blocked_until[chat_id] = max(self.blocked_until.get(chat_id, now), now + retry_after)
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        return status, body, None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if scope["method"] == "GET" and path == "/_fake/messages":
            await _respond(send, 200, [asdict(r) for r in self.messages()])
            return
        if scope["method"] != "POST" or not path.endswith("/sendMessage"):
            await _respond(send, 404, {"ok": False, "error_code": 404, "description": "Not Found"})
            return
        if path != f"/bot{self.token}/sendMessage":
            await _respond(send, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
            return
        fields = _fields(scope, body)
        status, answer, hold = self._answer(
            str(fields.get("chat_id") or ""), str(fields.get("text") or ""), fields.get("parse_mode")
        )
        if hold is not None and hold.drip:
            await _drip(send, status, answer, hold.seconds, lambda: self.stopping)
            return
        deadline = time.monotonic() + (hold.seconds if hold is not None else 0.0)
        while time.monotonic() < deadline and not self.stopping:  # noqa: ASYNC110 - set from another thread
            await asyncio.sleep(0.05)
        await _respond(send, status, answer)


def _fields(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    content_type = dict(scope["headers"]).get(b"content-type", b"").decode()
    if "application/json" in content_type:
        decoded = json.loads(body or b"{}")
        return decoded if isinstance(decoded, dict) else {}
    return {key: values[-1] for key, values in parse_qs(body.decode()).items()}


async def _respond(send: Any, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _drip(send: Any, status: int, payload: Any, seconds: float, stopping: Callable[[], bool]) -> None:
    """The answer's headers at once, then its body a byte at a time spread over ``seconds``."""
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    pause = seconds / len(data)
    for index in range(len(data)):
        if not stopping():
            await asyncio.sleep(pause)
        await send({"type": "http.response.body", "body": data[index : index + 1], "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class FakeTelegramServer(ThreadedServer):
    """Serves a ``FakeTelegram`` on a free (or the given) 127.0.0.1 port."""

    def __init__(self, fake: FakeTelegram, port: int | None = None) -> None:
        super().__init__(fake, "fake-telegram", port)
        self.fake = fake

    def stop(self) -> None:
        self.fake.stopping = True
        super().stop()


@contextmanager
def serve_fake_telegram(token: str = "123456:TEST-TOKEN-not-a-real-one") -> Iterator[FakeTelegramServer]:
    server = FakeTelegramServer(FakeTelegram(token=token))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake Telegram Bot API on 127.0.0.1 (sendMessage).")
    parser.add_argument("--port", type=int, default=18700)
    parser.add_argument("--token", default="123456:TEST-TOKEN-not-a-real-one")
    options = parser.parse_args()
    print(
        f"fake Telegram on http://127.0.0.1:{options.port}: TELEGRAM_API_URL=http://127.0.0.1:{options.port} "
        f"TELEGRAM_BOT_TOKEN={options.token}; messages at /_fake/messages",
        flush=True,
    )
    uvicorn.run(FakeTelegram(token=options.token), host="127.0.0.1", port=options.port, log_level="warning")


if __name__ == "__main__":
    main()
