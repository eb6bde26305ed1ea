"""Tracked sites: owned by a user; the owner and admins see a site, everyone else gets 404.

Other domains reach a site through this service: reports check access inside their own transaction
with ``get_for``; the ingest path turns public ingest keys into site ids with ``ids_for_keys`` and
asks ``is_deleted`` of the key on every view.

Deletions reach every process at once: a trigger on ``sites`` records each deleted site in
``deleted_sites`` and NOTIFYs it in the deleting transaction (whatever deletes it: this service, or
the cascade from its owner's account); each process mirrors the recent deletions in memory
(``app.core.revocations``). The mirror is current from the commit on, up to the notification's
delivery; while its listener is disconnected it may be stale, and the ingest sink's own check at
write time (``pageviews.writers``) still refuses the deleted site's views.

A key's rotation (``rotate_key``) takes the same way: another trigger records the old key in
``retired_ingest_keys`` (not ``deleted_sites``: the site and its data live on) and NOTIFYs it on the
same channel, so the mirror refuses it as a deleted site's key. Only the mirror does: the sink's
check at write time is by site, which lives. So while a process's listener is disconnected its
ingest looks every key up in PostgreSQL instead of its key cache (``refusals_live``); with the
listener up, a view that reaches another process between the rotation's commit and the arrival of
its notification (milliseconds) is still accepted.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from psycopg import AsyncConnection

from app.config import Settings
from app.core.auth import CurrentUser
from app.core.db import Database, UnitOfWork
from app.core.errors import (
    ConflictError,
    FieldError,
    NotFoundError,
    TooManyRequestsError,
    UnprocessableError,
)
from app.core.idempotency import IdempotencyClaim
from app.core.revocations import Revocations
from app.db import sites as queries
from app.db.models import Site
from app.domains.accounts.services import AccountService, AccountStillOwnsError
from app.domains.sites.schemas import SiteCreate

DELETIONS_KEPT_S = 3600.0
"""How long a process remembers a deletion or a rotation: far longer than any process caches a site's
key. Retired keys older than this are forgotten (``rotate_key``)."""


ROTATIONS_PER_HOUR = 10
"""Key rotations a site may make within an hour (429 past it): each retired key is refused by every
process for ``DELETIONS_KEPT_S``, so unbounded rotations would grow every process's mirror."""
OWNED_PAGE = 100
"""Sites read per statement by ``owns_domain``."""


class RotationLimitError(TooManyRequestsError):
    slug = "rotation-limit"
    title = "Too many key rotations"


class SiteLimitError(ConflictError):
    slug = "site-limit"
    title = "Too many sites"


class UnsupportedTimeZoneError(UnprocessableError):
    """A zone the API's ``TimeZone`` admits (Python's tz data) that PostgreSQL's tz database lacks:
    the two are updated apart, and every report of a site reads its zone in PostgreSQL (it would
    answer 400 for ever, the zone being the site's and not the request's)."""

    slug = "unsupported-time-zone"
    title = "Time zone not supported"

    def __init__(self, zone: str) -> None:
        super().__init__(
            f"The database's time zone data lacks {zone} (it is older than the list the API admits): "
            "choose a zone that keeps the same clock."
        )
        self.errors = [FieldError(field="timezone", message="time zone not supported by the database")]


