"""Wire shapes of the ingest path: what a tracker sends, and the answer."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from app.core.types import Text, whole

MAX_BATCH = 1000
MAX_URL_BYTES = 2000
MAX_DIMENSION_BYTES = 2000
"""The longest value of a report's dimension the ingest stores, in UTF-8 (a path; a referrer's source
is at most 253 characters, a campaign 200). The rollups key their rows by these values, and a btree
entry holds at most 2704 bytes: one view whose referrer's host was 6 KB of CJK made every run of the
hourly rollup fail, for every site."""
SITE_KEY = whole(r"[A-Za-z0-9_-]+")  # issued keys are secrets.token_urlsafe(24): 32 of these characters


class PageViewIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One page view, as a tracker script sends it. `ts` needs a UTC offset (`Z` or `+01:00`)."""

    site_key: Annotated[
        str,
        msgspec.Meta(
            min_length=16, max_length=64, pattern=SITE_KEY, examples=["q3Jx8vN2kLmP0sT5wYz7Ab4Cd6Ef9GhI"]
        ),
    ]
    url: Annotated[
        str,
        Text,
        msgspec.Meta(min_length=1, max_length=MAX_URL_BYTES, examples=["https://shop.example.com/pricing"]),
    ]
    referrer: Annotated[str, Text, msgspec.Meta(max_length=2000, examples=["https://www.google.com/"])] = ""
    title: Annotated[
        str,
        Text,
        msgspec.Meta(
            max_length=500,
            examples=["Pricing - Example Shop"],
            description="The page's title: accepted (trackers send it), never stored; no report reads it.",
        ),
    ] = ""
    screen_width: Annotated[int, msgspec.Meta(ge=0, le=100_000, examples=[1440])] | None = None
    ts: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    event_id: uuid.UUID | None = None


class PageViewBatchIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    views: Annotated[list[PageViewIn], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class PageView(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """``PageViewIn`` as the ingest path decodes it: the same fields and limits, but the checks that
    cost a regular expression per view (the NUL check of the text fields, the site key's pattern:
    most of the decoding's cost) are left to ``decoding.py``, which does them with ``in`` and once
    per distinct key, and hands a body that fails them to the strict ``PageViewIn`` (the published
    contract, which names every bad field). Untracked by the garbage collector: it holds no
    containers."""

    site_key: Annotated[str, msgspec.Meta(min_length=16, max_length=64)]
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL_BYTES)]
    referrer: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    title: Annotated[str, msgspec.Meta(max_length=500)] = ""
    screen_width: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None
    ts: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    event_id: uuid.UUID | None = None


class PageViewBatch(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    views: Annotated[list[PageView], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class Accepted(msgspec.Struct, frozen=True):
    accepted: int


ACCEPTED_ONE_JSON = msgspec.json.encode(Accepted(accepted=1))
"""The body of every single view's 202, encoded once."""
