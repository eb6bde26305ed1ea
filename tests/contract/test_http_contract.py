"""The published contract, rule by rule, in-process (fast, and each rule fails on its own).

The Schemathesis run (test_schemathesis.py) finds contract breaks by fuzzing; these tests pin the
rules behind its findings: what every operation documents, the ``Allow`` of ``OPTIONS``, strict JSON
bodies, the cursor grammar, and the order of rate limiting and validation.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar, patch
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.gate import authenticates, rate_limit_policy, refused_token_policy
from app.core.pagination import IdCursor, InvalidCursorError, cursor_pattern, decode_cursor, encode_cursor
from app.core.strict_schema import StrictStructSchemaPlugin
from app.db import accounts as account_queries
from app.db import sites as site_queries
from app.db.models import TaskStatus, UserRole
from app.domains.accounts.schemas import UserCursor
from app.domains.accounts.services import AccountService
from app.domains.files.schemas import FileCursor
from app.domains.orders.schemas import OrderCursor, RefundCursor
from app.domains.products.schemas import ProductCursor
from app.domains.projects.schemas import MemberCursor, ProjectCursor
from app.domains.sites.schemas import SiteCursor
from app.domains.tasks.schemas import TaskCursor
from app.main import create_app

Client = AsyncTestClient[Litestar]
PROBLEM = "application/problem+json"
FAKE_HASH = "$argon2id$v=19$m=65536,t=3,p=4$bm90LWEtcmVhbC1zYWx0$bm90LWEtcmVhbC1oYXNoLW5vdC1hLXJlYWwtaGFzaA"
METHODS = {"get", "head", "post", "put", "patch", "delete"}
CURSORS = [
    TaskCursor,
    IdCursor,
    ProjectCursor,
    MemberCursor,
    OrderCursor,
    RefundCursor,
    FileCursor,
    ProductCursor,
    SiteCursor,
    UserCursor,
]


async def bearer(app: Litestar, db: AsyncConnection[Any], role: UserRole = UserRole.ADMIN) -> dict[str, str]:
    user = await account_queries.create_user(
        db,
        email=f"contract-{uuid.uuid4().hex[:10]}@example.com",
        display_name="Contract",
        password_hash=FAKE_HASH,
        role=role,
    )
    assert user is not None
    token, _ = app.state.services[AccountService].tokens.issue(user.id, role.value, uuid.uuid4())
    return {"Authorization": f"Bearer {token}"}


async def last_user_id(db: AsyncConnection[Any]) -> int:
    row = await (await db.execute("select max(id) from users")).fetchone()
    assert row is not None
    return int(row[0])


def operations(app: Litestar) -> list[tuple[str, str, dict[str, Any]]]:
    schema = app.openapi_schema.to_schema()
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


# -- what every operation documents ----------------------------------------------------------------


def route_handlers(app: Litestar) -> dict[tuple[str, str], HTTPRouteHandler]:
    """Each operation's route handler (what ``app.core.gate`` decides from), by (path, method)."""
    return {
        (route.path_format, method.lower()): handler
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        for method in handler.http_methods
    }


def test_every_operation_documents_the_problems_it_can_answer(app: Litestar) -> None:
    """401 wherever the gate looks at a bearer token (``app.core.gate.authenticates``), 404 where the
    path has an integer id (an unknown one, or a segment that is no canonical integer; a route named
    by a string documents its own 404s where it answers them), 429 where a limiter applies (the
    gate's, where ``app.core.gate.rate_limit_policy`` names one, or where a refused token is charged,
    ``refused_token_policy``: logout; the ingest routes keep their own), 400/500/503 everywhere, and
    the server's 414 (a request line over its limit) everywhere."""
    handlers = route_handlers(app)
    with_int_ids = {
        route.path_format
        for route in app.routes
        if isinstance(route, HTTPRoute) and any(p.type is int for p in route.path_parameters.values())
    }
    missing = []
    for path, method, operation in operations(app):
        documented = set(operation["responses"])
        expected = {"400", "414", "500", "503"}
        if authenticates(handlers[path, method], path):
            expected.add("401")
        if path in with_int_ids:
            expected.add("404")
        handler = handlers[path, method]
        if rate_limit_policy(handler, path) is not None or refused_token_policy(handler, path) is not None:
            expected.add("429")
        if lacking := expected - documented:
            missing.append(f"{method.upper()} {path}: {sorted(lacking)}")
    assert not missing, "\n".join(missing)


