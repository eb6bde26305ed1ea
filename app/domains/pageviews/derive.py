r"""What the server derives from a raw page view: path, UTM, referrer, device/browser/OS, bot flag,
and the visitor id (a keyed hash: no raw IP or user agent is ever stored, nor logged: the ingest
routes' access-log lines leave the address out, ``app.core.middleware.LOG_CLIENT_IP_OPT``, and so do
the gateway's, ``deploy/nginx.conf``).

User agents are classified into coarse families with a few regular expressions and an LRU cache:
the full uap-core regex set costs an order of magnitude more per uncached agent on the hot path,
and the reports only show families.

An agent is a bot when it is empty or longer than ``MAX_AGENT_CHARS``, when it names a load-testing
tool crawlerdetect does not list
(``_LOAD_TOOLS``: wrk, k6, hey...), browser automation or a JavaScript runtime (``_AUTOMATION``:
Puppeteer, Playwright, Selenium, Deno...), when it is not shaped like a browser's (no parenthesised
platform followed by an engine, ``_ENGINES``: ``-``, ``Mozilla/5.0``, an Android app's ``Dalvik/``),
or when crawlerdetect (a maintained list of crawlers, with its exclusions) says so. Crawlerdetect is
asked about every agent except a *plain mainstream browser*,
the only shortcut: an agent that is, in full, ``Mozilla/5.0 (<platform>) <engine> <products>``
(``_MAINSTREAM_BROWSER``) with a platform of Windows, macOS, X11 Linux, ChromeOS, iOS/iPadOS or
Android, the engine ``AppleWebKit/<v> (KHTML, like Gecko)`` or ``Gecko/<v>``, and nothing after it
but the products of mainstream browsers (``Chrome/``, ``Safari/``, ``Version/``, ``Mobile``,
``Firefox/``, ``Edg/``, ``OPR/``, ``SamsungBrowser/``...), and that holds no bot-ish word
(``_BOT_HINT``). Any other token (an in-app browser's ``FB_IAB``, ``Instagram``, ``GoogleApp``; a
crawler's ``PTST/``, ``DareBoost``, ``Neustar WPM``) sends the agent to crawlerdetect. The one free
text the shortcut lets through is an Android device model (a digit or the reduced ``K`` required,
word characters only), screened by ``_BOT_HINT`` alone; none of the 3,730 agents of crawlerdetect's
own crawler test sample takes the shortcut (``tests/unit/test_pageviews_derive.py``).

Measured uncached (``timeit`` over distinct agents, Python 3.11, this machine, 2026-12-02), per
agent, all of ``classify_agent``: a mainstream browser 5-7 µs (1-4 µs of them the shortcut's
``fullmatch`` and hint); a non-browser agent 10-90 µs when one of crawlerdetect's 1,462 patterns
matches early (``axios/`` 10, ``curl/`` 18, ``WhatsApp/`` 32, Googlebot 88; 164 on average over its
crawler sample) and 1.2-1.4 ms when none does, as for an in-app browser (``FB_IAB``,
``Instagram``): every pattern is tried at every position. The LRU caches (``classify_agent``'s and
crawlerdetect's own) make a repeated agent free. ``re.IGNORECASE`` would make the hint alone ~20 µs.

A path is stored in one spelling per resource (RFC 3986 section 6.2.2), decided per percent-encoded
byte (UTF-8 sequence), never per run: an escape of an unreserved ASCII character (``A-Z a-z 0-9 -
. _ ~``) or of a printable non-ASCII character (valid UTF-8 whose code point is not a control,
format, surrogate, private-use, unassigned or separator character: Unicode categories ``C*`` and
``Z*``, so no bidi override, BOM or no-break space) is decoded; every other byte keeps its escape,
in upper-case hex (``%2F`` is not ``/``, ``%5C`` is not ``\``). A raw character that would keep
its escape had it come escaped (a space, ``"<>\^`{|}``, a control, U+202E, a ``%`` that starts no
escape) is percent-encoded (its UTF-8 bytes): ``/a b`` and ``/a%20b``, ``/caf%C3%A9`` and
``/café`` are one page. Reserved characters keep the form they came in. Paths stay case-sensitive
and ``/about`` is not ``/about/``: a server may serve different pages there. Categories are those
of Python's Unicode database (14.0 for 3.11): a character assigned later stays encoded until then.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import SplitResult, parse_qsl, urlsplit

from crawlerdetect import CrawlerDetect

from app.domains.pageviews.schemas import MAX_DIMENSION_BYTES

MAX_AGE = timedelta(hours=24)
_LOAD_TOOLS = re.compile(r"(?:wrk|k6|Grafana k6|hey|oha|httperf|Artillery)(?:[/ ]|$)", re.IGNORECASE)
"""Load-testing tools crawlerdetect (0.4.2) does not list, by the first product of their agent:
``wrk/4.2.0``, ``k6/0.47.0 (https://k6.io/)``, ``Grafana k6/0.50.0``, ``hey/0.0.1``, ``oha/1.4.0``..."""
_AUTOMATION = re.compile(r"PhantomJS|Puppeteer|Playwright|Selenium|Cypress|\bDeno/|\bBun/|\binsomnia/")
"""Browser automation and JavaScript runtimes crawlerdetect (0.4.2) does not know, anywhere in the agent
(automation appends its name to a real browser's agent: ``... Chrome/120.0 Safari/537.36 Puppeteer``)."""
_ENGINES = (
    "AppleWebKit/",
    "Gecko/",
    "Trident/",
    "Presto/",
    "MSIE ",
    "KHTML/",  # Konqueror
    "NetFront",  # older TVs and phones
    "Nintendo",  # the 3DS's browser names only its platform
    "UCBrowser/",  # UC Browser on feature phones (its engine is U2/ or U3/)
    "PlayStation",  # PSP, PS Vita
)
"""What a browser's agent names after its parenthesised platform: its engine (Internet Explorer's
``MSIE``, the few older browsers whose agent names no other: Konqueror's ``KHTML``, ``NetFront``, UC
Browser, the Nintendo and PlayStation handhelds). An agent without a platform and one of these (``-``,
``Mozilla/5.0``, ``Dalvik/2.1.0 (Linux; U; Android 11)``) is a program, not a person's browser."""
_MAINSTREAM_BROWSER = re.compile(
    r"Mozilla/5\.0 \((?:"
    r"Windows NT [\d.]+(?:; (?:Win64|WOW64|x64|rv:[\d.]+))*"
    r"|Macintosh; Intel Mac OS X [\d_.]+(?:; rv:[\d.]+)?"
    r"|X11; (?:Ubuntu; |Fedora; )?Linux (?:x86_64|i686|aarch64|armv7l|armv8l)(?:; rv:[\d.]+)?"
    r"|X11; CrOS (?:x86_64|aarch64|armv7l) [\d.]+"
    r"|(?:iPhone|iPad|iPod touch); CPU (?:iPhone )?OS [\d_]+ like Mac OS X"
    r"|Linux; Android [\d.]+(?:; (?:K|[\w .+-]{0,40}\d[\w .+-]{0,40}(?: Build/[\w.-]+)?))?(?:; wv)?"
    r"|Android [\d.]+; (?:Mobile|Tablet); rv:[\d.]+"
    r")\) (?:AppleWebKit/[\d.]+ \(KHTML, like Gecko\)|Gecko/[\d.]+)"
    r"(?: (?:(?:Chrome|CriOS|Safari|Version|Firefox|FxiOS|Edg|EdgA|EdgiOS|OPR|SamsungBrowser|YaBrowser|"
    r"Vivaldi)/[\d.]+|Mobile(?:/\w+)?))+",
    re.ASCII,
)
"""A plain mainstream browser's agent, in full (``fullmatch``): the one shortcut past crawlerdetect."""
_BOT_HINT = re.compile(
    r"bot|crawl|spider|scrap|slurp|scan|fetch|check|monitor|search|preview|capture|render|http|www|\.com|@"
)
"""Words (in lower case) that send even a mainstream-shaped agent to crawlerdetect: its Android device
model is free text. Searched in the lower-cased agent, ten times faster than ``re.IGNORECASE``."""
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


MAX_AGENT_CHARS = 512
"""An agent longer than this is a bot, unread: crawlerdetect's cost grows with the agent's length when
no pattern matches (17 ms for 1,000 random characters, measured), and the ingest is public; browsers'
agents, in-app ones included, stay under 450."""


def is_bot_agent(user_agent: str) -> bool:
    """Empty, too long, a load-testing tool, or what crawlerdetect says of any agent that is not
    plainly a mainstream browser (see the module's docstring)."""
    if not user_agent.strip() or len(user_agent) > MAX_AGENT_CHARS or _LOAD_TOOLS.match(user_agent):
        return True
    if _MAINSTREAM_BROWSER.fullmatch(user_agent) and not _BOT_HINT.search(user_agent.lower()):
        return False
    if _AUTOMATION.search(user_agent) or not _browser_shaped(user_agent):
        return True
    return bool(_CRAWLERS.is_crawler(user_agent))


def _browser_shaped(user_agent: str) -> bool:
    """A parenthesised platform and an engine (``_ENGINES``) after its opening."""
    platform = user_agent.find("(")
    return (
        platform >= 0 and ")" in user_agent[platform:] and any(e in user_agent[platform:] for e in _ENGINES)
    )


LONG_AGENT = Agent(browser="Other", os="Other", device="desktop", is_bot=True)
"""What an agent longer than ``MAX_AGENT_CHARS`` is classified as, unread: a bot (``is_bot_agent``) of
no family (the screen may still correct its device, ``device_class``)."""


def classify_agent(user_agent: str) -> Agent:
    """The agent's families and bot flag. One over ``MAX_AGENT_CHARS`` is ``LONG_AGENT`` without
    being read or cached: the cache keeps whole agents (4,096 distinct 400 KB ones held 1.6 GB)."""
    if len(user_agent) > MAX_AGENT_CHARS:
        return LONG_AGENT
    return _classified(user_agent)


@lru_cache(maxsize=4096)
def _classified(user_agent: str) -> Agent:
    is_bot = is_bot_agent(user_agent)
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

    The path is canonical (``canonical_path``) and at most ``MAX_PATH_BYTES`` long in UTF-8, cut
    where no character or escape is split (``truncated_path``); a host longer than ``MAX_HOST_CHARS``
    is a ``ValueError`` (``host_of``).

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
        host=host_of(parts),
        path=truncated_path(canonical_path(parts.path or "/")),
        utm_source=utm.get("utm_source", ""),
        utm_medium=utm.get("utm_medium", ""),
        utm_campaign=utm.get("utm_campaign", ""),
    )


