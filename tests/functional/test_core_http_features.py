"""Transport features configured in create_app: compression, CORS, and the framing of request bodies."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.config import Settings
from app.main import create_app
from tests.factories import assert_problem, drive_asgi, http_scope, make_task, make_team, serve_in_loop


async def test_large_responses_are_compressed_with_brotli_or_gzip(client: AsyncTestClient[Litestar]) -> None:
    brotli = await client.get("/schema/openapi.json", headers={"Accept-Encoding": "br"})
    assert brotli.headers["content-encoding"] == "br"
    gzip = await client.get("/schema/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert gzip.headers["content-encoding"] == "gzip"
    assert brotli.json() == gzip.json()
    plain = await client.get("/schema/openapi.json", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    no_brotli = await client.get("/schema/openapi.json", headers={"Accept-Encoding": "gzip, br;q=0"})
    assert no_brotli.headers["content-encoding"] == "gzip"  # q=0 refuses (RFC 9110 12.5.3)
    refused = await client.get("/schema/openapi.json", headers={"Accept-Encoding": "br;q=0, gzip;q=0"})
    assert "content-encoding" not in refused.headers


async def test_an_api_answer_is_compressed_with_its_rate_limit_headers(
    client: AsyncTestClient[Litestar], app: Litestar, db: AsyncConnection[Any]
) -> None:
    """Accept-Encoding sent as two header lines counts as one list (RFC 9110 5.3)."""
    team = await make_team(db, app)
    for number in range(30):
        await make_task(db, team.project, team.owner, title=f"Task number {number} of the compressed page")
    path = f"/api/projects/{team.project}/tasks"
    plain = await client.get(path, headers=team.viewer.headers)
    headers = [*team.viewer.headers.items(), ("Accept-Encoding", "identity"), ("Accept-Encoding", "gzip")]
    compressed = await client.get(path, headers=headers)
    assert compressed.status_code == plain.status_code == 200
    assert compressed.headers["content-encoding"] == "gzip"
    assert int(compressed.headers["content-length"]) < len(plain.content)
    assert compressed.headers["ratelimit-policy"] == plain.headers["ratelimit-policy"]
    assert "ratelimit" in compressed.headers
    assert compressed.json() == plain.json()


async def test_small_responses_are_not_compressed(client: AsyncTestClient[Litestar]) -> None:
    live = await client.get("/health/live", headers={"Accept-Encoding": "br, gzip"})
    assert "content-encoding" not in live.headers


async def test_cors_answers_configured_origins_only(settings: Settings) -> None:
    app = create_app(msgspec.structs.replace(settings, cors_origins=["https://app.example.com"]))
    async with AsyncTestClient(app=app) as client:
        preflight = {"Access-Control-Request-Method": "GET"}
        allowed = await client.options(
            "/health/live", headers={"Origin": "https://app.example.com", **preflight}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        other = await client.get("/health/live", headers={"Origin": "https://evil.example.net"})
        assert "access-control-allow-origin" not in other.headers
        actual = await client.get("/health/live", headers={"Origin": "https://app.example.com"})
        exposed = {
            name.strip().lower() for name in actual.headers["access-control-expose-headers"].split(",")
        }
        # If-Match needs the ETag; a client told to wait (429, the in-flight 409) needs Retry-After and the
        # rate-limit headers; an idempotent retry needs to know it was replayed; a download its file
        # name and a 206 its range; a bug report the request id; a 401 names its challenge and a 415
        # the types to send. None is CORS-safelisted.
        assert {
            "etag",
            "retry-after",
            "ratelimit",
            "ratelimit-policy",
            "idempotent-replayed",
            "location",
            "content-disposition",
            "content-range",
            "accept-ranges",
            "x-request-id",
            "www-authenticate",
            "accept-patch",
            "accept-post",
        } <= exposed


async def test_without_configured_origins_there_are_no_cors_headers(
    client: AsyncTestClient[Litestar],
) -> None:
    response = await client.get("/health/live", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in response.headers


async def test_a_body_framed_otherwise_than_by_chunks_or_a_length_is_refused(
    client: AsyncTestClient[Litestar], app: Litestar, db: AsyncConnection[Any]
) -> None:
    """The server let through what RFC 9112 calls an error (6.1, 6.3): a transfer coding other than
    ``chunked`` (granian dechunked ``gzip, chunked`` and handed on the gzip bytes) and a
    ``Transfer-Encoding`` beside a ``Content-Length``; each is a 400 that closes the connection."""
    team = await make_team(db, app)
    before = await (await db.execute("select count(*) from projects")).fetchone()
    body = b'{"name": "Framed"}'
    for framing in (
        {"Transfer-Encoding": "gzip, chunked"},
        {"Transfer-Encoding": "chunked", "Content-Length": str(len(body))},
    ):
        headers = {**team.editor.headers, "Content-Type": "application/json", **framing}
        refused = await client.post("/api/projects", content=body, headers=headers)
        assert_problem(refused, 400, "bad-request")
        assert refused.headers["connection"] == "close"
    assert await (await db.execute("select count(*) from projects")).fetchone() == before


async def test_framing_split_over_header_lines_is_read_as_one_list(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """Review diffreview37: ``Transfer-Encoding: gzip`` then ``Transfer-Encoding: chunked`` is
    ``gzip, chunked`` (RFC 9110 5.3), which granian dechunks all the same: the last line alone was
    read, and the project was created from the gzip body's bytes. Two ``Content-Length`` lines, and a
    ``Content-Encoding`` split so, are refused too. (The raw ASGI call: httpx joins repeated lines.)"""
    body = b'{"name": "Split"}'
    json_type = (b"content-type", b"application/json")
    async with serve_in_loop(settings) as served:
        team = await make_team(db, served.app)
        token = team.editor.headers["Authorization"].removeprefix("Bearer ")
        for lines, status in (
            ([(b"transfer-encoding", b"gzip"), (b"transfer-encoding", b"chunked")], 400),
            ([(b"content-length", str(len(body)).encode())] * 2, 400),
            ([(b"content-encoding", b"gzip"), (b"content-encoding", b"identity")], 415),
        ):
            scope = http_scope("POST", "/api/projects", token, json_type, *lines)
            answered, problem, _ = await drive_asgi(
                served.app, scope, [{"type": "http.request", "body": body}]
            )
            assert answered == status, (lines, problem)
    assert await (await db.execute("select count(*) from projects where name = 'Split'")).fetchone() == (0,)
