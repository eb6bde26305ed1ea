"""Wire shapes of tracked sites."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from app.core.types import TimeZone, whole
from app.core.wire import from_row
from app.db.models import Site


class SiteCreate(msgspec.Struct, forbid_unknown_fields=True):
    domain: Annotated[str, msgspec.Meta(min_length=1, max_length=253, pattern=whole(r"[A-Za-z0-9.-]+"))]
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