MAX_PATH_BYTES = MAX_DIMENSION_BYTES
MAX_HOST_CHARS = 253
"""DNS's limit on a name (RFC 1035; 255 octets on the wire): a referrer's source is its host."""
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_NEEDS_WORK = re.compile(r"((?:%[0-9A-Fa-f]{2})+)|([^A-Za-z0-9\-._~!$&'()*+,;=:@/?#\[\]%]+|%)")
"""A run of escapes (group 1), or raw characters that are neither unreserved nor reserved ASCII, or
a ``%`` that starts no escape (group 2). A path without any is canonical as it is: the fast path."""
_UTF8_LENGTH = bytes(
    2 if 0xC2 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF4 else 0 for b in range(256)
)
"""The length of the UTF-8 sequence a byte starts; 0 for ASCII, continuation and never-valid bytes."""


def _printable(char: str) -> bool:
    """Neither a control, format, surrogate, private-use or unassigned character (``C*``) nor a
    separator (``Z*``): what a reader sees as itself, never a bidi override, a BOM or a space."""
    return unicodedata.category(char)[0] not in "CZ"


def _escaped(data: bytes) -> str:
    return "".join(f"%{byte:02X}" for byte in data)


def _canonical_escapes(run: str) -> str:
    """A run of escapes, decoded per byte (ASCII) or per UTF-8 sequence where decoding is allowed."""
    data = bytes.fromhex(run.replace("%", ""))
    pieces: list[str] = []
    index = 0
    while index < len(data):
        byte = data[index]
        if byte < 0x80:
            char = chr(byte)
            pieces.append(char if char in _UNRESERVED else f"%{byte:02X}")
            index += 1
            continue
        sequence = data[index : index + _UTF8_LENGTH[byte]]
        try:
            char = sequence.decode() if len(sequence) == _UTF8_LENGTH[byte] else ""
        except UnicodeDecodeError:
            char = ""
        if not char:  # not the start of a valid sequence: this byte alone stays encoded
            pieces.append(f"%{byte:02X}")
            index += 1
            continue
        pieces.append(char if _printable(char) else _escaped(sequence))
        index += len(sequence)
    return "".join(pieces)


