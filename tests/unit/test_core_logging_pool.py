"""psycopg's pool warned at every failed attempt to connect, about once a second while PostgreSQL
was away (75 lines in a 70 s outage): ``PoolLogFilter`` keeps one a minute, saying how many it
dropped before it. Its warnings about each connection given up on (a cut statement's failed
rollbacks, the pool closing it) are kept once a minute per kind (``DiscardedConnectionLogFilter``)."""

from __future__ import annotations

import logging

from app.core.logging import DiscardedConnectionLogFilter, PoolLogFilter, configure_logging


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("psycopg.pool", logging.WARNING, __file__, 1, message, (), None)


def test_one_connect_failure_a_minute_is_kept_with_the_count_of_those_dropped() -> None:
    pool = PoolLogFilter(interval_s=3600)
    kept = [pool.filter(record("error connecting in 'app': connection refused")) for _ in range(5)]
    other = pool.filter(record("discarding closed connection"))
    pool.warnings.interval_s = 0  # the minute has passed
    later = record("error connecting in 'app': connection refused")

    assert kept == [True, False, False, False, False] and other
    assert pool.filter(later) and later.repeated == 4  # type: ignore[attr-defined]


def test_a_connect_failure_is_one_event_with_its_cause_apart_and_masked() -> None:
    """Review opsrev: the pool's text, cause included, was the line's event: no two alike to group."""
    failed = logging.LogRecord(
        "psycopg.pool",
        logging.WARNING,
        __file__,
        1,
        "error connecting in %r: %s",
        ("pool-1", "connection to postgresql://app:s3cret@db:5432/app failed: Connection refused"),
        None,
    )
    assert PoolLogFilter(interval_s=3600).filter(failed)
    assert failed.getMessage() == "database_pool_connect_failed"
    assert (failed.dependency, failed.setting) == ("postgresql", "DATABASE_URL")  # type: ignore[attr-defined]
    assert failed.pool == "pool-1", "which pool: the app's or the page-view sink's"  # type: ignore[attr-defined]
    assert "Connection refused" in failed.cause and "s3cret" not in failed.cause  # type: ignore[attr-defined]


def test_the_pools_logger_has_the_filter_once_configured() -> None:
    configure_logging("WARNING")  # the tests' level (tests/factories.py)
    configure_logging("WARNING")
    filters = logging.getLogger("psycopg.pool").filters
    assert len([f for f in filters if isinstance(f, PoolLogFilter)]) == 1


def test_one_line_per_kind_of_discarded_connection_a_minute_with_the_count_dropped() -> None:
    discards = DiscardedConnectionLogFilter(interval_s=3600)
    rollback = "error ignored in rollback on %s: %s"
    kept = [
        discards.filter(
            logging.LogRecord(
                "psycopg", logging.WARNING, __file__, 1, rollback, ("<conn>", "in progress"), None
            )
        )
        for _ in range(3)
    ]
    closing = record("closing returned connection: <conn>")
    assert kept == [True, False, False] and discards.filter(closing), "each kind has its own minute"
    assert closing.getMessage() == "database_connection_discarded"
    assert closing.reason == "closing returned connection"  # type: ignore[attr-defined]
    assert discards.filter(record("connection given by 'app'")), "other lines pass as they are"
    ours = [record("rolling back returned connection: <conn>") for _ in range(2)]
    assert all(discards.filter(line) for line in ours), "a connection given back in a transaction: our bug"
    assert ours[1].getMessage() == "rolling back returned connection: <conn>"
    discards.warnings.interval_s = 0
    later = logging.LogRecord("psycopg", logging.WARNING, __file__, 1, rollback, ("<conn>", "x"), None)
    assert discards.filter(later) and later.repeated == 2  # type: ignore[attr-defined]
    assert later.cause == "error ignored in rollback on <conn>: x"  # type: ignore[attr-defined]


def test_psycopgs_loggers_have_the_discard_filter_once_configured() -> None:
    configure_logging("WARNING")
    configure_logging("WARNING")
    for name in ("psycopg", "psycopg.transaction", "psycopg.pool"):
        filters = logging.getLogger(name).filters
        assert len([f for f in filters if isinstance(f, DiscardedConnectionLogFilter)]) == 1, name


def test_each_pools_connect_failures_have_their_own_minute() -> None:
    """Review: the app's pool and the page-view sink's share PostgreSQL, and fail together; with one
    throttle, the second's failures were counted under the first's name."""
    pools = PoolLogFilter(interval_s=3600)

    def failed(pool: str) -> logging.LogRecord:
        return logging.LogRecord(
            "psycopg.pool",
            logging.WARNING,
            __file__,
            1,
            "error connecting in %r: %s",
            (pool, "refused"),
            None,
        )

    app, sink, again = failed("app"), failed("pageview-sink"), failed("app")
    assert pools.filter(app) and pools.filter(sink) and not pools.filter(again)
    assert (app.pool, sink.pool) == ("app", "pageview-sink")  # type: ignore[attr-defined]


def test_a_chain_of_attempts_given_up_is_not_logged() -> None:
    """The pools give a chain of attempts up after ``reconnect_timeout_s`` (seconds) and start a new
    one on demand: psycopg's line for it would come every few seconds of an outage, which the failed
    attempts' own line already tells."""
    pool = PoolLogFilter(interval_s=3600)
    given_up = logging.LogRecord(
        "psycopg.pool",
        logging.WARNING,
        __file__,
        1,
        "reconnection attempt in pool %r failed after %s sec",
        ("app", 10.0),
        None,
    )
    assert not pool.filter(given_up)
    assert pool.filter(record("discarding closed connection")), "the pool's other lines pass"
