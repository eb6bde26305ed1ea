"""The OpenAPI description of the files routes: the upload's multipart body, which the handler parses
itself, and what a download answers (its content types, headers, conditional and range answers),
which Litestar cannot infer from a handler that may answer a bodiless ``Response``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

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

from app.config import get_settings
from app.core.errors import PROBLEM_MEDIA_TYPE, Problem
from app.core.idempotency import DocumentsLocatedCreation
from app.core.openapi import problems
from app.core.preconditions import IF_MATCH_MAX_LENGTH
from app.domains.files.downloads import MAX_IF_MODIFIED_SINCE_CHARS, MAX_RANGE_CHARS
from app.domains.files.storage import FILE_FIELD


@dataclass
class MultipartUploadOperation(DocumentsLocatedCreation):
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


# Plain strings (absent is None), described by ``FileDownloadOperation`` (as ``If-Match`` is, in
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
    "If-Match": "`*` or a list of entity-tags (strong comparison): answered only if one is the file's "
    "`ETag` (a client resuming a download refuses another file), else 412. Malformed: 400.",
    "If-Unmodified-Since": "An HTTP date: answered only if the file's `Last-Modified` is not after it, "
    "else 412. Evaluated only without `If-Match`; not a date: ignored.",
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
class FileDownloadOperation(Operation):
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
class FileHeadOperation(FileDownloadOperation):
    """The ``HEAD`` of a download: the ``GET``'s answers with their headers (RFC 9110 9.3.2), none of
    them with content (a 200's ``Content-Length`` is still the file's size)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for status, response in (self.responses or {}).items():
            if isinstance(response, OpenAPIResponse):
                response.content = None
                if status in _HEAD_DESCRIPTIONS:
                    response.description = _HEAD_DESCRIPTIONS[status]


DOWNLOAD_DESCRIPTION = (
    "Conditional and resumable (RFC 9110): every answer carries a strong `ETag` "
    '(`"<sha256>"` of the bytes: a stored file never changes) and `Accept-Ranges: bytes`. `If-None-Match` '
    "naming it, or (without `If-None-Match`) an `If-Modified-Since` date not before its `Last-Modified`: "
    "304 without a body. One byte `Range`: 206 with those bytes and `Content-Range`, 416 (`Content-Range: "
    "bytes */size`) when it starts at or past the end; a malformed Range, several ranges or another unit "
    "are ignored (200, the whole file). `If-Range` (the `ETag` or the `Last-Modified` date) makes the "
    "Range apply only while it matches. Each of these headers is sent once: a second line of `Range`, "
    "`If-Range` or a date is a 400 naming it (the lines of `If-Match` and `If-None-Match` are one list). "
    "Access is checked first: a file the caller may not see is a 404 whatever the headers."
)
DOWNLOAD_RESPONSES: dict[int, ResponseSpec] = {
    206: ResponseSpec(data_container=None, description="The requested byte range of the file"),
    304: ResponseSpec(
        data_container=None,
        description="`If-None-Match` names the file, or `If-Modified-Since` is not before its "
        "`Last-Modified`: no body",
    ),
    **problems(400, 401, 404, 429),
    412: ResponseSpec(
        data_container=Problem,
        description="`If-Match` does not name the file, or it was modified after `If-Unmodified-Since`",
        media_type=PROBLEM_MEDIA_TYPE,
    ),
    416: ResponseSpec(
        data_container=Problem,
        description="The range starts at or past the end of the file (`Content-Range`: its size)",
        media_type=PROBLEM_MEDIA_TYPE,
    ),
}
