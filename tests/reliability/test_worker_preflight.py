"""The worker process and its dependencies: it starts only once Valkey and PostgreSQL answer (else
it exits 1 with one line naming the setting, its password masked), and SAQ's upkeep failures while
Valkey is away are one warning per interval, not a traceback per timer tick."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from app.core.logging import SaqLogFilter
from tests.factories import captured_logs
from tests.faults import Worker

CLOSED_PORTS = (18973, 18974)
"""Ports nothing listens on (the task's reserved range), standing for an unreachable service."""
EXIT_WITHIN_S = 120.0
"""Generous: the worker gives up after ``app.core.queues.PREFLIGHT_TIMEOUT_S`` (30 s) of retries."""
PASSWORD = "preflight-secret-pw"  # made up: the output must not show it


def nothing_listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def finished(worker: Worker) -> tuple[int | None, str]:
    """The worker's exit code (waiting past its preflight deadline) and everything it printed."""
    assert worker.process is not None
    try:
        code: int | None = worker.process.wait(EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        code = None
    output = worker.log_path.read_text(errors="replace")
    worker.stop()
    return code, output


def test_a_worker_exits_naming_the_setting_of_the_dependency_that_does_not_answer(
    tmp_path: Path, database_url: str, valkey_url: str, processes: list[Worker]
) -> None:
    valkey_port, postgres_port = CLOSED_PORTS
    assert nothing_listens(valkey_port) and nothing_listens(postgres_port)
    no_valkey = Worker(tmp_path, database_url, f"redis://:{PASSWORD}@127.0.0.1:{valkey_port}/0")
    no_postgres = Worker(
        tmp_path, f"postgresql://app:{PASSWORD}@127.0.0.1:{postgres_port}/app?sslmode=disable", valkey_url
    )
    # What compose runs: the CLI's worker checks the schema first, and must not die on it in a traceback.
    cli_no_postgres = Worker(
        tmp_path, f"postgresql://app:{PASSWORD}@127.0.0.1:{postgres_port}/app?sslmode=disable", valkey_url
    )
    cli_no_postgres.command = [sys.executable, "-m", "app.cli", "worker"]
    processes += [no_valkey, no_postgres, cli_no_postgres]
    for worker in (no_valkey, no_postgres, cli_no_postgres):
        worker.env["LOG_LEVEL"] = "INFO"  # SAQ's and the workers' start-up lines would show
        worker.start()

    for worker, setting, port in (
        (no_valkey, "VALKEY_URL", valkey_port),
        (no_postgres, "DATABASE_URL", postgres_port),
        (cli_no_postgres, "DATABASE_URL", postgres_port),
    ):
        code, output = finished(worker)
        assert code == 1, output
        lines = output.strip().splitlines()
        assert len(lines) == 1, output
        assert setting in lines[0] and f"***@127.0.0.1:{port}" in lines[0], lines[0]
        assert PASSWORD not in output
        assert "Traceback" not in output and "Upkeep" not in output and "workers_started" not in output


def _upkeep_failure(logger: logging.Logger, error: BaseException) -> None:
    try:
        raise error
    except BaseException:
        logger.exception("Upkeep task failed unexpectedly")  # what saq.worker's poll logs


def test_upkeep_failures_are_one_warning_per_interval_naming_valkey_url() -> None:
    port = CLOSED_PORTS[0]
    assert nothing_listens(port)
    try:
        redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2).ping()
    except redis.ConnectionError as exc:
        refused = exc
    else:
        pytest.fail("a closed port answered")
    logger = logging.getLogger("test.saq.upkeep")
    logger.propagate = True
    saq_filter = SaqLogFilter()  # UPKEEP_WARN_INTERVAL_S: a minute, far longer than this loop
    logger.addFilter(saq_filter)
    try:
        with captured_logs() as logs:
            for _ in range(200):
                _upkeep_failure(logger, refused)
            for _ in range(3):
                _upkeep_failure(logger, KeyError("a bug, not an outage"))
    finally:
        logger.removeFilter(saq_filter)

    upkeep = [line for line in logs.lines if line.get("logger") == "test.saq.upkeep"]
    assert [line["event"] for line in upkeep] == ["worker_upkeep_failed"] * 2, upkeep
    valkey, bug = upkeep
    assert valkey["level"] == "warning"
    assert valkey["dependency"] == "valkey" and valkey["setting"] == "VALKEY_URL"
    assert valkey["error"] == "ConnectionError"
    assert str(port) in valkey["cause"] and "\n" not in valkey["cause"]
    assert "exception" not in valkey, "no traceback for an unreachable Valkey"
    assert bug["level"] == "error" and bug["error"] == "KeyError"
    assert "Traceback" in bug["exception"], "an unexpected error keeps its traceback"
