"""Idempotency keys: a creating request retried after a lost answer creates its resource once.

A client sends ``Idempotency-Key`` (the IETF draft "The Idempotency-Key HTTP Header Field", as
Stripe's API does) with a creation; the key is the user's (another user's same key is another key).

1. The key is claimed in its own committed transaction, as a lease of ``CLAIM_LEASE_S``, with the
   request's fingerprint (``route_fingerprint``: the route, its path parameters and the body). A
   concurrent duplicate then meets the unfinished claim (409 ``idempotency-key-in-flight``), a later
   one the stored answer (replayed with ``Idempotent-Replayed: true``), and another request under the
   same key (another body, or another route) is refused (422 ``idempotency-key-reused``).
2. The creating service completes the claim **in the transaction that creates the resource**
   (``IdempotencyClaim.complete``): the created rows and the stored answer commit together, so a
   crash never leaves one without the other. Completion holds only while this request's own lease
   does: a request that outlived it (a retry has claimed the key since) is rolled back, so a retry
   after the lease can never create the resource a second time.
3. A failure (any exception, a 404 or 403 from the service included) releases the claim, so a
   corrected retry under the same key is processed. A request that died without releasing (a killed
   worker, a lost database) holds its key for the lease, not a day.
4. A replay is the stored answer as it was, as Stripe's: access is not checked again. A member
   removed from the project since (or the project deleted) gets the answer already given, nothing
   it did not have, while the resource itself answers 404.

The answers are kept 24 hours; a daily cron of the platform's ``idempotency`` module purges what
expired (``Idempotency.purge_expired``).
Handlers use ``Idempotency.respond`` (one call); a service method that creates takes
``claim: IdempotencyClaim[Row] | None = None`` and calls ``await claim.complete(uow, row,
resource_id=row.id)`` inside its transaction when given one.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIHeader, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import HeaderParameter
from litestar.status_codes import HTTP_201_CREATED
from saq.types import Context

from app.core.db import Database, UnitOfWork
from app.core.errors import ConflictError, UnprocessableError
from app.core.modules import Cron, Job, Module
from app.core.preconditions import ETAG_HEADER, etag
from app.core.services import services_of
from app.core.types import whole
from app.db import idempotency as queries

log = structlog.get_logger("app.idempotency")

T = TypeVar("T")

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
CLAIM_LEASE_S = 60.0
"""How long an unfinished request holds its key: far longer than a creation takes."""
CLAIM_ATTEMPTS = 3
"""Claims tried when the claim met is released before it is read (each a round trip)."""
PURGE_CHUNK = 10_000
"""Keys deleted per statement (and transaction) by the purge."""
CLAIM_PURGE_GRACE_S = 3600.0
"""How long past its lease an unfinished claim is kept by the purge: its request may still be running
(held up by a lock) and may complete it if no retry claimed the key meanwhile."""


class IdempotencyKeyReusedError(UnprocessableError):
    slug = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class IdempotencyKeyInFlightError(ConflictError):
    slug = "idempotency-key-in-flight"
    title = "A request with this idempotency key is still being processed"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})  # a creation takes milliseconds


def idempotency_key_header(description: str) -> HeaderParameter:
    """The one declaration of the header's rules (printable ASCII, 1 to 255 characters), with the
    route's own description; ``Annotated[str, ...]`` where it is required, ``str | None`` where not."""
    return HeaderParameter(
        name=KEY_HEADER,
        min_length=1,
        max_length=255,
        pattern=whole(r"[\x20-\x7e]+"),
        description=description,
        # the schema's example, not the parameter's: Swagger UI would send that one key every time
        schema_extra={"examples": ["5f0c6d7e-3b1a-4c2e-9f4d-8a7b6c5d4e3f"]},
    )


OptionalIdempotencyKey = Annotated[
    str | None,
    idempotency_key_header(
        "Optional. Printable ASCII, unique per intended creation (a UUID, say): a retry with the same key "
        "and body replays the first answer instead of creating again"
    ),
]
"""A handler parameter ``idempotency_key: OptionalIdempotencyKey = None``."""

