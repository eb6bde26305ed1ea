"""HTTP for project files: /api/projects/{project_id}/files."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import (
    Encoding,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.response import File
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.config import get_settings
from app.core.auth import Caller, requires_user
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, Page, PageSize, decode_cursor, paginate
from app.core.routing import Controller
from app.core.types import IdPath
from app.domains.files.schemas import FileCursor, FileOut
from app.domains.files.services import FileService
from app.domains.files.storage import FILE_FIELD, ClientDisconnectedError

Files = NamedDependency[FileService]


async def _body_of(request: Request[Any, Any, Any]) -> AsyncGenerator[bytes, None]:
    """The request body's chunks as they arrive, read from ASGI's ``receive``.

    Not ``request.stream()``: it raises a 500 (``InternalServerException``) when the client goes
    away, logged as unhandled and captured by error monitoring; a client that abandons its own
    upload is a ``ClientDisconnectedError`` (400) instead.
    """
    while True:
        message = await request.receive()
        if message["type"] != "http.request":  # http.disconnect, the only other message
            raise ClientDisconnectedError("The client disconnected before the body was complete.")
        if chunk := message.get("body", b""):
            yield chunk
        if not message.get("more_body", False):
            return


DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
    "Content-Security-Policy": "sandbox; default-src 'none'; frame-ancestors 'none'",
}
"""A project's file is private (kept out of shared and disk caches) and is data, never a page: even
an allowed type a browser could be made to render runs nothing and loads nothing."""


@dataclass
class _MultipartUploadOperation(Operation):
    """Documents the body the upload handler parses itself (it takes no ``data`` parameter): one
    part, ``file``, whose content type is one of ``FILE_ALLOWED_TYPES`` (else 415)."""

    def __post_init__(self) -> None:
        file_schema = Schema(
            type=OpenAPIType.OBJECT,
            properties={FILE_FIELD: Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)},
            required=[FILE_FIELD],
            additional_properties=False,
        )
        allowed = ", ".join(sorted(get_settings().file_allowed_types))
        self.request_body = RequestBody(
            content={
                "multipart/form-data": OpenAPIMediaType(
                    schema=file_schema, encoding={FILE_FIELD: Encoding(content_type=allowed)}
                )
            },
            required=True,
        )


@dataclass
class _FileDownloadOperation(Operation):
    """Documents what a download really answers: the stored file's own content type (one of
    ``FILE_ALLOWED_TYPES``, not only octet-stream), and a ``Last-Modified`` that is an HTTP date
    (RFC 9110), not the RFC 3339 date-time Litestar documents for it."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if not isinstance(ok, OpenAPIResponse):
            return
        # No schema: the bytes are the file (OpenAPI 3.1's way to say "any content of this type").
        ok.content = {
            media_type: OpenAPIMediaType() for media_type in sorted(get_settings().file_allowed_types)
        }
        last_modified = (ok.headers or {}).get("last-modified")
        if isinstance(last_modified, OpenAPIHeader) and isinstance(last_modified.schema, Schema):
            last_modified.schema.format = None
            last_modified.description = "Last modification, as an HTTP date (RFC 9110)"


class ProjectFilesController(Controller):
    path = "/api/projects/{project_id:int}/files"
    tags = ["files"]
    guards = [requires_user]
    security = BEARER

    @get("/", summary="List a project's files, newest first", responses=problems(400, 401, 404, 429))
    async def list_files(
        self,
        project_id: IdPath,
        current_user: Caller,
        files: Files,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[FileOut]:
        before_id = decode_cursor(cursor, FileCursor).before_id if cursor else None
        rows = await files.list_files(current_user.id, project_id, before_id=before_id, limit=limit + 1)
        return paginate(rows, limit, lambda row: FileCursor(before_id=row.id), FileOut.from_row)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Upload a file (editors)",
        description=f"multipart/form-data with exactly one part, `{FILE_FIELD}`, carrying a filename and "
        "a content type from the allowed list (415 otherwise). Larger than FILE_MAX_BYTES: 413. 409 "
        "`quota-exceeded` when the project (FILE_PROJECT_MAX_COUNT / _BYTES) or the uploader "
        "(FILE_USER_MAX_COUNT / _BYTES) has no room left for it, refused before the body is read when its "
        "Content-Length already cannot fit; uploads in flight count against the quotas (each reserves "
        "its Content-Length, or FILE_MAX_BYTES when not announced). 429 `too-many-uploads` when the "
        "caller already has FILE_UPLOADS_PER_USER uploads in flight, refused before the body is read. "
        "408 `upload-stalled` when the body stops arriving: the upload's lease of FILE_UPLOAD_LEASE_S is "
        "renewed as the body arrives (at most every quarter of it) and the upload ends, its room given "
        "back, once the lease runs out: a pause of up to three quarters of FILE_UPLOAD_LEASE_S is always "
        "tolerated, one of FILE_UPLOAD_LEASE_S never. 408 `upload-expired` when the uploaded file was "
        "removed as stale (FILE_TEMP_MAX_AGE_S) before it could be stored: nothing was kept, send it "
        "again. 400 `client-disconnected` when the client goes away before the body is complete.",
        # FILE_MAX_BYTES is a runtime setting, so Litestar's own (import-time) limit is lifted for this
        # route and FileStorage enforces FILE_MAX_BYTES + 64 KiB of multipart overhead while streaming.
        request_max_body_size=None,
        operation_class=_MultipartUploadOperation,
        responses=problems(400, 401, 403, 404, 408, 409, 413, 415, 429),
    )
    async def upload(
        self,
        request: Request[Any, Any, Any],
        project_id: IdPath,
        current_user: Caller,
        files: Files,
    ) -> FileOut:
        row = await files.upload(
            current_user.id,
            project_id,
            _body_of(request),
            content_type=request.headers.get("content-type"),
            content_length=request.content_length,
        )
        return FileOut.from_row(row)

    @get(
        "/{file_id:int}",
        summary="Download a file",
        description="The stored bytes with their content type, as an attachment.",
        media_type="application/octet-stream",
        operation_class=_FileDownloadOperation,
        responses=problems(401, 404, 429),
    )
    async def download(
        self,
        project_id: IdPath,
        file_id: IdPath,
        current_user: Caller,
        files: Files,
    ) -> File:
        row, opened = await files.locate(current_user.id, project_id, file_id)
        return File(
            opened.path,
            filename=row.filename,
            media_type=row.content_type,
            content_disposition_type="attachment",
            file_system=opened,
            stat_result=opened.stat,
            headers=DOWNLOAD_HEADERS,
        )

    @delete(
        "/{file_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a file (editors)",
        responses=problems(401, 403, 404, 429),
    )
    async def delete_file(
        self,
        project_id: IdPath,
        file_id: IdPath,
        current_user: Caller,
        files: Files,
    ) -> None:
        await files.delete(current_user.id, project_id, file_id)
