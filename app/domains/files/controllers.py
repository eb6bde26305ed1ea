"""HTTP for project files: /api/projects/{project_id}/files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, Response, delete, get, head, post
from litestar.datastructures import ETag
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Encoding,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
)
from litestar.params import HeaderParameter
from litestar.response import File
from litestar.response.file import ASGIFileResponse
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_204_NO_CONTENT,
    HTTP_206_PARTIAL_CONTENT,
    HTTP_304_NOT_MODIFIED,
)

from app.config import get_settings
from app.core.auth import Caller, requires_user
from app.core.errors import PROBLEM_MEDIA_TYPE, Problem
from app.core.idempotency import (
    IDEMPOTENCY_DESCRIPTION,
    DocumentsIdempotency,
    Idempotent,
    OptionalIdempotencyKey,
)
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, Page, PageSize, decode_cursor, paginate
from app.core.preconditions import (
    IF_MATCH_MAX_LENGTH,
    DocumentsIfMatch,
    IfMatchHeader,
    IfNoneMatchHeader,
    parse_if_match,
    precondition_failed,
)
from app.core.routing import Controller
from app.core.types import IdPath
from app.domains.files.downloads import (
    MAX_IF_MODIFIED_SINCE_CHARS,
    MAX_RANGE_CHARS,
    NotModified,
    Part,
    choose,
    content_type,
    strong_etag,
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


@dataclass
class _MultipartUploadOperation(DocumentsIdempotency):
    """Documents the body the upload handler parses itself (it takes no ``data`` parameter): one
    part, ``file``, whose content type is one of ``FILE_ALLOWED_TYPES`` (else 415); and its
    ``Idempotent-Replayed`` answers."""

    def __post_init__(self) -> None:
        super().__post_init__()
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


# Plain strings (absent is None), described by ``_FileDownloadOperation`` (as ``If-Match`` is, in
# ``app.core.preconditions``: Litestar would copy a description into the schema's ``oneOf``); the
# ``If-None-Match`` parameter is ``app.core.preconditions.IfNoneMatchHeader``.
IfModifiedSinceHeader = Annotated[
    str | None, HeaderParameter(name="If-Modified-Since", schema_extra={"type": "string", "oneOf": None})
]
RangeHeader = Annotated[
    str | None, HeaderParameter(name="Range", schema_extra={"type": "string", "oneOf": None})
]
IfRangeHeader = Annotated[
    str | None, HeaderParameter(name="If-Range", schema_extra={"type": "string", "oneOf": None})
]

_REQUEST_HEADERS = {
    "If-None-Match": "`*` or a list of entity-tags (weak comparison): when one is the file's `ETag`, the "
    "answer is 304 Not Modified without a body. Malformed or over "
    f"{IF_MATCH_MAX_LENGTH} characters: ignored.",
    "If-Modified-Since": "An HTTP date (`Thu, 03 Dec 2026 16:30:00 GMT`, the `Last-Modified` of a copy): "
    "when the file's `Last-Modified` is not after it, the answer is 304 Not Modified without a body. "
    "Evaluated only without `If-None-Match` (an entity-tag is the better validator). Not a date, over "
    f"{MAX_IF_MODIFIED_SINCE_CHARS} characters or later than the server's clock: ignored.",
    "Range": "One byte range: `bytes=a-b`, `bytes=a-` (to the end) or `bytes=-n` (the last n bytes); `b` "
    "past the end means the end. Answered 206 with those bytes, or 416 when the range starts at or "
    "past the end. Ignored (200, the whole file) when malformed, over "
    f"{MAX_RANGE_CHARS} characters, of another unit or of several ranges (RFC 9110 allows a server "
    "to ignore Range).",
    "If-Range": "The file's `ETag` (strong comparison) or its `Last-Modified` date: the `Range` applies "
    "only if it still matches, else the answer is the whole file (200).",
}


def _header(description: str, example: str) -> OpenAPIHeader:
    return OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING, examples=[example]), description=description)


_ETAG = _header(
    'The file\'s SHA-256 as a strong entity-tag (`"<sha256>"`), for `If-None-Match` and `If-Range`',
    '"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"',
)
_LAST_MODIFIED = "Thu, 03 Dec 2026 16:30:00 GMT"


@dataclass
class _FileDownloadOperation(Operation):
    """Documents what a download really answers (``app.domains.files.downloads``): the stored file's
    own content type (one of ``FILE_ALLOWED_TYPES``, not only octet-stream), its headers (a
    ``Last-Modified`` that is an HTTP date, RFC 9110, the strong ``ETag``), the conditional request
    headers and the 206, 304 and 416 answers. The handler may answer a bodiless ``Response`` (304), so
    Litestar no longer documents the 200 as a ``File``: every header is declared here."""

    def __post_init__(self) -> None:
        for parameter in self.parameters or ():
            if isinstance(parameter, Parameter) and parameter.name in _REQUEST_HEADERS:
                parameter.description = _REQUEST_HEADERS[parameter.name]
        responses = self.responses or {}
        # No schema: the bytes are the file (OpenAPI 3.1's way to say "any content of this type").
        content = {media_type: OpenAPIMediaType() for media_type in sorted(get_settings().file_allowed_types)}
        common = {
            "last-modified": _header("Last modification, as an HTTP date (RFC 9110)", _LAST_MODIFIED),
            "etag": _ETAG,
            "accept-ranges": _header("Byte ranges are served (`Range`)", "bytes"),
        }
        ok = responses.get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.description = "The whole file"
            ok.content = content
            ok.headers = {"content-length": _header("File size in bytes", "4096"), **common}
        partial = responses.get("206")
        if isinstance(partial, OpenAPIResponse):
            partial.content = content
            partial.headers = {
                "content-length": _header("Bytes in the part", "1024"),
                "content-range": _header(
                    "The part and the file's size: `bytes a-b/size`", "bytes 0-1023/4096"
                ),
                **common,
            }
        not_modified = responses.get("304")
        if isinstance(not_modified, OpenAPIResponse):
            not_modified.content = None
            not_modified.headers = {"etag": _ETAG}
        unsatisfiable = responses.get("416")
        if isinstance(unsatisfiable, OpenAPIResponse):
            unsatisfiable.headers = {
                "content-range": _header("The file's size: `bytes */size`", "bytes */4096")
            }


_HEAD_DESCRIPTIONS = {
    "200": "The whole file's headers (its `Content-Type` and `Content-Length` among them), no body",
    "206": "The byte range's headers (`Content-Range`, its `Content-Length`), no body",
}


@dataclass
class _FileHeadOperation(_FileDownloadOperation):
    """The ``HEAD`` of a download: the ``GET``'s answers with their headers (RFC 9110 9.3.2), none of
    them with content (a 200's ``Content-Length`` is still the file's size)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for status, response in (self.responses or {}).items():
            if isinstance(response, OpenAPIResponse):
                response.content = None
                if status in _HEAD_DESCRIPTIONS:
                    response.description = _HEAD_DESCRIPTIONS[status]


