"""Rate limits over HTTP: headers, 429 problems, policies per route group, keys, Valkey outages."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar, get
from litestar.params import FromPath
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.errors import NotFoundError
from app.core.ratelimit import stored_identity
from app.core.security import AccessTokens, Passwords
from app.db.models import UserRole
from app.domains.accounts.services import AccountService
from app.main import create_app
from tests.factories import (
    PASSWORD,
    assert_problem,
    client_across_tests,
    create_user,
    make_site,
    make_user,
    sign_in,
    unique_email,
    wait_until,
    with_test_peer,
)
from tests.valkey_control import ControlledValkey

Client = AsyncTestClient[Litestar]
RATE_LIMIT = re.compile(r'^"(?P<name>[a-z]+-(?:minute|hour))";r=(?P<r>\d+);t=(?P<t>\d+)$')

SMALL_QUOTAS = {
    "rate_limit_default_per_minute": 3,
    "rate_limit_default_per_hour": 100,
    "rate_limit_auth_per_minute": 2,
    "rate_limit_auth_per_hour": 100,
    "rate_limit_ingest_per_minute": 50,
    "rate_limit_ingest_per_hour": 5,
}


def probe_handlers() -> list[Any]:
    """Fresh handlers for each app (one per policy, one exempt, one that fails)."""

    @get("/probe/rl/default")
    async def limited_default() -> dict[str, str]:
        return {"policy": "default"}

    @get("/probe/rl/auth", opt={"rate_limit": "auth"})
    async def limited_auth() -> dict[str, str]:
        return {"policy": "auth"}

    @get("/probe/rl/ingest", opt={"rate_limit": "ingest"})
    async def limited_ingest() -> dict[str, str]:
        return {"policy": "ingest"}

    @get("/probe/rl/exempt", opt={"rate_limit": None})
    async def exempt() -> dict[str, str]:
        return {"policy": "none"}

    @get("/probe/rl/missing/{item_id:int}")
    async def missing(item_id: FromPath[int]) -> None:
        raise NotFoundError(f"no item {item_id}")

    return [limited_default, limited_auth, limited_ingest, exempt, missing]


async def build_client(settings: Settings, **changes: Any) -> AsyncIterator[Client]:
    app = create_app(msgspec.structs.replace(settings, **{**SMALL_QUOTAS, **changes}))
    for handler in probe_handlers():
        app.register(handler)
    app.asgi_handler = with_test_peer(app.asgi_handler)
    async with client_across_tests(app) as client:
        yield client


@pytest.fixture(scope="module")
async def rl_client(settings: Settings) -> AsyncIterator[Client]:
    async for client in build_client(settings):
        yield client


async def wait_out_minute_boundary(valkey: Valkey) -> None:
    """Start a test at least 10 s before the server's minute ends, so its windows stay the same (its
    app starts after this: a loaded machine can take seconds)."""
    seconds, _ = await valkey.time()
    if seconds % 60 >= 50:
        await asyncio.sleep(60 - seconds % 60 + 0.05)


@pytest.fixture
async def fresh(valkey: Valkey, rl_client: Client) -> Valkey:
    """A flushed Valkey (the ``valkey`` fixture), a limiter that forgot its leases of the counters
    just flushed (tokens and remembered denials live in the process), and a whole minute ahead."""
    await wait_out_minute_boundary(valkey)
    rl_client.app.state.rate_limiter.forget()
    return valkey


def rate_limit(response: Any) -> tuple[str, int, int]:
    match = RATE_LIMIT.match(response.headers["ratelimit"])
    assert match, response.headers["ratelimit"]
    return match["name"], int(match["r"]), int(match["t"])


def assert_rate_limited(response: Any, window: str) -> dict[str, Any]:
    body = assert_problem(response, 429, "rate-limited")
    name, remaining, reset = rate_limit(response)
    assert (name, remaining) == (window, 0)
    assert int(response.headers["retry-after"]) == reset > 0
    assert "ratelimit-policy" in response.headers
    return body


async def test_allowed_responses_carry_policy_and_remaining(rl_client: Client, fresh: Valkey) -> None:
    seen = []
    for _ in range(3):
        response = await rl_client.get("/probe/rl/default")
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == (
            '"default-minute";q=3;w=60, "default-hour";q=100;w=3600'
        )
        name, remaining, reset = rate_limit(response)
        assert name == "default-minute"
        assert 0 < reset <= 60
        assert "retry-after" not in response.headers
        seen.append(remaining)
    assert seen == [2, 1, 0]


async def test_request_over_quota_is_a_429_problem(rl_client: Client, fresh: Valkey) -> None:
    for _ in range(3):
        assert (await rl_client.get("/probe/rl/default")).status_code == 200
    for _ in range(2):
        response = await rl_client.get("/probe/rl/default")
        body = assert_rate_limited(response, "default-minute")
        assert body["instance"] == "/probe/rl/default"
        assert 0 < int(response.headers["retry-after"]) <= 60
    # Denied requests consumed nothing: the hour window counted only the three admitted ones.
    hour_keys = await fresh.keys("rl:default:*:h:*")
    assert len(hour_keys) == 1
    assert int(await fresh.get(hour_keys[0])) == 3


async def test_exhausted_hour_window_denies_until_the_hour_resets(rl_client: Client, fresh: Valkey) -> None:
    """The middleware's hour window, shown with the ``ingest`` policy (the only one whose hour quota
    can bind before its minute quota here) on a probe route. No production route uses that policy: the
    page-view routes are limited by their in-process token bucket, so this says nothing about them."""
    for expected in (4, 3, 2, 1, 0):
        response = await rl_client.get("/probe/rl/ingest")
        assert response.status_code == 200
        assert rate_limit(response)[:2] == ("ingest-hour", expected)
    response = await rl_client.get("/probe/rl/ingest")
    assert_rate_limited(response, "ingest-hour")
    assert 0 < int(response.headers["retry-after"]) <= 3600


async def test_errors_from_a_limited_route_carry_the_headers(rl_client: Client, fresh: Valkey) -> None:
    response = await rl_client.get("/probe/rl/missing/7")
    assert_problem(response, 404, "not-found")
    assert rate_limit(response)[:2] == ("default-minute", 2)


async def test_policies_count_independently(rl_client: Client, fresh: Valkey) -> None:
    for _ in range(2):
        response = await rl_client.get("/probe/rl/auth")
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"].startswith('"auth-minute";q=2;w=60')
    assert_rate_limited(await rl_client.get("/probe/rl/auth"), "auth-minute")
    # The default group still has its whole quota.
    response = await rl_client.get("/probe/rl/default")
    assert response.status_code == 200
    assert rate_limit(response)[:2] == ("default-minute", 2)
    for _ in range(2):
        assert (await rl_client.get("/probe/rl/default")).status_code == 200
    assert_rate_limited(await rl_client.get("/probe/rl/default"), "default-minute")
    assert (await rl_client.get("/probe/rl/ingest")).status_code == 200


@pytest.mark.parametrize(
    "path", ["/health/live", "/metrics", "/schema/openapi.json", "/probe/rl/exempt"], ids=str
)
async def test_exempt_routes_are_never_limited(rl_client: Client, fresh: Valkey, path: str) -> None:
    for _ in range(5):
        response = await rl_client.get(path)
        assert response.status_code == 200, response.text
        assert "ratelimit" not in response.headers
        assert "ratelimit-policy" not in response.headers
    assert await fresh.keys("rl:*") == []
    # Exempt requests left the quota of limited routes untouched.
    assert rate_limit(await rl_client.get("/probe/rl/default"))[1] == 2


async def test_anonymous_clients_are_keyed_by_address(rl_client: Client, fresh: Valkey) -> None:
    proxy = {"x-test-peer": "127.0.0.1"}  # a trusted proxy (the default TRUSTED_PROXIES)
    first = {**proxy, "x-forwarded-for": "203.0.113.1"}
    second = {**proxy, "x-forwarded-for": "203.0.113.2"}
    for _ in range(3):
        assert (await rl_client.get("/probe/rl/default", headers=first)).status_code == 200
    assert_rate_limited(await rl_client.get("/probe/rl/default", headers=first), "default-minute")
    response = await rl_client.get("/probe/rl/default", headers=second)
    assert response.status_code == 200
    assert rate_limit(response)[1] == 2
    keys = {key.decode().split(":m:")[0] for key in await fresh.keys("rl:default:*:m:*")}
    assert keys == {in_valkey(rl_client, "ip:203.0.113.1"), in_valkey(rl_client, "ip:203.0.113.2")}
    assert not [key for key in await fresh.keys("*") if b"203.0.113" in key], "Valkey holds no address"


def in_valkey(client: Client, key: str, policy: str = "default") -> str:
    """The Valkey key of ``key``'s counters under ``policy`` (an address by its keyed digest)."""
    return f"rl:{policy}:{stored_identity(client.app.state.settings.secret_key, key)}"


