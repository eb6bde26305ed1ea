"""The servers under test: the project (granian), the bare Litestar reference (granian, the same
settings) and the seed's design (FastAPI on uvicorn). Each runs in its own session, so one
``killpg`` reaches its workers and its process group is what the CPU meter counts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from benchmarks.harness import procfs

ROOT = Path(__file__).resolve().parents[2]
# The project's granian settings (app/cli.py `serve`), applied to the bare reference as well.
BACKLOG = 2048
READY_TIMEOUT_S = 120.0


class BenchError(RuntimeError):
    """The run cannot go on (a server died, a setup request failed, wrk printed nothing)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One server command in its own process group, its output in ``log_path``."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], port: int, ready_path: str, log_dir: Path
    ) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = False
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*DIE_WITH_HARNESS, *self.command],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll the ready path until 200 (from outside: nothing may poll from the forking process)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise BenchError(f"{self.name} exited with {code}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.ready_path).status_code == 200:
                        self.ready = True
                        return
                time.sleep(0.2)
        raise BenchError(f"{self.name} was not ready within {timeout_s:.0f}s:\n{self.log_tail()}")

    def workers(self) -> list[int]:
        """The worker processes: the main process's children (granian forks, uvicorn spawns one
        per worker), without multiprocessing's resource tracker."""
        return [pid for pid in procfs.children(self.pid) if "resource_tracker" not in procfs.cmdline(pid)]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        """``BenchError`` naming the server and its log when it exited during the run: its rows would
        be a dead server's connection errors, and the run exited 0."""
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with {self.process.returncode} during the run:\n{self.log_tail()}"
            )

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to its group, then SIGKILL after ``timeout_s``; at once for a server that never
        became ready (granian starting its workers goes on starting them after a SIGTERM)."""
        if self.process is None:
            return
        if not self.ready:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # workers that outlived the main process
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


DIE_WITH_HARNESS = [
    sys.executable,
    "-c",
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
]
"""A server's command's prefix: its main process gets SIGKILL when the harness dies however it dies
(Linux's ``PR_SET_PDEATHSIG``, kept across ``exec``). Not its workers: the setting is not inherited
by a fork, and granian's workers outlive a SIGKILLed main process, so a harness killed with SIGKILL
(only that: SIGINT, SIGTERM and SIGHUP stop every server) can leave a server's workers on its port.
``app.cli serve`` closes that by a fork hook inside granian (``serve-child``); the harness runs
granian's own command line, as the references do."""


def granian_command(factory: str, port: int, workers: int) -> list[str]:
    """granian as the project runs it: ASGI, ``--loop auto`` (uvloop), no access log, backlog 2048."""
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "auto",
        "--no-access-log",
        "--backlog",
        str(BACKLOG),
    ]


def project_server(env: dict[str, str], workers: int, log_dir: Path) -> ServerProcess:
    """``app.main:create_app`` under granian. The caller has applied the migrations already; ``env``
    holds the service URLs and the bench settings (see ``runner.project_env``)."""
    port = free_port()
    return ServerProcess(
        "project",
        granian_command("app.main:create_app", port, workers),
        {**env, "PORT": str(port)},
        port,
        "/health/ready",
        log_dir,
    )


def bare_litestar_server(env: dict[str, str], workers: int, log_dir: Path) -> ServerProcess:
    """``benchmarks/reference/bare_litestar.py`` with the project's granian settings."""
    port = free_port()
    return ServerProcess(
        "bare-litestar",
        granian_command("benchmarks.reference.bare_litestar:create_app", port, workers),
        env,
        port,
        "/hello",
        log_dir,
    )


def seed_fastapi_server(env: dict[str, str], database_url: str, workers: int, log_dir: Path) -> ServerProcess:
    """``benchmarks/reference/seed_fastapi.py`` on uvicorn (the seed ran 2 workers: the same number
    as the project's), no access log, the same backlog."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.reference.seed_fastapi:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
        "--backlog",
        str(BACKLOG),
    ]
    return ServerProcess(
        "seed-fastapi", command, {**env, "SEED_DATABASE_URL": database_url}, port, "/ready", log_dir
    )
