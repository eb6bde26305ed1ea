"""Request context over HTTP: the ``x-request-id`` header and the one access-log line per request."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.core.middleware import DRAIN_FROM
from tests.factories import make_user

Client = AsyncTestClient[Litestar]

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


async def _live(client: Client, **headers: str) -> Any:
    return await client.get("/health/live", headers=headers)


async def _not_found(client: Client, **headers: str) -> Any:
    return await client.get("/no/such/path", headers=headers)


async def _wrong_method(client: Client, **headers: str) -> Any:
    return await client.post("/health/live", headers=headers)


@pytest.mark.parametrize(
    ("call", "status"),
    [(_live, 200), (_not_found, 404), (_wrong_method, 405)],
    ids=["live", "not-found", "method-not-allowed"],
)
async def test_every_response_carries_a_generated_request_id(client: Client, call: Any, status: int) -> None:
    response = await call(client)

    assert response.status_code == status
    assert HEX_ID.match(response.headers["x-request-id"])
    assert len(response.headers.get_list("x-request-id")) == 1


@pytest.mark.parametrize(
    ("call", "status"),
    [(_live, 200), (_not_found, 404), (_wrong_method, 405)],
    ids=["live", "not-found", "method-not-allowed"],
)
async def test_a_valid_incoming_request_id_is_echoed_unchanged(
    client: Client, call: Any, status: int
) -> None:
    response = await call(client, **{"X-Request-ID": "abc-123"})

    assert response.status_code == status
    assert response.headers["x-request-id"] == "abc-123"


async def test_the_request_id_appears_in_the_problem_body(client: Client) -> None:
    response = await _not_found(client, **{"X-Request-ID": "abc-123"})

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["request_id"] == "abc-123"
    assert body["status"] == 404


async def test_a_generated_request_id_also_appears_in_the_problem_body(client: Client) -> None:
    response = await _wrong_method(client)

    assert response.status_code == 405
    assert response.json()["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "incoming",
    ["abc 123", "x" * 129, "y" * 200, "id;drop", "ünïcode"],
    ids=["space", "129-chars", "200-chars", "semicolon", "non-ascii"],
)
async def test_an_invalid_incoming_request_id_is_replaced(client: Client, incoming: str) -> None:
    response = await client.get("/no/such/path", headers={b"X-Request-ID": incoming.encode("utf-8")})

    assert response.headers["x-request-id"] != incoming
    assert HEX_ID.match(response.headers["x-request-id"])
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_the_longest_allowed_request_id_is_kept(client: Client) -> None:
    incoming = "a1._:-" * 21 + "zz"  # 128 characters from the allowed alphabet

    response = await _live(client, **{"X-Request-ID": incoming})

    assert len(incoming) == 128
    assert response.headers["x-request-id"] == incoming


async def test_requests_without_an_id_get_different_ids(client: Client) -> None:
    first = await _live(client)
    second = await _live(client)

    assert first.headers["x-request-id"] != second.headers["x-request-id"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        # structlog hands the stdlib handler its event dict (contextvars already merged) as `msg`.
        assert isinstance(record.msg, dict)
        self.entries.append({**record.msg, "log_level": record.levelname.lower()})


@pytest.fixture
def access_log() -> Iterator[list[dict[str, Any]]]:
    """What the access logger emits, read at the stdlib boundary (independent of structlog caching)."""
    handler = _Records()
    logger = logging.getLogger("app.access")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler.entries
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


async def test_each_request_is_logged_once_with_its_outcome(
    client: Client, access_log: list[dict[str, Any]]
) -> None:
    response = await client.get("/no/such/path", headers={"X-Request-ID": "log-check-1"})

    requests = [entry for entry in access_log if entry["event"] == "request"]
    assert len(requests) == 1, access_log
    entry = requests[0]
    assert entry["method"] == "GET"
    assert entry["path"] == "/no/such/path"
    assert entry["status"] == response.status_code == 404
    assert isinstance(entry["duration_ms"], float)
    assert entry["duration_ms"] >= 0
    assert entry["client_ip"] == "testclient"
    assert entry["log_level"] == "info"
    assert entry["request_id"] == "log-check-1"


async def test_a_signed_in_request_is_logged_with_its_caller_and_every_one_with_the_pid(
    client: Client, app: Litestar, db: AsyncConnection[Any], access_log: list[dict[str, Any]]
) -> None:
    """Which user, which granian worker: neither was in the access log (the operability reviewer)."""
    user = await make_user(db, app)
    await client.get("/api/projects", headers=user.headers)
    await client.get("/health/live")

    signed_in, anonymous = [entry for entry in access_log if entry["event"] == "request"]
    assert (signed_in["path"], signed_in["user_id"]) == ("/api/projects", user.id)
    assert "user_id" not in anonymous
    assert signed_in["pid"] == anonymous["pid"] == os.getpid()


async def test_the_access_log_records_the_final_status_of_each_request(
    client: Client, access_log: list[dict[str, Any]]
) -> None:
    await _live(client)
    await _wrong_method(client)

    requests = [entry for entry in access_log if entry["event"] == "request"]
    assert [(e["method"], e["path"], e["status"]) for e in requests] == [
        ("GET", "/health/live", 200),
        ("POST", "/health/live", 405),
    ]


async def test_a_body_in_a_content_coding_is_refused_with_415(client: Client) -> None:
    """The app decodes no request coding (RFC 9110 15.5.16): a gzip body was read as malformed JSON
    (a 400 naming the body), and a plain one labelled ``br`` was taken as plain. Uncoded (no header,
    or ``identity``) is read as before; a route that reads no body does not mind the header. A body
    large enough to be drained after the answer is drained as it came (not through the refusal)."""
    body = json.dumps({"email": "nobody@example.com", "password": "a long password 123"}).encode()
    large = b" " * (DRAIN_FROM * 2) + body
    for coding, sent in (
        ("gzip", gzip.compress(body)),
        ("br", body),
        ("GZIP, identity", body),
        ("gzip", large),
    ):
        answer = await client.post(
            "/api/auth/login",
            content=sent,
            headers={"content-type": "application/json", "content-encoding": coding},
        )
        assert answer.status_code == 415, (coding, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] == "/problems/unsupported-media-type"
        assert answer.headers["accept-encoding"] == "identity"
    for headers in ({}, {"content-encoding": "identity"}):
        answer = await client.post(
            "/api/auth/login", content=body, headers={"content-type": "application/json", **headers}
        )
        assert answer.status_code == 401, answer.text  # read: no such account
    assert (await client.get("/health/live", headers={"content-encoding": "gzip"})).status_code == 200