def test_no_shared_type_carries_a_default_that_its_uses_would_inherit(app: Litestar) -> None:
    """A default belongs to a field, not to its type: ``TaskCreate.status``'s ``todo`` had landed on
    the ``TaskStatus`` component, so Swagger UI filled the task list's ``status`` filter with it (and
    ``priority`` with ``medium``, every report's ``tz`` with ``UTC``) and sent them."""
    schema = app.openapi_schema.to_schema()
    inherited = {
        name: component["default"]
        for name, component in schema["components"]["schemas"].items()
        if "default" in component
    }
    assert inherited == {}
    created = schema["components"]["schemas"]["TaskCreate"]["properties"]["status"]
    assert created == {"allOf": [{"$ref": "#/components/schemas/TaskStatus"}], "default": "todo"}


class _Patch(msgspec.Struct, forbid_unknown_fields=True):
    openapi_example: ClassVar[dict[str, object]] = {"status": "doing"}  # no such status

    status: TaskStatus | None = None


def test_an_example_body_the_api_would_refuse_fails_the_start() -> None:
    """``TaskUpdate``'s first example named a status that does not exist, and Swagger UI filled it in:
    an example is decoded as its Struct when the schema is built."""

    @patch("/thing", sync_to_thread=False)
    def change(data: JSONBody[_Patch]) -> None:
        return None

    broken = Litestar([change], plugins=[StrictStructSchemaPlugin()])
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value 'doing'"):
        broken.openapi_schema.to_schema()


def test_every_change_of_a_resource_with_an_etag_takes_if_match(app: Litestar) -> None:
    """The gate refuses ``If-Match`` on a route that takes none (its resource has no ETag): a resource
    whose GET answers one must take it on its changes, or a true condition is refused (a file's
    DELETE naming the file's own ETag was a 412)."""
    paths = app.openapi_schema.to_schema()["paths"]
    with_etag = {
        path
        for path, item in paths.items()
        if any(
            name.lower() == "etag"
            for name in item.get("get", {}).get("responses", {}).get("200", {}).get("headers", {})
        )
    }
    assert {"/api/tasks/{task_id}", "/api/projects/{project_id}/files/{file_id}"} <= with_etag
    refusing = [
        f"{method.upper()} {path}"
        for path in with_etag
        for method in ("patch", "put", "delete")
        if method in paths[path]
        and not any(p["name"] == "If-Match" for p in paths[path][method].get("parameters", []))
    ]
    assert not refusing


def test_every_tag_an_operation_uses_is_described(app: Litestar) -> None:
    """The OpenAPI UI's sections had no description (no top-level ``tags``): a new tag must get one."""
    schema = app.openapi_schema.to_schema()
    used = {tag for _, _, operation in operations(app) for tag in operation.get("tags", [])}
    described = {tag["name"]: tag.get("description") for tag in schema.get("tags", [])}
    assert used == set(described)
    assert all(described.values())


def test_every_route_that_reads_a_token_says_so_for_swagger_ui(app: Litestar) -> None:
    """Swagger UI sends the authorized token only to operations whose ``security`` names the scheme:
    the catalogue's GETs, public but answering an administrator more (inactive products), were called
    anonymously from the UI however it was authorized (the swagger reviewer). A public route that
    reads a token documents ``OPTIONAL_BEARER`` (anonymous or bearer)."""
    handlers = route_handlers(app)
    silent = [
        f"{method.upper()} {path}"
        for path, method, operation in operations(app)
        if authenticates(handlers[path, method], path)
        and not any("BearerToken" in requirement for requirement in operation.get("security") or [])
    ]
    assert not silent
    catalogue = app.openapi_schema.to_schema()["paths"]["/api/products"]["get"]
    assert catalogue["security"] == [{}, {"BearerToken": []}]


