"""HTTP for tracked sites (``/api/sites``); their reports are the reports domain's."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.core.auth import Caller, requires_user
from app.core.idempotency import (
    IDEMPOTENCY_DESCRIPTION,
    DocumentsLocatedCreation,
    Idempotent,
    OptionalIdempotencyKey,
    at_location,
)
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, Page, PageSize, decode_cursor, paginate
from app.core.routing import Controller
from app.core.types import IdPath
from app.domains.sites.schemas import SiteCreate, SiteCursor, SiteOut
from app.domains.sites.services import ROTATIONS_PER_HOUR, SiteService

Sites = NamedDependency[SiteService]

CREATE_DESCRIPTION = (
    "The answer carries the site's public `ingest_key`, what its tracker sends with every page view. "
    "A leaked key is replaced by rotating it (`POST /api/sites/{site_id}/ingest-key`); the site and "
    "its reports stay. The key keeps working until it is rotated or the site deleted, whatever becomes "
    "of its owner's account: deactivating the account does not stop the site's ingest (an account may be "
    "reactivated, and refusing views meanwhile would lose them for good). `timezone` (default `UTC`) "
    "is the clock of the site's reports; a zone the API lists but the database's time zone data lacks "
    "(the two are updated apart) is 422 `unsupported-time-zone` naming `timezone`, and nothing is "
    "created. An account owns at most `SITES_PER_USER_MAX` sites; one more is 409 `site-limit` until "
    "one of them is deleted. " + IDEMPOTENCY_DESCRIPTION
)

DELETE_DESCRIPTION = (
    "Irreversible. The site's ingest key stops working at once, in every process. Its reports go at "
    "once: the hourly rollups, visitors and visits they read are deleted with the site, in the same "
    "transaction. Its raw page views are purged by the daily purge job once the deletion is "
    "ten minutes old, so within a day and ten minutes. Nothing of it can be recovered."
)

ROTATE_DESCRIPTION = (
    "Replaces the site's public `ingest_key` with a fresh one and answers the site carrying it (as "
    "`GET /api/sites/{site_id}` will from now on). The old key is refused from the rotation on, as a "
    "deleted site's key (its page views are answered 422 `unknown-site-key`): at once by the process "
    "that rotated it, by every other one from the change's notification on (milliseconds later). "
    "Views it sent before are kept, as are the site and its reports. Put the new key in the tracker's "
    "snippet before rotating again: each rotation retires the key in use. The site's owner rotates; "
    "an administrator may rotate any site; to anyone else the site does not exist (404). Not a "
    "creation: no `Idempotency-Key` (a retried rotation rotates again, and answers the newest key). "
    f"At most {ROTATIONS_PER_HOUR} rotations of a site within an hour: past them 429 `rotation-limit` "
    "with `Retry-After`, and the key stays."
)


class SitesController(Controller):
    path = "/api/sites"
    tags = ["analytics"]
    guards = [requires_user]
    security = BEARER

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Track a site (returns its public ingest key)",
        description=CREATE_DESCRIPTION,
        operation_class=DocumentsLocatedCreation,
        responses={
            **problems(400, 401, 409, 422, 429),
            201: ResponseSpec(SiteOut, description="Created"),
        },
    )
    async def create_site(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[SiteCreate],
        sites: Sites,
        idempotency: Idempotent,
        current_user: Caller,
        idempotency_key: OptionalIdempotencyKey = None,
    ) -> Response[bytes]:
        created = await idempotency.respond(
            request,
            current_user.id,
            idempotency_key,
            data,
            lambda claim: sites.create(current_user.id, data, claim=claim),
            SiteOut.from_row,
        )
        return at_location(created, "/api/sites/{id}")

    @get("/", summary="Your sites (admins: all)", responses=problems(400, 401, 429))
    async def list_sites(
        self, sites: Sites, current_user: Caller, cursor: CursorParam = None, limit: PageSize = 50
    ) -> Page[SiteOut]:
        after_id = decode_cursor(cursor, SiteCursor).after_id if cursor else 0
        rows = await sites.list_sites(current_user, after_id=after_id, row_limit=limit + 1)
        return paginate(rows, limit, lambda row: SiteCursor(row.id), SiteOut.from_row)

    @get("/{site_id:int}", summary="A site", responses=problems(401, 404, 429))
    async def get_site(self, site_id: IdPath, sites: Sites, current_user: Caller) -> SiteOut:
        return SiteOut.from_row(await sites.get(current_user, site_id))

    @delete(
        "/{site_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a site (its key and reports at once, its raw page views within a day)",
        description=DELETE_DESCRIPTION,
        responses=problems(401, 404, 429),
    )
    async def delete_site(self, site_id: IdPath, sites: Sites, current_user: Caller) -> None:
        await sites.delete(current_user, site_id)

    @post(
        "/{site_id:int}/ingest-key",
        status_code=HTTP_200_OK,
        summary="Rotate a site's ingest key (the old key is refused from now on)",
        description=ROTATE_DESCRIPTION,
        responses=problems(401, 404, 429),
    )
    async def rotate_ingest_key(self, site_id: IdPath, sites: Sites, current_user: Caller) -> SiteOut:
        return SiteOut.from_row(await sites.rotate_key(current_user, site_id))