async def test_untrusted_peer_cannot_pick_its_key_with_forwarded_for(
    rl_client: Client, fresh: Valkey
) -> None:
    for n in range(3):
        headers = {"x-test-peer": "198.51.100.7", "x-forwarded-for": f"203.0.113.{n + 10}"}
        assert (await rl_client.get("/probe/rl/default", headers=headers)).status_code == 200
    headers = {"x-test-peer": "198.51.100.7", "x-forwarded-for": "203.0.113.99"}
    assert_rate_limited(await rl_client.get("/probe/rl/default", headers=headers), "default-minute")
    assert len(await fresh.keys(in_valkey(rl_client, "ip:198.51.100.7") + ":m:*")) == 1


def bearer(settings: Settings, user_id: int) -> str:
    token, _ = AccessTokens(settings).issue(user_id, UserRole.MEMBER.value, uuid.uuid4())
    return f"Bearer {token}"


async def test_authenticated_requests_are_keyed_by_user(
    rl_client: Client, fresh: Valkey, settings: Settings
) -> None:
    user_41, user_42 = bearer(settings, 41), bearer(settings, 42)
    for n in range(3):
        # One user from three addresses shares one quota.
        headers = {"authorization": user_41, "x-test-peer": f"198.51.100.{n + 1}"}
        assert (await rl_client.get("/probe/rl/default", headers=headers)).status_code == 200
    headers = {"authorization": user_41, "x-test-peer": "198.51.100.9"}
    assert_rate_limited(await rl_client.get("/probe/rl/default", headers=headers), "default-minute")
    # Another user, and an anonymous client, from an address the first user used are unaffected.
    other = await rl_client.get(
        "/probe/rl/default", headers={"authorization": user_42, "x-test-peer": "198.51.100.1"}
    )
    assert rate_limit(other)[:2] == ("default-minute", 2)
    anonymous = await rl_client.get("/probe/rl/default", headers={"x-test-peer": "198.51.100.1"})
    assert rate_limit(anonymous)[:2] == ("default-minute", 2)
    assert len(await fresh.keys("rl:default:u:41:m:*")) == 1
    assert len(await fresh.keys("rl:default:u:42:m:*")) == 1


