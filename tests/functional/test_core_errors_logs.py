"""What the error handlers log: an outage once per interval with its cause and a count per
dependency; an unhandled error with the caller and the route."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from app.config import Settings
from app.core import errors
from app.core.logging import OncePerInterval
from app.domains.products.services import ProductService
from tests.factories import GENEROUS_AUTH, captured_logs, make_user, serve_in_loop
from tests.valkey_control import ControlledValkey

CAUSE = 'connection to server at "10.0.0.5", port 5432 failed: FATAL:  sorry, too many clients already'


def unavailable(dependency: str, source: str) -> float:
    labels = {"dependency": dependency, "source": source}
    return REGISTRY.get_sample_value("app_dependency_unavailable_total", labels) or 0.0


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interval starts with the test (another test's outage may have been logged just now)."""
    monkeypatch.setattr(errors, "dependency_warnings", OncePerInterval(60.0), raising=False)


async def test_fifty_requests_during_an_outage_log_one_warning_with_the_cause(
    settings: Settings, db: Any, monkeypatch: pytest.MonkeyPatch, fresh_warnings: None
) -> None:
    async def down(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.OperationalError(f"connection failed: {CAUSE}\nsecond line of the driver's message")

    monkeypatch.setattr(ProductService, "catalogue", down)
    before = unavailable("postgresql", "request")
    async with serve_in_loop(settings, rate_limit_enabled=False) as served:
        user = await make_user(db, served.app)
        with captured_logs() as logs:
            for _ in range(50):
                response = await served.client.get("/api/products", headers=user.headers)
                assert response.status_code == 503
            errors.dependency_warnings.interval_s = 0.0  # the interval is over: the next is said
            response = await served.client.get("/api/products", headers=user.headers)
    warnings = logs.events("dependency_unavailable")
    assert len(warnings) == 2, warnings
    [warning, next_warning] = warnings
    assert (warning["repeated"], next_warning["repeated"]) == (0, 49)
    assert warning["level"] == "warning"
    assert warning["dependency"] == "postgresql"
    assert warning["error"] == "OperationalError"
    assert CAUSE in warning["message"]
    assert "second line" not in warning["message"]
    assert warning["method"] == "GET"
    assert warning["route"] == "/api/products"
    assert unavailable("postgresql", "request") == before + 51


async def test_logins_while_valkey_is_down_log_one_throttle_warning_with_the_cause(
    settings: Settings, db: Any, controlled_valkey: ControlledValkey, fresh_warnings: None
) -> None:
    before = unavailable("valkey", "login_throttle")
    async with serve_in_loop(settings, valkey_url=controlled_valkey.url, **GENEROUS_AUTH) as served:
        user = await make_user(db, served.app)
        controlled_valkey.stop()
        try:
            with captured_logs() as logs:
                for _ in range(20):
                    response = await served.client.post(
                        "/api/auth/login", json={"email": user.email, "password": "wrong-password-1"}
                    )
                    assert response.status_code == 401  # the throttle fails open (the default)
        finally:
            controlled_valkey.start()
    warnings = logs.events("login_throttle_unavailable")
    assert len(warnings) == 1, warnings
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["error"] == "ConnectionError"
    assert str(controlled_valkey.port) in warnings[0]["message"]
    assert unavailable("valkey", "login_throttle") == before + 20


async def test_an_unhandled_error_is_logged_with_the_user_and_the_route(settings: Settings, db: Any) -> None:
    async with serve_in_loop(settings) as served:
        admin = await make_user(db, served.app, "admin")
        with captured_logs() as logs:
            response = await served.client.post("/api/admin/monitoring/test-error", headers=admin.headers)
    assert response.status_code == 500
    [line] = logs.events("unhandled_error")
    assert line["level"] == "error"
    assert line["user_id"] == admin.id
    assert line["route"] == "/api/admin/monitoring/test-error"
    assert line["method"] == "POST"
    assert "MonitoringTestError" in line["exception"]


@pytest.mark.parametrize(
    "failure",
    [
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.SerializationFailure("could not serialize access due to concurrent update"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.LockNotAvailable('could not obtain lock on row in relation "tasks"'),
    ],
    ids=lambda failure: failure.sqlstate,
)
async def test_a_statement_the_database_refused_is_not_an_outage(
    settings: Settings, db: Any, monkeypatch: pytest.MonkeyPatch, fresh_warnings: None, failure: Exception
) -> None:
    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise failure

    monkeypatch.setattr(errors, "statement_warnings", OncePerInterval(60.0), raising=False)
    monkeypatch.setattr(ProductService, "catalogue", refused)
    sqlstate = getattr(failure, "sqlstate", None)
    failures_before = (
        REGISTRY.get_sample_value("app_database_statement_failures_total", {"sqlstate": sqlstate}) or 0.0
    )
    before = unavailable("postgresql", "request")
    async with serve_in_loop(settings, rate_limit_enabled=False) as served:
        user = await make_user(db, served.app)
        with captured_logs() as logs:
            for _ in range(3):
                response = await served.client.get("/api/products", headers=user.headers)
                assert response.status_code == 503
                timed_out = sqlstate == "57014"
                assert response.headers["retry-after"] == ("5" if timed_out else "1")
                assert ("longer than the database allows" if timed_out else "concurrent") in response.json()[
                    "detail"
                ]
    assert logs.events("dependency_unavailable") == []
    [warning] = logs.events("database_statement_failed")
    assert (warning["sqlstate"], warning["route"], warning["method"]) == (sqlstate, "/api/products", "GET")
    assert unavailable("postgresql", "request") == before
    after = REGISTRY.get_sample_value("app_database_statement_failures_total", {"sqlstate": sqlstate})
    assert after == failures_before + 3
