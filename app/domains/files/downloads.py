"""Conditional and partial downloads (RFC 9110 13 and 14): what a download answers, from its headers.

A stored file never changes (a new upload is a new file), so its SHA-256 is an exact validator: the
download's strong ``ETag`` is ``"<sha256>"``. Evaluated in RFC 9110 13.2.2's order, once the caller
may see the file (a non-member, or a file of another project, is a 404 before any of this):

0. ``If-Match`` (``*`` or a list of entity-tags, compared strongly, 13.1.1) not naming the file, or,
   without ``If-Match``, ``If-Unmodified-Since`` (a valid HTTP date) before its ``Last-Modified``:
   412 Precondition Failed (a client resuming a download refuses another file). A malformed
   ``If-Match`` is a 400.
1. ``If-None-Match`` (``*`` or a list of entity-tags, compared weakly, 13.1.2) naming the file:
   304 Not Modified, no body.
2. Only when the request has no ``If-None-Match`` (13.1.3: an entity-tag is the better validator, so
   a present one decides alone, even malformed), ``If-Modified-Since``: a valid HTTP date at or after
   the file's ``Last-Modified`` (whole seconds, as the header gives it) is 304 too. A date that is
   malformed, over ``MAX_IF_MODIFIED_SINCE_CHARS`` or later than the server's clock is ignored.
3. ``Range`` (one range of ``bytes``: ``a-b``, ``a-`` or ``-n``; ``b`` past the end means the end):
   206 Partial Content with those bytes and ``Content-Range: bytes a-b/size``; a range that starts
   at or past the end (or ``-0``) is 416 with ``Content-Range: bytes */size``.
4. ``If-Range`` (the ``ETag``, compared strongly, or the ``Last-Modified`` date exactly) decides
   whether the ``Range`` applies at all: when it does not match, the answer is the whole file, 200.

Ignored, answering the whole file (RFC 9110 14.2: a server MAY ignore ``Range``, and MUST ignore a
range unit it does not understand): a ``Range`` that is malformed, over ``MAX_RANGE_CHARS``, of
another unit than ``bytes``, or of several ranges (a multipart/byteranges answer is not offered),
and a satisfiable range of an empty file (no byte to send: ``-n`` of 0 bytes). A malformed or
overlong ``If-None-Match`` names nothing (the whole file is always a correct answer); a malformed
``If-Range`` does not match.

A ``HEAD`` is decided here too, by the same function: it answers what the ``GET`` would, without the
body (RFC 9110 9.3.2).

Every answer with the file's bytes (200, 206) carries the same ``Content-Type`` (:func:`content_type`):
its media type, with the ``charset`` recorded at upload for a text file that has one.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from app.core.errors import AppError
from app.core.preconditions import http_date, parse_if_none_match, parse_preconditions

MAX_RANGE_CHARS = 200
"""Longest ``Range`` parsed (one range of two 20-digit positions is under 50): longer is ignored."""
MAX_IF_RANGE_CHARS = 100
"""An entity-tag of a SHA-256 is 66 characters, an HTTP date at most 33 (RFC 850's ``Wednesday, …``)."""
MAX_IF_MODIFIED_SINCE_CHARS = 100
"""Longest ``If-Modified-Since`` parsed (an HTTP date is at most 33 characters): longer is ignored."""

_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
"""One range-spec (RFC 9110 14.1.1): ASCII digits only (``\\d`` and ``int()`` take other scripts' too)."""
_OWS = " \t"


class RangeNotSatisfiableError(AppError):
    """416: the one range asked for starts at or past the end of the file; ``Content-Range``
    (``bytes */size``) tells the client the file's size."""

    status = 416
    slug = "range-not-satisfiable"
    title = "Range not satisfiable"


def content_type(media_type: str, charset: str | None) -> str:
    """A download's ``Content-Type``: a text type with the charset recorded at upload, else the bare
    type. Passed as a header, since Litestar's ``File`` appends ``; charset=utf-8`` to every ``text/*``
    type it is given as ``media_type``, whatever the bytes; a text file whose charset is unknown is
    better left to the client (which sniffs, or asks) than labelled wrongly."""
    if charset is None or not media_type.startswith("text/"):
        return media_type
    return f"{media_type}; charset={charset}"  # a WHATWG name (``storage._CHARSETS``): a token


def strong_etag(sha256: str) -> str:
    """The download's ``ETag``: a stored file's digest is an exact validator of its bytes."""
    return f'"{sha256}"'


@dataclass(frozen=True, slots=True)
class Whole:
    """200 with the whole file."""


@dataclass(frozen=True, slots=True)
class NotModified:
    """304: the client's copy is the file (``If-None-Match`` named it, or ``If-Modified-Since`` is not
    before its ``Last-Modified``)."""


@dataclass(frozen=True, slots=True)
class Part:
    """206 with bytes ``first`` … ``last`` (inclusive) of a file of ``size`` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


Answer = Whole | NotModified | Part


@dataclass(frozen=True, slots=True)
class _RangeSpec:
    """A syntactically valid single range-spec, not yet resolved against a size: ``first`` None is a
    suffix range of ``suffix`` bytes; ``last`` None is open-ended."""

    first: int | None
    last: int | None
    suffix: int = 0


ATTR_CHARS = "!#$&+-.^_`|~"
"""RFC 8187's attr-char beyond letters and digits: left as they are in ``filename*``."""


def attachment(filename: str) -> str:
    """A download's ``Content-Disposition`` (RFC 6266): ``filename*`` in UTF-8 for the clients that
    read it, and a ``filename`` in ASCII beside it for those that do not (curl's ``-J`` saved
    ``日本語 файл.pdf`` as the URL's last segment): accents dropped (``café`` is ``cafe``), anything
    else outside printable ASCII, a quote or a backslash, ``_`` (appendix D)."""
    decomposed = unicodedata.normalize("NFKD", filename)
    fallback = "".join(
        ch if " " <= ch <= "~" and ch not in '"\\' else "_"
        for ch in decomposed
        if not unicodedata.combining(ch)
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe=ATTR_CHARS)}"


