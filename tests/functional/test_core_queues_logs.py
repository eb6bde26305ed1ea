"""What a real SAQ worker (the project's, with its hooks and logging) logs about its jobs.

SAQ logs every failed attempt with ``logger.exception("Error processing job %s", job)`` (the job's
repr lists its kwargs and its previous traceback), and ``Enqueuing``/``Processing``/``Retrying``/
``Finished`` at INFO for every job. The project keeps kwargs out of every line, logs a retry as one
WARNING without a traceback, the final failure as one ERROR, the chatter at DEBUG, and names the job
on every line logged while it runs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import redis.asyncio as redis
import structlog
from litestar_saq import SAQPlugin
from saq import Worker
from saq.job import Job
from saq.queue.redis import RedisQueue
from valkey.asyncio import Valkey

from app.config import Settings
from app.core.logging import SaqLogFilter, current_request_id, forget_request_id
from app.core.queues import bind_job_context, build_saq_config
from app.core.services import Services
from app.modules import MODULES
from tests.factories import captured_logs

PERSONAL = {"display_name": "Alice Example", "title": "Quarterly-layoffs-plan.pdf"}


async def always_fails(ctx: Any, **kwargs: Any) -> None:
    structlog.get_logger("tests.jobs").warning("inside_failing_job")
    raise RuntimeError("a bug in the job")


async def fails_on_an_outage(ctx: Any, **kwargs: Any) -> None:
    raise psycopg.OperationalError("connection failed: server closed the connection unexpectedly")


async def logs_and_succeeds(ctx: Any, **kwargs: Any) -> None:
    structlog.get_logger("tests.jobs").warning("inside_job")


@pytest.fixture
async def worker(settings: Settings, valkey: Valkey) -> AsyncIterator[Worker]:
    """The default queue's worker as the project builds it (hooks included), on a private queue."""
    assert settings.valkey_url
    config = build_saq_config(Services(settings, MODULES), settings.valkey_url, run_workers_in_process=True)
    built = SAQPlugin(config).get_workers()["default"]
    client = redis.from_url(settings.valkey_url)
    built.queue = RedisQueue(client, name=f"logs-{uuid.uuid4().hex[:8]}")
    built.functions["always_fails"] = always_fails
    built.functions["fails_on_an_outage"] = fails_on_an_outage
    built.functions["logs_and_succeeds"] = logs_and_succeeds
    try:
        yield built
    finally:
        await client.aclose()
        await config.queue_instances["default"].redis.aclose()  # type: ignore[index,union-attr]


async def test_a_job_failing_every_attempt_logs_one_error_and_never_its_kwargs(worker: Worker) -> None:
    with captured_logs(logging.DEBUG) as logs:
        await worker.queue.enqueue("always_fails", key="outbox:42", retries=3, **PERSONAL)
        for _ in range(3):
            assert await worker.process()
    job = await worker.queue.job("outbox:42")
    assert job is not None and job.status.name == "FAILED" and job.attempts == 3
    for value in PERSONAL.values():
        assert value not in logs.text
    lines = logs.lines
    errors = [line for line in lines if line["level"] in ("error", "critical")]
    assert len(errors) == 1, errors
    [failed] = errors
    assert failed["event"] == "job_failed"
    assert (failed["job_function"], failed["job_key"], failed["job_attempt"]) == (
        "always_fails",
        "outbox:42",
        3,
    )
    assert failed["error"] == "RuntimeError"
    assert failed["exception"].count("Traceback (most recent call last)") == 1
    retries = [line for line in lines if line["event"] == "job_retrying"]
    assert [(line["level"], line["job_attempt"]) for line in retries] == [("warning", 1), ("warning", 2)]
    assert all(line["error"] == "RuntimeError" and "exception" not in line for line in retries)
    assert all(line["cause"] == "a bug in the job" for line in retries), "what went wrong, each time"
    chatter = [
        line
        for line in lines
        if line["logger"] == "saq"
        and line["event"].startswith(("Enqueuing", "Processing", "Retrying", "Finished"))
    ]
    assert chatter, "SAQ's per-job lines are still there at DEBUG"
    assert {line["level"] for line in chatter} == {"debug"}


async def test_a_job_failing_on_an_outage_logs_a_warning_without_its_traceback(worker: Worker) -> None:
    """A cron failing on every run of a PostgreSQL outage (every 10 s) logged a ~1.5 KB traceback
    each time: the database is away, and the first line says so."""
    with captured_logs(logging.DEBUG) as logs:
        await worker.queue.enqueue("fails_on_an_outage", key="outbox:46", retries=1)
        assert await worker.process()
    [failed] = [line for line in logs.lines if line["event"] == "job_failed"]
    assert (failed["level"], failed["error"]) == ("warning", "OperationalError")
    assert "exception" not in failed and "server closed the connection" in failed["cause"]


async def test_per_job_chatter_is_not_logged_at_info(worker: Worker) -> None:
    with captured_logs(logging.INFO) as logs:
        await worker.queue.enqueue("logs_and_succeeds", key="outbox:43", **PERSONAL)
        assert await worker.process()
    assert [line for line in logs.lines if line["logger"] == "saq"] == []


