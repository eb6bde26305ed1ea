"""The ingest path's fast decoding accepts exactly what the published contract (``PageViewIn``)
accepts, and decodes it to the same values: the fast Struct leaves the NUL check and the site key's
pattern to ``decoding.py``, which must not let anything through that the contract refuses (or
refuse anything it accepts)."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.errors import InvalidFieldsError
from app.core.validation import whole_numbers
from app.domains.pageviews.decoding import decode_batch, decode_view
from app.domains.pageviews.schemas import PageView, PageViewBatch, PageViewBatchIn, PageViewIn

KEY_CHARACTERS = st.sampled_from("abcXYZ019_-")
keys = st.one_of(
    st.text(KEY_CHARACTERS, min_size=16, max_size=64),  # well formed
    st.text(KEY_CHARACTERS, min_size=10, max_size=70),  # perhaps too short or too long
    st.text(min_size=16, max_size=20),  # any characters
    st.builds(
        lambda k, tail: k + tail,
        st.text(KEY_CHARACTERS, min_size=16, max_size=20),
        st.sampled_from("\n \x00é"),
    ),
)
texts = st.one_of(
    st.text(max_size=30), st.sampled_from(["", "a\x00b", "https://shop.example.com/p?utm_source=x"])
)
views = st.fixed_dictionaries(
    {"site_key": keys, "url": st.one_of(st.just("https://shop.example.com/"), texts)},
    optional={
        "referrer": texts,
        "title": texts,
        "screen_width": st.one_of(st.integers(-5, 200_000), st.sampled_from([1440.0, 1440.5, None])),
        "ts": st.sampled_from(["2026-11-30T10:00:00Z", "2026-11-30T10:00:00", "yesterday", None]),
        "event_id": st.one_of(st.uuids().map(str), st.sampled_from(["not-a-uuid", None])),
    },
)


def contract_accepts(contract: Any, fast: Any, value: Any) -> Any | None:
    """What the strict contract makes of ``value`` (as the fast type), or None when it refuses it."""
    try:
        msgspec.convert(whole_numbers(value), contract)
    except msgspec.ValidationError:
        return None
    return msgspec.convert(whole_numbers(value), fast)


@settings(deadline=None, max_examples=300)
@given(view=views)
def test_a_single_view_is_accepted_exactly_when_the_contract_accepts_it(view: dict[str, Any]) -> None:
    expected = contract_accepts(PageViewIn, PageView, view)
    try:
        decoded = decode_view(msgspec.json.encode(view))
    except InvalidFieldsError:
        assert expected is None, f"the contract accepts {view!r}"
        return
    assert expected is not None, f"the contract refuses {view!r}"
    assert decoded == expected
    assert decoded.event_id is None or isinstance(decoded.event_id, uuid.UUID)


@settings(deadline=None, max_examples=200)
@given(batch=st.lists(views, min_size=1, max_size=5))
def test_a_batch_is_accepted_exactly_when_the_contract_accepts_it(batch: list[dict[str, Any]]) -> None:
    body = {"views": batch}
    expected = contract_accepts(PageViewBatchIn, PageViewBatch, body)
    try:
        decoded = decode_batch(msgspec.json.encode(body))
    except InvalidFieldsError:
        assert expected is None, f"the contract accepts {body!r}"
        return
    assert expected is not None, f"the contract refuses {body!r}"
    assert decoded == expected
