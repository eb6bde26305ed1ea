"""Properties of grouping and of the Telegram text, over generated inputs (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from app.db.models import MonitoringGroupKind
from app.domains.monitoring.fingerprint import (
    RawException,
    capture_chain,
    fingerprint_chain,
    normalise_message,
    resolve_chain,
)
from app.domains.monitoring.messages import alert_message
from app.domains.monitoring.telegram import MAX_MESSAGE, utf16_length
from tests.fakes.telegram import parse_html
from tests.unit.test_monitoring_fingerprint import raise_bug

PACKAGES = ("app", "workers")
EXCEPTIONS = [
    ValueError,
    KeyError,
    TypeError,
    RuntimeError,
    LookupError,
    ZeroDivisionError,
    OSError,
    AttributeError,
]

SOURCE = """
def handler(value):
    raise ERROR(value)
"""


def hashes(exc: BaseException) -> list[str]:
    return fingerprint_chain("error", resolve_chain(capture_chain(exc), PACKAGES)).hashes


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 300), st.integers(0, 300), st.text(max_size=50), st.text(max_size=50))
def test_the_same_bug_from_shifted_lines_has_the_same_hashes(
    first: int, second: int, one: str, two: str
) -> None:
    """Line numbers never count, nor does the message when there is a stack."""
    bug = SOURCE.replace("ERROR", "ValueError")
    assert hashes(raise_bug(first, source=bug, argument=one)) == hashes(
        raise_bug(second, source=bug, argument=two)
    )


@settings(deadline=None, max_examples=60)
@given(st.sampled_from(EXCEPTIONS), st.sampled_from(EXCEPTIONS), st.integers(0, 50))
def test_different_exception_types_never_share_a_hash(first: type, second: type, padding: int) -> None:
    a = hashes(raise_bug(padding, source=SOURCE.replace("ERROR", first.__name__)))
    b = hashes(raise_bug(0, source=SOURCE.replace("ERROR", second.__name__)))
    assert (a == b) == (first is second)
    if first is not second:
        assert not set(a) & set(b)


TEMPLATE = (
    "order {order} of {email} failed at {when} after {tries} tries (trace {trace}, node {ip}, ptr {ptr})"
)


@settings(deadline=None, max_examples=200)
@given(
    st.uuids(),
    st.from_regex(r"[a-z][a-z0-9._]{0,10}@[a-z]{1,8}\.(com|org|co\.uk)", fullmatch=True),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC)),
    st.integers(0, 10**9),
    st.binary(min_size=8, max_size=16),
    st.ip_addresses(v=4),
    st.integers(0, 2**64),
)
def test_variants_of_one_message_normalise_to_one(
    order: object, email: str, when: datetime, tries: int, trace: bytes, ip: object, ptr: int
) -> None:
    message = TEMPLATE.format(
        order=order, email=email, when=when.isoformat(), tries=tries, trace=trace.hex(), ip=ip, ptr=hex(ptr)
    )
    expected = (
        "order <uuid> of <email> failed at <timestamp> after <num> tries (trace <num>, node <ip>, ptr <hex>)"
    )
    assert normalise_message(message) == expected
    event = fingerprint_chain("error", resolve_chain([RawException("Failed", message, ())], PACKAGES))
    reference = fingerprint_chain("error", resolve_chain([RawException("Failed", REFERENCE, ())], PACKAGES))
    assert event.hashes == reference.hashes


REFERENCE = TEMPLATE.format(
    order="8f14e45f-ceea-467f-a0d1-0b1c9f6c1d2e",
    email="a@b.com",
    when="2026-11-30T12:00:00+00:00",
    tries=3,
    trace="0123456789abcdef",
    ip="10.0.0.1",
    ptr="0x1f",
)


ANY_TEXT = st.text(alphabet=st.characters(codec=None, categories=None), max_size=6000)
"""Any code point, lone surrogates, controls and astral characters included."""


@settings(deadline=None, max_examples=300)
@given(ANY_TEXT, ANY_TEXT, ANY_TEXT, st.text(max_size=200), st.lists(ANY_TEXT, max_size=30))
def test_any_exception_text_renders_to_valid_html_within_the_limit(
    title: str, message: str, route: str, culprit: str, lines: list[str]
) -> None:
    frames = [
        {
            "module": f"app.m{i}",
            "function": "f<" + line[:20],
            "lineno": i,
            "context_line": line,
            "in_app": True,
        }
        for i, line in enumerate(lines)
    ]
    summary, rendered = alert_message(
        rules=[("new-group", "first seen")],
        group_id=42,
        kind=MonitoringGroupKind.ERROR,
        title=title,
        culprit=culprit,
        events=1,
        users=0,
        first_seen_at=datetime(2026, 11, 30, tzinfo=UTC),
        environment="production",
        release="1.0.0",
        context={"route": route, "method": "GET"},
        message=message,
        exception=[{"type": "ValueError", "message": message, "frames": frames}],
    )
    plain, error = parse_html(rendered.html)
    assert error is None, error
    assert plain == rendered.plain
    assert 1 <= utf16_length(plain) <= MAX_MESSAGE
    assert plain.startswith("🆕 New error · production · 1.0.0")
    rendered.html.encode("utf-8")  # no lone surrogate: it can be sent as JSON
    assert summary
