"""Which exceptions of a request are captured: only what ends as a 500 (and outages, apart)."""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
import pytest
import redis.exceptions
import valkey.exceptions
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from app.core.errors import ConflictError, ServiceUnavailableError, dependency_down, exception_handlers
from app.core.pool import DatabaseUnreachable
from app.db.models import MonitoringGroupKind
from app.domains.monitoring.capture import (
    EventBuffer,
    RawEvent,
    _handler_for,
    classify,
    request_event,
)
from app.domains.monitoring.fingerprint import RawException

ERROR = MonitoringGroupKind.ERROR
UNAVAILABLE = MonitoringGroupKind.UNAVAILABLE


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (RuntimeError("bug"), ERROR),
        (KeyError("bug"), ERROR),
        (HTTPException(status_code=500, detail="x"), ERROR),
        (HTTPException(status_code=502, detail="x"), ERROR),
        (NotFoundException(), None),
        (ValidationException("bad"), None),
        (ConflictError("taken"), None),
        (ServiceUnavailableError("sink full"), None),  # a deliberate 503, not a fault
        (psycopg.DataError("out of range"), None),  # answered 400
        (psycopg.OperationalError("connection refused"), UNAVAILABLE),
        (psycopg_pool.PoolTimeout("no connection"), UNAVAILABLE),
        (valkey.exceptions.ConnectionError("down"), UNAVAILABLE),
        (valkey.exceptions.TimeoutError("no answer"), UNAVAILABLE),
    ],
)
def test_what_is_captured(exc: Exception, kind: MonitoringGroupKind | None) -> None:
    assert classify(exc) == kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        # The server answered about our statement: a bug of the site, grouped by its stack.
        (psycopg.errors.DeadlockDetected("deadlock detected"), ERROR),
        (psycopg.errors.SerializationFailure("could not serialize access"), ERROR),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), ERROR),
        (psycopg.errors.LockNotAvailable("could not obtain lock"), ERROR),
        (psycopg.errors.ProgramLimitExceeded("statement too complex"), ERROR),
        # The server (or the way to it) is gone: an outage.
        (psycopg.errors.ConnectionFailure("connection failure"), UNAVAILABLE),
        (psycopg.errors.ConnectionTimeout("connection timeout expired"), UNAVAILABLE),
        (psycopg.errors.TooManyConnections("too many clients already"), UNAVAILABLE),
        (psycopg.errors.DiskFull("could not extend file"), UNAVAILABLE),
        (psycopg.errors.AdminShutdown("terminating connection"), UNAVAILABLE),
        (psycopg.errors.CrashShutdown("terminating connection"), UNAVAILABLE),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), UNAVAILABLE),
        (psycopg_pool.PoolClosed("the pool is closed"), UNAVAILABLE),
    ],
)
def test_only_a_database_going_away_is_an_outage(exc: Exception, kind: MonitoringGroupKind) -> None:
    """Every one of these is answered 503 by the dependency-down handler; only some are outages."""
    assert exception_handlers[psycopg.OperationalError] is _handler_for(exception_handlers, exc)
    assert classify(exc) == kind
    assert dependency_down(exc) == (kind == UNAVAILABLE)


def test_a_request_event_carries_the_context_and_no_body() -> None:
    class Caller:
        id = 7

    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        scope = {
            "path_template": "/api/orders/{order_id:int}",
            "path": "/api/orders/12",
            "method": "POST",
            "state": {"request_id": "r-1"},
            "user": Caller(),
            "headers": [(b"authorization", b"Bearer secret"), (b"cookie", b"s=1")],
            "query_string": b"token=secret",
        }
        event = request_event(exc, scope, ERROR)  # type: ignore[arg-type]
    assert event.context == {
        "source": "request",
        "route": "/api/orders/{order_id:int}",
        "method": "POST",
        "request_id": "r-1",
        "user_id": 7,
    }
    assert event.user_id == 7
    assert [part.type for part in event.chain] == ["RuntimeError"]
    assert event.chain[-1].frames[-1][1].endswith("test_a_request_event_carries_the_context_and_no_body")


def test_an_outage_is_one_group_per_dependency_and_exception_name() -> None:
    """Review opsrev: one Valkey outage opened two groups (and sent two "new outage" alerts), the app's
    client raising ``valkey.exceptions.TimeoutError`` and SAQ's ``redis.exceptions.TimeoutError``."""
    scope: Any = {"method": "GET", "state": {}}
    event = request_event(psycopg_pool.PoolTimeout("x"), scope, UNAVAILABLE)
    assert event.fixed == ("postgresql", "PoolTimeout")
    assert event.title == "Dependency unavailable: PoolTimeout"
    ours = request_event(valkey.exceptions.TimeoutError("x"), scope, UNAVAILABLE)
    saqs = request_event(redis.exceptions.TimeoutError("x"), scope, UNAVAILABLE)
    assert ours.fixed == saqs.fixed == ("valkey", "TimeoutError")
    sooner = request_event(DatabaseUnreachable("refused"), scope, UNAVAILABLE)  # review: a second group
    assert (sooner.fixed, sooner.title) == (event.fixed, event.title)


def test_the_buffer_counts_by_problem_and_is_bounded() -> None:
    buffer = EventBuffer(capacity=2)

    def event(message: str) -> RawEvent:
        try:
            raise RuntimeError(message)  # one line: every event below has the same frames
        except RuntimeError as exc:
            return request_event(exc, {"method": "GET", "state": {}}, ERROR)  # type: ignore[arg-type]

    same = [event(f"boom {n}") for n in range(1000)]
    assert all(buffer.add(e) for e in same)
    assert len(buffer) == 1000
    stackless = [RawEvent(ERROR, 1.0, (RawException("Timeout", m, ()),), {}) for m in ("a", "b")]
    assert [buffer.add(e) for e in stackless] == [True, False], "a third distinct problem is dropped"
    [storm, timeout] = buffer.drain()
    assert (storm.count, len(storm.samples), timeout.count) == (1000, 3, 1)
    assert storm.samples[0] is same[0] and storm.samples[-1] is same[-1]
    assert len(buffer) == 0 and buffer.drain() == []
