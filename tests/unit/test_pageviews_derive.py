"""Server-side derivations of a page view: what is classified how, and what is never stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domains.pageviews.derive import (
    MAX_AGE,
    clamp_timestamp,
    classify_agent,
    device_class,
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
        ("/%ff%FE", "/%FF%FE"),  # not UTF-8: kept, in one case
        ("/a%00b%0a", "/a%00b%0A"),
        ("/About/", "/About/"),  # case and the final slash are the server's to decide
    ],
)
def test_a_path_is_stored_in_one_spelling_per_resource(spelling: str, path: str) -> None:
    """RFC 3986 section 6.2.2: the three spellings of one page were three rows of the pages report."""
    assert parse_page(f"https://example.com{spelling}?q=1").path == path


@given(st.text(alphabet="%aAfF0129/é~-", max_size=30))
def test_a_canonical_path_is_its_own_canonical_form(spelling: str) -> None:
    path = parse_page(f"https://example.com/{spelling}").path
    assert parse_page(f"https://example.com{path}").path == path


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
    assert len(page.path) <= 2000


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


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(UTC) | st.timedeltas(-timedelta(hours=23), timedelta(hours=23)).map(timezone),
    )
)
@settings(deadline=None)
def test_timestamps_are_clamped_to_the_last_24_hours(client_ts: datetime) -> None:
    """Any UTC offset: the comparison is between instants."""
    clamped = clamp_timestamp(client_ts, NOW)
    assert NOW - MAX_AGE <= clamped <= NOW
    if NOW - MAX_AGE <= client_ts <= NOW:
        assert clamped == client_ts


def test_no_client_time_means_now() -> None:
    assert clamp_timestamp(None, NOW) == NOW
    assert clamp_timestamp(NOW + timedelta(seconds=1), NOW) == NOW


@given(
    client_ts=st.datetimes(
        min_value=datetime(2026, 11, 20),
        max_value=datetime(2026, 11, 24),
        timezones=st.just(UTC) | st.timedeltas(-timedelta(hours=23), timedelta(hours=23)).map(timezone),
    )
)
@settings(deadline=None)
def test_the_salt_day_of_a_view_is_the_utc_day_of_its_clamped_ts(client_ts: datetime) -> None:
    """Whatever offset the client wrote its ``ts`` with: the UTC day of the instant (a view held
    since 23:55 UTC and sent at 00:05 belongs to the day before)."""
    ts = clamp_timestamp(client_ts, NOW)
    assert utc_day(ts, NOW) == ts.astimezone(UTC).date()
    assert utc_day(clamp_timestamp(None, NOW), NOW) == NOW.date()


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