_DOWNLOAD_DESCRIPTION = (
    "Conditional and resumable (RFC 9110): every answer carries a strong `ETag` "
    '(`"<sha256>"` of the bytes: a stored file never changes) and `Accept-Ranges: bytes`. `If-None-Match` '
    "naming it, or (without `If-None-Match`) an `If-Modified-Since` date not before its `Last-Modified`: "
    "304 without a body. One byte `Range`: 206 with those bytes and `Content-Range`, 416 (`Content-Range: "
    "bytes */size`) when it starts at or past the end; a malformed Range, several ranges or another unit "
    "are ignored (200, the whole file). `If-Range` (the `ETag` or the `Last-Modified` date) makes the "
    "Range apply only while it matches. Access is checked first: a file the caller may not see is a 404 "
    "whatever the headers."
)
_DOWNLOAD_RESPONSES: dict[int, ResponseSpec] = {
    206: ResponseSpec(data_container=None, description="The requested byte range of the file"),
    304: ResponseSpec(
        data_container=None,
        description="`If-None-Match` names the file, or `If-Modified-Since` is not before its "
        "`Last-Modified`: no body",
    ),
    **problems(401, 404, 429),
    416: ResponseSpec(
        data_container=Problem,
        description="The range starts at or past the end of the file (`Content-Range`: its size)",
        media_type=PROBLEM_MEDIA_TYPE,
    ),
}


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
        rows = await files.list_files(current_user.id, project_id, before_id=before_id, limit=limit + 1)
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
        "again. 400 `client-disconnected` when the client goes away before the body is complete. A text "
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
        operation_class=_MultipartUploadOperation,
        responses={
            **problems(400, 401, 403, 404, 408, 409, 413, 415, 422, 429),
            HTTP_201_CREATED: ResponseSpec(FileOut, description="Stored"),
        },
    )
    async def upload(
        self,
        request: Request[Any, Any, Any],
        project_id: IdPath,
        current_user: Caller,
        files: Files,
        idempotency: Idempotent,
        idempotency_key: OptionalIdempotencyKey = None,
    ) -> Response[bytes]:
        return await idempotency.respond(
            request,
            current_user.id,
            idempotency_key,
            None,  # the key stands for the upload: claimed before its body is read (see the description)
            lambda claim: files.upload(
                current_user.id,
                project_id,
                request.stream(),  # a client leaving mid-body: ClientDisconnectedError (app.core.routing)
                content_type=request.headers.get("content-type"),
                content_length=request.content_length,
                claim=claim,
            ),
            FileOut.from_row,
        )

    @get(
        "/{file_id:int}",
        summary="Download a file",
        description="The stored bytes with their content type, as an attachment. A text file is labelled "
        "with its `charset` (`text/csv; charset=windows-1252`) and, when that is unknown (null: neither "
        "declared nor valid UTF-8, and every text file uploaded before charsets were recorded), with its "
        f"bare type. {_DOWNLOAD_DESCRIPTION}",
        media_type="application/octet-stream",
        operation_class=_FileDownloadOperation,
        responses=_DOWNLOAD_RESPONSES,
    )
    async def download(
        self,
        project_id: IdPath,
        file_id: IdPath,
        current_user: Caller,
        files: Files,
        if_none_match: IfNoneMatchHeader = None,
        if_modified_since: IfModifiedSinceHeader = None,
        byte_range: RangeHeader = None,
        if_range: IfRangeHeader = None,
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
        )

    @head(
        "/{file_id:int}",
        summary="A file's download headers, without its bytes",
        description="What `GET` of the same URL with the same headers answers (RFC 9110 9.3.2): the same "
        "status and headers (`Content-Type`, `Content-Length` of the body the GET would send, `ETag`, "
        "`Last-Modified`, `Accept-Ranges`, `Content-Range` of a 206, `Content-Disposition`), no body; "
        f"the file is not read. {_DOWNLOAD_DESCRIPTION}",
        media_type="application/octet-stream",
        operation_class=_FileHeadOperation,
        responses=_DOWNLOAD_RESPONSES,
    )
    async def download_head(
        self,
        project_id: IdPath,
        file_id: IdPath,
        current_user: Caller,
        files: Files,
        if_none_match: IfNoneMatchHeader = None,
        if_modified_since: IfModifiedSinceHeader = None,
        byte_range: RangeHeader = None,
        if_range: IfRangeHeader = None,
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
    ) -> None:
        await files.delete(current_user.id, project_id, file_id, if_match=parse_if_match(if_match))