CREATIONS_WITHOUT_A_KEY = {
    # Sending an invitation again updates it (an upsert): a retry changes nothing but the token, and
    # its answer carries the token that works.
    "/api/projects/{project_id}/invitations",
    # Tracking a login is a set: a retry finds it tracked (200).
    "/api/github/tracked",
}
"""Creating routes (a POST that answers 201) whose retry creates nothing twice without a key."""


def test_every_creating_route_takes_an_idempotency_key(app: Litestar) -> None:
    """A client retrying a creation after a lost answer must be able to create once (CONVENTIONS.md);
    the stock adjustment and the product creation ignored the key a client sent."""
    lacking = [
        path
        for path, method, operation in operations(app)
        if method == "post"
        and "201" in operation["responses"]
        and path not in CREATIONS_WITHOUT_A_KEY
        and not any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
    ]
    assert not lacking


def test_routes_exempt_from_the_limiter_document_no_429_unless_they_keep_their_own(app: Litestar) -> None:
    """The payment webhook is never rate-limited (nor does it read a token): a documented 429 would be
    a false promise. The page-view ingest is exempt from the gate's limiter because it keeps its own.
    (Logout is never limited either, but a refused token is charged there, and its 429 documented.)"""
    handlers = route_handlers(app)
    exempt = sorted(
        f"{method.upper()} {path}"
        for path, method, operation in operations(app)
        if rate_limit_policy(handlers[path, method], path) is None
        and refused_token_policy(handlers[path, method], path) is None
        and "429" in operation["responses"]
    )
    assert exempt == ["POST /api/page-views", "POST /api/page-views/batch"], exempt


def test_routes_the_gate_never_authenticates_document_no_401_unless_they_answer_one(app: Litestar) -> None:
    """The payment webhook and the page-view ingest never look at a bearer token (no limit of the
    gate's, no guard, no caller): a documented 401 would send a client looking for credentials it does
    not need. Sign-in and rotation answer their own 401 (wrong password, spent refresh token)."""
    handlers = route_handlers(app)
    documented = sorted(
        f"{method.upper()} {path}"
        for path, method, operation in operations(app)
        if not authenticates(handlers[path, method], path) and "401" in operation["responses"]
    )
    assert documented == ["POST /api/auth/login", "POST /api/auth/refresh"], documented


THIRD_PARTY_BODIES = {"POST /api/payments/webhook"}
"""Bodies a third party writes (the payment provider adds fields to its events): decoded leniently."""


def test_every_input_struct_refuses_undeclared_properties_in_the_schema(app: Litestar) -> None:
    """Input Structs forbid unknown fields; the schema must say so (``additionalProperties: false``)."""
    schema = app.openapi_schema.to_schema()
    components = schema["components"]["schemas"]
    loose = []
    for path, method, operation in operations(app):
        content = operation.get("requestBody", {}).get("content", {})
        for media_type, body in content.items():
            ref = body.get("schema", {}).get("$ref")
            target = components[ref.rsplit("/", 1)[-1]] if ref else body.get("schema", {})
            strict = f"{method.upper()} {path}" not in THIRD_PARTY_BODIES
            if strict and target.get("type") == "object" and target.get("additionalProperties") is not False:
                loose.append(f"{method.upper()} {path} ({media_type})")
    assert not loose, "\n".join(loose)


def test_zero_bounds_are_documented(app: Litestar) -> None:
    """Litestar drops a bound equal to 0 from optional fields; the schema must keep it."""
    components = app.openapi_schema.to_schema()["components"]["schemas"]
    assert components["TaskUpdate"]["properties"]["position"].get("minimum") == 0
    products = next(op for path, method, op in operations(app) if path == "/api/products" and method == "get")
    prices = {p["name"]: p["schema"] for p in products["parameters"] if p["name"].endswith("_price")}
    assert {name: schema.get("minimum") for name, schema in prices.items()} == {
        "min_price": 0,
        "max_price": 0,
    }


# -- OPTIONS ----------------------------------------------------------------------------------------


