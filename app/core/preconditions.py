"""Conditional requests (RFC 9110 13): ``If-Match`` and ``If-None-Match`` against a resource's
version, ``ETag`` answers.

A resource with a version (a task, a project, a product) answers its GET and PATCH with the strong
entity-tag ``"<version>"``, or ``"<version>-br"`` / ``"<version>-gzip"`` when the compression layer
encoded the answer (``app.core.compression.coded_etag``: a strong tag differs between content
codings, RFC 9110 8.8.3); every form names the version (``names_version``). A change that sends
``If-Match`` (a PATCH, a DELETE, a product's stock adjustment) is applied only when the resource is
still at one of the versions listed (or, for ``*``, exists), else it changes nothing and answers 412
``precondition-failed``. Without ``If-Match`` a change is unconditional.

A change also honours ``If-None-Match`` (13.1.2, weak comparison): ``*`` (the resource exists) or a
tag naming the current version makes it a 412 too; and, on a resource with a ``Last-Modified`` (a
file) and without ``If-Match``, ``If-Unmodified-Since``. All of them travel as one ``Preconditions``
(``parse_preconditions``), evaluated in 13.2.2's order.

The comparison belongs to the service, under the row lock its change holds until the commit (never
a read before the write): ``Preconditions.require`` is called with the version read under that lock.
A resource without versions has its conditions judged by the route layer (``app.core.gate``).

``If-Match`` is ``*`` or a comma-separated list of entity-tags, ``"…"`` or weak ``W/"…"`` (empty
list elements are allowed, RFC 9110 5.6.1). Several header lines are one list to RFC 9110, but a
route's header parameter reads the first line only (Litestar): a client sends one line; a condition
split over lines is judged by its first, which can only make it fail (412) or ignored (200, for
``If-None-Match``), never apply a change it did not allow. ``parse_if_match``
checks it before anything is read: a malformed value is a 400 naming ``header.If-Match``. The
schema declares a plain string, not the grammar as a ``pattern``: contract fuzzers generate valid
values for a plain ``If-Match`` string (Schemathesis' If-Match format), while a pattern holding ``"``
left Schemathesis with no value it could send and it sent ``0`` as if valid. If-Match compares
strongly: a weak tag never matches.

A read whose resource's version names its whole representation (a task: its version takes every
change of its row) also honours ``If-None-Match`` (13.1.2, weak comparison): when it names the current
version, the answer is 304 without a body (``answer_unless_held``); and ``If-Match`` before it, a 412
when it names none of the current versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Annotated, TypeVar, cast

import msgspec
from litestar import Response
from litestar.datastructures import ResponseHeader
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIHeader, OpenAPIResponse, OpenAPIType, Operation, Parameter, Schema
from litestar.params import HeaderParameter
from litestar.status_codes import HTTP_304_NOT_MODIFIED

from app.core.compression import CODINGS, accepts, coded_etag
from app.core.errors import PROBLEM_MEDIA_TYPE, AppError, FieldError, InvalidFieldsError, Problem

_TAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
"""entity-tag = [ weak ] opaque-tag; etagc = %x21 / %x23-7E / obs-text (RFC 9110 8.8.3)."""

IF_MATCH_SYNTAX = re.compile(rf"\*|[ \t,]*(?:{_TAG}(?:[ \t]*,[ \t,]*{_TAG})*[ \t,]*)?")
"""``*``, or a list of entity-tags whose elements are separated by commas (OWS around them; empty
elements allowed): a whole value matches it (``fullmatch``). The list may be empty (``#entity-tag``,
RFC 9110 13.1.1): no tag to match, so the condition is false (412), as for a list of weak tags."""

_TAGS = re.compile(r'(W/)?("[^"]*")')
"""The entity-tags of a value that matched ``IF_MATCH_SYNTAX``, in order (an opaque-tag holds no
``"``, so each match is one whole tag; a comma inside one is part of it)."""

IF_MATCH_MAX_LENGTH = 2048

IF_MATCH_DESCRIPTION = (
    "Apply only if the resource is still at one of these versions: the `ETag` its GET or last change "
    'answered (`"7"`, or `"7-br"` / `"7-gzip"` from a compressed answer: the same version), several '
    'separated by commas (`"6", "7"`), or `*` (any: it exists). Otherwise the '
    "answer is 412 `precondition-failed` and nothing changes. Strong comparison: a weak tag "
    '(`W/"7"`) never matches. Without it the change is unconditional. Anything but `*` or a list of '
    f"entity-tags (RFC 9110 8.8.3), or over {IF_MATCH_MAX_LENGTH} characters, is a 400."
)

IfMatchHeader = Annotated[
    str | None,
    # A plain string (absent is None here; a header has no null): Litestar would also copy a
    # description into the schema, so ``DocumentsIfMatch`` describes the parameter instead.
    HeaderParameter(name="If-Match", schema_extra={"type": "string", "oneOf": None}),
]
"""The ``If-Match`` parameter of a conditional PATCH or DELETE (its route takes
``operation_class=DocumentsIfMatch``); pass its value to ``parse_if_match``."""


IF_NONE_MATCH_CHANGE_DESCRIPTION = (
    'Apply only if the resource is at none of these versions (weak comparison: `W/"7"` names version '
    "7 too), or, for `*`, only if it does not exist: otherwise 412 `precondition-failed` and nothing "
    "changes. Malformed or over "
    f"{IF_MATCH_MAX_LENGTH} characters: 400."
)

IF_UNMODIFIED_SINCE_DESCRIPTION = (
    "An HTTP date: apply only if the resource's `Last-Modified` is not after it (else 412 "
    "`precondition-failed`). Evaluated only without `If-Match`; not a date: ignored."
)

IfUnmodifiedSinceHeader = Annotated[
    str | None,
    HeaderParameter(name="If-Unmodified-Since", schema_extra={"type": "string", "oneOf": None}),
]
"""The ``If-Unmodified-Since`` parameter of a change to a resource with a ``Last-Modified`` (a file)."""


@dataclass
class DocumentsIfMatch(Operation):
    """The operations of changes that take ``IfMatchHeader`` (and ``IfNoneMatchHeader``,
    ``IfUnmodifiedSinceHeader``): each parameter gets its description beside a schema that stays a
    plain ``{"type": "string"}`` (see the module's docstring)."""

    def __post_init__(self) -> None:
        described = {
            "If-Match": IF_MATCH_DESCRIPTION,
            "If-None-Match": IF_NONE_MATCH_CHANGE_DESCRIPTION,
            "If-Unmodified-Since": IF_UNMODIFIED_SINCE_DESCRIPTION,
        }
        for parameter in self.parameters or ():
            if isinstance(parameter, Parameter) and parameter.name in described:
                parameter.description = described[parameter.name]


ETAG_FORMS = '`"<version>"` (`"<version>-br"` or `"<version>-gzip"` when the answer is compressed)'
"""How a versioned resource's ``ETag`` is written, for the descriptions of its routes and fields."""

ETAG_HEADER = ResponseHeader(
    name="ETag",
    value='"1"',  # documentation only: gives the header its schema (a string)
    documentation_only=True,
    description='The resource\'s version as a strong entity-tag (`"7"`; `"7-br"` or `"7-gzip"` when the '
    "answer is compressed, since a strong tag differs between content codings): send it back in "
    "`If-Match` to change the resource only if nobody else has changed it since.",
)
"""``response_headers=[ETAG_HEADER]`` on a route whose answer carries ``{"ETag": etag(version)}``."""


class PreconditionFailedError(AppError):
    status = 412
    slug = "precondition-failed"
    title = "Precondition failed"


def precondition_failed() -> dict[int, ResponseSpec]:
    """``responses=`` entry of a route that honours ``If-Match`` (merge with ``problems(...)``)."""
    return {
        412: ResponseSpec(
            data_container=Problem,
            description="A condition does not hold (`If-Match` names none of the resource's current "
            "versions, `If-None-Match` names it, or it was modified after `If-Unmodified-Since`): nothing "
            "was changed (read it again for its `ETag`)",
            media_type=PROBLEM_MEDIA_TYPE,
        )
    }


def etag(version: int) -> str:
    """The strong entity-tag of a resource at ``version``."""
    return f'"{version}"'


def names_version(tags: frozenset[str], etag: str) -> bool:
    """Whether ``tags`` (strong entity-tags as a request lists them) name the version whose ``ETag`` is
    ``etag``: ``etag`` itself or a coded form of it, as the compression layer sends it (``"7-br"``).
    The forms of the current tag are looked for, never a suffix cut from a sent tag: a tag whose own
    text ended in ``-br`` would be misread that way (none the app makes does: ``coded_etag``)."""
    return not tags.isdisjoint(forms_of(etag))


def forms_of(etag: str) -> frozenset[str]:
    """``etag`` and its coded forms, as the compression layer may send it (``"7"``, ``"7-br"``, ...)."""
    return frozenset((etag, *(coded_etag(etag, coding) for coding in CODINGS)))


class IfMatch(msgspec.Struct, frozen=True):
    """A parsed ``If-Match``: ``any`` for ``*``, else the strong entity-tags it lists (with their
    quotes, as ``etag`` writes them); weak ones are left out, since they never match."""

    any: bool = False
    tags: frozenset[str] = frozenset()

    def matches(self, version: int) -> bool:
        return self.any or names_version(self.tags, etag(version))

    def require_tag(self, current: str) -> None:
        """412 unless it is ``*`` or lists ``current``, a resource's strong entity-tag that is not a
        version (a file's digest: its answers are never compressed, so it has one form)."""
        if not (self.any or current in self.tags):
            raise PreconditionFailedError(f"The resource's ETag is {current}, which If-Match does not name.")

    def require(self, version: int) -> None:
        """412 unless the resource, at ``version`` (read under the lock its change holds), matches."""
        if not self.matches(version):
            raise PreconditionFailedError(
                f"The resource is at version {etag(version)}, which If-Match does not name: "
                "it was changed since it was read."
            )


def parse_if_match(value: str | None) -> IfMatch | None:
    """``If-Match`` as the route received it (its first header line), None when absent; a 400
    naming the header when it is not ``*`` or a list of entity-tags."""
    if value is None:
        return None
    if len(value) > IF_MATCH_MAX_LENGTH or IF_MATCH_SYNTAX.fullmatch(value) is None:
        raise _malformed("If-Match")
    if value == "*":
        return IfMatch(any=True)
    return IfMatch(tags=frozenset(tag for weak, tag in _TAGS.findall(value) if not weak))


IF_NONE_MATCH_DESCRIPTION = (
    'The `ETag`s of copies the client holds, separated by commas (weak comparison: `W/"7"` names '
    "version 7 too), or `*`: when one names the resource's current version, the answer is 304 Not "
    "Modified without a body, its `ETag` the one named. Malformed or over "
    f"{IF_MATCH_MAX_LENGTH} characters: ignored (the whole answer)."
)

IF_MATCH_READ_DESCRIPTION = (
    "Answer only if the resource is still at one of these versions (strong comparison), or, for `*`, "
    "exists: otherwise 412 `precondition-failed`. Anything but `*` or a list of entity-tags: 400."
)

IfNoneMatchHeader = Annotated[
    str | None,
    HeaderParameter(name="If-None-Match", schema_extra={"type": "string", "oneOf": None}),
]
"""The ``If-None-Match`` parameter of a read that answers with ``answer_unless_held`` (its route takes
``operation_class=DocumentsConditionalRead`` and ``responses`` merged with ``not_modified()``), or of
a change (``parse_preconditions``; ``DocumentsIfMatch`` describes it)."""


def not_modified() -> dict[int, ResponseSpec]:
    """``responses=`` entry of a read that honours ``If-None-Match`` (merge with ``problems(...)``)."""
    return {
        HTTP_304_NOT_MODIFIED: ResponseSpec(
            data_container=None,
            description="`If-None-Match` names the current version: the client's copy is current (no body)",
        )
    }


@dataclass
class DocumentsConditionalRead(Operation):
    """The operations of reads that take ``IfNoneMatchHeader``: the parameter's description (beside a
    plain string schema, as for ``If-Match``) and the 304's ``ETag``."""

    def __post_init__(self) -> None:
        described = {"If-None-Match": IF_NONE_MATCH_DESCRIPTION, "If-Match": IF_MATCH_READ_DESCRIPTION}
        for parameter in self.parameters or ():
            if isinstance(parameter, Parameter) and parameter.name in described:
                parameter.description = described[parameter.name]
        unchanged = (self.responses or {}).get(str(HTTP_304_NOT_MODIFIED))
        if isinstance(unchanged, OpenAPIResponse):
            unchanged.headers = {
                ETAG_HEADER.name: OpenAPIHeader(
                    schema=Schema(type=OpenAPIType.STRING),
                    description="The entity-tag of `If-None-Match` that named the current version",
                )
            }


class IfNoneMatch(msgspec.Struct, frozen=True):
    """A parsed ``If-None-Match``: ``any`` for ``*``, else the entity-tags it lists in their strong
    form (quotes kept, ``W/`` dropped: its comparison is weak, RFC 9110 13.1.2), in order."""

    any: bool = False
    tags: tuple[str, ...] = ()

    def names(self, forms: frozenset[str]) -> bool:
        """Whether it names the resource whose entity-tag has these ``forms`` (``*``: any that exists)."""
        return self.any or not forms.isdisjoint(self.tags)


def parse_if_none_match(value: str | None) -> IfNoneMatch | None:
    """``If-None-Match`` as the route received it; None when absent, and also when malformed or over
    ``IF_MATCH_MAX_LENGTH`` (it has ``If-Match``'s grammar): it is then ignored, since the whole
    answer is always correct (RFC 9110 13.1.2 leaves both to the server)."""
    if value is None or len(value) > IF_MATCH_MAX_LENGTH or IF_MATCH_SYNTAX.fullmatch(value) is None:
        return None
    if value == "*":
        return IfNoneMatch(any=True)
    return IfNoneMatch(tags=tuple(tag for _, tag in _TAGS.findall(value)))


class Preconditions(msgspec.Struct, frozen=True):
    """A change's conditions, in RFC 9110 13.2.2's order, for the service to evaluate under the row
    lock its change holds: ``If-Match`` (strong comparison), then ``If-None-Match`` (weak: ``*``, or a
    tag naming the current version, makes it false), and for a resource with a modification date and
    no ``If-Match``, ``If-Unmodified-Since``. Any of them false: 412, nothing changed (13.1.2: an
    unsafe method never answers 304)."""

    if_match: IfMatch | None = None
    if_none_match: IfNoneMatch | None = None
    unmodified_since: float | None = None
    """``If-Unmodified-Since`` in seconds since the epoch (None: absent, or not an HTTP date)."""

    def require(self, version: int) -> None:
        """412 unless the resource, at ``version``, meets every condition."""
        if self.if_match is not None:
            self.if_match.require(version)
        if self.if_none_match is not None and self.if_none_match.names(forms_of(etag(version))):
            raise PreconditionFailedError(
                f"If-None-Match names the resource's current version {etag(version)}: nothing was changed."
            )

    def require_tag(self, current: str, modified_at: float | None) -> None:
        """``require`` for a resource whose strong entity-tag is not a version (a file's digest: one
        form, its answers are never compressed) and which was last modified at ``modified_at`` (its
        ``Last-Modified``; None: unknown, ``If-Unmodified-Since`` is then ignored, 13.1.4)."""
        if self.if_match is not None:
            self.if_match.require_tag(current)
        elif (
            self.unmodified_since is not None
            and modified_at is not None
            and int(modified_at) > self.unmodified_since
        ):
            raise PreconditionFailedError("The resource was modified after If-Unmodified-Since.")
        if self.if_none_match is not None and self.if_none_match.names(frozenset((current,))):
            raise PreconditionFailedError(
                f"If-None-Match names the resource's current ETag {current}: nothing was changed."
            )


def parse_preconditions(
    if_match: str | None, if_none_match: str | None = None, if_unmodified_since: str | None = None
) -> Preconditions | None:
    """The conditions of a change as its route received them (first header lines), None when it sent
    none. A malformed ``If-Match`` or ``If-None-Match`` is a 400 naming its header: ignoring one would
    apply a change its client made conditional. ``If-Unmodified-Since`` that is not an HTTP date is
    ignored (13.1.4)."""
    if if_match is None and if_none_match is None and if_unmodified_since is None:
        return None
    return Preconditions(
        if_match=parse_if_match(if_match),
        if_none_match=_parse_strictly(if_none_match),
        unmodified_since=http_date(if_unmodified_since) if if_unmodified_since is not None else None,
    )


def _parse_strictly(if_none_match: str | None) -> IfNoneMatch | None:
    if if_none_match is None:
        return None
    parsed = parse_if_none_match(if_none_match)
    if parsed is None:
        raise _malformed("If-None-Match")
    return parsed


def _malformed(header: str) -> InvalidFieldsError:
    """The 400 of a condition header that is not ``*`` or a list of entity-tags."""
    message = (
        'Expected `*` or a comma-separated list of entity-tags ("…" or W/"…"), '
        f"at most {IF_MATCH_MAX_LENGTH} characters"
    )
    return InvalidFieldsError([FieldError(field=f"header.{header}", message=message)])


def require_if_match(if_match: str | None, version: int) -> None:
    """A versioned read's ``If-Match`` (13.1.1): a 412 when it names none of the resource's current
    versions, a 400 when malformed. Every route that answers an ``ETag`` takes it: the route layer
    refuses a tag sent to a route that does not (``app.core.gate``: a resource without versions)."""
    if (condition := parse_if_match(if_match)) is not None:
        condition.require(version)


def require_match(conditions: Preconditions | None, version: int) -> None:
    """``conditions.require(version)``; no condition (None) always holds."""
    if conditions is not None:
        conditions.require(version)


def http_date(value: str) -> float | None:
    """An HTTP date (RFC 9110 5.6.7's three forms, read by ``email.utils``) in seconds since the
    epoch, or None when it is not one."""
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if date.tzinfo is None:  # "-0000", or asctime's form: UTC, as HTTP dates are
        date = date.replace(tzinfo=UTC)
    return date.timestamp()


PREFERRED_CODINGS = ("br", "gzip")
"""The compression layer's order: brotli, else gzip (``app.main``: ``brotli_gzip_fallback``)."""


def held_copy(if_none_match: str | None, version: int, accept_encoding: str = "") -> str | None:
    """The entity-tag of ``if_none_match`` that names the resource at ``version`` (weak comparison),
    in its strong form: the ``ETag`` of the 304, so that a cache finds the copy it revalidated (``"7-br"``
    for a copy it received compressed). Of several that name it (a cache revalidating its variants at
    once), the one of the coding this request would get (``accept_encoding``: brotli, else gzip, else
    none), else the first. None when it names none, or is to be ignored (``parse_if_none_match``)."""
    condition = parse_if_none_match(if_none_match)
    if condition is None:
        return None
    current = etag(version)
    if condition.any:
        return current
    forms = forms_of(current)
    named = [tag for tag in condition.tags if tag in forms]
    if not named:
        return None
    wanted = next(
        (coded_etag(current, coding) for coding in PREFERRED_CODINGS if accepts(coding, accept_encoding)),
        current,
    )
    return wanted if wanted in named else named[0]


T = TypeVar("T")


REVALIDATED = "private, no-cache"
"""A versioned read's ``Cache-Control``: kept by the caller only, and checked with ``If-None-Match``."""


def answer_unless_held(
    content: T,
    version: int,
    if_none_match: str | None,
    accept_encoding: str = "",
    *,
    if_match: str | None = None,
) -> Response[T]:
    """A read's answer with the resource's ``ETag``; or 304 without a body when ``If-None-Match`` names
    the current version (typed as the answer it replaces, so the route documents its 200's body), with
    the ``Vary`` its 200 carries when compressed (RFC 9110 15.4.5). Both are ``private, no-cache``: the
    caller's own cache may keep the copy, to be asked about again each time (the pipeline's default,
    ``no-store``, would leave nothing to ask about). ``If-Match`` comes first (13.2.2): naming none of
    the current versions, it is a 412 (a client resuming a copy refuses a changed one)."""
    require_if_match(if_match, version)
    if (held := held_copy(if_none_match, version, accept_encoding)) is not None:
        headers = {"ETag": held, "Vary": "Accept-Encoding", "Cache-Control": REVALIDATED}
        return cast("Response[T]", Response(None, status_code=HTTP_304_NOT_MODIFIED, headers=headers))
    return Response(content, headers={"ETag": etag(version), "Cache-Control": REVALIDATED})
