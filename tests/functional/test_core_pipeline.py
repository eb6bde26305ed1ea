"""The request pipeline: security headers on every answer, route plans decided once per route (no
authentication or rate limit where a route needs none), request metrics under Litestar's names, the
dashboard's same-origin rule, and cheap request ids that stay unique across processes."""

from __future__ import annotations

import multiprocessing
import re
import uuid
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.config.compression import CompressionConfig
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.core.gate import GateConfig
from app.core.middleware import next_request_id
from app.core.ratelimit import Policy, RateLimiter
from app.db.models import UserRole
from tests.factories import (
    PASSWORD,
    Client,
    assert_problem,
    bearer,
    create_user,
    login,
    make_user,
    sign_in_to_dashboard,
)

SECURITY = {
    "x-content-type-options": "nosniff",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
GARBAGE_TOKEN = bearer("not-a-token")


def assert_security_headers(response: Any) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get_list(name) == [value], (name, response.headers)


# -- security headers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/health/live", 200),
        ("GET", "/no/such/path", 404),
        ("POST", "/health/live", 405),
        ("GET", "/api/projects", 401),
        ("GET", "/metrics", 200),
    ],
    ids=["ok", "not-found", "method-not-allowed", "problem", "metrics"],
)
async def test_every_answer_carries_the_security_headers_once(
    api: Client, method: str, path: str, status: int
) -> None:
    response = await api.request(method, path)
    assert response.status_code == status, response.text
    assert_security_headers(response)


@pytest.mark.parametrize("host", ["api:abc", "api:99999"])
async def test_a_host_with_a_bad_port_still_gets_a_problem(api: Client, host: str) -> None:
    """Behind the gateway the port is dropped; served directly, the Host is the client's to write."""
    response = await api.get("/no/such/path", headers={"host": host})
    assert_problem(response, 404, "not-found")
    assert_security_headers(response)


async def test_an_api_answer_carries_them_too(api: Client, db: AsyncConnection[Any]) -> None:
    member = await make_user(db, api.app)
    response = await api.get("/api/projects", headers=member.headers)
    assert response.status_code == 200, response.text
    assert_security_headers(response)


async def test_the_docs_keep_their_own_full_policy(api: Client) -> None:
    response = await api.get("/schema/swagger")
    assert response.status_code == 200, response.text
    policies = response.headers.get_list("content-security-policy")
    assert len(policies) == 1, policies
    assert "frame-ancestors 'none'" in policies[0]
    assert "script-src" in policies[0]  # the docs' strict policy, not the pipeline's minimal one
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_the_dashboard_cannot_be_framed(
    api: Client, db: AsyncConnection[Any], password_hash: str
) -> None:
    admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    response = await api.get("/saq/", headers=await sign_in_to_dashboard(api, admin.email))
    assert response.status_code == 200, response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


# -- token answers are never stored ---------------------------------------------------------------


async def test_token_answers_are_not_stored_by_caches(
    api: Client, db: AsyncConnection[Any], password_hash: str
) -> None:
    user = await create_user(db, password_hash)
    response = await api.post("/api/auth/login", json={"email": user.email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    refreshed = await api.post("/api/auth/refresh", json={"refresh_token": response.json()["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.headers["cache-control"] == "no-store"


# -- per-route plans --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health/live", "/metrics", "/schema/openapi.json"])
async def test_operational_routes_ignore_tokens(api: Client, path: str) -> None:
    """They never authenticate: even a malformed token costs nothing and changes nothing there."""
    response = await api.get(path, headers=GARBAGE_TOKEN)
    assert response.status_code == 200, response.text


async def test_routes_that_use_the_caller_refuse_a_bad_token(api: Client) -> None:
    """A route with a guard, and a public route that authenticates (the catalogue, which shows more
    to an admin), both refuse a bad token; signing in ignores one (``test_accounts_tokens``)."""
    assert_problem(await api.get("/api/projects", headers=GARBAGE_TOKEN), 401, "unauthorized")
    response = await api.get("/api/products", headers=GARBAGE_TOKEN)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def _gate(policies: dict[str, Policy] | None = None) -> GateConfig:
    async def authenticate(_: str) -> Any:
        raise AssertionError("not called when planning")

    return GateConfig(
        authenticate=authenticate,
        # planning never connects
        limiter=RateLimiter(Valkey.from_url("redis://127.0.0.1:9"), secret_key="test-secret"),
        policies=policies or {"default": Policy("default", 10, 100)},
        rate_limits_enabled=True,
        warn_interval_s=60,
        compression=CompressionConfig(backend="gzip", exclude=["/quiet"]),
    )


def test_plans_follow_the_route_options() -> None:
    @get("/guarded", guards=[lambda *_: None])
    async def guarded() -> None: ...

    @get("/anonymous", opt={"rate_limit": None})
    async def anonymous() -> None: ...

    @get("/forced", opt={"rate_limit": None, "authenticate": True})
    async def forced() -> None: ...

    @get("/quiet/x", opt={"authenticate": False})
    async def quiet() -> None: ...

    @get("/health/x")
    async def health() -> None: ...

    app = Litestar([guarded, anonymous, forced, quiet, health])
    gate = _gate()
    gate.prepare(app)
    plans = {path: gate.plan(handler, path) for path, handler in _handlers(app)}

    assert plans["/guarded"].authenticate and plans["/guarded"].policy is not None
    assert not plans["/anonymous"].authenticate and plans["/anonymous"].policy is None
    assert plans["/forced"].authenticate and plans["/forced"].policy is None
    assert not plans["/quiet/x"].authenticate and not plans["/quiet/x"].compress
    assert plans["/health/x"].policy is None and not plans["/health/x"].authenticate


def test_an_unknown_policy_fails_at_start_up_not_per_request() -> None:
    @get("/typo", opt={"rate_limit": "defualt"})
    async def typo() -> None: ...

    with pytest.raises(ValueError, match="defualt"):
        _gate().prepare(Litestar([typo]))


def _handlers(app: Litestar) -> list[tuple[str, Any]]:
    from litestar.routes import HTTPRoute

    return [
        (route.path_format, handler)
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler, _ in route.route_handler_map.values()
        if "OPTIONS" not in handler.http_methods
    ]


# -- the dashboard's unsafe requests must come from its own page ----------------------------------

RETRY = "/saq/api/queues/default/jobs/outbox:999999/retry"


@pytest.fixture
async def admin_session(api: Client, db: AsyncConnection[Any], password_hash: str) -> dict[str, str]:
    """An admin signed in to the dashboard: the session cookie a browser sends by itself."""
    admin = await create_user(db, password_hash, role=UserRole.ADMIN)
    return await sign_in_to_dashboard(api, admin.email)


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"origin": "https://evil.example"},
        {"origin": "null"},
    ],
    ids=["cross-site", "fetch-metadata-only", "sibling-site", "foreign-origin", "opaque-origin"],
)
async def test_a_cross_site_dashboard_action_is_refused(
    api: Client, admin_session: dict[str, str], headers: dict[str, str]
) -> None:
    for action in ("retry", "abort"):
        response = await api.post(RETRY.replace("retry", action), headers={**admin_session, **headers})
        assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://testserver.local", "sec-fetch-site": "same-origin"},
        {"origin": "http://testserver.local"},
        {},
    ],
    ids=["same-origin", "origin-only", "not-a-browser"],
)
async def test_a_same_origin_dashboard_action_reaches_the_dashboard(
    api: Client, admin_session: dict[str, str], headers: dict[str, str]
) -> None:
    response = await api.post(RETRY, headers={**admin_session, **headers})
    assert_problem(response, 404, "not-found")  # the dashboard's own answer: no such job


