"""HTTP for project files: /api/projects/{project_id}/files."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, delete, get, head, post
from litestar.datastructures import ETag
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.response import File
from litestar.response.file import ASGIFileResponse
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_204_NO_CONTENT,
    HTTP_206_PARTIAL_CONTENT,
    HTTP_304_NOT_MODIFIED,
)

from app.core.auth import Caller, requires_user
from app.core.idempotency import (
    IDEMPOTENCY_DESCRIPTION,
    Idempotent,
    OptionalIdempotencyKey,
    at_location,
)
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, Page, PageSize, decode_cursor, paginate
from app.core.preconditions import (
    DocumentsIfMatch,
    IfMatchHeader,
    IfNoneMatchHeader,
    IfUnmodifiedSinceHeader,
    parse_preconditions,
    precondition_failed,
)
from app.core.routing import Controller
from app.core.types import IdPath
from app.domains.files.downloads import (
    NotModified,
    Part,
    attachment,
    choose,
    content_type,
    strong_etag,
)
from app.domains.files.openapi import (
    DOWNLOAD_DESCRIPTION,
    DOWNLOAD_RESPONSES,
    FileDownloadOperation,
    FileHeadOperation,
    IfModifiedSinceHeader,
    IfRangeHeader,
    MultipartUploadOperation,
    RangeHeader,
)
from app.domains.files.schemas import FileCursor, FileOut
from app.domains.files.services import FileService
from app.domains.files.storage import FILE_FIELD

Files = NamedDependency[FileService]


DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
    "Content-Security-Policy": "sandbox; default-src 'none'; frame-ancestors 'none'",
}
"""A project's file is private (kept out of shared and disk caches) and is data, never a page: even
an allowed type a browser could be made to render runs nothing and loads nothing."""


class _FileHead(File):
    """``File``'s answer without its body, for ``HEAD``: the same status and headers (``Content-Length``
    of the bytes a ``GET`` would send, ``Last-Modified``, ``Content-Disposition``...), the file never
    read. Litestar 2.25 never tells a handler's response that it answers a ``HEAD``: ``@head`` accepts
    a ``File``, but ``to_asgi_response`` is called without ``is_head_response``, and a ``File`` would
    then read and send the whole file."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIFileResponse:
        return super().to_asgi_response(*args, **{**kwargs, "is_head_response": True})


