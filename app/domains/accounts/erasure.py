"""An account's erasure: its personal data removed, its address freed, everything else kept.

Asked by the account itself (``erase_me``, with its password) or by an administrator (``erase_user``:
the request of someone who can no longer sign in, or an address registered by someone who does not
hold it: registration sends no mail, so whoever registered an address first kept it for good).

The row stays, as a tombstone (``EraseUser``): the tasks, comments, orders and feed events other
people see point to it and read "Deleted user". In one transaction:

- the hooks the other domains registered (``before_erasure``) remove what is theirs (the account's
  memberships and the invitations to its address, the GitHub logins it tracked, a name the previous
  release's feed worker stored during an upgrade), or refuse: an account
  that owns a site is a 409 naming what to do first (deleting a site deletes its analytics: the
  owner's decision, and an administrator may delete it too); the last active owner of a project
  erasing itself is refused the same way, while an administrator's erasure hands the project over,
  or deletes it when nobody active is left (``ProjectService.forget_member``): one project created
  by a squatter must not keep an address from its owner;
- then the user rows are locked (id order, as an administrator's change) and the account tombstoned:
  its address becomes ``erased:<id>``, which no address the API takes can be, its name "Deleted user",
  its password the hash of a secret nobody knows, and it is inactive; every session ends
  (``Sessions.revoke_all``).

What adds to an account's own (a project, a membership, a site, a tracked login) checks that the
account is still active under the per-user lock its hook takes (``AccountService.require_active``):
a request authenticated before the erasure and waiting on that lock finds it gone (401) instead of
creating a project nobody could manage.

The hooks run before the user rows are locked: a project's hook takes the user's project lock
(``LockUserProjects``) and then each project's, as an acceptance of an invitation does, and an
acceptance locks the user row last (its membership's foreign key); locked first here, the row and a
project's lock would be taken in opposite orders. An account erased already is left as it is (the
hooks find nothing left to remove).

What stays, by design: the tombstone row; tasks, comments, files and orders (other people's records,
and accounting's); ids in logs and monitoring events (purged with them, 30 days). Idempotency records
(a day) and outbox rows (a week) expire on their own.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, ForbiddenError, NotFoundError, UnauthorizedError
from app.core.security import Passwords
from app.db import accounts as queries
from app.db.models import User, UserRole
from app.domains.accounts.sessions import Sessions

log = structlog.get_logger("app.accounts")

ErasureHook = Callable[[UnitOfWork, int, int], Awaitable[None]]
"""``hook(uow, user_id, actor_id)``: remove what the domain keeps of the account, in the erasure's
transaction, or refuse it (raise a 409 ``AccountStillOwnsError``)."""
Notify = Callable[[UnitOfWork, int], None]


class AccountStillOwnsError(ConflictError):
    """The account still owns what an erasure cannot decide about (a project, a site)."""

    slug = "account-still-owns"
    title = "Account still owns data of its own"


class Erasure:
    def __init__(
        self,
        db: Database,
        passwords: Passwords,
        sessions: Sessions,
        *,
        access_changed: Notify,
        renamed: Notify,
    ) -> None:
        self.db = db
        self.passwords = passwords
        self.sessions = sessions
        self._access_changed = access_changed
        self._renamed = renamed
        self._hooks: list[ErasureHook] = []

    def before_erasure(self, hook: ErasureHook) -> None:
        self._hooks.append(hook)

    async def erase(self, user_id: int, *, actor: int, own: OwnErasure | None = None) -> None:
        """Erase ``user_id`` on behalf of ``actor``: an active administrator (another account), or the
        account itself (``own``: its session and the hash its password was just checked against; a
        change of password, role or state, or the session's end, committed meanwhile refuses it)."""
        unusable = await self.passwords.hash(secrets.token_urlsafe(32))
        async with self.db.transaction() as uow:
            for hook in self._hooks:
                await hook(uow, user_id, actor)
            locked = {
                user.id: user for user in await queries.get_users_for_update(uow.conn, ids=[actor, user_id])
            }
            target = locked.get(user_id)
            if own is None:
                _require_admin(locked.get(actor))
                if target is None:
                    raise NotFoundError("No such user.")
            else:
                await _require_unchanged(uow, target, own)
            erased = await queries.erase_user(uow.conn, id=user_id, password_hash=unusable)
            if erased is None:
                return  # erased already
            revoked = await self.sessions.revoke_all(uow, user_id)
            self._access_changed(uow, user_id)
            self._renamed(uow, user_id)
        log.info("account_erased", user_id=user_id, by=actor, sessions_revoked=revoked)


@dataclass(frozen=True, slots=True)
class OwnErasure:
    """An account erasing itself: its session, and the password hash its password was checked against."""

    family_id: uuid.UUID
    verified_hash: str


async def _require_unchanged(uow: UnitOfWork, target: User | None, own: OwnErasure) -> None:
    """Under the user's row lock: the session still stands, and the account is still an active
    member's with the password checked (an administrator's is erased by another administrator)."""
    if target is None or not await queries.session_still_stands(
        uow.conn, user_id=target.id, family_id=own.family_id
    ):
        raise UnauthorizedError.token_refused("Your session ended while the request was in progress.")
    if target.role == UserRole.ADMIN:
        raise ConflictError("An administrator's account is erased by another administrator.")
    if target.password_hash != own.verified_hash:
        raise ConflictError("The password was changed meanwhile: try again.")


def _require_admin(acting: User | None) -> None:
    if acting is None or acting.role != UserRole.ADMIN or not acting.is_active:
        raise ForbiddenError("Administrators only.")
