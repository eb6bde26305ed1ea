"""Projects and their members: membership is the permission model of everything inside a project.

Owners manage members, editors change content, viewers read. A user who is not a member gets 404
for the project and everything in it (existence is not revealed); a member whose role is too low
gets 403 (they already know the project exists). Other domains check access inside their own
transaction with ``require_role`` (or ``check_role`` on a role their query already read).

Locks, always in a project deletion's order (the project row, then its members, then its tasks, files
and invitations), so none of these waits can close a cycle with a deletion:
- a change that adds to a user's projects (a creation, an acceptance) first holds that user's lock
  (``LockUserProjects``, an advisory lock no deletion takes), before any project's: two of them for
  one user run one after the other, and each counts what the other added (``PROJECTS_PER_USER_MAX``,
  ``MEMBERSHIPS_PER_USER_MAX``);
- a change that inserts rows referring to the project (a task, a file) holds the project row
  ``FOR KEY SHARE`` before it checks access (``keep_project=True``), and an assignee's membership
  before it is relied on (``keep_member``): a deletion or removal that commits meanwhile is then a
  404 or 422, not the insert's foreign-key violation (a 500);
- a change of members or invitations (an invitation sent or accepted, a role changed, a member
  removed) holds the project ``FOR NO KEY UPDATE`` before it reads any role or count: two changes
  that each saw another active owner cannot remove the last one together, two invitations cannot
  both pass the cap, and a member's removal (which withdraws their waiting invitations, and those they
  sent) or an owner's demotion (which withdraws those they sent) and an acceptance of one of them come
  one after the other;
- a change of the project's own fields holds it ``FOR NO KEY UPDATE``, and a deletion ``FOR UPDATE``
  (the lock the deletion takes anyway), before the role is read: the version an ``If-Match`` is
  compared with is the one the change replaces (``app/core/preconditions.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial

import structlog

from app.config import Settings
from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, ForbiddenError, NotFoundError
from app.core.idempotency import IdempotencyClaim
from app.core.outbox import enqueue
from app.core.preconditions import Preconditions, require_match
from app.core.wire import from_row, given
from app.db import projects as queries
from app.db.models import Project, ProjectInvitation, ProjectRole
from app.domains.accounts.services import AccountService, AccountStillOwnsError
from app.domains.activity.events import emit
from app.domains.projects.schemas import (
    InvitationCreate,
    MemberOut,
    ProjectCreate,
    ProjectUpdate,
    SentInvitationOut,
)

RANK = {ProjectRole.VIEWER: 0, ProjectRole.EDITOR: 1, ProjectRole.OWNER: 2}


ProjectDeleted = Callable[[int], Awaitable[None]]
"""Called with a deleted project's id once its deletion has committed."""

MembershipChanged = Callable[[int, int], Awaitable[None]]
"""Called with (user id, project id) once that membership was added or removed (committed)."""

ProjectRenamed = Callable[[int], Awaitable[None]]
"""Called with a project's id once a change of its name has committed."""


log = structlog.get_logger("app.projects")

INVITATION_TOKEN_BYTES = 32
"""Random bytes of an invitation's token (256 bits; 43 URL-safe characters)."""


INVITATION_PURGE_CHUNK = 10_000
"""Expired invitations deleted per transaction by the daily purge."""

PURGE_TASK = "purge_deleted_project"
"""The job that deletes what a deleted project held (``purge_deleted_project``), enqueued by the
deletion through the outbox and again by the hourly cron for a purge that was lost."""

PURGE_TASKS_CHUNK = 100
"""A deleted project's tasks purged per transaction, with their comments and search documents (at
the caps, 100 tasks of ``COMMENTS_PER_TASK_MAX`` 1,000 comments: 100,000 comments)."""

PURGE_GROUPS_CHUNK = 100
"""A deleted project's feed groups purged per transaction once empty (their actors and readers' marks
go with them)."""

PURGE_FILES_CHUNK = 1_000
"""A deleted project's files whose feed objects are made tombstones per transaction, before its row goes
(``FILE_PROJECT_MAX_COUNT`` is 1,000 by default, but a setting: no bound on its own)."""

PURGE_FEED_ROWS_CHUNK = 20_000
"""A deleted project's feed rows (event reads, events, group objects) deleted per statement and
transaction while its groups are emptied: a group's rows are bounded by no cap."""

PURGE_RUN_BUDGET_S = 20.0
"""How long one purge job goes on (below ``JOB_TIMEOUT_S``'s default 30 s); the rest is left to a
follow-up job it enqueues."""

PURGE_LOST_AFTER_S = 600.0
"""A project marked for deletion this long ago that still exists lost its purge job: the hourly cron
enqueues it again."""


async def _enqueue_purge(uow: UnitOfWork, project_id: int) -> None:
    """The project's purge job, sent by the outbox once ``uow`` commits (deletion, follow-up, cron)."""
    await enqueue(uow, "default", PURGE_TASK, {"project_id": project_id})


