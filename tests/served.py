"""The real server (granian) as a subprocess on the test database and Valkey.

Used by every test that needs a served app: the reliability suite (SIGKILL mid-load), the browser
suite (a real Chromium) and the API contract run (Schemathesis). The subprocess runs in its own
session, so ``killpg`` reaches granian's workers as well as its main process. Its environment is
built from scratch (plus ``PATH``/``HOME``), so a developer's ``SINK_DRIVER`` or ``RATE_LIMIT_*``
never changes what a test measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 45.0
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, for a server that binds it later: below the kernel's ephemeral range (a
    client socket's local port, which the suite opens by the thousand, comes from that range; a
    port from ``bind(0)`` did too, so a connection could take it before the server bound it) and
    never handed out before in this process."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    if ephemeral > 2048:  # else no room below it outside the privileged ports: fall back to bind(0)
        for _ in range(1000):
            port = random.randrange(max(1024, ephemeral // 2), ephemeral)
            if port in _HANDED_OUT:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _HANDED_OUT.add(port)
    return port


class ServerProcess:
    """granian serving ``app.main:create_app`` on 127.0.0.1 with ``workers`` processes."""

    def __init__(
        self,
        database_url: str,
        valkey_url: str,
        data_dir: Path,
        *,
        workers: int = 2,
        env: dict[str, str] | None = None,
        granian_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = {
            **{name: os.environ[name] for name in _INHERITED if name in os.environ},
            "APP_ENV": "test",
            "PYTHONFAULTHANDLER": "1",  # a worker that crashes in C leaves its stacks in the log
            "DATABASE_URL": database_url,
            "VALKEY_URL": valkey_url,
            "DATA_DIR": str(data_dir),
            "LOG_LEVEL": "WARNING",
            "WORKER_IN_PROCESS": "false",
            "DATABASE_POOL_MIN": "1",
            "DATABASE_POOL_MAX": "4",
            # No periodic checks within a session: a served process outlives tests (the browser tests'
            # lives for the session), and its checks ran in whichever test's database was there: cron
            # monitors reported missed slots, and the hourly purge (its tick reclaimable after every
            # truncation) deleted a test's retention-old rows under it (the purge-chunks flake).
            "MONITORING_CHECK_INTERVAL_S": "3600",
            **(env or {}),
        }
        self.granian_args = granian_args
        self.log_path = data_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--factory",
                "app.main:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--loop",
                "auto",
                "--no-access-log",
                *self.granian_args,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(self, client: httpx.AsyncClient, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``/health/ready`` until 200; fail with the server's log if it exits or never answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.base}/health/ready", timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        pytest.fail(f"the server was not ready within {timeout_s:.0f}s:\n{self.log_tail()}")

    def wait_ready_sync(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """``wait_ready`` for synchronous callers (session fixtures, Playwright's sync API)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    pytest.fail(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base}/health/ready", timeout=2).status_code == 200:
                        return
                time.sleep(0.1)
        pytest.fail(f"the server was not ready within {timeout_s:.0f}s:\n{self.log_tail()}")

    @contextlib.contextmanager
    def running(self) -> Iterator[ServerProcess]:
        """Started and ready for the ``with`` block (a fixture's ``yield``), stopped with SIGTERM (its
        own way of stopping) when it ends, however it ends."""
        self.start()
        try:
            self.wait_ready_sync()
            yield self
        finally:
            self.kill(signal.SIGTERM)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self, sig: signal.Signals = signal.SIGKILL, timeout_s: float = 10.0) -> None:
        """Signal the whole process group; SIGKILL whatever is left after ``timeout_s``."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # workers outliving the main process
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