async def test_signing_up_and_in_is_keyed_by_address_whatever_token_is_sent(
    rl_client: Client, fresh: Valkey, settings: Settings
) -> None:
    """Keyed by a token's user, every account made buys another quota of the ``auth`` limit."""
    peer = {"x-test-peer": "198.51.100.77"}

    async def register(headers: dict[str, str]) -> Any:
        body = {"email": unique_email("rl"), "password": "a long enough passphrase", "display_name": "Rl"}
        return await rl_client.post("/api/auth/register", json=body, headers=peer | headers)

    assert (await register({})).status_code == 202
    assert (await register({"authorization": "Bearer not-a-token"})).status_code == 202  # ignored, no 401
    assert_rate_limited(await register({"authorization": bearer(settings, 41)}), "auth-minute")
    assert not await fresh.keys("rl:auth:u:*")


async def test_rotating_a_session_is_not_counted_against_signing_in(
    rl_client: Client, settings: Settings, db: AsyncConnection[Any], fresh: Valkey
) -> None:
    """Under the ``auth`` limit, the sessions of everyone behind one address (an office's NAT) shared
    its 20 a minute: one user's rotations refused another's. A rotation guesses no password."""
    peer = {"x-test-peer": "198.51.100.78"}
    user = await create_user(db, await Passwords(settings).hash(PASSWORD))
    signed_in = await rl_client.post(
        "/api/auth/login", json={"email": user.email, "password": PASSWORD}, headers=peer
    )
    assert signed_in.status_code == 200, signed_in.text
    refresh_token = signed_in.json()["refresh_token"]
    for _ in range(settings.rate_limit_auth_per_minute):
        await rl_client.post("/api/auth/login", json={"email": user.email, "password": "wrong"}, headers=peer)
    assert_rate_limited(
        await rl_client.post(
            "/api/auth/login", json={"email": user.email, "password": PASSWORD}, headers=peer
        ),
        "auth-minute",
    )
    rotated = await rl_client.post("/api/auth/refresh", json={"refresh_token": refresh_token}, headers=peer)
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["ratelimit-policy"].startswith('"default-minute"')


