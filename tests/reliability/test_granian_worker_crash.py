"""The image's granian (its flags from the Containerfile) when one of its workers dies.

The worker killed (SIGKILL: an OOM kill, a crash in C) is respawned and the server keeps answering;
granian's own line about it is one JSON object like every other log line, through the app's
formatter (``app/core/granian_logging.json``). It was plain text (``[ERROR] Unexpected exit from
worker-2``) in a JSON log, which a log pipeline could not parse (the operability reviewer)."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import wait_until
from tests.faults import children_of
from tests.served import ROOT, ServerProcess


def image_granian_flags() -> tuple[str, ...]:
    """The flags of the Containerfile's entrypoint this test relies on."""
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", (ROOT / "Containerfile").read_text(), re.MULTILINE)
    assert entrypoint is not None
    flags = json.loads(entrypoint.group(1))
    assert "--respawn-failed-workers" in flags
    return ("--respawn-failed-workers", "--log-config", flags[flags.index("--log-config") + 1])


@pytest.fixture
def server(database_url: str, valkey_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    served = ServerProcess(
        database_url, valkey_url, tmp_path / "server", workers=2, granian_args=image_granian_flags()
    )
    with served.running():
        yield served


async def test_a_killed_worker_is_respawned_and_granian_says_so_in_json(server: ServerProcess) -> None:
    assert server.process is not None
    workers = children_of(server.process.pid)
    assert len(workers) == 2, workers
    os.kill(min(workers), signal.SIGKILL)

    async def respawned() -> bool:
        now = children_of(server.process.pid)  # type: ignore[union-attr]
        return len(now) == 2 and now != workers

    await wait_until(respawned, 60, "granian respawns the killed worker")

    async def serves() -> bool:
        """A respawned worker's process exists before it listens: a connection made meanwhile was
        refused once in a full run (``All connection attempts failed``)."""
        async with httpx.AsyncClient(timeout=10) as http:
            try:
                return (await http.get(f"{server.base}/health/live")).status_code == 200
            except httpx.TransportError:
                return False

    await wait_until(serves, 60, "the server answers again")
    lines = [line for line in server.log_path.read_text(errors="replace").splitlines() if line.strip()]
    exits = [line for line in lines if "exit" in line.lower() and "worker" in line.lower()]
    assert exits, "\n".join(lines[-20:])
    for line in exits:
        record = json.loads(line)  # not "[ERROR] Unexpected exit from worker-1"
        assert record["logger"] == "_granian" and record["level"] in ("error", "warning", "info"), record
