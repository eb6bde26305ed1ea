"""What the server derives from a raw page view: path, UTM, referrer, device/browser/OS, bot flag,
and the visitor id (a keyed hash: no raw IP or user agent is ever stored).

User agents are classified into coarse families with a few regular expressions and an LRU cache:
the full uap-core regex set costs an order of magnitude more per uncached agent on the hot path,
and the reports only show families. Bots are what crawlerdetect (a maintained list of crawlers, with
its exclusions) says; it is asked only about agents holding a word every bot list contains (``_BOT_HINT``):
it costs ~130 µs per uncached agent, the hint ~1, and browsers never hold one.

A path is stored in one spelling per resource (RFC 3986 section 6.2.2): percent-encoded characters
that need no encoding are decoded (``/caf%C3%A9``, ``/caf%c3%a9`` and ``/café`` are one page), those
that do keep it with upper-case hex (``%2F`` is not ``/``). Paths stay case-sensitive and
``/about`` is not ``/about/``: a server may serve different pages there.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

from crawlerdetect import CrawlerDetect

MAX_AGE = timedelta(hours=24)
_BOT_HINT = re.compile(
    r"bot|crawl|spider|slurp|headless|lighthouse|pingdom|monitor|curl|wget|python|httpx|go-http|java|"
    r"facebookexternalhit|preview|phantomjs|http|fetch|scan|check|archiv|feed|link|validator|index|google",
    re.IGNORECASE,
)
_CRAWLERS = CrawlerDetect()
_BROWSERS = (
    ("Edge", re.compile(r"Edg(e|A|iOS)?/")),
    ("Opera", re.compile(r"OPR/|Opera")),
    ("Samsung Internet", re.compile(r"SamsungBrowser/")),
    ("Firefox", re.compile(r"Firefox/|FxiOS/")),
    ("Chrome", re.compile(r"Chrome/|CriOS/")),
    ("Safari", re.compile(r"Safari/")),
)
_SYSTEMS = (
    ("iOS", re.compile(r"iPhone|iPad|iPod")),
    ("Android", re.compile(r"Android")),
    ("Windows", re.compile(r"Windows")),
    ("ChromeOS", re.compile(r"CrOS")),
    ("macOS", re.compile(r"Mac OS X|Macintosh")),
    ("Linux", re.compile(r"Linux|X11")),
)
_SOURCES = (
    ("Google", re.compile(r"(^|\.)google\.")),
    ("Bing", re.compile(r"(^|\.)bing\.com$")),
    ("DuckDuckGo", re.compile(r"(^|\.)duckduckgo\.com$")),
    ("Facebook", re.compile(r"(^|\.)(facebook\.com|fb\.me)$")),
    ("Twitter", re.compile(r"^(t\.co|twitter\.com|x\.com)$")),
    ("LinkedIn", re.compile(r"(^|\.)(linkedin\.com|lnkd\.in)$")),
    ("Reddit", re.compile(r"(^|\.)reddit\.com$")),
    ("Hacker News", re.compile(r"^news\.ycombinator\.com$")),
)


class Agent(NamedTuple):
    browser: str
    os: str
    device: str
    is_bot: bool


@lru_cache(maxsize=4096)
def classify_agent(user_agent: str) -> Agent:
    is_bot = not user_agent or (_BOT_HINT.search(user_agent) is not None and _CRAWLERS.is_crawler(user_agent))
    browser = next((name for name, pattern in _BROWSERS if pattern.search(user_agent)), "Other")
    system = next((name for name, pattern in _SYSTEMS if pattern.search(user_agent)), "Other")
    if "iPad" in user_agent or "Tablet" in user_agent or (system == "Android" and "Mobile" not in user_agent):
        device = "tablet"
    elif "Mobi" in user_agent or "iPhone" in user_agent:
        device = "mobile"
    else:
        device = "desktop"
    return Agent(browser=browser, os=system, device=device, is_bot=is_bot)


def device_class(agent: Agent, screen_width: int | None) -> str:
    """The agent's class, corrected by the screen when the agent claims a desktop."""
    if agent.device == "desktop" and screen_width is not None:
        if screen_width < 768:
            return "mobile"
        if screen_width < 1024:
            return "tablet"
    return agent.device


