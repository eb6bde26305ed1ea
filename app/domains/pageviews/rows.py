"""The stored page view: one ``page_views`` row, as the sink writes it (a tuple, in ``COLUMNS`` order).

The page's title is not among them: accepted on ingest (``PageViewIn.title``), read by no report, it
is not stored (a title often names a person, an address or an order); the column keeps its default
``''`` for the release before, which still writes it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import msgspec

COLUMNS = (
    "site_id", "ts", "received_at", "event_id", "visitor_id", "path", "referrer_host", "referrer_source",
    "utm_source", "utm_medium", "utm_campaign", "screen_width", "device", "browser", "os", "is_bot",
)  # fmt: skip
COPY_TYPES = (
    "int8", "timestamptz", "timestamptz", "uuid", "int8", "text", "text", "text", "text", "text", "text",
    "int4", "text", "text", "text", "bool",
)  # fmt: skip
Row = tuple[
    int,
    datetime,
    datetime,
    uuid.UUID | None,
    int,
    str,
    str,
    str,
    str,
    str,
    str,
    int | None,
    str,
    str,
    str,
    bool,
]


class StoredView(msgspec.Struct, gc=False):
    """A row as one JSON object of ``json_populate_recordset(null::page_views, ...)``."""

    site_id: int
    ts: datetime
    received_at: datetime
    event_id: uuid.UUID | None
    visitor_id: int
    path: str
    referrer_host: str
    referrer_source: str
    utm_source: str
    utm_medium: str
    utm_campaign: str
    screen_width: int | None
    device: str
    browser: str
    os: str
    is_bot: bool


assert StoredView.__struct_fields__ == COLUMNS

_encode = msgspec.json.Encoder().encode


def as_json(rows: Sequence[Row]) -> bytes:
    """The rows as a JSON array of objects. Raises ``UnicodeEncodeError`` for a lone surrogate (the
    sink counts that as a refusal of the data)."""
    return _encode([StoredView(*row) for row in rows])