def none_match(if_none_match: str | None, sha256: str) -> bool:
    """Whether ``If-None-Match`` names the file (its condition is then false: 304). ``*`` names any
    existing file; a tag names it when it is the file's, weak or not (13.1.2)."""
    condition = parse_if_none_match(if_none_match)
    return condition is not None and condition.names(frozenset((strong_etag(sha256),)))


def _range_spec(value: str) -> _RangeSpec | None:
    """``Range``'s one byte range, or None when it is to be ignored (see the module's docstring)."""
    if len(value) > MAX_RANGE_CHARS:
        return None
    unit, equals, range_set = value.partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    # Empty list elements are allowed (RFC 9110 5.6.1): ``bytes=0-1,`` is one range.
    specs = [element.strip(_OWS) for element in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        return None
    match = _RANGE_SPEC.fullmatch(specs[0])
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first:
        if last and int(last) < int(first):
            return None  # invalid (14.1.1), not unsatisfiable
        return _RangeSpec(first=int(first), last=int(last) if last else None)
    if not last:
        return None  # a bare "-"
    return _RangeSpec(first=None, last=None, suffix=int(last))


def _if_range_holds(if_range: str, sha256: str, last_modified: int) -> bool:
    """``If-Range``: the strong ``ETag`` exactly (a weak tag never matches), or an HTTP date equal to
    ``Last-Modified`` (whole seconds since the epoch, as the header gives it)."""
    if len(if_range) > MAX_IF_RANGE_CHARS:
        return False
    if if_range.startswith(('"', "W/")):  # 13.1.5: a DQUOTE within the first three characters
        return if_range == strong_etag(sha256)
    return http_date(if_range) == last_modified


def _not_modified_since(if_modified_since: str, last_modified: int, now: float) -> bool:
    """Whether ``If-Modified-Since``'s condition is false (304): a valid date, not later than ``now``
    (13.1.3: a later one is invalid), at or after ``Last-Modified`` (whole seconds since the epoch)."""
    if len(if_modified_since) > MAX_IF_MODIFIED_SINCE_CHARS:
        return False
    date = http_date(if_modified_since)
    return date is not None and last_modified <= date <= now


def choose(
    *,
    sha256: str,
    size: int,
    last_modified: int,
    now: float,
    if_none_match: str | None,
    if_modified_since: str | None,
    byte_range: str | None,
    if_range: str | None,
    if_match: str | None = None,
    if_unmodified_since: str | None = None,
) -> Answer:
    """What a download (``GET`` or ``HEAD``) of the file (``sha256``, ``size`` bytes, ``Last-Modified``
    at ``last_modified`` seconds) answers at ``now`` (seconds since the epoch) to these request headers,
    in the module's order: ``If-None-Match``, else ``If-Modified-Since``, then ``Range`` under
    ``If-Range``, after ``If-Match`` (else ``If-Unmodified-Since``), whose false condition is a 412
    (RFC 9110 13.2.2). Raises ``RangeNotSatisfiableError`` for a 416."""
    conditions = parse_preconditions(if_match, None, if_unmodified_since)
    if conditions is not None:
        conditions.require_tag(strong_etag(sha256), last_modified)
    if if_none_match is not None:
        if none_match(if_none_match, sha256):
            return NotModified()
    elif if_modified_since is not None and _not_modified_since(if_modified_since, last_modified, now):
        return NotModified()
    spec = _range_spec(byte_range) if byte_range is not None else None
    if spec is None:
        return Whole()
    if if_range is not None and not _if_range_holds(if_range, sha256, last_modified):
        return Whole()
    if spec.first is None:
        if spec.suffix == 0:
            raise _unsatisfiable(size)
        if size == 0:
            return Whole()
        return Part(first=max(0, size - spec.suffix), last=size - 1, size=size)
    if spec.first >= size:
        raise _unsatisfiable(size)
    last = size - 1 if spec.last is None else min(spec.last, size - 1)
    return Part(first=spec.first, last=last, size=size)


def _unsatisfiable(size: int) -> RangeNotSatisfiableError:
    return RangeNotSatisfiableError(
        f"The file has {size} bytes: a range must start before its end.",
        headers={"Content-Range": f"bytes */{size}"},
    )
