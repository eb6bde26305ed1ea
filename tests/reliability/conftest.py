"""Fixtures of the reliability suite: an HTTP client for many connections, and the processes a test
starts (every one killed at the end, whatever happened)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.faults import Worker
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