class SiteService:
    def __init__(self, db: Database, settings: Settings, accounts: AccountService) -> None:
        self.db = db
        self.accounts = accounts
        self.sites_per_user_max = settings.sites_per_user_max
        self._zones_known: set[str] = set()
        """Zones PostgreSQL's tz database has, as it answered this process (``create``)."""
        conninfo, connect_kwargs = db.pool.conninfo, db.pool.kwargs
        assert isinstance(conninfo, str) and isinstance(connect_kwargs, dict), "a static pool configuration"
        self.deleted: Revocations[str] = Revocations(
            conninfo,
            connect_kwargs=connect_kwargs,
            connect_timeout_s=settings.database_timeout_s,
            listen=queries.listen_for_deleted_sites,
            load=self._recently_deleted,
            parse=str,
            keep_s=DELETIONS_KEPT_S,
            name="deleted-sites",
        )

    async def start(self) -> None:
        await self.deleted.start()

    async def close(self) -> None:
        await self.deleted.close()

    # -- access, inside another service's transaction --------------------------------------------

    async def get_for(self, uow: UnitOfWork, caller: CurrentUser, site_id: int) -> Site:
        """The site if the caller owns it or is an admin; 404 otherwise (existence is not revealed)."""
        return _visible(await queries.get_site(uow.conn, id=site_id), caller)

    # -- sites ----------------------------------------------------------------------------------

    async def create(
        self, owner_id: int, data: SiteCreate, *, claim: IdempotencyClaim[Site] | None = None
    ) -> Site:
        """A new site with a fresh public ingest key (what its tracker sends); at most
        ``SITES_PER_USER_MAX`` per owner (free accounts cannot mint unlimited ingest keys).
        ``claim``: the request's idempotency key, completed in this transaction (a replay answers
        the same ingest key). A zone PostgreSQL does not know is ``UnsupportedTimeZoneError``."""
        zone = str(data.timezone)
        async with self.db.transaction() as uow:
            await self._require_zone(uow, zone)
            await queries.lock_site_owner(uow.conn, owner_id=owner_id)
            await self.accounts.require_active(uow, owner_id)
            owned = await queries.count_owned_sites(uow.conn, owner_id=owner_id)
            if owned is not None and owned >= self.sites_per_user_max:
                raise SiteLimitError(f"An account owns at most {self.sites_per_user_max} sites.")
            site = await queries.create_site(
                uow.conn,
                owner_id=owner_id,
                domain=data.domain.strip().lower(),
                ingest_key=secrets.token_urlsafe(24),
                timezone=zone,
            )
            assert site is not None
            if claim is not None:
                await claim.complete(uow, site, resource_id=site.id)
            return site

    async def list_sites(self, caller: CurrentUser, *, after_id: int, row_limit: int) -> list[Site]:
        """The caller's sites (an admin's: every site) by id, after ``after_id``."""
        async with self.db.transaction() as uow:
            # two statements, not an optional owner: one generic plan serving both read every site
            # for a member's few (sites.sql)
            if caller.is_admin:
                return await queries.list_all_sites(uow.conn, after_id=after_id, row_limit=row_limit)
            return await queries.list_own_sites(
                uow.conn, owner_id=caller.id, after_id=after_id, row_limit=row_limit
            )

    async def owns_domain(self, owner_id: int, domain: str) -> bool:
        """Whether the user owns a site of ``domain`` (the demo seed's idempotence), page by page."""
        after_id = 0
        async with self.db.read() as uow:
            while page := await queries.list_own_sites(
                uow.conn, owner_id=owner_id, after_id=after_id, row_limit=OWNED_PAGE
            ):
                if any(site.domain == domain for site in page):
                    return True
                after_id = page[-1].id
        return False

    async def get(self, caller: CurrentUser, site_id: int) -> Site:
        async with self.db.transaction() as uow:
            return await self.get_for(uow, caller, site_id)

    async def delete(self, caller: CurrentUser, site_id: int) -> None:
        """Its ingest key stops working in every process from the commit on (module docstring); a
        daily job of the pageviews domain deletes its raw page views, one of the reports domain its
        rollups (``ReportService.purge_deleted_sites``), both in chunks: a busy site's rollups in this
        statement outlasted the statement timeout."""
        async with self.db.transaction() as uow:
            site = await self.get_for(uow, caller, site_id)
            await self._require_writer(uow, caller, site)
            if not await queries.delete_site(uow.conn, id=site_id):  # a concurrent deletion came first
                raise NotFoundError("No such site.")
            self._refuse_here_after_commit(uow, site.ingest_key)

    @staticmethod
    async def refuse_erasing_an_owner(uow: UnitOfWork, user_id: int, _actor: int) -> None:
        """An account's erasure (``AccountService.before_erasure``) while it owns a site is a 409
        (``account-still-owns``): deleting a site deletes its analytics, the owner's decision. Under the
        owner's creation lock, so a site being created meanwhile is counted."""
        await queries.lock_site_owner(uow.conn, owner_id=user_id)
        if owned := await queries.count_owned_sites(uow.conn, owner_id=user_id) or 0:
            raise AccountStillOwnsError(f"The account owns {owned} site(s): their owner deletes them first.")

    async def rotate_key(self, caller: CurrentUser, site_id: int) -> Site:
        """The site with a fresh ingest key, made as ``create`` makes one. The old key is refused by
        the ingest from the commit on: at once in this process, in every other one from the trigger's
        NOTIFY (module docstring). The owner's, or an administrator's write (the actor's row decides,
        locked right after the site's, as for a deletion); 404 to anyone else."""
        async with self.db.transaction() as uow:
            site = _visible(await queries.lock_site(uow.conn, id=site_id), caller)
            await self._require_writer(uow, caller, site)
            wait_s = await queries.rotation_wait(uow.conn, site_id=site_id, per_hour=ROTATIONS_PER_HOUR)
            if wait_s:
                raise RotationLimitError(
                    f"This site's key was rotated {ROTATIONS_PER_HOUR} times within the hour; "
                    "put the current key in the tracker's snippet, then rotate again if it leaked.",
                    headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
                )
            rotated = await queries.replace_ingest_key(
                uow.conn, id=site_id, ingest_key=secrets.token_urlsafe(24)
            )
            assert rotated is not None, "the site is locked"
            await queries.forget_retired_keys(uow.conn, kept_s=DELETIONS_KEPT_S)
            self._refuse_here_after_commit(uow, site.ingest_key)
            return rotated

    async def _require_zone(self, uow: UnitOfWork, zone: str) -> None:
        """``UnsupportedTimeZoneError`` unless PostgreSQL's tz database has ``zone``. The API's
        ``TimeZone`` admits Python's zones only (validated at decoding); PostgreSQL's check reads its
        tz directory from disk (``pg_timezone_names``, ~45 ms), so a zone it knows is remembered for
        the process: its zones do not change while it runs (only an upgrade of the server changes
        them, and tz data keeps a retired name as a link). A zone it lacks is asked again each time:
        an upgraded server may know it the next time. Bounded: only zones PostgreSQL has are kept."""
        if zone in self._zones_known:
            return
        if not await queries.database_knows_time_zone(uow.conn, name=zone):
            raise UnsupportedTimeZoneError(zone)
        self._zones_known.add(zone)

    async def _require_writer(self, uow: UnitOfWork, caller: CurrentUser, site: Site) -> None:
        """Another's site is an administrator's write, which the actor's row decides (not the token's
        claim): 404 to anyone else, as for a site they cannot see."""
        if site.owner_id != caller.id and not await self.accounts.holds_admin(uow, caller.id):
            raise NotFoundError("No such site.")

    def _refuse_here_after_commit(self, uow: UnitOfWork, ingest_key: str) -> None:
        """From ``uow``'s commit on, this process refuses ``ingest_key`` (a deletion's or a rotation's),
        before its own notification arrives; the other processes refuse it from that notification."""

        async def known_here() -> None:
            self.deleted.add([ingest_key])

        uow.after_commit(known_here)

    # -- for the ingest path ----------------------------------------------------------------------

    async def ids_for_keys(self, ingest_keys: list[str]) -> dict[str, int]:
        """The site ids of those of ``ingest_keys`` that belong to a site, in one statement."""
        async with self.db.transaction() as uow:
            rows = await queries.site_ids_for_keys(uow.conn, ingest_keys=ingest_keys)
        return {row.ingest_key: row.id for row in rows}

    @property
    def refusals_live(self) -> bool:
        """Whether this process's mirror of refused keys is current (its listener connected and
        loaded): while it is not, a cached key may have been rotated or its site deleted meanwhile."""
        return self.deleted.live

    def is_deleted(self, ingest_key: str) -> bool:
        """Whether the key's site was deleted recently, or the key rotated out (per this process's
        mirror: see the module docstring). Keys, not ids: a key is never issued twice."""
        return ingest_key in self.deleted

    async def _recently_deleted(self, conn: AsyncConnection[Any]) -> list[str]:
        return await queries.recently_deleted_keys(conn, within_s=DELETIONS_KEPT_S)


def _visible(site: Site | None, caller: CurrentUser) -> Site:
    """``site`` if the caller owns it or claims to be an admin; ``NotFoundError`` otherwise (existence
    is not revealed)."""
    if site is None or (site.owner_id != caller.id and not caller.is_admin):
        raise NotFoundError("No such site.")
    return site