async def test_options_allows_every_method_the_schema_documents(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    """Litestar 2's automatic OPTIONS listed only the methods registered before it (issue 4169)."""
    headers = await bearer(app, db)
    schema = app.openapi_schema.to_schema()
    wrong = []
    for path, item in schema["paths"].items():
        url = re.sub(r"\{[^}]+\}", "1", path)
        response = await client.options(url, headers=headers)
        allowed = {
            method.strip() for method in response.headers.get("allow", "").split(",") if method.strip()
        }
        documented = {method.upper() for method in item if method in METHODS} | {"OPTIONS"}
        if response.status_code != 204 or allowed != documented:
            wrong.append(
                f"{path}: {response.status_code} Allow={sorted(allowed)} documented={sorted(documented)}"
            )
    assert not wrong, "\n".join(wrong)


# -- strict JSON bodies -----------------------------------------------------------------------------


async def test_bodies_are_decoded_strictly_except_whole_numbers(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    headers = await bearer(app, db, UserRole.MEMBER)
    project = await client.post("/api/projects", json={"name": "Strict"}, headers=headers)
    assert project.status_code == 201, project.text
    url = f"/api/projects/{project.json()['id']}"
    for body, field in (
        ({"archived": 0}, "archived"),
        ({"archived": "true"}, "archived"),
        ({"name": 5}, "name"),
    ):
        response = await client.patch(url, json=body, headers=headers)
        assert response.status_code == 400, (body, response.text)
        assert field in [error["field"] for error in response.json()["errors"]], response.json()
    task = await client.post(f"{url}/tasks", json={"title": "t"}, headers=headers)
    task_url = f"/api/tasks/{task.json()['id']}"
    as_text = await client.patch(task_url, json={"position": "5"}, headers=headers)
    assert as_text.status_code == 400, as_text.text
    # JSON Schema's integer includes 2.0; the wire format cannot tell them apart.
    whole = await client.patch(
        task_url, content=b'{"position": 5.0}', headers={**headers, "content-type": "application/json"}
    )
    assert (whole.status_code, whole.json()["position"]) == (200, 5)
    fraction = await client.patch(
        task_url, content=b'{"position": 5.5}', headers={**headers, "content-type": "application/json"}
    )
    assert fraction.status_code == 400, fraction.text
    malformed = await client.patch(
        task_url, content=b"9\xff\xfe", headers={**headers, "content-type": "application/json"}
    )
    assert malformed.status_code == 400, malformed.text
    assert malformed.json()["errors"][0]["field"] == "body"
    # A duplicate key: the strict decode refuses a bad first value, and so does the whole request,
    # however good the last one (the lax conversion kept the last alone and passed).
    duplicate = await client.post(
        "/api/projects",
        content=b'{"name": "a\\u0000", "name": "Fine"}',
        headers={**headers, "content-type": "application/json"},
    )
    assert duplicate.status_code == 400, duplicate.text
    with_float = await client.patch(  # an integral float sends the body through the second conversion
        task_url,
        content=b'{"position": 1.0, "title": "bad\\u0000", "title": "Fine"}',
        headers={**headers, "content-type": "application/json"},
    )
    assert with_float.status_code == 400, with_float.text


# -- cursors: every value the documented pattern admits is a position ----------------------------


@pytest.mark.parametrize("kind", CURSORS, ids=lambda kind: kind.__name__)
def test_every_cursor_the_pattern_admits_decodes_to_a_bounded_position(kind: type[msgspec.Struct]) -> None:
    pattern = cursor_pattern(kind)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.from_regex(pattern, fullmatch=True))
    def decodes(cursor: str) -> None:
        position = decode_cursor(cursor, kind)
        for value in msgspec.structs.astuple(position):
            if isinstance(value, int):
                assert -(2**63) < value < 2**63
        assert decode_cursor(encode_cursor(position), kind) == position
        # Litestar's check is a search, where "$" also matches before a final newline: refused here
        with pytest.raises(InvalidCursorError):
            decode_cursor(cursor + "\n", kind)

    decodes()


# -- rate limiting never hides a 400 and never charges for one -------------------------------------


SMALL_QUOTA = {"rate_limit_default_per_minute": 3, "rate_limit_default_per_hour": 1000}


@pytest.fixture
async def limited(settings: Settings, db: AsyncConnection[Any], valkey: Valkey) -> AsyncIterator[Client]:
    app = create_app(msgspec.structs.replace(settings, **SMALL_QUOTA))
    async with AsyncTestClient(app=app) as client:
        seconds, _ = await valkey.time()  # once started: the test stays inside one minute window
        if seconds % 60 >= 50:
            await asyncio.sleep(60 - seconds % 60 + 0.05)
        yield client


async def test_malformed_requests_do_not_consume_quota(
    limited: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    headers = await bearer(app, db, UserRole.MEMBER)
    for _ in range(5):
        response = await limited.get("/api/projects", params={"limit": 0}, headers=headers)
        assert response.status_code == 400, response.text
    for remaining in (2, 1, 0):
        response = await limited.get("/api/projects", headers=headers)
        assert response.status_code == 200, response.text
        assert re.search(r";r=(\d+);", response.headers["ratelimit"])[1] == str(remaining)  # type: ignore[index]
    assert (await limited.get("/api/projects", headers=headers)).status_code == 429


async def test_over_quota_a_malformed_request_still_learns_what_is_wrong(
    limited: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    headers = await bearer(app, db, UserRole.MEMBER)
    for _ in range(3):
        assert (await limited.get("/api/projects", headers=headers)).status_code == 200
    order = {"lines": [{"product_id": 1, "quantity": 1}]}
    no_key = await limited.post("/api/orders", json=order, headers=headers)
    assert no_key.status_code == 400, no_key.text
    assert no_key.json()["errors"][0]["field"] == "header.Idempotency-Key"
    bad_body = await limited.post(
        "/api/orders", json={"lines": []}, headers={**headers, "Idempotency-Key": "k"}
    )
    assert bad_body.status_code == 400, bad_body.text
    anonymous = await limited.get("/api/projects")
    assert anonymous.status_code == 401, anonymous.text
    well_formed_list = await limited.get("/api/projects", params={"archived": "true"}, headers=headers)
    assert well_formed_list.status_code == 429, well_formed_list.text
    site = await site_queries.create_site(
        db,
        owner_id=await last_user_id(db),
        domain="quota.example",
        ingest_key=uuid.uuid4().hex,
        timezone="UTC",
    )
    assert site is not None
    bad_period = await limited.get(f"/api/sites/{site.id}/summary", params={"tz": "America"}, headers=headers)
    assert bad_period.status_code == 400, bad_period.text  # a dependency's parameter, validated too
    assert bad_period.json()["errors"][0]["field"] == "query.tz"
    well_formed = await limited.post("/api/orders", json=order, headers={**headers, "Idempotency-Key": "k"})
    assert well_formed.status_code == 429, well_formed.text
    assert well_formed.headers["content-type"] == PROBLEM


# -- one client's bad requests never starve the others ---------------------------------------------


async def test_reports_hold_one_pooled_connection_at_a_time(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    """A report request held the request's connection while the report borrowed a second one, so a
    few concurrent reports could take every pooled connection and wait for their second: 503 for
    everyone. With a pool of one connection that wait is certain; now each report holds one at a time.
    """
    one_connection = msgspec.structs.replace(
        settings, database_pool_min=1, database_pool_max=1, database_timeout_s=1.0
    )
    app = create_app(one_connection)
    headers = await bearer(app, db)
    owner_row = await (await db.execute("select id from users limit 1")).fetchone()
    assert owner_row is not None
    site = await site_queries.create_site(
        db, owner_id=owner_row[0], domain="pool.example", ingest_key=uuid.uuid4().hex, timezone="UTC"
    )
    assert site is not None
    async with AsyncTestClient(app=app) as client:
        for report, params, status in (
            ("summary", {}, 200),
            ("pages", {"limit": 3}, 200),
            ("timeseries", {"period": "7d"}, 200),
            ("current-visitors", {}, 200),
            ("summary", {"from": "2030-01-01"}, 400),
        ):
            response = await client.get(f"/api/sites/{site.id}/{report}", params=params, headers=headers)
            assert response.status_code == status, (report, response.text)