async def test_reading_the_dashboard_needs_no_origin(api: Client, admin_session: dict[str, str]) -> None:
    response = await api.get(
        "/saq/api/queues",
        headers={**admin_session, "origin": "https://evil.example", "sec-fetch-site": "cross-site"},
    )
    assert response.status_code == 200, response.text


# -- request metrics --------------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_requests_are_counted_per_route_under_litestars_metric_names(
    api: Client, db: AsyncConnection[Any]
) -> None:
    member = await make_user(db, api.app)
    labels = {"method": "GET", "path": "/api/projects", "status_code": "200", "app_name": "monolith"}
    denied = {**labels, "status_code": "401"}
    before = sample("app_requests_total", **labels), sample("app_requests_total", **denied)
    observed = sample("app_request_duration_seconds_count", **labels)
    for _ in range(3):
        assert (await api.get("/api/projects", headers=member.headers)).status_code == 200
    assert (await api.get("/api/projects")).status_code == 401

    assert sample("app_requests_total", **labels) == before[0] + 3
    assert sample("app_requests_total", **denied) == before[1] + 1
    assert sample("app_request_duration_seconds_count", **labels) == observed + 3
    assert sample("app_requests_in_progress", **{**labels, "status_code": "200"}) == 0
    head = {**labels, "method": "HEAD"}
    heads_before = sample("app_requests_total", **head)
    assert (await api.head("/api/projects", headers=member.headers)).status_code == 200
    assert sample("app_requests_total", **head) == heads_before + 1, (
        "a HEAD answered as its GET is its route's"
    )
    exposition = (await api.get("/metrics")).text
    for name in ("app_requests_total", "app_request_duration_seconds_bucket", "app_requests_in_progress"):
        assert name in exposition


async def test_operational_routes_and_unknown_paths_are_not_counted(api: Client) -> None:
    await api.get("/health/live")
    await api.get(f"/no/such/{uuid.uuid4().hex}")
    paths = {
        sample.labels.get("path")
        for metric in REGISTRY.collect()
        if metric.name == "app_requests"
        for sample in metric.samples
    }
    assert "/health/live" not in paths
    assert not any(path and path.startswith("/no/such") for path in paths)


# -- request ids ------------------------------------------------------------------------------------

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def _ids_in_child(connection: Any) -> None:
    connection.send([next_request_id() for _ in range(3)])
    connection.close()


def test_request_ids_are_unique_within_and_across_processes() -> None:
    mine = [next_request_id() for _ in range(1000)]
    assert all(HEX_ID.match(request_id) for request_id in mine)
    assert len(set(mine)) == len(mine)
    theirs = []
    for _ in range(2):  # forked children (as granian's workers are) draw their own prefix
        parent, child = multiprocessing.get_context("fork").Pipe()
        process = multiprocessing.get_context("fork").Process(target=_ids_in_child, args=(child,))
        process.start()
        theirs.extend(parent.recv())
        process.join(30)
    prefixes = {request_id[:16] for request_id in [*mine[:1], *theirs]}
    assert len(prefixes) == 3, (mine[:1], theirs)
    assert not set(theirs) & set(mine)


async def test_login_flow_still_answers_with_a_request_id(
    api: Client, db: AsyncConnection[Any], password_hash: str
) -> None:
    user = await create_user(db, password_hash)
    pair = await login(api, user.email)
    response = await api.get("/api/auth/me", headers=bearer(pair["access_token"]))
    assert response.status_code == 200
    assert HEX_ID.match(response.headers["x-request-id"])
