"""Wire shapes of tracked sites."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from app.core.types import TimeZone, whole
from app.core.wire import from_row
from app.db.models import Site

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = whole(rf"{_LABEL}(?:\.{_LABEL})*")
"""A host name (RFC 1123): dot-separated labels of letters, digits and inner hyphens, each at most 63
characters (IDNs in their ``xn--`` form); ``...`` or ``-`` names no site."""


class SiteCreate(msgspec.Struct, forbid_unknown_fields=True):
    domain: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=253,
            pattern=HOSTNAME,
            description="The site's host name, e.g. `shop.example.com` (letters, digits, inner hyphens)",
            examples=["shop.example.com"],
        ),
    ]
    timezone: TimeZone = TimeZone("UTC")


class SiteOut(msgspec.Struct, frozen=True):
    id: int
    domain: str
    ingest_key: str
    timezone: str
    owner_id: int
    created_at: datetime

    @classmethod
    def from_row(cls, site: Site) -> SiteOut:
        return from_row(cls, site)


class SiteCursor(msgspec.Struct, frozen=True):
    after_id: Annotated[int, msgspec.Meta(ge=0)]
