"""Rules for project files: who may do what, and keeping disk and database in step.

Upload and delete open their own transactions with ``transaction(pool)`` instead of the request's
``uow``: the file must be renamed into place before the commit and unlinked only after it, and a
slow upload must not hold a pooled connection while its body streams in. Reads use the request's
``uow``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Collection
from pathlib import Path
from typing import Any

import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.core.db import UnitOfWork, transaction
from app.core.errors import NotFoundError
from app.db import files as queries
from app.db.models import ProjectFile, ProjectRole
from app.domains.activity.events import emit
from app.domains.files.storage import FileStorage, StagedFile
from app.domains.projects.permissions import require_role

log = structlog.get_logger("app.files")

UPLOADED = "file.uploaded"
DELETED = "file.deleted"


class FileService:
    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        storage: FileStorage,
        *,
        max_bytes: int,
        allowed_types: Collection[str],
    ) -> None:
        self.pool = pool
        self.storage = storage
        self.max_bytes = max_bytes
        self.allowed_types = allowed_types

    async def upload(
        self,
        user_id: int,
        project_id: int,
        body: AsyncGenerator[bytes, None],
        *,
        content_type: str | None,
        content_length: int | None,
    ) -> ProjectFile:
        """Store the body's file and its row, or neither."""
        # Checked before reading a byte of the body: a non-member gets 404, a viewer 403.
        async with transaction(self.pool) as uow:
            await require_role(uow, user_id, project_id, at_least=ProjectRole.EDITOR)
        staged = await self.storage.receive(
            body,
            content_type=content_type,
            content_length=content_length,
            max_bytes=self.max_bytes,
            allowed_types=self.allowed_types,
        )
        try:
            return await self._record(user_id, project_id, staged)
        finally:
            self.storage.discard(staged.path)  # already renamed on success; otherwise the temp file

    async def _record(self, user_id: int, project_id: int, staged: StagedFile) -> ProjectFile:
        storage_key = self.storage.new_key(project_id)
        final: Path | None = None
        try:
            async with transaction(self.pool) as uow:
                # Again, inside the transaction: the role may have changed while the body streamed in.
                await require_role(uow, user_id, project_id, at_least=ProjectRole.EDITOR)
                row = await queries.create_project_file(
                    uow.conn,
                    project_id=project_id,
                    uploaded_by=user_id,
                    filename=staged.filename,
                    content_type=staged.content_type,
                    size_bytes=staged.size_bytes,
                    sha256=staged.sha256,
                    storage_key=storage_key,
                )
                assert row is not None
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
        except BaseException:
            if final is not None:
                self.storage.discard(final)
            raise
        return row

    async def delete(self, user_id: int, project_id: int, file_id: int) -> None:
        """Delete the row (and emit) in one transaction; unlink the file once that has committed."""
        async with transaction(self.pool) as uow:
            await require_role(uow, user_id, project_id, at_least=ProjectRole.EDITOR)
            row = await queries.delete_project_file(uow.conn, id=file_id, project_id=project_id)
            if row is None:
                raise NotFoundError("No such file.")
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
        self, uow: UnitOfWork, user_id: int, project_id: int, *, before_id: int | None, limit: int
    ) -> list[ProjectFile]:
        """Newest first; ``limit`` rows at most."""
        await require_role(uow, user_id, project_id, at_least=ProjectRole.VIEWER)
        return await queries.list_project_files(
            uow.conn, project_id=project_id, before_id=before_id, row_limit=limit
        )

    async def locate(
        self, uow: UnitOfWork, user_id: int, project_id: int, file_id: int
    ) -> tuple[ProjectFile, Path, os.stat_result]:
        """A file's row, path and stat for download; 404 if the row or its content is missing."""
        await require_role(uow, user_id, project_id, at_least=ProjectRole.VIEWER)
        row = await queries.get_project_file(uow.conn, id=file_id, project_id=project_id)
        if row is None:
            raise NotFoundError("No such file.")
        stat = await self.storage.stat(row.storage_key)
        if stat is None:
            log.error("file_missing_on_disk", file_id=row.id, storage_key=row.storage_key)
            raise NotFoundError("The file's content is no longer available.")
        return row, self.storage.path_for(row.storage_key), stat
