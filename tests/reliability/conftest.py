"""Fixtures of the reliability suite: an HTTP client for many connections, the processes a test
starts (every one killed at the end, whatever happened), and a PostgreSQL of the test's own."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.faults import PrivatePostgres, Worker
from tests.served import ServerProcess


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as client:
        yield client


@pytest.fixture
def processes() -> Iterator[list[ServerProcess | Worker]]:
    started: list[ServerProcess | Worker] = []
    yield started
    for process in started:
        if isinstance(process, ServerProcess):
            process.kill(signal.SIGKILL)
        else:
            process.stop(signal.SIGKILL)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this test's own, which it may crash, pause or restart (never the session's)."""
    server = PrivatePostgres()
    server.start()
    yield server
    server.close()
