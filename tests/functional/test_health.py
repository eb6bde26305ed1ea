"""Health probes, metrics, the OpenAPI document and the SAQ dashboard's gate."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection

from app.config import Settings
from app.domains.health.services import HealthService
from app.main import create_app
from tests.factories import (
    assert_problem,
    captured_logs,
    client_across_tests,
    make_user,
    serve_in_loop,
    wait_until,
)
from tests.valkey_control import ControlledValkey


async def test_live(client: AsyncTestClient[Litestar]) -> None:
    """One answer object serves every call: nothing of one answer leaks into the next."""
    first, second = [await client.get("/health/live") for _ in range(2)]
    for response in (first, second):
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert response.headers["content-type"] == "application/json"
        assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert len(second.headers.raw) == len(first.headers.raw)


async def test_probes_answer_head_as_get(client: AsyncTestClient[Litestar]) -> None:
    """A load balancer's ``HEAD`` probe got 405 and read the service as down, whatever its state."""
    for path in ("/health/live", "/health/ready"):
        response = await client.head(path)
        assert (response.status_code, response.content) == (200, b""), path
        assert response.headers["content-type"] == "application/json"


async def test_ready_reports_each_dependency(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {check["name"] for check in body["checks"]} == {"postgres", "schema", "valkey", "queue"}
    assert all(check["ok"] and check["latency_ms"] >= 0 for check in body["checks"])
    # Public and unauthenticated: no internals (the queue's worker and job counts) in the answer.
    assert all(check["detail"] is None for check in body["checks"]), body


async def become_ready(client: Any) -> None:
    """``/health/ready`` answers 200 with every check passed (polled: each probe has only
    HEALTH_TIMEOUT_S of 0.5 s, which a loaded machine can miss just after a restart or resume)."""

    async def ready() -> bool:
        answer = await client.get("/health/ready")
        return bool(answer.status_code == 200 and answer.json()["status"] == "ok")

    await wait_until(ready, 10, "/health/ready answers 200, ok")


async def become_unready(client: Any) -> Any:
    """The first ``/health/ready`` answer that is not ``ok`` (polled: a readiness answer is shared by
    the probes of ``HEALTH_READY_SHARED_S``, so a stop shows within that long)."""
    answers: list[Any] = []

    async def unready() -> bool:
        answers.append(await client.get("/health/ready"))
        return bool(answers[-1].json()["status"] != "ok")

    await wait_until(unready, 20, "/health/ready stops answering ok")
    return answers[-1]


@pytest.fixture(scope="module")
async def own_valkey_client(
    settings: Settings, module_controlled_valkey: ControlledValkey
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(
        msgspec.structs.replace(settings, valkey_url=module_controlled_valkey.url, health_timeout_s=0.5)
    )
    async with client_across_tests(app) as client:
        yield client


async def test_ready_stays_200_degraded_naming_valkey_when_it_stops(
    own_valkey_client: AsyncTestClient[Litestar], module_controlled_valkey: ControlledValkey
) -> None:
    """Every replica shares one Valkey and keeps serving without it (limits fail open, caches read
    through, jobs wait in the outbox): a 503 took every replica out of a load balancer for an outage
    the app survives (the operability reviewer). Reported, not required."""
    await become_ready(own_valkey_client)
    module_controlled_valkey.stop()
    try:
        response = await become_unready(own_valkey_client)
        assert (response.status_code, response.json()["status"]) == (200, "degraded")
        checks = {check["name"]: check for check in response.json()["checks"]}
        assert (checks["valkey"]["ok"], checks["valkey"]["required"]) == (False, False)
        assert checks["valkey"]["detail"] == "error", "a stopped server refuses at once (no type named)"
        assert checks["postgres"]["ok"] is True
        assert "retry-after" not in response.headers
        head = await own_valkey_client.head("/health/ready")
        assert head.status_code == 200
        assert (await own_valkey_client.get("/health/live")).status_code == 200
        assert (await own_valkey_client.head("/health/live")).status_code == 200
    finally:
        module_controlled_valkey.start()
    await become_ready(own_valkey_client)


async def test_ready_answers_within_its_deadline_naming_a_hung_valkey(
    settings: Settings, controlled_valkey: ControlledValkey
) -> None:
    """A frozen Valkey accepts connections and never answers. The app's Valkey client would wait
    VALKEY_TIMEOUT_S (60 s here); the probe gives each dependency HEALTH_TIMEOUT_S (0.5 s)."""
    async with serve_in_loop(
        settings, valkey_url=controlled_valkey.url, valkey_timeout_s=60.0, health_timeout_s=0.5
    ) as served:
        await become_ready(served.client)
        with controlled_valkey.paused():
            response = await asyncio.wait_for(become_unready(served.client), 30)
            assert (await asyncio.wait_for(served.client.get("/health/live"), 20)).status_code == 200
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "degraded"
        checks = {check["name"]: check for check in body["checks"]}
        assert checks["valkey"]["ok"] is False
        assert checks["valkey"]["detail"] == "timeout"
        assert 500 <= checks["valkey"]["latency_ms"] < 60_000
        assert checks["queue"]["ok"] is False
        assert checks["postgres"]["ok"] is True
        await become_ready(served.client)  # recovered once it answers


async def test_ready_says_busy_when_every_pooled_connection_is_in_use(settings: Settings) -> None:
    """Review opsrev: an exhausted pool (a lock held on a table, requests piling up behind it) was
    answered as PostgreSQL not answering (``timeout``), and logged so. PostgreSQL answers here; the
    instance's two connections are held."""
    async with serve_in_loop(
        settings, database_pool_min=0, database_pool_max=2, health_timeout_s=0.5, health_ready_shared_s=0.0
    ) as served:
        await become_ready(served.client)
        db = served.app.state.services.db
        async with db.read() as first, db.read() as second:  # as requests hold them
            assert first.conn is not second.conn
            with captured_logs(logging.WARNING) as logs:
                response = await served.client.get("/health/ready")
        assert response.status_code == 503, response.text
        checks = {check["name"]: check for check in response.json()["checks"]}
        assert (checks["postgres"]["detail"], checks["schema"]["detail"]) == ("busy", "busy")
        [line, *_] = logs.events("readiness_check_failed")
        assert line["error"] == "PoolBusy" and line["pool"]["pool_available"] == 0, line
        await become_ready(served.client)


async def test_a_flood_of_readiness_probes_shares_one_check(settings: Settings) -> None:
    """``/health/ready`` is public and not rate-limited, and each check borrows a pooled connection:
    a hundred probes at once must not queue a hundred borrows in front of everyone's requests."""
    async with serve_in_loop(settings) as served:
        await become_ready(served.client)
        pool = served.app.state.services[HealthService].db.pool
        before = pool.get_stats()["requests_num"]
        answers = await asyncio.gather(*(served.client.get("/health/ready") for _ in range(100)))
        borrowed = pool.get_stats()["requests_num"] - before

    assert {answer.status_code for answer in answers} == {200}
    assert borrowed <= 5, f"{borrowed} pool borrows for 100 probes"


async def test_metrics_count_requests(client: AsyncTestClient[Litestar]) -> None:
    await client.get("/health/live")
    await client.get("/no/such/path")
    await client.get("/schema/openapi.json")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert "app_requests_total" in response.text
    assert 'path="/schema/openapi.json"' in response.text
    assert "/no/such/path" not in response.text, "a raw path is never a label"


async def test_requests_that_match_no_route_are_counted_under_bounded_labels(
    client: AsyncTestClient[Litestar],
) -> None:
    """A scan, or a client stuck on a removed route, was invisible: unmatched requests were not
    counted at all (the operability reviewer)."""

    def unmatched(text: str, method: str, status: str) -> float:
        labels = rf'method="{method}",path="\(unmatched\)",status_code="{status}"'
        found = re.search(rf"^app_requests_total{{[^}}]*{labels}[^}}]*}} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    before = (await client.get("/metrics")).text
    for path in ("/no/such/path", "/another/one", "/api/products/abc"):
        assert (await client.get(path)).status_code == 404
    assert (await client.request("BREW", "/api/products")).status_code == 405
    after = (await client.get("/metrics")).text
    assert unmatched(after, "GET", "404") - unmatched(before, "GET", "404") == 3
    assert unmatched(after, "OTHER", "405") - unmatched(before, "OTHER", "405") == 1
    assert "BREW" not in after and "/another/one" not in after


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
            # 414 is the server's, before any route: granian answers it without a body
            if (int(status) >= 400 and status not in ("503", "414")) or status == "500":
                assert "application/problem+json" in spec["content"], f"{method.upper()} {path} {status}"
        if "requestBody" in operation:
            assert "400" in responses, f"{method.upper()} {path} takes a body but does not document 400"
            assert "413" in responses, f"{method.upper()} {path} takes a body but does not document 413"


async def test_the_headers_of_limits_are_documented_where_they_are_sent(
    client: AsyncTestClient[Litestar], app: Litestar, db: AsyncConnection[Any]
) -> None:
    """The route layer sends ``RateLimit``/``RateLimit-Policy`` on a rate-limited route's answers and
    ``Retry-After`` with a 429 or 503, and the document declared none of them."""
    schema = (await client.get("/schema/openapi.json")).json()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for status in {"429", "503"} & operation.get("responses", {}).keys():
                headers = operation["responses"][status].get("headers") or {}
                assert "Retry-After" in headers, f"{method.upper()} {path} {status}"
    caller = await make_user(db, app)
    answer = await client.get("/api/projects", headers=caller.headers)
    assert answer.status_code == 200 and {"ratelimit", "ratelimit-policy"} <= answer.headers.keys()
    documented = schema["paths"]["/api/projects"]["get"]["responses"]["200"]["headers"]
    assert {"RateLimit", "RateLimit-Policy"} <= documented.keys()
    refused = await client.post("/api/projects", json={}, headers=caller.headers)
    assert refused.status_code == 400 and {"ratelimit", "ratelimit-policy"} <= refused.headers.keys()
    documented = schema["paths"]["/api/projects"]["post"]["responses"]["400"]["headers"]
    assert {"RateLimit", "RateLimit-Policy"} <= documented.keys(), (
        "sent on a refusal too (the OpenAPI reviewer)"
    )


async def test_openapi_ui_is_served(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.get("/schema")).status_code == 200
    assert (await client.get("/schema/swagger")).status_code == 200


async def test_dashboard_is_closed_to_anonymous_callers(client: AsyncTestClient[Litestar]) -> None:
    page = await client.get("/saq", follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/saq/login")  # the sign-in page
    assert_problem(await client.get("/saq/api/queues"), 401, "unauthorized")
