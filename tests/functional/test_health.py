"""Health probes, metrics, the OpenAPI document and the SAQ dashboard's gate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.config import Settings
from app.main import create_app
from tests.valkey_control import ControlledValkey


async def test_live(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_each_dependency(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {check["name"] for check in body["checks"]} == {"postgres", "valkey", "queue"}
    assert all(check["ok"] and check["latency_ms"] >= 0 for check in body["checks"])


@pytest.fixture(scope="module")
def controlled_valkey() -> Iterator[ControlledValkey]:
    server = ControlledValkey()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
async def own_valkey_client(
    settings: Settings, controlled_valkey: ControlledValkey
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(
        msgspec.structs.replace(settings, valkey_url=controlled_valkey.url, health_timeout_s=0.5)
    )
    async with AsyncTestClient(app=app) as client:
        yield client


async def test_ready_is_503_naming_valkey_when_it_stops(
    own_valkey_client: AsyncTestClient[Litestar], controlled_valkey: ControlledValkey
) -> None:
    assert (await own_valkey_client.get("/health/ready")).status_code == 200
    controlled_valkey.stop()
    try:
        started = time.monotonic()
        response = await own_valkey_client.get("/health/ready")
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        checks = {check["name"]: check for check in response.json()["checks"]}
        assert checks["valkey"]["ok"] is False
        assert checks["valkey"]["detail"]
        assert checks["postgres"]["ok"] is True
        assert elapsed < 10, "a dead dependency must not hang the probe"
        assert (await own_valkey_client.get("/health/live")).status_code == 200
    finally:
        controlled_valkey.start()
    assert (await own_valkey_client.get("/health/ready")).status_code == 200


async def test_metrics_count_requests(client: AsyncTestClient[Litestar]) -> None:
    await client.get("/health/live")
    await client.get("/no/such/path")
    await client.get("/schema/openapi.json")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert "app_requests_total" in response.text
    assert 'path="/schema/openapi.json"' in response.text


async def test_every_operation_documents_its_problems(client: AsyncTestClient[Litestar]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operations: list[tuple[str, str, dict[str, Any]]] = [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"} and not path.startswith("/probe")
    ]
    assert operations
    for path, method, operation in operations:
        responses = operation["responses"]
        assert "500" in responses, f"{method.upper()} {path} does not document 500"
        for status, spec in responses.items():
            if (int(status) >= 400 and status != "503") or status == "500":
                assert "application/problem+json" in spec["content"], f"{method.upper()} {path} {status}"
        if "requestBody" in operation:
            assert "400" in responses, f"{method.upper()} {path} takes a body but does not document 400"


async def test_openapi_ui_is_served(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.get("/schema")).status_code == 200
    assert (await client.get("/schema/swagger")).status_code == 200


async def test_dashboard_is_closed_to_anonymous_callers(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/saq")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/saq/api/queues")).status_code == 401