async def test_disabled_rate_limiting_does_nothing(settings: Settings, fresh: Valkey) -> None:
    async for client in build_client(settings, rate_limit_enabled=False):
        for _ in range(6):
            response = await client.get("/probe/rl/auth")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers
    assert await fresh.keys("rl:*") == []


# -- what a refusal costs ---------------------------------------------------------------------------


async def revocations_live(client: Client) -> None:
    """The app checks revocations in memory (else every authenticated request reads the database, and
    a refusal after it is charged: the tests of refunds need the listener connected)."""
    accounts: AccountService = client.app.state.services[AccountService]

    async def live() -> bool:
        return accounts.authentication.revocations.live

    await wait_until(live, 30, "the revocation listener is live")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"interval": "bogus"}, "query.interval"),  # the handler's own parameter, after the window's
        ({"period": "custom", "from": "2026-03-02", "to": "2026-03-01"}, "query.to"),  # by the service
    ],
    ids=["handler-parameter", "service-check"],
)
async def test_a_report_refused_after_its_site_was_read_is_charged(
    rl_client: Client, fresh: Valkey, db: AsyncConnection[Any], params: dict[str, str], field: str
) -> None:
    """Litestar resolves ``provide_window`` (a transaction: the site, today's date) before it
    validates the handler's own parameters, and the service refuses a period only once it has read the
    site: refunded, 350 such refusals of one client cost 344 scans of ``sites`` and no quota."""
    await revocations_live(rl_client)
    owner = await make_user(db, rl_client.app)
    site = await make_site(db, owner)
    path = f"/api/sites/{site.id}/timeseries"
    for remaining in (2, 1, 0):
        refused = await rl_client.get(path, params=params, headers=owner.headers)
        assert_problem(refused, 400, "validation", {field})
        assert rate_limit(refused)[:2] == ("default-minute", remaining)
    assert_rate_limited(await rl_client.get(path, headers=owner.headers), "default-minute")


@pytest.mark.parametrize(
    ("route", "params", "field"),
    [
        ("orders", {"limit": "0"}, "query.limit"),
        ("timeseries", {"tz": "Mars/Olympus"}, "query.tz"),  # the window's own parameter, before its query
    ],
    ids=["list", "report-dependency-parameter"],
)
async def test_a_request_refused_before_any_database_work_is_refunded(
    rl_client: Client, fresh: Valkey, db: AsyncConnection[Any], route: str, params: dict[str, str], field: str
) -> None:
    await revocations_live(rl_client)
    owner = await make_user(db, rl_client.app)
    site = await make_site(db, owner)
    path = "/api/orders" if route == "orders" else f"/api/sites/{site.id}/{route}"
    for _ in range(5):
        refused = await rl_client.get(path, params=params, headers=owner.headers)
        assert_problem(refused, 400, "validation", {field})
        assert rate_limit(refused)[:2] == ("default-minute", 3)
    answered = await rl_client.get(path, headers=owner.headers)
    assert answered.status_code == 200, answered.text
    assert rate_limit(answered)[:2] == ("default-minute", 2)


