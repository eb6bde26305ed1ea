"""A client that goes away before its body is complete is no server fault, on every route that reads
a body: a 400 ``client-disconnected`` (nobody reads it; the access log and metrics count it), no
``unhandled_error`` line and no error-monitoring event. It was Litestar's 500 ("client disconnected
prematurely"): logged at error level and captured as a new error group, which alerted on Telegram,
for any anonymous client that sent half a login (found by fuzzing: login, register, page views,
project creation, the webhook, the dashboard's sign-in). ``app.core.routing.StrictJSONRequest`` now
reads every body from ``receive`` itself and names the disconnection there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from tests.factories import (
    Served,
    drive_asgi,
    http_scope,
    make_site,
    make_user,
    monitoring_spy,
    serve_in_loop,
)


@pytest.fixture
async def served(settings: Settings, db: AsyncConnection[Any], valkey: Valkey) -> AsyncIterator[Served]:
    async with serve_in_loop(settings) as served:
        yield served


async def send_half(app: Litestar, path: str, body: bytes, token: str | None = None) -> tuple[int, Any]:
    """POST the first half of ``body`` (its whole length declared), then disconnect: the answer."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = http_scope("POST", path, token or "", *headers)
    if token is None:
        scope["headers"] = [pair for pair in scope["headers"] if pair[0] != b"authorization"]
    half = {"type": "http.request", "body": body[: len(body) // 2], "more_body": True}
    status, answer, _ = await drive_asgi(app, scope, [half])
    return status, answer


async def test_a_body_cut_short_is_the_clients_400_on_every_route(
    served: Served,
    db: AsyncConnection[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    captured = monitoring_spy(served.app, monkeypatch)
    member = await make_user(db, served.app)
    site = await make_site(db, member)
    cases = [
        ("/api/auth/login", {"email": "nobody@example.com", "password": "a long password 123"}, None),
        ("/api/page-views", {"site_key": site.ingest_key, "url": "https://example.com/a"}, None),
        (
            "/api/page-views/batch",
            {"views": [{"site_key": site.ingest_key, "url": "https://example.com/b"}]},
            None,
        ),
        ("/api/projects", {"name": "Half a project", "description": "never complete"}, member.token),
    ]
    with caplog.at_level(logging.INFO, logger="app.errors"):
        for path, body, token in cases:
            status, answer = await send_half(served.app, path, json.dumps(body).encode(), token)
            assert (status, answer["type"]) == (400, "/problems/client-disconnected"), (path, answer)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    assert captured == []
