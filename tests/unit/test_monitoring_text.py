"""Telegram text: HTML escaping, the 4,096 limit as Telegram counts it, plain-text fallback, scrubbing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.db.models import MonitoringGroupKind
from app.domains.monitoring.messages import alert_message, digest_message
from app.domains.monitoring.scrub import FILTERED, scrub_mapping, storable_scrubbed
from app.domains.monitoring.telegram import MAX_MESSAGE, Part, render, utf16_length
from tests.fakes.telegram import parse_html


def test_html_special_characters_are_escaped_and_parse_back() -> None:
    rendered = render([Part("<b>x & y</b> > z", "b"), Part(" &amp; <i>")])
    assert rendered.html == "<b>&lt;b&gt;x &amp; y&lt;/b&gt; &gt; z</b> &amp;amp; &lt;i&gt;"
    plain, error = parse_html(rendered.html)
    assert error is None
    assert plain == rendered.plain == "<b>x & y</b> > z &amp; <i>"


def test_the_fake_refuses_what_telegram_refuses() -> None:
    for bad in ("a < b", "a > b", "AT&T", "<b>open", "<b><i>x</b></i>", "<script>x</script>", "&nbsp;"):
        assert parse_html(bad)[1] is not None, bad
    assert parse_html('<a href="https://x">x</a> &#128512; <pre><code>1</code></pre>')[1] is None


def test_astral_characters_count_twice() -> None:
    assert utf16_length("😀") == 2
    text = "😀" * 3000  # 3,000 characters, 6,000 UTF-16 units: over the limit although len() < 4096
    rendered = render([Part("title\n", "b"), Part(text, "pre")], pointer="/api/admin/monitoring/errors/7")
    plain, error = parse_html(rendered.html)
    assert error is None
    assert utf16_length(plain) <= MAX_MESSAGE
    assert plain.endswith("full details: /api/admin/monitoring/errors/7")
    assert "\ud83d" not in plain.encode("utf-16-le", "surrogatepass").decode("utf-16-le")  # no half pair


def test_truncation_keeps_the_head_and_fills_the_limit() -> None:
    rendered = render([Part("head\n", "b"), Part("x" * 10_000, "pre")], pointer="/p")
    plain, _ = parse_html(rendered.html)
    assert plain.startswith("head\nxxx")
    assert MAX_MESSAGE - 5 <= utf16_length(plain) <= MAX_MESSAGE


def test_lone_surrogates_become_replacement_characters() -> None:
    rendered = render([Part("bad \udc80 byte")])
    assert rendered.plain == "bad \ufffd byte"
    rendered.html.encode("utf-8")  # encodable: it can travel as JSON


def test_an_alert_message_is_valid_html_with_the_facts() -> None:
    summary, rendered = alert_message(
        rules=[("new-group", "first seen"), ("users", "25+ users in 1 h")],
        group_id=12,
        kind=MonitoringGroupKind.ERROR,
        title="ValueError: invalid literal for int() with base 10: '<script>'",
        culprit="app.domains.shop in load",
        events=3,
        users=25,
        first_seen_at=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
        environment="production",
        release="1.2.3",
        context={"route": "/api/orders", "method": "POST"},
        message="invalid literal for int() with base 10: '<script>'",
        exception=[
            {
                "type": "ValueError",
                "message": "x",
                "frames": [
                    {
                        "module": "app.domains.shop",
                        "function": "load",
                        "lineno": 3,
                        "context_line": "a < b",
                        "in_app": True,
                    }
                ],
            }
        ],
    )
    plain, error = parse_html(rendered.html)
    assert error is None
    assert "🆕 New error · production · 1.2.3" in plain
    assert "POST /api/orders · app.domains.shop in load" in plain
    assert "events 3 · users 25" in plain
    assert "/api/admin/monitoring/errors/12" in plain
    assert "app.domains.shop in load:3\n    a < b" in plain
    assert summary.startswith("🆕 New error #12: ValueError")


def test_a_digest_lists_every_summary_within_the_limit() -> None:
    start = datetime(2026, 11, 30, tzinfo=UTC)
    rendered = digest_message([f"🆕 New error #{n}: boom" for n in range(2000)], start, start)
    plain, error = parse_html(rendered.html)
    assert error is None
    assert plain.startswith("🧾 2000 more alerts")
    assert utf16_length(plain) <= MAX_MESSAGE
    assert plain.endswith("/api/admin/monitoring/alerts")


@pytest.mark.parametrize(
    "secret",
    [
        "password=hunter2",
        '{"password": "hunter2"}',
        "Authorization: Bearer abcdefghijklmnop",
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "postgresql://app:hunter2@db:5432/app",
        "https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0/sendMessage",
        "api_key: hunter2",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    ],
)
def test_secrets_are_scrubbed_from_text(secret: str) -> None:
    scrubbed = storable_scrubbed(f"failed with {secret} at login")
    assert "hunter2" not in scrubbed
    assert "abcdefghijklmnop" not in scrubbed
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0" not in scrubbed
    assert "eyJzdWIiOiIxIn0" not in scrubbed
    assert "ghp_abc" not in scrubbed
    assert FILTERED in scrubbed


def test_secrets_are_scrubbed_by_key_name() -> None:
    scrubbed = scrub_mapping(
        {"route": "/api/x", "Cookie": "a=b", "nested": {"X-Api-Key": "k", "ok": 1}, "user_id": 3}
    )
    assert scrubbed == {
        "route": "/api/x",
        "Cookie": FILTERED,
        "nested": {"X-Api-Key": FILTERED, "ok": 1},
        "user_id": 3,
    }


def test_nesting_is_bounded_in_lists_as_in_mappings() -> None:
    """Lists were walked to any depth (a deep one raised RecursionError) and scrubbed whole before
    being cut to their first items."""
    deep: list[object] = ["deep"]
    for _ in range(5000):
        deep = [deep]
    assert scrub_mapping({"a": deep}) == {"a": [[[[[FILTERED]]]]]}  # five levels kept, as of mappings
    assert scrub_mapping({"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}) == {
        "a": {"b": {"c": {"d": {"e": {"f": {"...": FILTERED}}}}}}
    }
    assert scrub_mapping({"many": [str(n) for n in range(10_000)]}) == {"many": [str(n) for n in range(50)]}