async def test_the_dashboards_sign_in_is_limited_like_the_apis(
    rl_client: Client, fresh: Valkey, db: AsyncConnection[Any]
) -> None:
    """``POST /saq/login`` (an argon2 check and a session each) names the ``auth`` policy: ``/saq``
    exempts only the routes that name none, the dashboard's pages and its polling API."""
    admin = await make_user(db, rl_client.app, UserRole.ADMIN)
    peer = {"x-test-peer": "198.51.100.79"}
    for remaining in (1, 0):  # other accounts each time: the login throttle never applies
        refused = await sign_in(rl_client, unique_email("saq"), "wrong", peer)
        assert refused.status_code == 401, refused.text
        assert refused.headers["ratelimit-policy"] == '"auth-minute";q=2;w=60, "auth-hour";q=100;w=3600'
        assert rate_limit(refused)[:2] == ("auth-minute", remaining)
    over = await sign_in(rl_client, admin.email, PASSWORD, peer)
    assert over.status_code == 429, over.text
    assert over.headers["content-type"].startswith("text/html")  # the page, as the throttle's 429
    assert over.headers["cache-control"] == "no-store"
    assert "set-cookie" not in over.headers
    assert rate_limit(over)[:2] == ("auth-minute", 0)
    assert int(over.headers["retry-after"]) == rate_limit(over)[2] > 0
    # One quota with the API's sign-in (the address's ``auth``).
    api = await rl_client.post("/api/auth/login", json={"email": admin.email, "password": "x"}, headers=peer)
    assert_rate_limited(api, "auth-minute")
    # The dashboard's page and API still answer, unlimited (more requests than the default quota).
    for _ in range(5):
        page = await rl_client.get("/saq/login", headers=peer)
        queues = await rl_client.get("/saq/api/queues", headers={**peer, **admin.headers})
        for response in (page, queues):
            assert response.status_code == 200, response.text
            assert "ratelimit" not in response.headers


@pytest.mark.parametrize("kind", ["garbage", "another-key"])
async def test_requests_with_a_refused_token_spend_their_addresss_quota(
    rl_client: Client, fresh: Valkey, settings: Settings, kind: str
) -> None:
    """Refused tokens were never counted: 320 requests with ``Bearer x.y.z`` were all checked and
    answered 401. They spend the address's quota (as its anonymous requests do), then get the 429."""
    peer = {"x-test-peer": "198.51.100.80"}
    signer = settings if kind == "garbage" else msgspec.structs.replace(settings, secret_key="k" * 64)
    token = "Bearer x.y.z" if kind == "garbage" else bearer(signer, 43)
    user = {"authorization": bearer(settings, 43), **peer}
    assert rate_limit(await rl_client.get("/probe/rl/default", headers=user))[:2] == ("default-minute", 2)
    refused = {"authorization": token, **peer}
    for remaining in (2, 1, 0):
        response = await rl_client.get("/probe/rl/default", headers=refused)
        assert_problem(response, 401, "unauthorized")
        assert rate_limit(response)[:2] == ("default-minute", remaining)
        assert "invalid_token" in response.headers["www-authenticate"]
    assert_rate_limited(await rl_client.get("/probe/rl/default", headers=refused), "default-minute")
    assert_rate_limited(await rl_client.get("/probe/rl/default", headers=peer), "default-minute")
    # The valid user's own quota, from the same address, is untouched.
    mine = await rl_client.get("/probe/rl/default", headers=user)
    assert mine.status_code == 200, mine.text
    assert rate_limit(mine)[:2] == ("default-minute", 1)
    keys = {key.decode().split(":m:")[0] for key in await fresh.keys("rl:default:*:m:*")}
    assert keys == {"rl:default:u:43", in_valkey(rl_client, "ip:198.51.100.80")}


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/auth/logout"), ("GET", "/saq/api/queues")])
async def test_a_refused_token_is_charged_on_routes_without_a_limit(
    rl_client: Client, fresh: Valkey, db: AsyncConnection[Any], method: str, path: str
) -> None:
    """Logout is never limited (a thief spending the user's quota must not keep the owner signed in),
    nor is the dashboard (its polling), but their bad tokens cost a signature check each, as anywhere,
    and went uncharged: 401 without end. A refused token spends its address's ``default`` quota there
    too, then gets the 429; a valid token from that address is still never limited."""
    admin = await make_user(db, rl_client.app, UserRole.ADMIN)
    peer = {"x-test-peer": "198.51.100.81"}
    refused = {"authorization": "Bearer x.y.z", **peer}
    for remaining in (2, 1, 0):
        response = await rl_client.request(method, path, headers=refused)
        assert_problem(response, 401, "unauthorized")
        assert rate_limit(response)[:2] == ("default-minute", remaining)
    assert_rate_limited(await rl_client.request(method, path, headers=refused), "default-minute")
    # The address has no quota left; its valid caller is not limited here (nor charged).
    valid = await rl_client.request(method, path, headers={**admin.headers, **peer})
    assert valid.status_code in (200, 204), valid.text
    assert "ratelimit" not in valid.headers
    keys = {key.decode().split(":m:")[0] for key in await fresh.keys("rl:*:m:*")}
    assert keys == {in_valkey(rl_client, "ip:198.51.100.81")}


