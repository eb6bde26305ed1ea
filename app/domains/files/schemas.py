"""Wire shapes of the files API. The storage key (a server path) never leaves the server."""

from __future__ import annotations

from datetime import datetime

import msgspec

from app.db.models import ProjectFile


class FileOut(msgspec.Struct, frozen=True):
    id: int
    project_id: int
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    uploaded_by: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: ProjectFile) -> FileOut:
        return cls(
            id=row.id,
            project_id=row.project_id,
            filename=row.filename,
            content_type=row.content_type,
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            uploaded_by=row.uploaded_by,
            created_at=row.created_at,
        )


class FileCursor(msgspec.Struct, frozen=True):
    """Position in a newest-first list: the next page holds ids below ``before_id``."""

    before_id: int