async def _download(
    files: FileService,
    user_id: int,
    project_id: int,
    file_id: int,
    *,
    head: bool,
    if_none_match: str | None,
    if_modified_since: str | None,
    byte_range: str | None,
    if_range: str | None,
    if_match: str | None,
    if_unmodified_since: str | None,
) -> Response[Any]:
    """The answer to a ``GET`` of a file or, with ``head``, to its ``HEAD``: one decision
    (``downloads.choose``) for both, the ``HEAD`` without the body."""
    row, opened = await files.locate(user_id, project_id, file_id)
    try:
        answer = choose(
            sha256=row.sha256,
            size=opened.stat.st_size,
            last_modified=int(opened.stat.st_mtime),  # Last-Modified's whole seconds
            now=time.time(),
            if_none_match=if_none_match,
            if_modified_since=if_modified_since,
            byte_range=byte_range,
            if_range=if_range,
            if_match=if_match,
            if_unmodified_since=if_unmodified_since,
        )
    except BaseException:  # the 416, or anything else: no body will read the handle
        opened.close()
        raise
    if head or isinstance(answer, NotModified):
        opened.close()  # no body will read it; a HEAD's headers come from the stat taken at the opening
    if isinstance(answer, NotModified):
        return Response(
            b"",
            status_code=HTTP_304_NOT_MODIFIED,
            headers={**DOWNLOAD_HEADERS, "ETag": strong_etag(row.sha256)},
        )
    headers = {
        **DOWNLOAD_HEADERS,
        "Accept-Ranges": "bytes",
        # Not left to ``media_type``: Litestar would label every text file ``charset=utf-8``.
        "Content-Type": content_type(row.content_type, row.charset),
        # Not left to ``File`` either: it sends ``filename*`` alone for a name outside ASCII.
        "content-disposition": attachment(row.filename),
    }
    part = answer if isinstance(answer, Part) else None
    if part is not None:
        headers["Content-Range"] = part.content_range
    return (_FileHead if head else File)(
        opened.path,
        filename=row.filename,
        media_type=row.content_type,
        content_disposition_type="attachment",
        file_system=opened if part is None else opened.part(part.first, part.length),
        etag=ETag(value=row.sha256),
        status_code=HTTP_200_OK if part is None else HTTP_206_PARTIAL_CONTENT,
        headers=headers,
    )


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
        rows = await files.list_files(current_user.id, project_id, before_id=before_id, row_limit=limit + 1)
        return paginate(rows, limit, lambda row: FileCursor(before_id=row.id), FileOut.from_row)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Upload a file (editors)",
        description=f"multipart/form-data with exactly one part, `{FILE_FIELD}`, carrying a filename and "
        "a content type from the allowed list (415 otherwise). The name is kept (without any directory "
        "part) ending in an extension of that type: `report.html` sent as `text/plain` is stored as "
        "`report.html.txt`. Larger than FILE_MAX_BYTES: 413. 409 "
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
        "again. 400 `client-disconnected` when the client goes away before the body is complete. 401 when "
        "the session ends (a sign-out, a password change, a change to the account) before the file is "
        "recorded: nothing is kept (a token that merely expired meanwhile does not end it). A text "
        "file's `charset` (kept, and labelling its downloads) is the one its part declares (`Content-Type: "
        "text/csv; charset=cp1252`) when it names a character set browsers decode, stated by its WHATWG "
        "name (`windows-1252`, `iso-8859-1`, `shift_jis`, …); otherwise, or when the declared one is UTF-8, "
        "`utf-8` if the whole file is valid UTF-8, else null (unknown). Other types: null. "
        + IDEMPOTENCY_DESCRIPTION
        + " For an upload the key alone stands for the request (its multipart bytes differ at every "
        "retry): it is claimed before the body is read, so a retry is answered its first answer without "
        "its file being stored or counted again, even once the quota is full; a different file sent "
        "under a used key gets the first file's answer.",
        # FILE_MAX_BYTES is a runtime setting, so Litestar's own (import-time) limit is lifted for this
        # route and FileStorage enforces FILE_MAX_BYTES + 64 KiB of multipart overhead while streaming.
        request_max_body_size=None,
        operation_class=MultipartUploadOperation,
        responses={
            **problems(400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 507),
            HTTP_201_CREATED: ResponseSpec(FileOut, description="Stored"),
        },
    )
    async def upload_file(
        self,
        request: Request[Any, Any, Any],
        project_id: IdPath,
        current_user: Caller,
        files: Files,
        idempotency: Idempotent,
        idempotency_key: OptionalIdempotencyKey = None,
    ) -> Response[bytes]:
        created = await idempotency.respond(
            request,
            current_user.id,
            idempotency_key,
            None,  # the key stands for the upload: claimed before its body is read (see the description)
            lambda claim: files.upload(
                current_user,
                project_id,
                request.stream(),  # a client leaving mid-body: ClientDisconnectedError (app.core.routing)
                content_type=request.headers.get("content-type"),
                content_length=request.content_length,
                claim=claim,
            ),
            FileOut.from_row,
        )
        return at_location(created, f"/api/projects/{project_id}/files/{{id}}")

    @get(
        "/{file_id:int}",
        summary="Download a file",
        description="The stored bytes with their content type, as an attachment. A text file is labelled "
        "with its `charset` (`text/csv; charset=windows-1252`) and, when that is unknown (null: neither "
        "declared nor valid UTF-8, and every text file uploaded before charsets were recorded), with its "
        f"bare type. {DOWNLOAD_DESCRIPTION}",
        media_type="application/octet-stream",
        operation_class=FileDownloadOperation,
        responses=DOWNLOAD_RESPONSES,
    )
    async def download_file(
        self,
        project_id: IdPath,
        file_id: IdPath,
        current_user: Caller,
        files: Files,
        if_none_match: IfNoneMatchHeader = None,
        if_modified_since: IfModifiedSinceHeader = None,
        byte_range: RangeHeader = None,
        if_range: IfRangeHeader = None,
        if_match: IfMatchHeader = None,
        if_unmodified_since: IfUnmodifiedSinceHeader = None,
    ) -> Response[bytes] | File:
        return await _download(
            files,
            current_user.id,
            project_id,
            file_id,
            head=False,
            if_none_match=if_none_match,
            if_modified_since=if_modified_since,
            byte_range=byte_range,
            if_range=if_range,
            if_match=if_match,
            if_unmodified_since=if_unmodified_since,
        )

    @head(
        "/{file_id:int}",
        summary="A file's download headers, without its bytes",
        description="What `GET` of the same URL with the same headers answers (RFC 9110 9.3.2): the same "
        "status and headers (`Content-Type`, `Content-Length` of the body the GET would send, `ETag`, "
        "`Last-Modified`, `Accept-Ranges`, `Content-Range` of a 206, `Content-Disposition`), no body; "
        f"the file is not read. {DOWNLOAD_DESCRIPTION}",
        media_type="application/octet-stream",
        operation_class=FileHeadOperation,
        responses=DOWNLOAD_RESPONSES,
    )
    async def download_file_head(
        self,
        project_id: IdPath,
        file_id: IdPath,
        current_user: Caller,
        files: Files,
        if_none_match: IfNoneMatchHeader = None,
        if_modified_since: IfModifiedSinceHeader = None,
        byte_range: RangeHeader = None,
        if_range: IfRangeHeader = None,
        if_match: IfMatchHeader = None,
        if_unmodified_since: IfUnmodifiedSinceHeader = None,
    ) -> Response[None]:
        return await _download(
            files,
            current_user.id,
            project_id,
            file_id,
            head=True,
            if_none_match=if_none_match,
            if_modified_since=if_modified_since,
            byte_range=byte_range,
            if_range=if_range,
            if_match=if_match,
            if_unmodified_since=if_unmodified_since,
        )

    @delete(
        "/{file_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a file (editors)",
        description="With `If-Match` (the `ETag` its download answers, or `*`), deleted only if it names "
        "the file: otherwise 412 `precondition-failed` and nothing is deleted.",
        responses={**problems(400, 401, 403, 404, 429), **precondition_failed()},
        operation_class=DocumentsIfMatch,
    )
    async def delete_file(
        self,
        project_id: IdPath,
        file_id: IdPath,
        current_user: Caller,
        files: Files,
        if_match: IfMatchHeader = None,
        if_none_match: IfNoneMatchHeader = None,
        if_unmodified_since: IfUnmodifiedSinceHeader = None,
    ) -> None:
        conditions = parse_preconditions(if_match, if_none_match, if_unmodified_since)
        await files.delete(current_user.id, project_id, file_id, conditions=conditions)