def _canonical_raw(run: str) -> str:
    """Raw characters that need an escape get one (their UTF-8 bytes); printable non-ASCII stays."""
    return "".join(
        char if char > "\x7f" and _printable(char) else _escaped(char.encode("utf-8", "surrogatepass"))
        for char in run
    )


def _canonical_run(match: re.Match[str]) -> str:
    escapes = match.group(1)
    return _canonical_escapes(escapes) if escapes is not None else _canonical_raw(match.group(2))


def canonical_path(path: str) -> str:
    """``path`` in its one spelling (RFC 3986 section 6.2.2.1-2, see the module's docstring): escapes
    of unreserved ASCII and of printable non-ASCII characters decoded, every other escape upper-case,
    raw characters that need an escape encoded. Applying it again changes nothing."""
    if _NEEDS_WORK.search(path) is None:
        return path
    return _NEEDS_WORK.sub(_canonical_run, path)


def truncated_path(path: str, limit: int = MAX_PATH_BYTES) -> str:
    """A canonical ``path`` cut to ``limit`` bytes of UTF-8 where no character is split, raw or
    escaped: never a dangling ``%`` or ``%X`` (every ``%`` of a canonical path starts an escape), nor
    the first escapes of a character kept escaped (``%E2%80`` of U+200B's ``%E2%80%8B``)."""
    if len(path) <= limit // 4:
        return path
    encoded = path.encode()
    if len(encoded) <= limit:
        return path
    cut = encoded[:limit].decode(errors="ignore")  # a raw character split at the limit is dropped
    dangling = cut.find("%", len(cut) - 2)
    if dangling != -1:
        cut = cut[:dangling]
    escapes = _TRAILING_ESCAPES.search(cut)
    if escapes is None:
        return cut
    data = bytes.fromhex(escapes.group().replace("%", ""))
    lead = len(data) - 1
    while lead >= 0 and 0x80 <= data[lead] < 0xC0:  # continuation bytes
        lead -= 1
    if lead >= 0 and len(data) - lead < _UTF8_LENGTH[data[lead]]:
        return cut[: escapes.start() + 3 * lead]
    return cut


