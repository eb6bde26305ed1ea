"""Wire shapes of the files API. The storage key (a server path) never leaves the server."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from app.core.wire import from_row
from app.db.models import ProjectFile


class FileOut(msgspec.Struct, frozen=True):
    id: int
    project_id: int
    filename: str
    content_type: str
    charset: Annotated[
        str | None,
        msgspec.Meta(
            description="The text's character encoding, as declared at upload or found to be UTF-8; null "
            "when unknown or not text (and for text files uploaded before it was recorded)"
        ),
    ]
    size_bytes: int
    sha256: str
    uploaded_by: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: ProjectFile) -> FileOut:
        return from_row(cls, row)


class FileCursor(msgspec.Struct, frozen=True):
    """Position in a newest-first list: the next page holds ids below ``before_id``."""

    before_id: Annotated[int, msgspec.Meta(ge=0)]