async def test_lines_logged_inside_a_job_name_the_job_and_the_context_is_cleared_after(
    worker: Worker,
) -> None:
    with captured_logs() as logs:
        await worker.queue.enqueue("logs_and_succeeds", key="outbox:44")
        await worker.queue.enqueue("always_fails", key="outbox:45", retries=1)
        assert await worker.process()
        assert "job_key" not in structlog.contextvars.get_contextvars()
        assert await worker.process()
        assert "job_key" not in structlog.contextvars.get_contextvars(), "cleared after a failure too"
    [inside] = logs.events("inside_job")
    assert (inside["job_function"], inside["job_key"], inside["job_attempt"]) == (
        "logs_and_succeeds",
        "outbox:44",
        1,
    )
    [failing] = logs.events("inside_failing_job")
    assert (failing["job_function"], failing["job_key"]) == ("always_fails", "outbox:45")


async def test_a_jobs_lines_carry_its_requests_id_and_its_ids_never_its_other_arguments(
    worker: Worker,
) -> None:
    """A reservation that failed in the background could not be traced to the order's request (the
    operability reviewer): the relay gives a job the ``request_id`` of the request that wrote its
    outbox row (in its ``meta``), and its integer ``*_id`` arguments are logged with it."""
    with captured_logs() as logs:
        await worker.queue.enqueue(
            "logs_and_succeeds", key="outbox:47", meta={"request_id": "req-47"}, order_id=7, **PERSONAL
        )
        assert await worker.process()
        assert not {"request_id", "order_id"} & set(structlog.contextvars.get_contextvars())
    [inside] = logs.events("inside_job")
    assert (inside["request_id"], inside["order_id"], inside["job_key"]) == ("req-47", 7, "outbox:47")
    for value in PERSONAL.values():
        assert value not in logs.text


def _failed_attempt(logger: logging.Logger, job: Job, error: BaseException) -> None:
    try:
        raise error
    except BaseException:
        logger.exception("Error processing job %s", job)  # what saq.worker logs for each attempt


def test_an_outage_failing_jobs_is_one_warning_per_interval_naming_the_dependency() -> None:
    """A 50 s PostgreSQL pause wrote 18 job warnings a minute per worker, none saying which dependency
    failed (the operability reviewer). A retry, or a cron's run (fault review: one every 10 s said each),
    is said once per function and error type per interval, with the dependency, its setting and how
    many were dropped since; another job's last failure always; a bug, a job past its time limit or
    a full disk as an error with its traceback, never as Valkey's."""
    logger = logging.getLogger("test.saq.jobs")
    saq_filter = SaqLogFilter()  # a minute's interval, far longer than this loop
    logger.addFilter(saq_filter)
    outage = psycopg.OperationalError("connection failed: server closed the connection unexpectedly")
    cron = Job("reserve_stale_orders", key="cron:reserve_stale_orders", retries=3, attempts=1)
    unretried_cron = Job("expire_reservations", key="cron:expire_reservations", retries=1, attempts=1)
    daily = [Job("purge_rollups", key="cron:purge_rollups", retries=5, attempts=n) for n in range(1, 6)]
    retried = Job("reserve_order", key="outbox:9", retries=2, attempts=1)
    last = Job("reserve_order", key="outbox:9", retries=2, attempts=2)
    try:
        with captured_logs() as logs:
            for _ in range(30):
                _failed_attempt(logger, cron, outage)
                _failed_attempt(logger, unretried_cron, outage)  # its next run is due on schedule
            for attempt in daily:  # review: its last failure hid behind its first retry's line
                _failed_attempt(logger, attempt, outage)
            _failed_attempt(logger, retried, outage)
            _failed_attempt(logger, last, outage)  # within the interval: a last failure is still said
            _failed_attempt(logger, last, KeyError("a bug, not an outage"))
            _failed_attempt(logger, last, TimeoutError())  # a job past its time limit: not Valkey's
            _failed_attempt(logger, last, OSError(28, "No space left on device"))
    finally:
        logger.removeFilter(saq_filter)
    lines = [line for line in logs.lines if line.get("logger") == "test.saq.jobs"]
    assert [(line["event"], line["job_function"], line["level"]) for line in lines] == [
        ("job_retrying", "reserve_stale_orders", "warning"),
        ("job_failed", "expire_reservations", "warning"),
        ("job_retrying", "purge_rollups", "warning"),
        ("job_failed", "purge_rollups", "warning"),
        ("job_retrying", "reserve_order", "warning"),
        ("job_failed", "reserve_order", "warning"),
        ("job_failed", "reserve_order", "error"),
        ("job_failed", "reserve_order", "error"),
        ("job_failed", "reserve_order", "error"),
    ]
    first = lines[0]
    assert (first["dependency"], first["setting"]) == ("postgresql", "DATABASE_URL")
    assert first["repeated"] == 0 and "server closed" in first["cause"] and "exception" not in first
    assert all("dependency" not in line and "Traceback" in line["exception"] for line in lines[6:])


async def test_what_a_job_enqueues_carries_the_request_that_caused_the_job() -> None:
    """A reservation's feed event (an outbox row written inside the job) lost its request id when the
    outbox read only the request layer's binding (the diff reviewer)."""
    job = Job("reserve_order", key="outbox:48", meta={"request_id": "req-48"}, kwargs={"order_id": 3})
    ctx: Any = {"job": job}
    await bind_job_context(ctx)
    try:
        assert current_request_id() == "req-48"
    finally:
        structlog.contextvars.unbind_contextvars("job_function", "job_key", "job_attempt", "order_id")
        forget_request_id()
    assert current_request_id() is None
