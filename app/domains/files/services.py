"""Rules for project files: who may do what, and keeping disk and database in step.

The file must be renamed into place before the upload's commit and unlinked only after the
delete's, and a slow upload holds no pooled connection while its body streams in: access is checked
in one short transaction before the first byte is read and again in the one that records the row.

Uploads in flight count against the quotas too (``reservations``): the first transaction reserves
the upload's largest possible size before a byte is read, the lease is renewed while the body
streams (touching the temp file, so the sweep leaves it), the upload ends with a 408 when the next
chunk has not arrived before the lease runs out, and the reservation is released once the row is
recorded or the upload failed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import anyio
import psycopg
import structlog

from app.core.auth import CurrentUser
from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, NotFoundError
from app.core.idempotency import IdempotencyClaim
from app.core.middleware import MULTIPART_OVERHEAD
from app.core.pagination import BEFORE_EVERY_ID
from app.core.preconditions import Preconditions
from app.db import files as queries
from app.db.models import ProjectFile, ProjectRole
from app.domains.accounts.services import AccountService
from app.domains.activity.events import emit
from app.domains.files.downloads import strong_etag
from app.domains.files.reservations import (
    InFlight,
    Reservation,
    TooManyUploadsError,
    UploadReservations,
)
from app.domains.files.storage import FileStorage, OpenedFile, StagedFile
from app.domains.projects.services import ProjectService

log = structlog.get_logger("app.files")

UPLOADED = "file.uploaded"
DELETED = "file.deleted"


ORPHAN_GRACE_S = 3600
"""A stored file younger than this is never swept: its upload's commit may still be under way."""


class QuotaExceededError(ConflictError):
    slug = "quota-exceeded"
    title = "Storage quota exceeded"


@dataclass(frozen=True, slots=True)
class Quotas:
    """Files and bytes per project and per uploader (``FILE_PROJECT_MAX_*``, ``FILE_USER_MAX_*``)."""

    project_files: int
    project_bytes: int
    user_files: int
    user_bytes: int


def _least_file_size(content_length: int | None, max_bytes: int) -> int:
    """The smallest file a body of ``content_length`` bytes can carry (0 when not announced, and
    when it is over ``max_bytes``: that body is a 413, answered by the storage, not a 409)."""
    least = max(0, content_length - MULTIPART_OVERHEAD) if content_length is not None else 0
    return least if least <= max_bytes else 0


def _most_file_size(content_length: int | None, max_bytes: int) -> int:
    """The largest file a body of ``content_length`` bytes can carry and be kept (what its upload
    reserves while in flight): the length itself, at most ``max_bytes``, ``max_bytes`` if unknown."""
    return min(content_length, max_bytes) if content_length is not None else max_bytes


def _may_have_committed(exc: BaseException) -> bool:
    """Whether a transaction whose COMMIT was sent may have committed although ``exc`` was raised.

    Only an error the server answered (it carries a SQLSTATE: a deferred constraint, a serialization
    failure) proves the commit failed; a lost connection or a cancelled wait leaves it unknown.
    """
    return not (isinstance(exc, psycopg.Error) and exc.sqlstate is not None)