OUTAGE = {"valkey_timeout_s": 0.5, "rate_limit_auth_fail_closed": True, "rate_limit_warn_interval_s": 3600.0}
"""Settings of the apps whose Valkey fails: a short client timeout, auth limits failing closed."""


@pytest.fixture(scope="module")
async def outage_client(
    settings: Settings, module_controlled_valkey: ControlledValkey
) -> AsyncIterator[Client]:
    async for client in build_client(settings, valkey_url=module_controlled_valkey.url, **OUTAGE):
        yield client


def fail_open_count(policy: str) -> float:
    return REGISTRY.get_sample_value("app_rate_limit_fail_open_total", {"policy": policy}) or 0.0


async def test_valkey_outage_fails_open_or_closed_per_policy(
    outage_client: Client, module_controlled_valkey: ControlledValkey, caplog: pytest.LogCaptureFixture
) -> None:
    controlled_valkey = module_controlled_valkey
    async with Valkey.from_url(controlled_valkey.url) as direct:
        await direct.flushdb()
        await wait_out_minute_boundary(direct)
    assert rate_limit(await outage_client.get("/probe/rl/default"))[1] == 2
    before = fail_open_count("default")
    controlled_valkey.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="app.ratelimit"):
            for _ in range(5):  # more than the quota: nothing is counted while Valkey is down
                response = await outage_client.get("/probe/rl/default")
                assert response.status_code == 200
                assert "ratelimit" not in response.headers
                assert "ratelimit-policy" not in response.headers
            closed = await outage_client.get("/probe/rl/auth")
        assert fail_open_count("default") == before + 5
        assert_problem(closed, 503, "service-unavailable")
        assert int(closed.headers["retry-after"]) > 0
        warnings = [record for record in caplog.records if record.name == "app.ratelimit"]
        assert len(warnings) == 1, "one warning per RATE_LIMIT_WARN_INTERVAL_S"
        assert warnings[0].levelno == logging.WARNING
    finally:
        controlled_valkey.start()
    async with Valkey.from_url(controlled_valkey.url) as direct:
        await direct.flushdb()
    # Back (a restarted server, so an empty script cache): limiting resumes once the client's breaker
    # lets a call try Valkey again (within min(FAIL_FAST_S, VALKEY_TIMEOUT_S); until then it fails open).
    answers: list[Any] = []

    async def limiting() -> bool:
        answers.append(await outage_client.get("/probe/rl/default"))
        return "ratelimit" in answers[-1].headers

    await wait_until(limiting, 10, "the limiter counts in Valkey again")
    assert rate_limit(answers[-1])[:2] == ("default-minute", 2)
    assert (await outage_client.get("/probe/rl/auth")).status_code == 200


async def test_a_hung_valkey_fails_open_or_closed_within_valkey_timeout(
    settings: Settings, controlled_valkey: ControlledValkey
) -> None:
    """A frozen Valkey accepts connections and never answers: after VALKEY_TIMEOUT_S the limiter
    admits (default policy) or refuses (auth, fail closed) instead of holding the request."""
    async for client in build_client(settings, valkey_url=controlled_valkey.url, **OUTAGE):
        assert rate_limit(await client.get("/probe/rl/default"))[0] == "default-minute"
        before = fail_open_count("default")
        with controlled_valkey.paused():
            admitted = await asyncio.wait_for(client.get("/probe/rl/default"), 30)
            refused = await asyncio.wait_for(client.get("/probe/rl/auth"), 30)
        assert admitted.status_code == 200, admitted.text
        assert "ratelimit" not in admitted.headers
        assert fail_open_count("default") == before + 1
        assert_problem(refused, 503, "service-unavailable")

        async def limiting(client: Client = client) -> bool:  # once the breaker lets a call try Valkey
            response = await client.get("/probe/rl/default")
            return "ratelimit" in response.headers and rate_limit(response)[0] == "default-minute"

        await wait_until(limiting, 10, "limiting resumes")