_TRAILING_ESCAPES = re.compile(r"(?:%[0-9A-F]{2})+\Z")


def host_of(parts: SplitResult) -> str:
    """The URL's host, lower-case; ``ValueError`` past ``MAX_HOST_CHARS`` (no such host can serve a
    page or send a visitor)."""
    host = (parts.hostname or "").lower()
    if len(host) > MAX_HOST_CHARS:
        raise ValueError(f"host name longer than {MAX_HOST_CHARS} characters")
    return host


@lru_cache(maxsize=4096)
def referrer_source(referrer: str, own_host: str) -> tuple[str, str]:
    """(referrer host, source name); ('', '') for direct traffic and internal navigation.
    ``ValueError`` when the referrer cannot be split (see ``parse_page``)."""
    if not referrer:
        return "", ""
    host = host_of(urlsplit(referrer))
    if not host or host == own_host:
        return "", ""
    bare = host.removeprefix("www.")
    return host, next((name for name, pattern in _SOURCES if pattern.search(bare)), bare)


def clamp_timestamp(client_ts: datetime | None, now: datetime) -> datetime:
    """The view's ``ts``, in UTC: none in the future, none older than 24 hours; no client time means
    now. ``now`` is UTC (the service's clock); ``client_ts`` any offset the ingest body accepts (it
    refuses a ``ts`` without one).

    The client's offset is not kept: RFC 3339 (so the body's decoder and schema) allows offsets up to
    ±23:59, PostgreSQL's timestamptz text input only up to ±15:59 (SQLSTATE 22009). A row that kept
    one was refused by the sink's one-statement write, which sends it as JSON text, and stored by its
    binary COPY: whether a view was stored depended on how many others were written with it."""
    if client_ts is None or client_ts > now:
        return now
    return max(client_ts, now - MAX_AGE).astimezone(UTC)


def utc_day(ts: datetime) -> date:
    """The UTC day of a view's clamped ``ts`` (``clamp_timestamp``'s, in UTC), whose salt hashes its
    visitor."""
    return ts.date()


def visitor_id(salt: bytes, site_id: int, client_ip: str, user_agent: str) -> int:
    """A signed 64-bit keyed hash; the salt changes daily (at UTC midnight, by the UTC day of the
    view's ``ts``) so ids cannot be linked across days."""
    digest = hashlib.blake2b(
        f"{site_id}\x00{client_ip}\x00{user_agent}".encode(), digest_size=8, key=salt
    ).digest()
    return int.from_bytes(digest, "big", signed=True)