class FileService:
    def __init__(
        self,
        db: Database,
        projects: ProjectService,
        storage: FileStorage,
        *,
        max_bytes: int,
        allowed_types: Collection[str],
        quotas: Quotas,
        uploads: UploadReservations,
        temp_max_age_s: float = 24 * 3600,
        accounts: AccountService | None = None,
    ) -> None:
        self.db = db
        self.projects = projects
        self.storage = storage
        self.max_bytes = max_bytes
        self.allowed_types = allowed_types
        self.quotas = quotas
        self.uploads = uploads
        self.temp_max_age_s = temp_max_age_s
        self.accounts = accounts
        projects.after_delete(self.storage.remove_project)

    async def upload(
        self,
        caller: CurrentUser,
        project_id: int,
        body: AsyncGenerator[bytes, None],
        *,
        content_type: str | None,
        content_length: int | None,
        claim: IdempotencyClaim[ProjectFile] | None = None,
    ) -> ProjectFile:
        """Store the body's file and its row, or neither.

        ``claim``: the request's idempotency key, completed in the transaction that records the row.

        Checked before reading a byte of the body: a non-member gets 404, a viewer 403, a full
        project or uploader 409, also when the announced length already cannot fit (the least the
        file can be: the body's length less the multipart overhead allowed), so a body that cannot
        be kept is refused before it is streamed, hashed and written; so is one that would leave the
        file system less than ``FILE_MIN_FREE_BYTES`` free (507). Uploads in flight count too:
        an uploader with ``FILE_UPLOADS_PER_USER`` of them gets 429 ``too-many-uploads``, and the
        room this one may need (``_most_file_size``) is reserved until it is recorded or has failed,
        so that concurrent uploads never stage more than the quotas and one file: a body that stops
        arriving ends the upload (408 ``upload-stalled``) when its lease runs out, before its room
        can be given to another.

        Recorded only if ``caller``'s session still stands when the file is (``_record``): a body
        takes as long as its client sends it.
        """
        user_id = caller.id
        reservation: Reservation | None = None
        try:
            async with self.db.transaction() as uow:
                await self.projects.require_role(uow, user_id, project_id, ProjectRole.EDITOR)
                # Held until this transaction ends: no other upload of this uploader or project
                # reserves or records between these counts and this upload's reservation.
                await queries.lock_upload_quotas(uow.conn, user_id=user_id, project_id=project_id)
                in_flight = await self.uploads.in_flight(user_id, project_id)
                if in_flight.uploader_files >= self.uploads.per_user:
                    raise TooManyUploadsError(
                        f"{in_flight.uploader_files} uploads of yours are in flight (at most "
                        f"{self.uploads.per_user}): wait for one to finish.",
                        headers={"Retry-After": "5"},
                    )
                await self._check_quotas(
                    uow,
                    user_id,
                    project_id,
                    _least_file_size(content_length, self.max_bytes),
                    in_flight=in_flight,
                )
                most = _most_file_size(content_length, self.max_bytes)
                reservation = self.uploads.prepare(user_id, project_id, most)
                await reservation.hold()  # released by the finally even when cancelled in here
            await self.storage.require_room(most)
            temp_path = self.storage.new_temp_path()
            staged = await self.storage.receive(
                _leased(body, reservation, on_renewal=lambda: self.storage.keep_fresh(temp_path)),
                content_type=content_type,
                content_length=content_length,
                max_bytes=self.max_bytes,
                allowed_types=self.allowed_types,
                temp_path=temp_path,
            )
            try:
                return await self._record(caller, project_id, staged, reservation, claim=claim)
            finally:
                self.storage.discard(staged.path)  # already renamed on success; otherwise the temp file
        finally:
            if reservation is not None:
                await reservation.release()

    async def _record(
        self,
        caller: CurrentUser,
        project_id: int,
        staged: StagedFile,
        reservation: Reservation,
        *,
        claim: IdempotencyClaim[ProjectFile] | None = None,
    ) -> ProjectFile:
        """Insert the row and move the file into place in one transaction.

        The placed file is removed when the transaction certainly did not commit; once COMMIT has
        been sent and its answer is lost, the row may exist, and a row without its file would be
        listed, counted against the quotas and never repaired, while a file without its row is an
        orphan the sweep removes.

        The caller's session is checked first (``AccountService.require_session``, under the user's
        row, which a revocation of the user's sessions locks before it revokes them): an upload outlives
        its request's authentication, and a file sent by a session ended meanwhile is not kept.
        """
        user_id = caller.id
        storage_key = self.storage.new_key(project_id)
        final: Path | None = None
        committing = False
        try:
            async with self.db.transaction() as uow:
                if self.accounts is not None:
                    await self.accounts.require_session(uow, caller)
                # Again, inside the transaction: the role may have changed while the body streamed in.
                await self.projects.require_role(
                    uow, user_id, project_id, ProjectRole.EDITOR, keep_project=True
                )
                await queries.lock_upload_quotas(uow.conn, user_id=user_id, project_id=project_id)
                in_flight = await self.uploads.in_flight(user_id, project_id, leaving_out=reservation.member)
                await self._check_quotas(uow, user_id, project_id, staged.size_bytes, in_flight=in_flight)
                row = await queries.create_project_file(
                    uow.conn,
                    project_id=project_id,
                    uploaded_by=user_id,
                    filename=staged.filename,
                    content_type=staged.content_type,
                    charset=staged.charset,
                    size_bytes=staged.size_bytes,
                    sha256=staged.sha256,
                    storage_key=storage_key,
                )
                assert row is not None
                if claim is not None:
                    await claim.complete(uow, row, resource_id=row.id)
                await emit(
                    uow,
                    actor=user_id,
                    verb=UPLOADED,
                    obj=("file", row.id),
                    project_id=project_id,
                    data={"filename": row.filename, "size_bytes": row.size_bytes},
                )
                final = self.storage.path_for(storage_key)
                await self.storage.place(staged.path, storage_key)
                # Released before the commit, while the quota locks are held (no check can count
                # the row and the reservation both, refusing an upload that fits).
                await reservation.release()
                committing = True
        except BaseException as exc:
            if final is not None and not (committing and _may_have_committed(exc)):
                self.storage.discard(final)
            raise
        return row

    async def _check_quotas(
        self, uow: UnitOfWork, user_id: int, project_id: int, size_bytes: int, *, in_flight: InFlight
    ) -> None:
        """409 unless one more file of ``size_bytes`` fits the project's and the uploader's quotas,
        counting the files stored and the other uploads in flight (call holding both quota locks)."""
        q = self.quotas
        project = await queries.project_file_usage(uow.conn, project_id=project_id)
        uploader = await queries.uploader_file_usage(uow.conn, user_id=user_id)
        assert project is not None and uploader is not None
        for scope, files, used, max_files, max_bytes in (
            (
                "project",
                project.files + in_flight.project_files,
                project.bytes + in_flight.project_bytes,
                q.project_files,
                q.project_bytes,
            ),
            (
                "uploader",
                uploader.files + in_flight.uploader_files,
                uploader.bytes + in_flight.uploader_bytes,
                q.user_files,
                q.user_bytes,
            ),
        ):
            if files + 1 > max_files or used + size_bytes > max_bytes:
                raise QuotaExceededError(
                    f"The {scope}'s storage quota is full ({files} of {max_files} files, {used} of "
                    f"{max_bytes} bytes, uploads in flight included): delete files first."
                )

    async def sweep(self) -> dict[str, int]:
        """Remove what no row refers to (cron): directories of deleted projects, files without a row
        (older than ``ORPHAN_GRACE_S``), temp files neither written nor touched for ``temp_max_age_s``
        (an upload in flight touches its own at every renewal of its lease, and ends with it)."""
        stored, stale_temp = await self.storage.inventory(
            files_older_than_s=ORPHAN_GRACE_S, temp_older_than_s=self.temp_max_age_s
        )
        removed = {"projects": 0, "files": 0, "temp": len(stale_temp)}
        for path in stale_temp:
            self.storage.discard(path)
        existing = await self.projects.existing(sorted(stored))
        for project_id, keys in stored.items():
            if project_id not in existing:
                await self.storage.remove_project(project_id)
                removed["projects"] += 1
                continue
            if not keys:
                continue
            async with self.db.transaction() as uow:
                known = set(await queries.existing_storage_keys(uow.conn, keys=keys))
            for key in keys:
                if key not in known:
                    await self.storage.remove(key)
                    removed["files"] += 1
        if any(removed.values()):
            log.warning("file_sweep_removed", **removed)
        return removed

    async def delete(
        self, user_id: int, project_id: int, file_id: int, *, conditions: Preconditions | None = None
    ) -> None:
        """Delete the row (and emit) in one transaction; unlink the file once that has committed.
        ``conditions``: only if they allow the file's ``ETag`` (its digest) and time, else 412 and nothing is
        deleted (the deletion rolls back)."""
        async with self.db.transaction() as uow:
            await self.projects.require_role(uow, user_id, project_id, ProjectRole.EDITOR)
            row = await queries.delete_project_file(uow.conn, id=file_id, project_id=project_id)
            if row is None:
                raise NotFoundError("No such file.")
            if conditions is not None:
                dated = conditions.unmodified_since is not None
                modified_at = await self.storage.modified_at(row.storage_key) if dated else None
                conditions.require_tag(strong_etag(row.sha256), modified_at)
            await emit(
                uow,
                actor=user_id,
                verb=DELETED,
                obj=("file", row.id),
                project_id=project_id,
                data={"filename": row.filename, "size_bytes": row.size_bytes},
            )
        try:
            await self.storage.remove(row.storage_key)
        except OSError:
            # The row is gone, so the API is consistent; the file is an orphan for a sweep to remove.
            log.exception("file_unlink_failed", file_id=row.id, storage_key=row.storage_key)

    async def list_files(
        self, user_id: int, project_id: int, *, before_id: int | None, row_limit: int
    ) -> list[ProjectFile]:
        """Newest first; ``row_limit`` rows at most."""
        async with self.db.transaction() as uow:
            await self.projects.require_role(uow, user_id, project_id, ProjectRole.VIEWER)
            return await queries.list_project_files(
                uow.conn,
                project_id=project_id,
                before_id=BEFORE_EVERY_ID if before_id is None else before_id,
                row_limit=row_limit,
            )

    async def locate(self, user_id: int, project_id: int, file_id: int) -> tuple[ProjectFile, OpenedFile]:
        """A file's row and its content opened for download; 404 if the row or its content is missing."""
        async with self.db.transaction() as uow:
            await self.projects.require_role(uow, user_id, project_id, ProjectRole.VIEWER)
            row = await queries.get_project_file(uow.conn, id=file_id, project_id=project_id)
        if row is None:
            raise NotFoundError("No such file.")
        opened = await self.storage.open(row.storage_key)
        if opened is None:
            async with self.db.read() as uow:
                still_listed = await queries.get_project_file(uow.conn, id=file_id, project_id=project_id)
            if still_listed is None:  # deleted since the read above: the delete unlinked it
                raise NotFoundError("No such file.")
            log.error("file_missing_on_disk", file_id=row.id, storage_key=row.storage_key)
            raise NotFoundError("The file's content is no longer available.")
        return row, opened


async def _leased(
    body: AsyncGenerator[bytes, None],
    reservation: Reservation,
    *,
    on_renewal: Callable[[], Awaitable[None]],
) -> AsyncGenerator[bytes, None]:
    """``body``'s chunks within ``reservation``'s lease: each must arrive before the lease runs out,
    else the upload is stalled (408, its temp file removed and its room given back by the caller,
    whether the client resumes later or never does); the lease is renewed as they arrive, and
    ``on_renewal`` called after each renewal."""
    async with aclosing(body):
        while True:
            with anyio.move_on_at(reservation.deadline) as waiting:
                chunk = await anext(body, None)
            if waiting.cancelled_caught:
                raise reservation.stalled()
            if chunk is None:
                return
            if await reservation.keep():
                await on_renewal()
            yield chunk
