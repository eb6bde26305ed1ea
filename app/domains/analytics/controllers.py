"""HTTP for tracked sites (``/api/sites``); the ingest routes live in ``ingest``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import delete, get, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.core.db import Uow
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, Page, PageSize, decode_cursor, paginate
from app.core.routing import Controller
from app.core.types import IdPath, TimeZone
from app.core.wire import from_row
from app.db.models import Site
from app.domains.accounts.guards import Caller, requires_user
from app.domains.analytics import sites


class SiteCreate(msgspec.Struct, forbid_unknown_fields=True):
    domain: Annotated[str, msgspec.Meta(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.-]+$")]
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


class SitesController(Controller):
    path = "/api/sites"
    tags = ["analytics"]
    guards = [requires_user]
    security = BEARER

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Track a site (returns its public ingest key)",
        responses=problems(400, 401, 429),
    )
    async def create_site(self, data: JSONBody[SiteCreate], uow: Uow, current_user: Caller) -> SiteOut:
        return SiteOut.from_row(
            await sites.create_site(uow, current_user.id, data.domain, str(data.timezone))
        )

    @get("/", summary="Your sites (admins: all)", responses=problems(400, 401, 429))
    async def list_sites(
        self, uow: Uow, current_user: Caller, cursor: CursorParam = None, limit: PageSize = 50
    ) -> Page[SiteOut]:
        after_id = decode_cursor(cursor, SiteCursor).after_id if cursor else 0
        rows = await sites.list_sites(uow, current_user, after_id=after_id, limit=limit + 1)
        return paginate(rows, limit, lambda row: SiteCursor(row.id), SiteOut.from_row)

    @get("/{site_id:int}", summary="A site", responses=problems(401, 404, 429))
    async def get_site(self, site_id: IdPath, uow: Uow, current_user: Caller) -> SiteOut:
        return SiteOut.from_row(await sites.get_site_for(uow, current_user, site_id))

    @delete(
        "/{site_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Stop tracking a site",
        responses=problems(401, 404, 429),
    )
    async def delete_site(self, site_id: IdPath, uow: Uow, current_user: Caller) -> None:
        await sites.delete_site(uow, current_user, site_id)
