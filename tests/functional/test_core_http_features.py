"""Transport features configured in create_app: compression and CORS."""

from __future__ import annotations

import msgspec
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.config import Settings
from app.main import create_app


async def test_large_responses_are_compressed_with_brotli_or_gzip(client: AsyncTestClient[Litestar]) -> None:
    brotli = await client.get("/schema/openapi.json", headers={"Accept-Encoding": "br"})
    assert brotli.headers["content-encoding"] == "br"
    gzip = await client.get("/schema/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert gzip.headers["content-encoding"] == "gzip"
    assert brotli.json() == gzip.json()
    plain = await client.get("/schema/openapi.json", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers


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


async def test_without_configured_origins_there_are_no_cors_headers(
    client: AsyncTestClient[Litestar],
) -> None:
    response = await client.get("/health/live", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in response.headers
