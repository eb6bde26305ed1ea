"""The administrators' side of the groups: reading them, and changing their state by hand.

Resolve (now, in a release, in the next release), ignore (for good, for N more events, until a
time), reopen, merge and unmerge, each in one transaction that first locks the acting
administrator's row (``_lock_admin``) then the group's root; the details and lists the admin API
answers; and the end of timed ignores the periodic checks run (``expire_timed_ignores``). Held by
``MonitoringService``, whose public methods of the same names delegate here; split out of
``services.py`` because none of this is on the capture path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from valkey.asyncio import Valkey
from valkey.exceptions import ValkeyError

from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, ForbiddenError, NotFoundError, UnprocessableError
from app.core.pagination import BEFORE_EVERY_ID
from app.db import monitoring as queries
from app.db.models import (
    MonitoringEvent,
    MonitoringFingerprint,
    MonitoringGroup,
    MonitoringGroupKind,
    MonitoringGroupStatus,
    MonitoringIgnoreMode,
)
from app.domains.accounts.services import AccountService
from app.domains.monitoring.groups import GroupWriter, set_state, utc
from app.domains.monitoring.ingest import GATE
from app.domains.monitoring.schemas import DETAIL_RELEASES


class ReleaseNotConfiguredError(ConflictError):
    """The next release cannot be told apart from this one: the process runs with the package
    version only (no ``MONITORING_RELEASE``), which every deploy shares."""

    slug = "release-not-configured"
    title = "Release not configured"


class UnknownReleaseError(UnprocessableError):
    """A release named in a resolve that has never run here: it has no place in the release order
    yet (a release's place is the first time one of its processes started)."""

    slug = "unknown-release"
    title = "Unknown release"


MAX_MERGED_GROUPS = 1_000
"""Groups one merged group holds at most (itself included): its detail lists them all, and its
grouping every hash of every one; merges 100 sources at a time could grow both without bound."""


class MergeTooLargeError(ConflictError):
    slug = "merge-too-large"
    title = "The merged group would hold too many groups"


@dataclass(frozen=True, slots=True)
class GroupDetail:
    group: MonitoringGroup
    events: int
    users: int
    first_seen_at: datetime
    last_seen_at: datetime
    members: list[int]
    releases: list[queries.ReleasesOfGroupRow]
    latest: MonitoringEvent | None
    resolved_in_release: str | None
    resolved_after_release: str | None


class Triage:
    def __init__(
        self,
        db: Database,
        valkey: Valkey,
        writer: GroupWriter,
        *,
        accounts: AccountService | None,
        release: str,
        release_configured: bool,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.valkey = valkey
        self.writer = writer
        self.accounts = accounts
        self.release = release
        self.release_configured = release_configured
        """False when the release is only the package version (``MonitoringService.release_configured``)."""
        self.clock = clock

    async def _lock_admin(self, uow: UnitOfWork, actor_id: int | None) -> None:
        """An administrator's change takes the actor's row first: the token's role is a claim, the
        row decides (``AccountService.lock_admin``). ``None``: a change made in-process, not for a
        caller (nothing to check); without accounts in the assembly no caller's change is accepted."""
        if actor_id is None:
            return
        if self.accounts is None:
            raise ForbiddenError("Administrators only.")
        await self.accounts.lock_admin(uow, actor_id)

    async def confirm_admin(self, actor_id: int) -> None:
        """``ForbiddenError`` unless ``actor_id`` is an active administrator's row now (the test
        error's route: it writes nothing itself, but what it raises is captured and alerted)."""
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)

    async def _root_for_change(self, uow: UnitOfWork, group_id: int) -> MonitoringGroup:
        group = await queries.lock_group(uow.conn, id=group_id)
        if group is None:
            raise NotFoundError("No such group.")
        if group.parent_id is not None:
            raise ConflictError(
                f"Group {group_id} is merged into group {group.root_id}: "
                "change that group, or unmerge this one."
            )
        return group

    def _open_gates_after_commit(self, uow: UnitOfWork, root_id: int) -> None:
        """After a state change, the next event of the group is written at once (no dedup wait)."""

        async def open_gates() -> None:
            async with self.db.transaction() as later:
                hashes = await queries.tree_hashes(later.conn, root_id=root_id)
            if hashes:
                with contextlib.suppress(ValkeyError, OSError):
                    await self.valkey.delete(*(GATE + row.hash for row in hashes))

        uow.after_commit(open_gates)

    async def resolve(
        self,
        group_id: int,
        actor_id: int | None,
        *,
        in_release: str | None = None,
        in_next_release: bool = False,
    ) -> GroupDetail:
        """Resolve now; ``in_release``: only events of that release or a newer one regress it;
        ``in_next_release``: only events of a release newer than the running one do.

        Releases are ordered by the first time one of their processes started (``register_release``):
        "newer" is "first ran later". So ``in_release`` must name a release that has run
        (``UnknownReleaseError`` otherwise: a future release has no place in that order yet), and
        ``in_next_release`` needs a configured release (``ReleaseNotConfiguredError`` when the running
        one is only the package version, shared by every deploy)."""
        if in_next_release and not self.release_configured:
            raise ReleaseNotConfiguredError(
                f"This deployment reports only the package version ({self.release}) as its release: "
                "MONITORING_RELEASE is not set, so the next deploy would report the same release and "
                "the group would never regress. Set MONITORING_RELEASE per build (the image's "
                "MONITORING_RELEASE build argument, e.g. the git commit), or resolve now or in a "
                "named release."
            )
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)
            group = await self._root_for_change(uow, group_id)
            in_release_id = after_release_id = None
            if in_release is not None:
                release = (  # the running release has run, even if its start-up registration failed
                    await queries.upsert_release(uow.conn, name=in_release)
                    if in_release == self.release
                    else await queries.get_release_by_name(uow.conn, name=in_release)
                )
                if release is None:
                    raise UnknownReleaseError(
                        f"Release {in_release!r} has never run here, so it has no place in the release "
                        "order yet (a release is ordered by the first time it ran). Resolve in the next "
                        f"release (mode in_next_release), or resolve in {in_release!r} once it has run."
                    )
                in_release_id = release.id
            if in_next_release:
                current = await queries.upsert_release(uow.conn, name=self.release)
                assert current is not None
                after_release_id = current.id
            await set_state(
                uow,
                group,
                MonitoringGroupStatus.RESOLVED,
                now,
                resolved_at=now,
                resolved_in_release_id=in_release_id,
                resolved_after_release_id=after_release_id,
            )
            detail = {"in_release": in_release, "in_next_release": in_next_release or None}
            await queries.add_activity(
                uow.conn,
                group_id=group.id,
                action="resolved",
                actor_id=actor_id,
                detail={k: v for k, v in detail.items() if v is not None},
                at=now,
            )
            self._open_gates_after_commit(uow, group.id)
            return await self._detail(uow, group.id)

    async def ignore(
        self,
        group_id: int,
        actor_id: int | None,
        mode: MonitoringIgnoreMode,
        *,
        more_events: int | None = None,
        until: datetime | None = None,
    ) -> GroupDetail:
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)
            group = await self._root_for_change(uow, group_id)
            until_events = None
            if mode == MonitoringIgnoreMode.UNTIL_COUNT:
                assert more_events is not None
                totals = await queries.tree_totals(uow.conn, root_id=group.id)
                assert totals is not None
                until_events = totals.events + more_events
            assert mode != MonitoringIgnoreMode.UNTIL_TIME or until is not None
            await set_state(
                uow,
                group,
                MonitoringGroupStatus.IGNORED,
                now,
                ignore_mode=mode,
                ignore_until_events=until_events,
                ignore_until=until if mode == MonitoringIgnoreMode.UNTIL_TIME else None,
            )
            await queries.add_activity(
                uow.conn,
                group_id=group.id,
                action="ignored",
                actor_id=actor_id,
                detail={
                    "mode": mode.value,
                    "until_events": until_events,
                    "until": until.isoformat() if until else None,
                },
                at=now,
            )
            return await self._detail(uow, group.id)

    async def expire_timed_ignores(self, now: datetime) -> None:
        """Unresolve the roots whose ignore time has passed, one transaction each (``ExpireTimedIgnore``
        says why)."""
        async with self.db.transaction() as uow:
            due = await queries.timed_ignores_due(uow.conn, now=now)
        for group_id in due:
            async with self.db.transaction() as uow:
                await queries.expire_timed_ignore(uow.conn, id=group_id, now=now)

    async def reopen(self, group_id: int, actor_id: int | None) -> GroupDetail:
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)
            group = await self._root_for_change(uow, group_id)
            await set_state(uow, group, MonitoringGroupStatus.UNRESOLVED, now)
            await queries.add_activity(
                uow.conn, group_id=group.id, action="reopened", actor_id=actor_id, detail={}, at=now
            )
            return await self._detail(uow, group.id)

    async def merge(self, target_id: int, source_ids: Sequence[int], actor_id: int | None) -> GroupDetail:
        """Merge the source groups (roots) into the target: reversible, every group keeps its own
        counters and hashes; the target's state applies to all of them from now on (a target ignored
        until N more events still waits for N: the sources' past events do not count)."""
        sources = sorted(set(source_ids))
        if target_id in sources:
            raise ConflictError("A group cannot be merged into itself.")
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)
            locked = {}
            for group_id in sorted([target_id, *sources]):  # one lock order: no deadlock between merges
                locked[group_id] = await self._root_for_change(uow, group_id)
            trees = {group_id: await queries.tree_totals(uow.conn, root_id=group_id) for group_id in locked}
            merged = sum(totals.members for totals in trees.values() if totals is not None)
            if merged > MAX_MERGED_GROUPS:
                raise MergeTooLargeError(
                    f"The group would hold {merged:,} groups, merged ones included: at most "
                    f"{MAX_MERGED_GROUPS:,}. Unmerge some first, or merge into another group."
                )
            moved = 0
            for source in sources:
                totals = trees[source]
                moved += totals.events if totals is not None else 0
                await queries.set_parent(uow.conn, parent_id=target_id, id=source)
                await queries.move_tree(uow.conn, new_root_id=target_id, old_root_id=source)
                await queries.add_activity(
                    uow.conn,
                    group_id=source,
                    action="merged",
                    actor_id=actor_id,
                    detail={"into": target_id},
                    at=now,
                )
            await queries.shift_ignore_count(uow.conn, events=moved, id=target_id)
            await queries.recount_tree_users(uow.conn, root_ids=[target_id])
            await queries.add_activity(
                uow.conn,
                group_id=target_id,
                action="merged",
                actor_id=actor_id,
                detail={"sources": sources},
                at=now,
            )
            return await self._detail(uow, target_id)

    async def unmerge(self, group_id: int, actor_id: int | None) -> GroupDetail:
        """Undo a merge: the group (with whatever was merged into it before) is a root again, with
        its own counters, hashes and the state it had when it was merged."""
        now = utc(self.clock())
        async with self.db.transaction() as uow:
            await self._lock_admin(uow, actor_id)
            group = await queries.get_group(uow.conn, id=group_id)
            if group is None:
                raise NotFoundError("No such group.")
            root = await self.writer.lock_root(uow, group_id)
            if root.id == group_id:  # checked under the lock: a concurrent unmerge may have come first
                raise ConflictError("This group is not merged into another one.")
            await queries.set_parent(uow.conn, parent_id=None, id=group_id)
            await queries.detach_subtree(uow.conn, id=group_id)
            detached = await queries.tree_totals(uow.conn, root_id=group_id)
            events = detached.events if detached is not None else 0
            await queries.shift_ignore_count(uow.conn, events=-events, id=root.id)
            await queries.recount_tree_users(uow.conn, root_ids=[root.id, group_id])
            await queries.add_activity(
                uow.conn,
                group_id=group_id,
                action="unmerged",
                actor_id=actor_id,
                detail={"from": root.id},
                at=now,
            )
            await queries.add_activity(
                uow.conn,
                group_id=root.id,
                action="unmerged",
                actor_id=actor_id,
                detail={"group": group_id},
                at=now,
            )
            return await self._detail(uow, group_id)

    async def _detail(self, uow: UnitOfWork, group_id: int) -> GroupDetail:
        group = await queries.get_group(uow.conn, id=group_id)
        if group is None:
            raise NotFoundError("No such group.")
        if group.parent_id is None:
            totals = await queries.tree_totals(uow.conn, root_id=group.id)
            assert totals is not None
            members = [member.id for member in await queries.tree_members(uow.conn, root_id=group.id)]
            users = await queries.tree_users(uow.conn, root_id=group.id) or 0
            events, first, last = totals.events, totals.first_seen_at, totals.last_seen_at
        else:
            members = [group.id]
            users, events, first, last = group.users, group.events, group.first_seen_at, group.last_seen_at
        return GroupDetail(
            group=group,
            events=events,
            users=users,
            first_seen_at=first,
            last_seen_at=last,
            members=members,
            releases=await queries.releases_of_group(uow.conn, group_id=group.id, row_limit=DETAIL_RELEASES),
            latest=next(
                iter(
                    await queries.list_group_events(
                        uow.conn, group_ids=members, before_id=BEFORE_EVERY_ID, row_limit=1
                    )
                ),
                None,
            ),
            resolved_in_release=await self._release_name(uow, group.resolved_in_release_id),
            resolved_after_release=await self._release_name(uow, group.resolved_after_release_id),
        )

    @staticmethod
    async def _release_name(uow: UnitOfWork, release_id: int | None) -> str | None:
        if release_id is None:
            return None
        release = await queries.get_release(uow.conn, id=release_id)
        return release.name if release else None

    async def detail(self, group_id: int) -> GroupDetail:
        async with self.db.transaction() as uow:
            return await self._detail(uow, group_id)

    async def list_groups(
        self,
        *,
        status: MonitoringGroupStatus | None,
        kind: MonitoringGroupKind | None,
        release: str | None,
        before_id: int,
        limit: int,
    ) -> Sequence[queries.ListGroupsRow | queries.ListGroupsWithStatusAndKindRow]:
        async with self.db.transaction() as uow:
            # one statement per shape: optional status and kind read every root for a rare one's few
            # (monitoring.sql)
            if status is None and kind is None:
                return await queries.list_groups(
                    uow.conn, before_id=before_id, release=release, row_limit=limit + 1
                )
            return await queries.list_groups_with_status_and_kind(
                uow.conn,
                statuses=list(MonitoringGroupStatus) if status is None else [status],
                kinds=list(MonitoringGroupKind) if kind is None else [kind],
                before_id=before_id,
                release=release,
                row_limit=limit + 1,
            )

    async def list_events(self, group_id: int, *, before_id: int, limit: int) -> list[MonitoringEvent]:
        async with self.db.transaction() as uow:
            group = await queries.get_group(uow.conn, id=group_id)
            if group is None:
                raise NotFoundError("No such group.")
            members = (
                [m.id for m in await queries.tree_members(uow.conn, root_id=group.id)]
                if group.parent_id is None
                else [group.id]
            )
            return await queries.list_group_events(
                uow.conn, group_ids=members, before_id=before_id, row_limit=limit + 1
            )

    async def grouping(
        self, group_id: int
    ) -> tuple[MonitoringGroup, list[MonitoringFingerprint], MonitoringEvent | None]:
        async with self.db.transaction() as uow:
            detail = await self._detail(uow, group_id)
            hashes = await queries.tree_hashes(uow.conn, root_id=detail.group.root_id)
            if detail.group.parent_id is not None:
                hashes = [row for row in hashes if row.group_id == group_id]
            return detail.group, hashes, detail.latest

    async def list_alerts(
        self, *, group_id: int | None, before_id: int, limit: int
    ) -> Sequence[queries.ListAlertsRow | queries.ListGroupAlertsRow]:
        async with self.db.transaction() as uow:
            # one statement per shape: the generic plan of an optional group read every alert for a
            # group's few (monitoring.sql)
            if group_id is None:
                return await queries.list_alerts(uow.conn, before_id=before_id, row_limit=limit + 1)
            return await queries.list_group_alerts(
                uow.conn, before_id=before_id, group_id=group_id, row_limit=limit + 1
            )