_REPLAYED_DESCRIPTION = (
    "Sent when the request carried an `Idempotency-Key`: `true` when this is the stored answer of an "
    "earlier request with the same key and body (nothing was created again), else `false`."
)


@dataclass
class DocumentsIdempotency(Operation):
    """``operation_class=`` of a route answered by ``Idempotency.respond`` (or carrying its header):
    documents ``Idempotent-Replayed`` on its success answers (``response_headers`` would not reach a
    success answer declared with a ``ResponseSpec``, which such a route needs: it returns bytes)."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if status.startswith("2") and isinstance(response, OpenAPIResponse):
                response.headers = {
                    **(response.headers or {}),
                    REPLAYED_HEADER: OpenAPIHeader(
                        schema=Schema(type=OpenAPIType.STRING, enum=["true", "false"]),
                        description=_REPLAYED_DESCRIPTION,
                    ),
                }


LOCATION_DESCRIPTION = "The created resource's path (where it is read, changed or deleted), a replay's too"

LOCATION_HEADER = ResponseHeader(
    name="Location",
    value="/",  # documentation only: gives the header its schema (a string)
    documentation_only=True,
    description="The created resource's path (where it is changed or deleted)",
)
"""``response_headers=[LOCATION_HEADER]`` on a creation without an idempotency key whose 201 names
what it created (``Response(..., headers={"Location": ...})``)."""


@dataclass
class DocumentsLocatedCreation(DocumentsIdempotency):
    """``DocumentsIdempotency`` for the creation of a resource that has a path of its own: its 201
    documents the ``Location`` that ``at_location`` sets."""

    def __post_init__(self) -> None:
        super().__post_init__()
        created = (self.responses or {}).get("201")
        if isinstance(created, OpenAPIResponse):
            header = OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description=LOCATION_DESCRIPTION)
            created.headers = {**(created.headers or {}), "Location": header}


@dataclass
class DocumentsVersionedCreation(DocumentsLocatedCreation):
    """``DocumentsLocatedCreation`` for the creation of a resource with a version: its 201 also
    documents the ``ETag`` (as the resource's GET does), which ``with_etag`` sets."""

    def __post_init__(self) -> None:
        super().__post_init__()
        created = (self.responses or {}).get("201")
        if isinstance(created, OpenAPIResponse):
            header = OpenAPIHeader(
                schema=Schema(type=OpenAPIType.STRING), description=ETAG_HEADER.description
            )
            created.headers = {**(created.headers or {}), ETAG_HEADER.name: header}


class _Versioned(msgspec.Struct):
    version: int


class _Identified(msgspec.Struct):
    id: int


def at_location(created: Response[bytes], path: str) -> Response[bytes]:
    """A creation's answer (``Idempotency.respond``'s) with the ``Location`` of what it created:
    ``path`` with the ``{id}`` of its body. Without it the target (the collection) is taken for the
    new resource (RFC 9110 15.3.2); a replay names the same one. Other answers are left alone."""
    if created.status_code == HTTP_201_CREATED:
        identified = msgspec.json.decode(created.content, type=_Identified)
        created.set_header("Location", path.format(id=identified.id))
    return created


def with_etag(created: Response[bytes]) -> Response[bytes]:
    """A creation's answer (``Idempotency.respond``'s) with the ``ETag`` of the version its body shows,
    as a GET answers it: a replay's is the version the resource was created at."""
    created.set_header("ETag", etag(msgspec.json.decode(created.content, type=_Versioned).version))
    return created


IDEMPOTENCY_DESCRIPTION = (
    "Takes an optional `Idempotency-Key` header (kept 24 h per user): a retry with the same key and "
    "body creates nothing and replays the first answer (its status and body) with "
    "`Idempotent-Replayed: true`; the same key with another body or on another route is 422 "
    "`idempotency-key-reused`; a duplicate sent while the first is still being processed is 409 "
    "`idempotency-key-in-flight` with `Retry-After: 1` (a request that never finished holds its key for "
    "at most a minute). "
    "A request that fails (any problem answer) leaves the key free for a corrected retry. Without the "
    "header, every request creates."
)
"""Appended to the description of a route answered by ``Idempotency.respond``."""


def route_fingerprint(request: Request[Any, Any, Any], body: object) -> bytes:
    """What a retry under the same key must repeat: the method and route template (so one key used
    on two routes is a reuse), the path parameters and the decoded body (so a client re-serialising
    the same body, keys in another order or other whitespace, still retries)."""
    route = f"{request.method} {request.scope.get('path_template') or request.url.path}"
    parameters = sorted((name, str(value)) for name, value in request.path_params.items())
    return hashlib.sha256(msgspec.json.encode([route, parameters, body])).digest()


class StoredAnswer(msgspec.Struct, frozen=True):
    """The answer of the request that completed a key, as it is replayed."""

    status_code: int
    body: bytes
    resource_id: int | None


@dataclass(slots=True, eq=False)
class IdempotencyClaim(Generic[T]):
    """A key this request holds (for ``CLAIM_LEASE_S``) until it completes it with what it created.

    ``claimed_until`` identifies the claim (a retry after the lease claims the key anew). ``encode``
    turns what the service created (a row) into the answer's body, ``status_code`` is the answer's
    status: both are the route's, so a service completes a claim without knowing HTTP.
    """

    user_id: int
    key: str
    claimed_until: datetime
    status_code: int
    encode: Callable[[T], bytes]
    answer: StoredAnswer | None = None

    async def complete(self, uow: UnitOfWork, created: T, *, resource_id: int | None) -> None:
        """Store the answer in ``uow``'s transaction, the one that created ``created``: they commit
        together. Raises ``IdempotencyKeyInFlightError`` (rolling the creation back) when this
        request outlived its lease and a retry claimed the key meanwhile."""
        body = self.encode(created)
        completed = await queries.complete_idempotency_key(
            uow.conn,
            response_status=self.status_code,
            response_body=body,
            resource_id=resource_id,
            user_id=self.user_id,
            key=self.key,
            claimed_until=self.claimed_until,
        )
        if not completed:
            raise IdempotencyKeyInFlightError("This request outlived its claim on the key; retry.")
        self.answer = StoredAnswer(status_code=self.status_code, body=body, resource_id=resource_id)


class Idempotency:
    """The platform's idempotency keys (one per process: the ``idempotency`` module's service;
    handlers receive it as ``idempotency: Idempotent``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(
        self,
        user_id: int,
        key: str,
        fingerprint: bytes,
        *,
        status_code: int,
        encode: Callable[[T], bytes],
    ) -> IdempotencyClaim[T] | StoredAnswer:
        """A new claim on ``key``, or the stored answer of the request that completed it. Raises
        ``IdempotencyKeyReusedError`` for another fingerprint, ``IdempotencyKeyInFlightError`` while
        the key's first request is unfinished. Commits before returning (the claim must be seen by a
        concurrent duplicate). The claim met may be released (its request failed) between the
        insert that met it and the read: then the key is free and is claimed again, up to
        ``CLAIM_ATTEMPTS`` times (another request may take it in between), before answering 409."""
        for _ in range(CLAIM_ATTEMPTS):
            async with self.db.transaction() as uow:
                await queries.delete_expired_idempotency_key(uow.conn, user_id=user_id, key=key)
                claimed_until = await queries.claim_idempotency_key(
                    uow.conn, user_id=user_id, key=key, request_hash=fingerprint, lease_s=CLAIM_LEASE_S
                )
                if claimed_until is not None:
                    return IdempotencyClaim(user_id, key, claimed_until, status_code, encode)
                existing = await queries.get_idempotency_key(uow.conn, user_id=user_id, key=key)
            if existing is not None:
                break
        else:
            raise IdempotencyKeyInFlightError("Retry when the first request has finished.")
        if existing.request_hash != fingerprint:
            raise IdempotencyKeyReusedError(
                "This Idempotency-Key was used with a different request (body or route)."
            )
        if existing.response_status is None or existing.response_body is None:
            raise IdempotencyKeyInFlightError("Retry when the first request has finished.")
        return StoredAnswer(
            status_code=existing.response_status,
            body=existing.response_body,
            resource_id=existing.resource_id,
        )

    @asynccontextmanager
    async def releasing(self, claim: IdempotencyClaim[Any]) -> AsyncIterator[None]:
        """Around the work that completes ``claim``: any exception releases it (unless it was
        completed: then the claim's row holds the answer), and is raised again."""
        try:
            yield
        except BaseException:
            async with self.db.transaction() as uow:
                await queries.release_idempotency_key(
                    uow.conn, user_id=claim.user_id, key=claim.key, claimed_until=claim.claimed_until
                )
            raise

    async def respond(
        self,
        request: Request[Any, Any, Any],
        user_id: int,
        key: str | None,
        body: object,
        create: Callable[[IdempotencyClaim[T] | None], Awaitable[T]],
        present: Callable[[T], object],
    ) -> Response[bytes]:
        """A creating handler's answer, in one call. ``create(claim)`` is the service call (it
        completes the claim in its transaction), ``present(row)`` the wire Struct of what it created,
        ``body`` the decoded request body. Without a key, ``create(None)``: every request creates."""
        status_code = request.route_handler.status_code
        assert status_code is not None

        def encode(created: T) -> bytes:
            return msgspec.json.encode(present(created))

        if key is None:
            return Response(encode(await create(None)), status_code=status_code, media_type=MediaType.JSON)
        claimed = await self.claim(
            user_id, key, route_fingerprint(request, body), status_code=status_code, encode=encode
        )
        if isinstance(claimed, StoredAnswer):
            return replay(claimed, replayed=True)
        async with self.releasing(claimed):
            await create(claimed)
            if claimed.answer is None:
                raise RuntimeError(f"{request.route_handler} created without completing its claim")
        return replay(claimed.answer, replayed=False)

    async def purge_expired(self, chunk_size: int = PURGE_CHUNK) -> int:
        """Delete the keys past their time (answers after 24 hours, claims ``CLAIM_PURGE_GRACE_S``
        after their lease), of every route, ``chunk_size`` per transaction (the daily cron); returns
        how many. An answer completed while the purge ran is kept (``PurgeExpiredIdempotencyKeys``)."""

        async def chunk(uow: UnitOfWork) -> int:
            return await queries.purge_expired_idempotency_keys(
                uow.conn, chunk_size=chunk_size, claim_grace_s=CLAIM_PURGE_GRACE_S
            )

        purged = await self.db.delete_in_chunks(chunk)
        if purged:
            log.info("idempotency_keys_purged", count=purged)
        return purged


Idempotent = NamedDependency[Idempotency]
"""A handler's parameter ``idempotency: Idempotent`` (the registry provides it under that name)."""


def replay(answer: StoredAnswer, *, replayed: bool) -> Response[bytes]:
    """The answer as sent: its status and body, and whether it is a replay."""
    return Response(
        answer.body,
        status_code=answer.status_code,
        media_type=MediaType.JSON,
        headers={REPLAYED_HEADER: "true" if replayed else "false"},
    )


async def purge_idempotency_keys(ctx: Context) -> int:
    """Daily: the keys of every route past their time (``Idempotency.purge_expired``)."""
    return await services_of(ctx)[Idempotency].purge_expired()


idempotency = Module(
    name="idempotency",
    service=lambda services: Idempotency(services.db),
    jobs=[Job(function=purge_idempotency_keys)],
    cron=[Cron(function=purge_idempotency_keys, schedule="47 3 * * *", timeout_s=300)],
)
"""The platform's module for its idempotency keys (as ``app.core.relay.outbox`` is the outbox's): the
``Idempotency`` service (handlers' ``idempotency``, ``services[Idempotency]``) and its daily purge.
Listed before the domains whose creations take a key (``app.modules``)."""