def new_invitation_token() -> tuple[str, bytes]:
    """A fresh invitation token and the SHA-256 stored for it (the token itself is never stored)."""
    token = secrets.token_urlsafe(INVITATION_TOKEN_BYTES)
    return token, invitation_token_digest(token)


def invitation_token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_matches(stored: bytes | None, presented: bytes) -> bool:
    """Whether the presented token's digest is the stored one, compared in constant time. An
    invitation issued before tokens (``stored`` null) matches nothing."""
    return stored is not None and hmac.compare_digest(stored, presented)


class ProjectLimitError(ConflictError):
    slug = "project-limit"
    title = "Too many projects"


class InvitationLimitError(ConflictError):
    slug = "invitation-limit"
    title = "Too many waiting invitations"


class MembershipLimitError(ConflictError):
    slug = "membership-limit"
    title = "Member of too many projects"


class ProjectFullError(ConflictError):
    slug = "project-full"
    title = "The project has as many members as it may"


class ProjectService:
    def __init__(self, db: Database, accounts: AccountService, settings: Settings) -> None:
        self.db = db
        self.accounts = accounts
        self.projects_per_user_max = settings.projects_per_user_max
        self.memberships_per_user_max = settings.memberships_per_user_max
        self.project_members_max = settings.project_members_max
        self.project_invitations_max = settings.project_invitations_max
        self.invitation_ttl_s = float(settings.invitation_ttl_s)
        self._on_deleted: list[ProjectDeleted] = []
        self._on_membership: list[MembershipChanged] = []
        self._on_renamed: list[ProjectRenamed] = []

    def after_delete(self, callback: ProjectDeleted) -> None:
        """Run ``callback(project_id)`` after each project deletion commits (e.g. the files domain
        removes the project's files from disk). A failing callback is logged; sweeps catch up."""
        self._on_deleted.append(callback)

    def after_membership_change(self, callback: MembershipChanged) -> None:
        """Run ``callback(user_id, project_id)`` after that membership is added or removed (commits):
        the projects the user may see changed (cached answers built for their old scope must not be
        served), and a removed member's tasks in the project are unassigned by the database."""
        self._on_membership.append(callback)

    def after_rename(self, callback: ProjectRenamed) -> None:
        """Run ``callback(project_id)`` after the project's name is changed (commits): answers that
        show the name (the feed's sentences join it live) must not be served with the old one."""
        self._on_renamed.append(callback)

    def _membership_changed(self, uow: UnitOfWork, user_id: int, project_id: int) -> None:
        for callback in self._on_membership:
            uow.after_commit(partial(callback, user_id, project_id))

    async def existing(self, project_ids: list[int]) -> set[int]:
        """Which of these projects still exist (for sweeps of what deleted projects left behind)."""
        async with self.db.transaction() as uow:
            return set(await queries.existing_projects(uow.conn, ids=project_ids))

    # -- access, inside another service's transaction --------------------------------------------

    @staticmethod
    def check_role(
        role: ProjectRole | None, at_least: ProjectRole, *, missing: str = "No such project."
    ) -> ProjectRole:
        """``role`` if it is at least ``at_least``; 404 (``missing``) for no role, 403 for too low."""
        if role is None:
            raise NotFoundError(missing)
        if RANK[role] < RANK[at_least]:
            raise ForbiddenError(f"This needs the {at_least.value} role in the project.")
        return role

    async def require_role(
        self,
        uow: UnitOfWork,
        user_id: int,
        project_id: int,
        at_least: ProjectRole,
        *,
        keep_project: bool = False,
    ) -> ProjectRole:
        """The caller's role in the project, if it is at least ``at_least``; else 404 or 403.

        ``keep_project``: before inserting rows that refer to the project, which is then kept from
        deletion until the transaction ends (a deletion that committed first is a 404)."""
        read = queries.get_member_role_keeping_project if keep_project else queries.get_member_role
        return self.check_role(await read(uow.conn, project_id=project_id, user_id=user_id), at_least)

    async def keep_member(self, uow: UnitOfWork, user_id: int, project_id: int) -> bool:
        """Whether the user is a member, their membership kept from removal until the transaction
        ends (before relying on it, e.g. as a task's assignee)."""
        return await queries.keep_member(uow.conn, project_id=project_id, user_id=user_id) is not None

    async def member_project_ids(self, user_id: int) -> list[int]:
        """The projects the user is a member of now, in any role."""
        async with self.db.read() as uow:
            return await queries.member_project_ids(uow.conn, user_id=user_id)

    # -- projects -------------------------------------------------------------------------------

    async def create(
        self, actor: int, data: ProjectCreate, *, claim: IdempotencyClaim[Project] | None = None
    ) -> Project:
        """The creator becomes the project's first owner. A user has created at most
        ``PROJECTS_PER_USER_MAX`` projects that still exist (each may invite people: no flood), and
        the membership this adds counts toward ``MEMBERSHIPS_PER_USER_MAX`` (``_require_room``).
        ``claim``: the request's idempotency key, completed in this transaction."""
        async with self.db.transaction() as uow:
            await queries.lock_user_projects(uow.conn, user_id=actor)
            await self.accounts.require_active(uow, actor)
            created = await queries.count_created_projects(uow.conn, owner_id=actor)
            if created is not None and created >= self.projects_per_user_max:
                raise ProjectLimitError(
                    f"A user creates at most {self.projects_per_user_max} projects; delete one first."
                )
            await self._require_room(uow, actor)
            project = await queries.create_project(
                uow.conn, name=data.name.strip(), description=data.description, owner_id=actor
            )
            assert project is not None
            await queries.add_member(uow.conn, project_id=project.id, user_id=actor, role=ProjectRole.OWNER)
            self._membership_changed(uow, actor, project.id)
            await emit(
                uow,
                actor=actor,
                verb="project.created",
                obj=("project", project.id),
                project_id=project.id,
                data={"name": project.name},
            )
            if claim is not None:
                await claim.complete(uow, project, resource_id=project.id)
            return project

    async def get(self, actor: int, project_id: int) -> tuple[Project, ProjectRole]:
        async with self.db.transaction() as uow:
            return await self._get(uow, actor, project_id, ProjectRole.VIEWER)

    async def _get(
        self,
        uow: UnitOfWork,
        actor: int,
        project_id: int,
        at_least: ProjectRole,
        *,
        keep_project: bool = False,
    ) -> tuple[Project, ProjectRole]:
        role = await self.require_role(uow, actor, project_id, at_least, keep_project=keep_project)
        project = await queries.get_project(uow.conn, id=project_id)
        if project is None:
            raise NotFoundError("No such project.")
        return project, role

    async def update(
        self, actor: int, project_id: int, data: ProjectUpdate, *, conditions: Preconditions | None = None
    ) -> tuple[Project, ProjectRole]:
        """Editors rename and describe; archiving is the owners' call. A change that changes nothing
        (every field given as it is) is no change: the project as it is, its ``updated_at`` and
        ``version`` kept, no event.

        ``conditions``: only at a version they allow (else 412, nothing changed),
        compared with the row read under the lock this change holds until it commits (taken before
        the role is read, the project before its members), so of two changes based on one version
        the second is refused."""
        needed = ProjectRole.OWNER if given(data.archived) is not None else ProjectRole.EDITOR
        name = given(data.name)
        async with self.db.transaction() as uow:
            before = await queries.lock_project_for_change(uow.conn, id=project_id)
            role = await self.require_role(uow, actor, project_id, needed)
            if before is None:  # no such project (then no role either: kept for the type)
                raise NotFoundError("No such project.")
            require_match(conditions, before.version)
            project = await queries.update_project(
                uow.conn,
                name=name.strip() if name else None,
                description=given(data.description),
                archived=given(data.archived),
                id=project_id,
            )
            if project is None:  # nothing to change
                return before, role
            changed = [
                f for f in ("name", "description", "archived") if getattr(project, f) != getattr(before, f)
            ]
            if "name" in changed:
                for callback in self._on_renamed:
                    uow.after_commit(partial(callback, project_id))
            # The new name renames the project in the feed's sentences.
            named = {"name": project.name} if "name" in changed else {}
            await emit(
                uow,
                actor=actor,
                verb="project.updated",
                obj=("project", project_id),
                project_id=project_id,
                data={"fields": changed, **named},
            )
            return project, role

    async def delete(self, actor: int, project_id: int, *, conditions: Preconditions | None = None) -> None:
        """Owners only. The event names no project: the project (and its feed) is gone with it.

        ``conditions``: only at a version they allow (else 412), compared with
        the row read under the deletion's own lock, taken first.

        One short transaction whatever the project holds: the project is marked as being deleted
        (``deleting_since``: every query of this domain reads it as gone, the creator's cap no longer
        counts it), its memberships and invitations are deleted (every access through membership, to
        its tasks, comments, files and feed, is a 404 from the commit on), and its purge is enqueued
        (``purge_deleted_project``), which deletes the rest in bounded chunks. A single deletion
        cascading to everything of a project at the caps ran far past the statement timeout. No task
        is touched: their assignees (``project_assignees``) stay until the purge deletes them."""
        async with self.db.transaction() as uow:
            project = await queries.lock_project_for_deletion(uow.conn, id=project_id)
            await self.require_role(uow, actor, project_id, ProjectRole.OWNER)
            if project is None:
                raise NotFoundError("No such project.")
            require_match(conditions, project.version)
            if not await self._delete_locked(uow, project_id):
                raise NotFoundError("No such project.")
            await emit(
                uow,
                actor=actor,
                verb="project.deleted",
                obj=("project", project_id),
                project_id=None,
                data={"name": project.name},
            )

    async def list_for(
        self, actor: int, *, archived: bool | None, after_id: int, row_limit: int
    ) -> list[queries.ListMemberProjectsRow]:
        async with self.db.transaction() as uow:
            return await queries.list_member_projects(
                uow.conn, user_id=actor, archived=archived, after_id=after_id, row_limit=row_limit
            )

    # -- members --------------------------------------------------------------------------------

    async def list_members(
        self, actor: int, project_id: int, *, after_user_id: int, row_limit: int
    ) -> list[MemberOut]:
        """Members' emails are shown to owners only (and each member sees their own)."""
        async with self.db.transaction() as uow:
            role = await self.require_role(uow, actor, project_id, ProjectRole.VIEWER)
            rows = await queries.list_members(
                uow.conn, project_id=project_id, after_user_id=after_user_id, row_limit=row_limit
            )
        owner = role == ProjectRole.OWNER
        return [
            from_row(MemberOut, row, email=row.email if owner or row.user_id == actor else None)
            for row in rows
        ]

    # -- invitations: members join by accepting, never by being added by id -------------------------

    async def invite(self, actor: int, project_id: int, data: InvitationCreate) -> SentInvitationOut:
        """Owners invite an email: the invitation, with the token that accepts it (returned only here,
        stored only as its SHA-256) and when it expires. The answer is the same whether the email has an
        account (active or not) or is a member already: nothing here tells who has an account. Inviting
        again updates the role and issues a new token (the old one stops working). A project has at most
        ``PROJECT_INVITATIONS_MAX`` waiting invitations.

        An invitation expires ``INVITATION_TTL_S`` after it was sent (or sent again: a new token, and
        its time starts again). An expired one is as if withdrawn: it cannot be accepted or declined
        (the 404 of an invitation that does not exist), nor withdrawn (404), it is listed nowhere and
        does not count toward the cap; ``purge_expired_invitations`` deletes it (daily).

        Why a token: registration proves no control of an email (no mail is sent), so an invitation
        matched on the address alone went to whoever registered it first. The owner hands the token
        to the invitee over a channel they trust.

        An invitation is worth its sender's authority: it is accepted (and listed to its invitee) only
        while whoever sent it last is still an active owner of the project. Removing an owner, an owner
        leaving and an owner's demotion withdraw the invitations they sent; the acceptance checks the
        sender again (an account deactivated by an administrator, rows written before that withdrawal)."""
        email = data.email.strip().lower()
        async with self.db.transaction() as uow:
            await self._lock_membership(uow, project_id)
            project, _ = await self._get(uow, actor, project_id, ProjectRole.OWNER)
            waiting = await queries.count_other_invitations(
                uow.conn, project_id=project_id, email=email, ttl_s=self.invitation_ttl_s
            )
            if waiting is not None and waiting >= self.project_invitations_max:
                raise InvitationLimitError(
                    f"A project has at most {self.project_invitations_max} waiting invitations; "
                    "withdraw one first."
                )
            token, digest = new_invitation_token()
            invitation = await queries.upsert_invitation(
                uow.conn,
                project_id=project_id,
                email=email,
                role=ProjectRole(data.role),
                invited_by=actor,
                token_sha256=digest,
            )
            assert invitation is not None
            await emit(
                uow,
                actor=actor,
                verb="member.invited",
                obj=("project", project_id),
                project_id=project_id,
                data={"name": project.name, "role": data.role},
            )
            # The lists compute it in SQL (ListProjectInvitations): the same instant, the first at which
            # the queries' rule (created_at > now() - ttl) no longer holds.
            expires_at = invitation.created_at + timedelta(seconds=self.invitation_ttl_s)
            return from_row(SentInvitationOut, invitation, token=token, expires_at=expires_at)

    async def list_invitations(
        self, actor: int, project_id: int, *, after_id: int, row_limit: int
    ) -> list[queries.ListProjectInvitationsRow]:
        async with self.db.transaction() as uow:
            await self.require_role(uow, actor, project_id, ProjectRole.OWNER)
            return await queries.list_project_invitations(
                uow.conn,
                project_id=project_id,
                after_id=after_id,
                ttl_s=self.invitation_ttl_s,
                row_limit=row_limit,
            )

    async def revoke_invitation(self, actor: int, project_id: int, invitation_id: int) -> None:
        async with self.db.transaction() as uow:
            await self.require_role(uow, actor, project_id, ProjectRole.OWNER)
            withdrawn = await queries.delete_project_invitation(
                uow.conn, id=invitation_id, project_id=project_id, ttl_s=self.invitation_ttl_s
            )
            if withdrawn is None:
                raise NotFoundError("No such invitation.")

    async def my_invitations(
        self, user_id: int, *, after_id: int, row_limit: int
    ) -> list[queries.ListInvitationsForEmailRow]:
        """Invitations addressed to the caller's email whose sender is still an active owner of the
        project and that have not expired (the others cannot be accepted)."""
        async with self.db.transaction() as uow:
            user = await self.accounts.active_user(uow, user_id)
            if user is None:
                return []
            return await queries.list_invitations_for_email(
                uow.conn,
                email=user.email,
                after_id=after_id,
                ttl_s=self.invitation_ttl_s,
                row_limit=row_limit,
            )

    async def accept_invitation(
        self, user_id: int, invitation_id: int, token: str
    ) -> tuple[Project, ProjectRole]:
        """The invitee joins with the invited role (a member already keeps their role); the invitation
        is used up. It takes both the token issued with the invitation (the last one, if it was sent
        again) and the caller's email: a wrong or missing token, or an invitation addressed to someone
        else, is the 404 of an invitation that does not exist. So is one whose sender is no longer an
        active owner of the project (an invitation carries its sender's authority, and no more), and one
        that has expired (``INVITATION_TTL_S``).

        Joining one more project than ``MEMBERSHIPS_PER_USER_MAX`` is a 409 (``_require_room``) that
        leaves the invitation waiting (the refusal rolls its taking back), to be accepted once the
        user has left a project; so is joining a project that has ``PROJECT_MEMBERS_MAX`` members
        (``project-full``, counted under the project's membership lock, which the taking holds). A
        member already adds nothing and is never refused."""
        async with self.db.transaction() as uow:
            await queries.lock_user_projects(uow.conn, user_id=user_id)
            user = await self.accounts.active_user(uow, user_id)  # after the lock: an erasure holds it
            if user is None:
                raise NotFoundError("No such invitation.")
            invitation = await self._take_invitation_locking_project(
                uow, user.email, invitation_id, invitation_token_digest(token)
            )
            project_id = invitation.project_id
            if await queries.get_member_role(uow.conn, project_id=project_id, user_id=user_id) is None:
                await self._require_room(uow, user_id)  # a member already adds nothing: never refused
                members = await queries.count_project_members(uow.conn, project_id=project_id) or 0
                if members >= self.project_members_max:
                    raise ProjectFullError(
                        f"The project has {members} members, as many as one project may have; an owner "
                        "must remove one before this invitation can be accepted."
                    )
            member = await queries.add_member(
                uow.conn, project_id=project_id, user_id=user_id, role=invitation.role
            )
            if member is not None:
                self._membership_changed(uow, user_id, project_id)
                await emit(
                    uow,
                    actor=user_id,
                    verb="member.joined",
                    obj=("user", user_id),
                    project_id=project_id,
                    data={"role": member.role.value},
                )
            return await self._get(uow, user_id, project_id, ProjectRole.VIEWER)

    async def _require_room(self, uow: UnitOfWork, user_id: int) -> None:
        """409 ``membership-limit`` unless the user may join one more project: they are a member of
        fewer than ``MEMBERSHIPS_PER_USER_MAX`` (the feed, its counts and its stream visit each of a
        reader's projects, the lists check the reader against all of them).

        Exact under ``LockUserProjects``, which the caller holds: every change that adds a membership
        for this user (a creation, an acceptance) takes it first and keeps it until its commit, and
        this count is a statement of its own read after the lock was granted (a statement's snapshot
        is taken before its wait), so it sees each membership those committed, and none is added
        while it decides. A membership being removed meanwhile (leaving, a removal, a deletion) takes
        no such lock: counted until its removal commits, it can only make a refusal of one too many,
        never let one too many in. The count reads the user's own entries of
        ``project_members_user_idx``, at most the cap's worth."""
        held = await queries.count_memberships(uow.conn, user_id=user_id) or 0
        if held >= self.memberships_per_user_max:
            raise MembershipLimitError(
                f"You are a member of {held} projects; one account may be a member of at most "
                f"{self.memberships_per_user_max}. Leave a project (or delete one you own) first."
            )

    async def _take_invitation_locking_project(
        self, uow: UnitOfWork, email: str, invitation_id: int, token_sha256: bytes
    ) -> ProjectInvitation:
        """The invitation, used up, once its token matched and its project is held as by any change
        of members (which also keeps it from deletion: the member's insert refers to it). A removal of
        the invitee, which withdraws this invitation, then comes wholly before or after; a deletion
        locks the project, then its invitations, and so does this. Taking it requires the hash that
        was checked: an invitation sent again meanwhile (a new token) is not taken; and that its sender
        is still an active owner, read after the lock: a demotion or removal that committed meanwhile
        is seen (then the 404 of a withdrawn invitation). An expired invitation is no row (404)."""
        found = await self._invitation_with_token(uow, email, invitation_id, token_sha256)
        if await queries.lock_project_membership(uow.conn, id=found.project_id) is None:
            raise NotFoundError("No such invitation.")
        invitation = await queries.take_accepted_invitation(
            uow.conn, id=invitation_id, email=email, token_sha256=token_sha256, ttl_s=self.invitation_ttl_s
        )
        if invitation is None:  # taken, withdrawn, sent again or expired meanwhile
            raise NotFoundError("No such invitation.")
        return invitation

    async def _invitation_with_token(
        self, uow: UnitOfWork, email: str, invitation_id: int, token_sha256: bytes
    ) -> queries.InvitationToAcceptRow:
        """The invitation to ``email`` whose token hashes to ``token_sha256`` (compared in constant
        time), or the 404 of one that does not exist: a wrong token, another address, expired."""
        found = await queries.invitation_to_accept(
            uow.conn, id=invitation_id, email=email, ttl_s=self.invitation_ttl_s
        )
        if found is None or not token_matches(found.token_sha256, token_sha256):
            raise NotFoundError("No such invitation.")
        return found

    async def decline_invitation(self, user_id: int, invitation_id: int, token: str) -> None:
        """The invitee removes an invitation addressed to their email, with its token as to accept it:
        the address alone proves nothing (registration sends no mail), and whoever registered it first
        could decline every invitation sent to it. A wrong token, or an expired invitation, is the 404 of
        one that does not exist."""
        digest = invitation_token_digest(token)
        async with self.db.transaction() as uow:
            user = await self.accounts.active_user(uow, user_id)
            if user is None:
                raise NotFoundError("No such invitation.")
            await self._invitation_with_token(uow, user.email, invitation_id, digest)
            taken = await queries.take_invitation(
                uow.conn, id=invitation_id, email=user.email, token_sha256=digest, ttl_s=self.invitation_ttl_s
            )
            if taken is None:  # sent again (a new token), withdrawn or expired meanwhile
                raise NotFoundError("No such invitation.")

    async def purge_expired_invitations(self, chunk_size: int = INVITATION_PURGE_CHUNK) -> int:
        """Delete the invitations older than ``INVITATION_TTL_S`` (the daily cron), ``chunk_size`` per
        transaction; returns how many. One sent again while the purge ran is kept
        (``PurgeExpiredInvitations``)."""

        async def chunk(uow: UnitOfWork) -> int:
            return await queries.purge_expired_invitations(
                uow.conn, ttl_s=self.invitation_ttl_s, chunk_size=chunk_size
            )

        purged = await self.db.delete_in_chunks(chunk)
        if purged:
            log.info("invitations_purged", count=purged)
        return purged

    # -- a deleted project's purge ------------------------------------------------------------------

    async def purge_deleted_project(
        self, project_id: int, budget_s: float = PURGE_RUN_BUDGET_S, max_chunks: int | None = None
    ) -> bool:
        """Delete what a deleted project held, one bounded chunk per transaction (its feed's groups,
        then its tasks with their comments and search documents; then its files' feed objects made
        tombstones), then its row (whose cascade is then small: its files' rows). True once nothing of
        it is left (or nothing was to purge: a live project, or one purged already, is never touched).

        Nothing the project held keeps a title in the feed's objects (``activity_objects``): a task's or
        a file's is erased as its ``*.deleted`` event would (the object stays, a tombstone), since the
        deletion emits no such event per task or file. The files' chunks walk the project's files in id
        order from where this run's last one stopped (a follow-up run starts again from the first: the
        objects tombstoned already are found again, and left as they are).

        Each chunk is consistent on its own: a purge stopped anywhere leaves a project being deleted
        that holds less, and the next run goes on. After ``budget_s`` the run enqueues its follow-up
        and stops (a job's timeout), as it does after ``max_chunks`` chunks when given; a run that finds
        another purge of the project in a chunk stops, leaving it to that one."""
        deadline = time.monotonic() + budget_s
        chunks = 0
        files_after: int | None = 0  # the files' objects are tombstoned up to this file id (None: all)
        while True:
            async with self.db.transaction() as uow:
                if not await queries.lock_project_purge(uow.conn, project_id=project_id):
                    return False  # another purge of it is running
                if await queries.project_purge_due(uow.conn, id=project_id) is None:
                    return True
                if time.monotonic() >= deadline or chunks == max_chunks:
                    await _enqueue_purge(uow, project_id)
                    return False
                if await self._purge_chunk(uow, project_id):
                    chunks += 1
                    continue
                if files_after is not None:
                    files_after = await self._tombstone_files(uow, project_id, files_after)
                    if files_after is not None:
                        chunks += 1
                        continue
                await queries.delete_project(uow.conn, id=project_id)
            log.info("project_purged", project_id=project_id)
            return True

    @staticmethod
    async def _purge_chunk(uow: UnitOfWork, project_id: int) -> bool:
        """One bounded chunk of a project being deleted: of its first ``PURGE_GROUPS_CHUNK`` feed
        groups, up to ``PURGE_FEED_ROWS_CHUNK`` rows in all of their event reads, then events, then
        group objects (so the events' cascade finds no reads), and the groups themselves once empty;
        once no group is left, up to ``PURGE_TASKS_CHUNK`` of its tasks, their comments first (by task
        id), then their search documents, and their feed objects made tombstones. Whether anything was
        deleted.

        The events' deletion makes the objects they name tombstones too (``PurgeGroupEvents``): a task
        or a file deleted just before the project, whose ``*.deleted`` event the feed then dropped (an
        event of a project being deleted is not stored), has no row left for the chunks below to find."""
        group_ids = await queries.purge_project_group_ids(
            uow.conn, project_id=project_id, chunk_size=PURGE_GROUPS_CHUNK
        )
        if group_ids:
            left = PURGE_FEED_ROWS_CHUNK  # rows this chunk may still delete
            for purge_rows in (
                queries.purge_group_event_reads,
                queries.purge_group_events,
                queries.purge_group_objects,
            ):
                left -= await purge_rows(uow.conn, group_ids=group_ids, row_limit=left)
                if left == 0:
                    return True  # the groups may hold more: the next chunk goes on
            await queries.purge_groups(uow.conn, group_ids=group_ids, project_id=project_id)
            return True
        task_ids = await queries.purge_project_task_ids(
            uow.conn, project_id=project_id, chunk_size=PURGE_TASKS_CHUNK
        )
        if not task_ids:
            return False
        await queries.purge_task_comments(uow.conn, task_ids=task_ids)
        await queries.purge_task_search_documents(uow.conn, task_ids=task_ids)
        await queries.purge_tasks(uow.conn, task_ids=task_ids, project_id=project_id)
        await queries.tombstone_task_objects(uow.conn, task_ids=task_ids)
        return True

    @staticmethod
    async def _tombstone_files(uow: UnitOfWork, project_id: int, after_id: int) -> int | None:
        """The feed objects of up to ``PURGE_FILES_CHUNK`` of a deleted project's files after file id
        ``after_id`` made tombstones (the rows go with the project's own); the last file id done, or
        None once there are no more."""
        file_ids = await queries.purge_project_file_ids(
            uow.conn, project_id=project_id, after_id=after_id, chunk_size=PURGE_FILES_CHUNK
        )
        if file_ids:
            await queries.tombstone_file_objects(uow.conn, file_ids=file_ids)
        return file_ids[-1] if len(file_ids) == PURGE_FILES_CHUNK else None

    async def requeue_lost_purges(self, older_than_s: float = PURGE_LOST_AFTER_S, limit: int = 1_000) -> int:
        """The hourly cron: a purge job for each project marked for deletion more than
        ``older_than_s`` ago that still exists (its job was lost); how many."""
        async with self.db.transaction() as uow:
            ids = await queries.list_projects_to_purge(uow.conn, older_than_s=older_than_s, row_limit=limit)
            for project_id in ids:
                await _enqueue_purge(uow, project_id)
        if ids:
            log.warning("project_purges_requeued", count=len(ids))
        return len(ids)

    async def change_member_role(
        self, actor: int, project_id: int, user_id: int, role: ProjectRole
    ) -> ProjectRole:
        """Owners change anyone's role; the last active owner stays one (``_keep_an_owner``). An owner
        demoted loses the invitations they sent to the project (withdrawn, after the membership: a
        deletion's order): they carried an owner's authority the sender no longer has."""
        async with self.db.transaction() as uow:
            await self._lock_membership(uow, project_id)
            await self.require_role(uow, actor, project_id, ProjectRole.OWNER)
            current = await queries.get_member_role(uow.conn, project_id=project_id, user_id=user_id)
            if current is None:
                raise NotFoundError("No such member.")
            if current == role:
                return role
            if current == ProjectRole.OWNER:
                await self._keep_an_owner(uow, project_id, user_id)
            changed = await queries.update_member_role(
                uow.conn, role=role, project_id=project_id, user_id=user_id
            )
            if changed is None:  # removed meanwhile
                raise NotFoundError("No such member.")
            if current == ProjectRole.OWNER:
                await queries.withdraw_invitations_sent_by(uow.conn, project_id=project_id, user_id=user_id)
            await emit(
                uow,
                actor=actor,
                verb="member.role_changed",
                obj=("user", user_id),
                project_id=project_id,
                data={"from": current.value, "to": role.value},
            )
            return role

    async def remove_member(self, actor: int, project_id: int, user_id: int) -> None:
        """Owners remove anyone; any member may leave. The last active owner cannot go
        (``_keep_an_owner``).

        The member's task assignments in the project are cleared by the database (the assignee is a
        foreign key to ``project_assignees``, which a trigger keeps to the memberships, ``on delete set
        null``), so no other domain is touched here.
        Their waiting invitations to the project are withdrawn (after the membership: a deletion's
        order): one sent before the removal would let them rejoin alone, with its role. So are the
        invitations they sent (as an owner): addressed to an email they control, one would let them
        rejoin alone just as well.
        """
        async with self.db.transaction() as uow:
            await self._lock_membership(uow, project_id)
            if actor != user_id:
                await self.require_role(uow, actor, project_id, ProjectRole.OWNER)
            missing = "No such member." if actor != user_id else "No such project."
            current = await queries.get_member_role(uow.conn, project_id=project_id, user_id=user_id)
            if current is None:
                raise NotFoundError(missing)
            if current == ProjectRole.OWNER:
                await self._keep_an_owner(uow, project_id, user_id)
            if not await queries.remove_member(uow.conn, project_id=project_id, user_id=user_id):
                raise NotFoundError(missing)  # removed meanwhile
            await queries.withdraw_invitations_of(uow.conn, project_id=project_id, user_id=user_id)
            await self._member_left(uow, project_id, user_id, actor)

    async def forget_member(self, uow: UnitOfWork, user_id: int, actor: int) -> None:
        """An account's erasure (``AccountService.before_erasure``): the account leaves every live
        project it is a member of as ``remove_member`` has a member leave (its invitations sent
        withdrawn), and every invitation to its address goes (the address is freed: one must not pass
        to its next holder); under the same locks, its user's project lock first, then the projects'
        in id order (as an acceptance takes them: ``app/domains/accounts/erasure.py``).

        The last active owner of a project: the account erasing itself is refused (409
        ``account-still-owns``: hand the project over, or delete it, first). An administrator's erasure
        hands it to an active member (editors first, then the longest a member), or deletes it as its
        owner would (``delete``) when none is left: a squatter's project must not keep its address."""
        await queries.lock_user_projects(uow.conn, user_id=user_id)
        members_of = await queries.memberships_of_user(uow.conn, user_id=user_id)
        invited_to = await queries.projects_inviting_user(uow.conn, user_id=user_id)
        for project_id in sorted({*members_of, *invited_to}):
            if await queries.lock_project_membership(uow.conn, id=project_id) is None:
                continue  # being deleted meanwhile: its purge removes the rest
            await queries.withdraw_invitations_of(uow.conn, project_id=project_id, user_id=user_id)
            role = await queries.get_member_role(uow.conn, project_id=project_id, user_id=user_id)
            if role is None:
                continue
            if role == ProjectRole.OWNER and not await queries.count_other_active_owners(
                uow.conn, project_id=project_id, user_id=user_id
            ):
                if actor == user_id:
                    raise AccountStillOwnsError(
                        f"You are the last active owner of project {project_id}: make another member an "
                        "owner, or delete the project, first."
                    )
                if not await self._hand_over(uow, project_id, user_id):
                    await queries.lock_project_for_deletion(uow.conn, id=project_id)  # as ``delete``
                    await self._delete_locked(uow, project_id)
                    continue
            await queries.remove_member(uow.conn, project_id=project_id, user_id=user_id)
            await self._member_left(uow, project_id, user_id, user_id)

    async def _member_left(self, uow: UnitOfWork, project_id: int, user_id: int, actor: int) -> None:
        """After a membership's removal (a removal, a leaving, an erasure): the invitations the member
        sent are withdrawn (one would let them back in alone), the caches told, the event emitted
        (``member.left`` when the member is the actor: a leaving or an erasure)."""
        await queries.withdraw_invitations_sent_by(uow.conn, project_id=project_id, user_id=user_id)
        self._membership_changed(uow, user_id, project_id)
        verb = "member.left" if actor == user_id else "member.removed"
        await emit(uow, actor=actor, verb=verb, obj=("user", user_id), project_id=project_id)

    async def _hand_over(self, uow: UnitOfWork, project_id: int, user_id: int) -> bool:
        """Make the project's successor (``SuccessorOnErasure``) an owner; False when nobody active is
        left. Under the project's membership lock."""
        successor = await queries.successor_on_erasure(uow.conn, project_id=project_id, user_id=user_id)
        if successor is None:
            return False
        await queries.update_member_role(
            uow.conn, role=ProjectRole.OWNER, project_id=project_id, user_id=successor.user_id
        )
        self._membership_changed(uow, successor.user_id, project_id)
        await emit(
            uow,
            actor=user_id,
            verb="member.role_changed",
            obj=("user", successor.user_id),
            project_id=project_id,
            data={"from": successor.role.value, "to": ProjectRole.OWNER.value},
        )
        return True

    async def _delete_locked(self, uow: UnitOfWork, project_id: int) -> bool:
        """``delete``'s changes, under its lock (``LockProjectForDeletion``: a task, comment or file
        being added waits for it, or is deleted by the purge); False when it was being deleted already."""
        if not await queries.mark_project_deleting(uow.conn, id=project_id):
            return False
        await queries.remove_all_members(uow.conn, project_id=project_id)
        await queries.remove_all_invitations(uow.conn, project_id=project_id)
        await _enqueue_purge(uow, project_id)
        for callback in self._on_deleted:
            uow.after_commit(partial(callback, project_id))
        return True

    @staticmethod
    async def _lock_membership(uow: UnitOfWork, project_id: int) -> None:
        """Held before any role or count is read by a change of members or invitations (see the
        module's docstring)."""
        if await queries.lock_project_membership(uow.conn, id=project_id) is None:
            raise NotFoundError("No such project.")

    @staticmethod
    async def _keep_an_owner(uow: UnitOfWork, project_id: int, user_id: int) -> None:
        """409 unless an owner other than ``user_id`` (who stops being one) stays whose account is active
        (under ``_lock_membership``: the count is current). An owner whose account an administrator
        deactivated cannot act (no sign-in): counted, they would let the last owner who can leave or be
        demoted, and nobody could manage the project. Removing or demoting a deactivated owner takes
        away nobody who can act, so the active owner who does it is enough. An administrator's
        deactivation of the last active owner is not refused here (accounts are not this domain's)."""
        owners = await queries.count_other_active_owners(uow.conn, project_id=project_id, user_id=user_id)
        if not owners:
            raise ConflictError("A project keeps at least one active owner: promote another member first.")
