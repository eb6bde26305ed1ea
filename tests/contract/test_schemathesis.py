"""The API keeps its published contract under Schemathesis.

The real server (granian, ``tests.served.ServerProcess``) runs on the test database and Valkey with
the rate limits raised (the fuzzer sends thousands of requests; at the default quotas most would be
429s, which hide what they were meant to test). An administrator registers and logs in through the
API, and ``st run`` (Schemathesis's CLI, as a developer would run it) exercises every operation of
``/schema/openapi.json`` with ``--checks all --mode all``: the examples, coverage, fuzzing and
stateful phases, positive and negative data. Any failure fails the test and prints the report.

An administrator, because it reaches every operation: a member gets 403 from the admin routes, so
their success paths would never be exercised. Administrators cannot demote or deactivate themselves,
so the fuzzer cannot lock its own account out mid-run.

Excluded, with the reason:
- ``POST /api/auth/logout``: it revokes the run's own token, after which every request is a 401 and
  the rest of the run tests nothing. Its contract is covered by tests/functional/test_auth_*.
The SAQ dashboard (``/saq``) and ``/metrics`` are not in the schema, so they are not fuzzed.

What the schema cannot say (a rejection that depends on stored data or on a combination of
parameters) is allowed per operation in ``schemathesis.toml`` next to this file, each with its rule.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection

from tests.fakes.github import serve_fake_github
from tests.served import ServerProcess

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = 20261130
EXAMPLES_PER_OPERATION = 25
RUN_DEADLINE_S = 540
"""A hang guard under this test's pytest timeout: the run takes 1.5 minutes on an idle 2-core machine,
and a loaded one must not fail it."""
UNLIMITED = {
    "RATE_LIMIT_DEFAULT_PER_MINUTE": "1000000",
    "RATE_LIMIT_DEFAULT_PER_HOUR": "10000000",
    "RATE_LIMIT_AUTH_PER_MINUTE": "1000000",
    "RATE_LIMIT_AUTH_PER_HOUR": "10000000",
    "RATE_LIMIT_INGEST_PER_MINUTE": "1000000",
    "LOGIN_MAX_FAILURES": "1000000",
}
ADMIN = {"email": "contract-admin@example.com", "password": "contract-password-123", "display_name": "Fuzz"}


@pytest.fixture
def server(database_url: str, valkey_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """The app served for real, talking to a local fake GitHub (never the internet), with its jobs
    running in process so a refresh's event stream ends instead of waiting for a worker."""
    with serve_fake_github() as github:
        env = {**UNLIMITED, "GITHUB_API_URL": github.url, "WORKER_IN_PROCESS": "true"}
        served = ServerProcess(database_url, valkey_url, tmp_path / "server", env=env)
        with served.running():
            yield served


async def admin_token(base: str, db: AsyncConnection[Any]) -> str:
    """Register through the API, promote in the database, log in through the API."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        registered = await client.post("/api/auth/register", json=ADMIN)
        assert registered.status_code in (201, 202), registered.text
        await db.execute("update users set role = 'admin' where email = %s", (ADMIN["email"].lower(),))
        login = await client.post(
            "/api/auth/login", json={"email": ADMIN["email"], "password": ADMIN["password"]}
        )
        assert login.status_code == 200, login.text
        token: str = login.json()["access_token"]
        return token


@pytest.mark.timeout(RUN_DEADLINE_S + 60)
async def test_every_operation_keeps_the_published_contract(
    server: ServerProcess, db: AsyncConnection[Any], tmp_path: Path
) -> None:
    token = await admin_token(server.base, db)
    command = [
        sys.executable,
        str(Path(__file__).with_name("schemathesis_cli.py")),
        "--config-file",
        str(CONFIG),
        "run",
        f"{server.base}/schema/openapi.json",
        "--checks",
        "all",
        "--mode",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--header",
        f"Authorization: Bearer {token}",
        "--exclude-path",
        "/api/auth/logout",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--workers",
        "2",
        "--generation-database",
        "none",
        "--no-color",
        "--output-truncate",
        "false",
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_DEADLINE_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    report = output.decode(errors="replace")
    assert process.returncode == 0, (
        f"Schemathesis found contract failures:\n{report}\n\nserver log:\n{server.log_tail(60)}"
    )
    # A run that tested nothing would exit 0 too.
    assert "Tested: " in report and "No operations" not in report, report
