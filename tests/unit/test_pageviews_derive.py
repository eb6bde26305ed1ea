"""Server-side derivations of a page view: what is classified how, and what is never stored."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from crawlerdetect import CrawlerDetect
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domains.pageviews.derive import (
    MAX_AGE,
    MAX_AGENT_CHARS,
    MAX_HOST_CHARS,
    MAX_PATH_BYTES,
    canonical_path,
    clamp_timestamp,
    classify_agent,
    device_class,
    is_bot_agent,
    parse_page,
    referrer_source,
    utc_day,
    visitor_id,
)

WEBKIT = "AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1"
IPHONE = f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) {WEBKIT}"
IPAD = f"Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) {WEBKIT}"
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36"
)
ANDROID_TABLET = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
WINDOWS_EDGE = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Edg/120.0"
)
MAC_FIREFOX = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.1; rv:121.0) Gecko/20100101 Firefox/121.0"
LINUX_CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CUBOT_PHONE = (  # a phone brand holding "bot": counted as a bot, so its views left every report
    "Mozilla/5.0 (Linux; Android 10; CUBOT_X30) AppleWebKit/537.36 Chrome/88.0 Mobile Safari/537.36"
)
SLACK = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
QWANT = "Mozilla/5.0 (compatible; Qwantify/2.4w; +https://www.qwant.com/)"


@pytest.mark.parametrize(
    ("agent", "browser", "system", "device", "bot"),
    [
        (IPHONE, "Safari", "iOS", "mobile", False),
        (IPAD, "Safari", "iOS", "tablet", False),
        (ANDROID_PHONE, "Chrome", "Android", "mobile", False),
        (ANDROID_TABLET, "Chrome", "Android", "tablet", False),
        (WINDOWS_EDGE, "Edge", "Windows", "desktop", False),
        (MAC_FIREFOX, "Firefox", "macOS", "desktop", False),
        (LINUX_CHROME, "Chrome", "Linux", "desktop", False),
        (GOOGLEBOT, "Other", "Other", "desktop", True),
        ("", "Other", "Other", "desktop", True),
        ("curl/8.4.0", "Other", "Other", "desktop", True),
        (CUBOT_PHONE, "Chrome", "Android", "mobile", False),
        (SLACK, "Other", "Other", "desktop", True),
        (QWANT, "Other", "Other", "desktop", True),
    ],
)
def test_agents_are_classified_into_families(
    agent: str, browser: str, system: str, device: str, bot: bool
) -> None:
    result = classify_agent(agent)
    assert (result.browser, result.os, result.device, result.is_bot) == (browser, system, device, bot)


CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0"
MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit"
IOS = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
ANDROID = "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko)"
WEBVIEW = "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A; wv) AppleWebKit/537.36 (KHTML, like Gecko)"
REDUCED = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko)"
PEOPLE = [
    f"{CHROME} Safari/537.36",
    f"{CHROME} Safari/537.36 Edg/120.0.0.0",
    f"{CHROME} Safari/537.36 OPR/105.0.0.0",
    f"{CHROME} Safari/537.36 Vivaldi/6.5",
    f"{CHROME} YaBrowser/23.11 Safari/537.36",
    f"{MAC}/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0",
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
    "Safari/537.36",
    f"{IOS} Version/17.1 Mobile/15E148 Safari/604.1",
    f"{IOS} CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
    f"{IOS} FxiOS/121.0 Mobile/15E148 Safari/605.1.15",
    f"{IOS} Version/17.0 EdgiOS/120.0.2210.150 Mobile/15E148 Safari/605.1.15",
    "Mozilla/5.0 (iPad; CPU OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 "
    "Mobile/15E148 Safari/604.1",
    f"{ANDROID} Chrome/120.0.0.0 Mobile Safari/537.36",
    f"{REDUCED} Chrome/120.0.0.0 Mobile Safari/537.36",
    f"{REDUCED} Chrome/120.0.0.0 Mobile Safari/537.36 EdgA/120.0.2210.115",
    "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 "
    "Chrome/115.0.0.0 Mobile Safari/537.36",
    f"{WEBVIEW} Version/4.0 Chrome/120.0.6099.43 Mobile Safari/537.36",
    CUBOT_PHONE,
    # in-app browsers: not mainstream-shaped, so crawlerdetect is asked, and says human
    f"{WEBVIEW} Version/4.0 Chrome/120.0.6099.43 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/443.0.0.23.229;]",
    f"{IOS} Mobile/15E148 [FBAN/FBIOS;FBAV/443.0.0.35.105;FBBV/545013935;FBDV/iPhone14,5;FBMD/iPhone;"
    "FBSN/iOS;FBSV/17.1;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5;FBRV/547096224]",
    f"{IOS} Mobile/15E148 Instagram 309.0.0.28.113 (iPhone14,5; iOS 17_1; en_US; en-US; scale=3.00; "
    "1170x2532; 541635890)",
    f"{REDUCED} Chrome/120.0.0.0 Mobile Safari/537.36 GoogleApp/15.0",
    f"{IOS} GSA/290.0.579395930 Mobile/15E148 Safari/604.1",
    f"{CHROME} Safari/537.36 LinkedInApp",
    f"{IOS} Mobile/15E148 [LinkedInApp]/9.29.2456",
    f"{IOS} Mobile/15E148 Twitter for iPhone/10.20",
    "Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile "
    "Safari/537.36 Snapchat/12.60",
    # older browsers whose agent names no mainstream engine (the diff reviewer)
    "Mozilla/5.0 (X11; Linux) KHTML/4.9.1 (like Gecko) Konqueror/4.9",
    "Mozilla/5.0 (Nintendo 3DS; U; ; en) Version/1.7412.EU",
    "UCWEB/2.0 (Java; U; MIDP-2.0; en-US; Nokia5130c-2) U2/1.0.0 UCBrowser/9.5.0.449 U2/1.0.0 Mobile",
    "Mozilla/4.0 (PSP (PlayStation Portable); 2.00)",
]
BOTS = [
    GOOGLEBOT,
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.216 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; +https://openai.com/gptbot)",
    f"{MAC}/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
    QWANT,
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Twitterbot/1.0",
    SLACK,
    "WhatsApp/2.23.20.0 A",
    "TelegramBot (like TwitterBot)",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
    f"{CHROME} Safari/537.36 (Checkbot)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) PhantomJS/2.1.1 "
    "Safari/538.1",
    f"{CHROME} Safari/537.36 PTST/276",  # WebPageTest: a browser's shape and one more product
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/54.0.2840 Safari/537.36 "
    "DareBoost",
    "Mozilla/5.0 (Windows NT 6.1; Neustar WPM) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/48.0 "
    "Safari/537.36",
    "Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
    "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
    f"{MAC}/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Google-PageRenderer Google "
    "(+https://developers.google.com/+/web/snippet/)",
]
TOOLS = [
    "",
    "   ",
    "curl/8.4.0",
    "Wget/1.21.4",
    "python-requests/2.31.0",
    "python-httpx/0.25.0",
    "Go-http-client/1.1",
    "Java/17.0.2",
    "Apache-HttpClient/4.5.13 (Java/17.0.2)",
    "okhttp/4.12.0",
    "axios/1.6.0",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "ApacheBench/2.3",
    "aria2/1.36.0",
    "Lynx/2.9.0dev.10 libwww-FM/2.14 SSL-MM/1.4.1 GNUTLS/3.7.8",
    "wrk/4.2.0",  # load tools crawlerdetect does not list: ours
    "k6/0.47.0 (https://k6.io/)",
    "Grafana k6/0.50.0",
    "hey/0.0.1",
    "oha/1.4.0",
    # not a browser's shape, or automation crawlerdetect does not list (the files and reports
    # reviewer: each counted as a visitor)
    "-",
    "x",
    "aaaaaaaaaa",
    "Mozilla/5.0",
    "Mozilla/5.0 (compatible)",
    "Mozilla/4.0",
    "Deno/1.40.0",
    "Bun/1.0.0",
    "insomnia/2023.5.8",
    "Dalvik/2.1.0 (Linux; U; Android 11; Pixel 5 Build/RQ3A.211001.001)",
    f"{CHROME} Safari/537.36 Puppeteer",
    f"{CHROME} Safari/537.36 Playwright/1.40",
    f"{CHROME} Safari/537.36 Selenium",
    f"{CHROME} Safari/537.36 Cypress/13.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0 PhantomJS",
]
CRAWLER_SAMPLE = Path(__file__).parent / "fixtures" / "crawlerdetect" / "crawlers.txt"


@pytest.mark.parametrize("agent", PEOPLE)
def test_browsers_are_people(agent: str) -> None:
    """In-app browsers included: no real browser is flagged, and crawlerdetect agrees with the
    shortcut where it is taken (it saves time, it changes no answer)."""
    assert not classify_agent(agent).is_bot
    assert not CrawlerDetect().is_crawler(agent)


@pytest.mark.parametrize("agent", BOTS + TOOLS)
def test_crawlers_and_tools_are_bots(agent: str) -> None:
    """Crawlerdetect is asked about every agent that is not plainly a mainstream browser (``WhatsApp``,
    ``axios``, ``ApacheBench`` hold no bot-ish word; ``PTST``, ``Neustar WPM`` hide in a browser's shape)."""
    assert classify_agent(agent).is_bot


def test_an_agent_past_the_length_limit_is_a_bot_unread() -> None:
    """crawlerdetect's cost grows with an unmatched agent's length (17 ms for 1,000 characters): the
    public ingest must not pay it for an agent no browser sends."""
    assert max(map(len, PEOPLE)) < MAX_AGENT_CHARS
    padded = PEOPLE[0] + " x" * MAX_AGENT_CHARS
    assert is_bot_agent(padded[: MAX_AGENT_CHARS + 1])
    assert not is_bot_agent(PEOPLE[0])


def test_every_agent_of_crawlerdetects_own_crawler_sample_is_a_bot() -> None:
    """The shortcut past crawlerdetect (plain mainstream browsers) never hides one of its crawlers
    (the sample: ``tests/unit/fixtures/crawlerdetect/README.md``)."""
    agents = CRAWLER_SAMPLE.read_text(encoding="utf-8").splitlines()
    assert len(agents) > 3000
    assert [agent for agent in agents if not is_bot_agent(agent)] == []


def test_a_narrow_screen_corrects_a_desktop_claim_only() -> None:
    desktop = classify_agent(LINUX_CHROME)
    assert device_class(desktop, 390) == "mobile"
    assert device_class(desktop, 800) == "tablet"
    assert device_class(desktop, 1440) == "desktop"
    assert device_class(desktop, None) == "desktop"
    assert device_class(classify_agent(IPHONE), 1440) == "mobile"


def test_page_path_and_utm() -> None:
    page = parse_page(
        "https://Shop.Example.com/sale/shoes?utm_source=newsletter&utm_medium=email&utm_campaign=bf&x=1"
    )
    assert page == ("shop.example.com", "/sale/shoes", "newsletter", "email", "bf")
    assert parse_page("https://example.com").path == "/"


@pytest.mark.parametrize(
    ("spelling", "path"),
    [
        ("/caf%C3%A9", "/café"),
        ("/caf%c3%a9", "/café"),
        ("/café", "/café"),
        ("/%7Euser/a%2db", "/~user/a-b"),
        ("/a%2fb%3F", "/a%2Fb%3F"),  # reserved: decoding would change the URL
        ("/100%25", "/100%25"),
        ("/100%", "/100%25"),  # a % that starts no escape is one
        ("/%ff%FE", "/%FF%FE"),  # not UTF-8: kept, in one case
        ("/caf%C3%A9%FF", "/café%FF"),  # per sequence, not per run of escapes
        ("/caf%c3%a9%ff", "/café%FF"),
        ("/café%FF", "/café%FF"),
        ("/%C3%41", "/%C3A"),  # a lead byte without its continuation
        ("/%E2%82%C2%AC", "/%E2%82¬"),
        ("/%F0%9F%98%80", "/😀"),
        ("/a%00b%0a", "/a%00b%0A"),
        ("/a\x00b", "/a%00b"),
        ("/a%5C..%5Cadmin", "/a%5C..%5Cadmin"),  # browsers read a decoded \ as /
        ("/a\\..\\admin", "/a%5C..%5Cadmin"),
        ("/a%20b", "/a%20b"),
        ("/a b", "/a%20b"),
        ("/%22%3c%3E%60%7B%7D%7C%5E", "/%22%3C%3E%60%7B%7D%7C%5E"),
        ('/"<>`{}|^', "/%22%3C%3E%60%7B%7D%7C%5E"),
        ("/pay%E2%80%AEfdp.exe", "/pay%E2%80%AEfdp.exe"),  # U+202E, a bidi override
        ("/pay\u202efdp.exe", "/pay%E2%80%AEfdp.exe"),
        ("/%EF%BB%BFa", "/%EF%BB%BFa"),  # U+FEFF, a BOM
        ("/\ufeffa", "/%EF%BB%BFa"),
        ("/a%C2%A0b", "/a%C2%A0b"),  # U+00A0, a separator
        ("/a\xa0b", "/a%C2%A0b"),
        ("/About/", "/About/"),  # case and the final slash are the server's to decide
    ],
)
def test_a_path_is_stored_in_one_spelling_per_resource(spelling: str, path: str) -> None:
    """RFC 3986 section 6.2.2: the spellings of one page were several rows of the pages report. Only
    unreserved ASCII and printable non-ASCII characters are decoded; every other byte is stored
    encoded, whether it came raw or escaped."""
    assert parse_page(f"https://example.com{spelling}?q=1").path == path


def test_a_plain_path_takes_the_fast_path() -> None:
    path = "/blog/2026/a-post_about~things.html"
    assert canonical_path(path) is path


@pytest.mark.parametrize("width", [2, 3, 4])
def test_a_path_is_bounded_in_bytes_whatever_mix_of_characters_and_escapes_it_holds(width: int) -> None:
    """The rollups key rows by the path, and a btree entry holds at most 2704 bytes: printable
    non-ASCII characters kept raw (up to 4 bytes each) beside raw controls that grow to escapes
    (U+202E: 3 bytes in, 9 characters out) came to 2,750 bytes under a bound in characters."""
    wide = {2: "é", 3: "中", 4: "😀"}[width]
    spelling = "/" + wide * (1000 // width) + "\u202e" * 333
    path = parse_page(f"https://example.com{spelling}").path
    assert len(path.encode()) <= MAX_PATH_BYTES
    assert path.startswith("/" + wide * (1000 // width))
    assert parse_page(f"https://example.com{path}").path == path


@pytest.mark.parametrize("before", range(1990, 1999))
def test_a_character_kept_escaped_is_never_cut_between_its_escapes(before: int) -> None:
    """U+200B stays ``%E2%80%8B``: a cut after ``%E2`` or ``%E2%80`` stored a path ending in a broken
    UTF-8 sequence (the diff reviewer); the character is dropped whole or kept whole."""
    path = parse_page("https://example.com/" + "a" * before + "%E2%80%8B" + "b" * 20).path
    assert len(path.encode()) <= MAX_PATH_BYTES
    assert re.fullmatch(r"/a+(?:%E2%80%8Bb*)?", path), path[-12:]


def test_a_host_longer_than_dns_allows_is_not_a_url() -> None:
    """A referrer's host is stored as its source (when no known source matches): 1,988 characters of
    CJK were 6 KB in one rollup key, and the hourly rollup failed on it for every site."""
    host = "中" * (MAX_HOST_CHARS + 1)
    with pytest.raises(ValueError, match="longer than 253"):
        referrer_source(f"http://{host}/", "shop.example.com")
    with pytest.raises(ValueError, match="longer than 253"):
        parse_page(f"https://{host}/a")
    longest = "a" * MAX_HOST_CHARS
    assert referrer_source(f"https://{longest}/", "shop.example.com") == (longest, longest)


@pytest.mark.parametrize("extra", [0, 1, 2, 3])
def test_a_long_path_is_cut_at_an_escapes_boundary(extra: int) -> None:
    """Never a dangling ``%`` or ``%X``, which would read as another path once stored."""
    spelling = "/" + "a" * (MAX_PATH_BYTES - 4 + extra) + "%20" * 3
    path = parse_page(f"https://example.com{spelling}").path
    assert len(path.encode()) <= MAX_PATH_BYTES
    assert re.fullmatch(r"/a+(?:%20)*", path)
    assert parse_page(f"https://example.com{path}").path == path


@given(st.text(alphabet="%aAcCeEfF0123589/é~- \\\x00\u202e\xa0😀:@[]", max_size=40))
def test_a_canonical_path_is_its_own_canonical_form(spelling: str) -> None:
    path = parse_page(f"https://example.com/{spelling}").path
    assert parse_page(f"https://example.com{path}").path == path


RESERVED = "%!$&'()*+,;=:@/?#[]"
units = st.one_of(
    # a character other than a reserved one (whose escape means something else) or what
    # urlsplit removes from a URL (tab, CR, LF)
    st.characters(exclude_characters=RESERVED + "\t\r\n"),
    st.binary(min_size=1, max_size=1),  # a byte, UTF-8 or not, always escaped
)


def _spelled(unit: str | bytes, escaped: bool, lower: bool) -> str:
    if isinstance(unit, str) and not escaped:
        return unit
    data = unit if isinstance(unit, bytes) else unit.encode("utf-8", "surrogatepass")
    return "".join(f"%{byte:02x}" if lower else f"%{byte:02X}" for byte in data)


@given(st.data(), st.lists(units, max_size=12))
def test_two_spellings_of_the_same_bytes_are_one_path(data: st.DataObject, pieces: list[str | bytes]) -> None:
    """Whichever characters come escaped (in either case) and whichever raw: one stored form."""
    spellings = [
        "/" + "".join(_spelled(unit, data.draw(st.booleans()), data.draw(st.booleans())) for unit in pieces)
        for _ in range(2)
    ]
    first, second = (parse_page(f"https://example.com{spelling}").path for spelling in spellings)
    assert first == second
    assert canonical_path(first) == first


def test_utm_values_are_decoded_and_a_nul_is_replaced() -> None:
    """PostgreSQL cannot store U+0000 in text: a decoded NUL becomes U+FFFD, as undecodable bytes do."""
    page = parse_page("https://a.example/?utm_source=a%00b&utm_medium=%FF&utm_campaign=" + "x" * 300)
    assert (page.utm_source, page.utm_medium, page.utm_campaign) == ("a\ufffdb", "\ufffd", "x" * 200)
    assert page.path == "/"


@pytest.mark.parametrize("url", ["http://[::1/x", "http://a]b/", "http://a\uff03b/", "https://[v1.x/"])
def test_a_url_that_cannot_be_split_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError, match=r"IPv6|NFKC"):
        parse_page(url)
    with pytest.raises(ValueError, match=r"IPv6|NFKC"):
        referrer_source(url, "shop.example.com")


@given(st.text())
@settings(deadline=None)
def test_parsing_any_text_gives_a_page_or_a_value_error(url: str) -> None:
    try:
        page = parse_page(url)
    except ValueError:
        return
    assert "\x00" not in page.utm_source + page.utm_medium + page.utm_campaign
    assert len(page.path.encode()) <= MAX_PATH_BYTES
    assert len(page.host) <= MAX_HOST_CHARS
    assert re.fullmatch(r"(?:[^%\x00-\x20\x7f]|%[0-9A-F]{2})*", page.path), "a raw control or a bad escape"


@pytest.mark.parametrize(
    ("referrer", "expected"),
    [
        ("", ("", "")),
        ("https://www.google.com/search?q=x", ("www.google.com", "Google")),
        ("https://google.co.uk/", ("google.co.uk", "Google")),
        ("https://t.co/abc", ("t.co", "Twitter")),
        ("https://news.ycombinator.com/item?id=1", ("news.ycombinator.com", "Hacker News")),
        ("https://www.blog.example.org/post", ("www.blog.example.org", "blog.example.org")),
        ("https://shop.example.com/other-page", ("", "")),
        ("not a url", ("", "")),
    ],
)
def test_referrer_sources(referrer: str, expected: tuple[str, str]) -> None:
    assert referrer_source(referrer, "shop.example.com") == expected


NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ACCEPTED_OFFSET = timedelta(hours=23, minutes=59)  # RFC 3339's largest, which the ingest body accepts


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(UTC) | st.timedeltas(-ACCEPTED_OFFSET, ACCEPTED_OFFSET).map(timezone),
    )
)
@settings(deadline=None)
def test_timestamps_are_clamped_to_the_last_24_hours(client_ts: datetime) -> None:
    """Any UTC offset: the comparison is between instants, and the result is in UTC (PostgreSQL's
    text input refuses offsets above ±15:59)."""
    clamped = clamp_timestamp(client_ts, NOW)
    assert NOW - MAX_AGE <= clamped <= NOW
    assert clamped.tzinfo is UTC
    if NOW - MAX_AGE <= client_ts <= NOW:
        assert clamped == client_ts


def test_no_client_time_means_now() -> None:
    assert clamp_timestamp(None, NOW) == NOW
    assert clamp_timestamp(NOW + timedelta(seconds=1), NOW) == NOW


@given(
    client_ts=st.datetimes(
        min_value=datetime(2026, 11, 20),
        max_value=datetime(2026, 11, 24),
        timezones=st.just(UTC) | st.timedeltas(-ACCEPTED_OFFSET, ACCEPTED_OFFSET).map(timezone),
    )
)
@settings(deadline=None)
def test_the_salt_day_of_a_view_is_the_utc_day_of_its_clamped_ts(client_ts: datetime) -> None:
    """Whatever offset the client wrote its ``ts`` with: the UTC day of the instant (a view held
    since 23:55 UTC and sent at 00:05 belongs to the day before)."""
    ts = clamp_timestamp(client_ts, NOW)
    assert utc_day(ts) == ts.astimezone(UTC).date()
    assert utc_day(clamp_timestamp(None, NOW)) == NOW.date()


@settings(deadline=None)
@given(
    st.binary(min_size=16, max_size=32),
    st.integers(1, 10**6),
    st.ip_addresses().map(str),
    st.text(max_size=200),
)
def test_visitor_ids_are_stable_per_day_and_unlinkable_across_salts(
    salt: bytes, site: int, ip: str, agent: str
) -> None:
    first = visitor_id(salt, site, ip, agent)
    assert first == visitor_id(salt, site, ip, agent)
    assert -(2**63) <= first < 2**63
    assert first != visitor_id(bytes(reversed(salt)) + b"\x01", site, ip, agent)
    assert first != visitor_id(salt, site + 1, ip, agent)