class Page(NamedTuple):
    host: str
    path: str
    utm_source: str
    utm_medium: str
    utm_campaign: str


@lru_cache(maxsize=8192)
def parse_page(url: str) -> Page:
    """Host, path and UTM tags of a page URL; ``ValueError`` when the URL cannot be split (an
    unbalanced ``[`` in the host, characters that NFKC-normalise into URL delimiters).

    UTM values are percent-decoded: bytes that are not UTF-8 become U+FFFD (``parse_qsl``'s
    ``errors="replace"``), and so does a decoded NUL, which PostgreSQL cannot store in ``text``.
    """
    parts = urlsplit(url)
    utm = {
        key: value[:200].replace("\x00", "\ufffd")
        for key, value in parse_qsl(parts.query)
        if key.startswith("utm_")
    }
    return Page(
        host=(parts.hostname or "").lower(),
        path=canonical_path(parts.path or "/")[:2000],
        utm_source=utm.get("utm_source", ""),
        utm_medium=utm.get("utm_medium", ""),
        utm_campaign=utm.get("utm_campaign", ""),
    )


_ENCODED = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_STAYS_ENCODED = frozenset("%/?#[]@!$&'()*+,;=:") | frozenset(map(chr, range(0x20))) | {"\x7f"}
"""Reserved characters (decoding one changes the URL's meaning), ``%`` itself and controls."""


def _decode_run(match: re.Match[str]) -> str:
    run = match.group()
    try:
        text = bytes.fromhex(run.replace("%", "")).decode()
    except UnicodeDecodeError:
        return run.upper()
    return "".join(f"%{ord(char):02X}" if char in _STAYS_ENCODED else char for char in text)


def canonical_path(path: str) -> str:
    """``path`` with every percent-encoded character that needs no encoding decoded (UTF-8), and the
    rest in upper-case hex: one spelling per resource (RFC 3986 section 6.2.2.1-2)."""
    return _ENCODED.sub(_decode_run, path) if "%" in path else path


@lru_cache(maxsize=4096)
def referrer_source(referrer: str, own_host: str) -> tuple[str, str]:
    """(referrer host, source name); ('', '') for direct traffic and internal navigation.
    ``ValueError`` when the referrer cannot be split (see ``parse_page``)."""
    if not referrer:
        return "", ""
    host = (urlsplit(referrer).hostname or "").lower()
    if not host or host == own_host:
        return "", ""
    bare = host.removeprefix("www.")
    return host, next((name for name, pattern in _SOURCES if pattern.search(bare)), bare)


def clamp_timestamp(client_ts: datetime | None, now: datetime) -> datetime:
    """None in the future, none older than 24 hours; no client time means now. Both times are
    timezone-aware (the ingest body refuses a ``ts`` without an offset)."""
    if client_ts is None or client_ts > now:
        return now
    return max(client_ts, now - MAX_AGE)


def utc_day(ts: datetime, now: datetime) -> date:
    """The UTC day of a view's clamped ``ts``, whose salt hashes its visitor. ``now`` is UTC: a view
    without a client time (``ts is now``, the common case) costs no conversion."""
    if ts is now:
        return now.date()
    return ts.astimezone(UTC).date()


def visitor_id(salt: bytes, site_id: int, client_ip: str, user_agent: str) -> int:
    """A signed 64-bit keyed hash; the salt changes daily (at UTC midnight, by the UTC day of the
    view's ``ts``) so ids cannot be linked across days."""
    digest = hashlib.blake2b(
        f"{site_id}\x00{client_ip}\x00{user_agent}".encode(), digest_size=8, key=salt
    ).digest()
    return int.from_bytes(digest, "big", signed=True)