@pytest.mark.parametrize("refused_by", ["rate-limit", "login-throttle"])
async def test_the_dashboards_sign_in_answers_an_outage_503_as_its_page(
    settings: Settings, controlled_valkey: ControlledValkey, refused_by: str
) -> None:
    """With Valkey down and ``auth`` failing closed, ``POST /saq/login`` is refused before it is tried:
    by the route layer's ``auth`` limit, or, rate limits disabled, by the login throttle. A person in a
    browser reads the sign-in page and when to retry (its 429 is the page too), not problem+json."""
    limits = {"rate_limit_enabled": refused_by == "rate-limit"}
    async for client in build_client(settings, valkey_url=controlled_valkey.url, **OUTAGE, **limits):
        controlled_valkey.stop()
        try:
            refused = await sign_in(client, unique_email("saq-outage"), "wrong")
        finally:
            controlled_valkey.start()
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("text/html")
        assert "Sign-in is briefly unavailable; try again shortly." in refused.text
        assert '<form method="post" action="/saq/login">' in refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert refused.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in refused.headers["content-security-policy"]
        assert "set-cookie" not in refused.headers


# -- leases: fewer round trips, same quotas ---------------------------------------------------------


async def test_ipv6_clients_of_one_64_share_a_quota(rl_client: Client, fresh: Valkey) -> None:
    """One subscriber holds a whole /64: rotating addresses inside it gains nothing."""
    proxy = {"x-test-peer": "127.0.0.1"}
    for n in range(3):
        headers = {**proxy, "x-forwarded-for": f"2001:db8:1:2::{n + 1:x}"}
        assert (await rl_client.get("/probe/rl/default", headers=headers)).status_code == 200
    rotated = {**proxy, "x-forwarded-for": "2001:db8:1:2:ffff:ffff:ffff:ffff"}
    assert_rate_limited(await rl_client.get("/probe/rl/default", headers=rotated), "default-minute")
    elsewhere = {**proxy, "x-forwarded-for": "2001:db8:1:3::1"}
    assert (await rl_client.get("/probe/rl/default", headers=elsewhere)).status_code == 200
    keys = {key.decode().split(":m:")[0] for key in await fresh.keys("rl:default:*:m:*")}
    assert keys == {
        in_valkey(rl_client, "ip:2001:db8:1:2::/64"),
        in_valkey(rl_client, "ip:2001:db8:1:3::/64"),
    }


async def test_a_busy_key_leases_tokens_in_blocks_and_reports_what_is_left(
    settings: Settings, fresh: Valkey
) -> None:
    """With a roomy quota, a key spending fast takes growing blocks per round trip; the counters hold
    what was leased, and ``RateLimit`` still counts down one per request."""
    async for client in build_client(
        settings, rate_limit_default_per_minute=1000, rate_limit_default_per_hour=100_000
    ):
        remaining = []
        for _ in range(60):
            response = await client.get("/probe/rl/default")
            assert response.status_code == 200
            remaining.append(rate_limit(response)[1])
        limiter = client.app.state.rate_limiter
        held = limiter.unspent(limiter_policy(client, "default"), "ip:testclient")
        stored = in_valkey(client, "ip:testclient")
    assert remaining == list(range(999, 939, -1))
    (minute_key,) = await fresh.keys(stored + ":m:*")
    leased = int(await fresh.get(minute_key))
    assert leased == 60 + held
    assert 0 <= held < 100  # at most one lease (a tenth of the quota) is held back


def limiter_policy(client: Client, name: str) -> Any:
    from app.core.ratelimit import policies_from_settings

    return policies_from_settings(client.app.state.settings)[name]


async def test_local_limiter_state_is_bounded(valkey: Valkey) -> None:
    """Least recently used keys are forgotten one at a time (never everything at once)."""
    from app.core.ratelimit import Policy, RateLimiter

    limiter = RateLimiter(valkey, secret_key="test-secret", prefix="rlbound", max_keys=3)
    policy = Policy("bound", per_minute=1000, per_hour=10_000)
    for n in range(10):
        assert (await limiter.hit(policy, f"ip:192.0.2.{n}")).allowed
    assert set(limiter.keys()) == {("bound", f"ip:192.0.2.{n}") for n in (7, 8, 9)}
