"""Tracking: the GitHub logins each account follows (the snapshot cron's work list).

Private to the GitHub domain (``GithubService`` holds one ``Tracking`` as ``tracking`` and delegates
``list_tracked``, ``track`` and ``untrack`` to it). Tracking a login with nothing stored looks it up
first, on the account's share of the quota (``lookups.py``), and the tracking's transaction locks
the stored profile and snapshot attempt as the retention's purge does (``snapshots.py``), so a purge
and a tracking never leave a login an active account tracks without its profile (a deactivated
account's logins count as untracked: their profiles go, and are looked up again once it is back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.config import Settings
from app.core.db import Database, UnitOfWork
from app.core.pagination import IdCursor, Page, paginate
from app.db import github as queries
from app.db.models import GithubTracked
from app.domains.github.errors import NotTrackedError, TrackingLimitError
from app.domains.github.lookups import ProfileLookups
from app.domains.github.schemas import TrackedOut

if TYPE_CHECKING:
    from app.domains.accounts.services import AccountService


class _ProfileGoneError(Exception):
    """The profile read before tracking was purged before the tracking locked it."""


class Tracking:
    """Who tracks which login: listed, added within the account's limit, removed."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        lookups: ProfileLookups,
        accounts: AccountService | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.lookups = lookups
        self.accounts = accounts

    async def list_tracked(self, user_id: int, *, after_id: int, limit: int) -> Page[TrackedOut]:
        async with self.db.transaction() as uow:
            rows = await queries.list_github_tracked(
                uow.conn, user_id=user_id, after_id=after_id, row_limit=limit + 1
            )
        return paginate(rows, limit, lambda row: IdCursor(id=row.id), _tracked_out)

    async def track(self, user_id: int, login: str, address: str | None = None) -> tuple[TrackedOut, bool]:
        """Start tracking (idempotent: True when newly tracked). The login must exist on GitHub: one
        with nothing stored is looked up, on the account's share of the quota and ``address``'s.

        The transaction locks the stored profile (and snapshot attempt) before it writes the tracked
        row, as the retention's purge locks them before deleting them: a purge that has the profile
        locked first deletes it, and the tracking then finds it gone and looks the login up again
        (a profile just fetched is far from its retention)."""
        stored = await self.lookups.load(login) is not None
        for _ in range(2):
            if not stored:
                await self._check_tracking_room(user_id, login)
                await self.lookups.cold_lookup(user_id, login, address)
            try:
                return await self._track_stored(user_id, login, last_try=not stored)
            except _ProfileGoneError:
                stored = False
        raise AssertionError("unreachable: the second try tracks even without a profile")

    async def _check_tracking_room(self, user_id: int, login: str) -> None:
        """Refuses (409) a new login past the account's tracking limit before its lookup costs the
        account's share of the quota; ``_track_stored`` checks again under its lock (a race)."""
        async with self.db.read() as uow:
            if await queries.get_github_tracked(uow.conn, user_id=user_id, login=login) is not None:
                return
            count = await queries.count_github_tracked(uow.conn, user_id=user_id) or 0
        self._refuse_past_tracking_limit(count)

    def _refuse_past_tracking_limit(self, count: int) -> None:
        limit = self.settings.github_max_tracked_per_user
        if count >= limit:
            raise TrackingLimitError(f"A user tracks at most {limit} GitHub users; untrack one first.")

    async def _track_stored(self, user_id: int, login: str, *, last_try: bool) -> tuple[TrackedOut, bool]:
        async with self.db.transaction() as uow:
            kept = await queries.lock_github_profile_kept(uow.conn, login=login)
            if kept is None and not last_try:
                raise _ProfileGoneError  # purged since it was read: rolled back, looked up again
            await queries.lock_github_snapshot_attempt_kept(uow.conn, login=login)
            await queries.lock_github_tracking(uow.conn, user_id=user_id)
            if self.accounts is not None:  # an erasure holds the lock until it commits
                await self.accounts.require_active(uow, user_id)
            existing = await queries.get_github_tracked(uow.conn, user_id=user_id, login=login)
            if existing is not None:
                return _tracked_out(existing), False
            count = await queries.count_github_tracked(uow.conn, user_id=user_id) or 0
            self._refuse_past_tracking_limit(count)
            row = await queries.track_github_login(uow.conn, user_id=user_id, login=login)
        assert row is not None
        return _tracked_out(row), True

    @staticmethod
    async def forget_tracker(uow: UnitOfWork, user_id: int, _actor: int) -> None:
        """An account's erasure (``AccountService.before_erasure``): the logins it tracked are its own
        data and go; their profiles and histories follow with the retention, once no active account
        tracks them. Under the user's tracking lock, so a tracking being added meanwhile goes too."""
        await queries.lock_github_tracking(uow.conn, user_id=user_id)
        await queries.forget_tracking_of_user(uow.conn, user_id=user_id)

    async def untrack(self, user_id: int, login: str) -> None:
        async with self.db.transaction() as uow:
            removed = await queries.untrack_github_login(uow.conn, user_id=user_id, login=login)
        if not removed:
            raise NotTrackedError("You do not track this GitHub user.")


def _tracked_out(row: GithubTracked) -> TrackedOut:
    return TrackedOut(username=row.login, tracked_since=row.created_at)
