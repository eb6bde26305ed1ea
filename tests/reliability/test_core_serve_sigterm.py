"""SIGTERM to ``python -m app.cli serve`` (what ``just serve`` runs) while a request is in flight.

The launcher used to give granian's workers 2 s to stop (``workers_kill_timeout``) and SIGKILL
granian 3.5 s after the signal, so a request still waiting for GitHub was cut off (the client saw
the connection drop), while granian run directly (the container) answered it. The grace is now
derived from the settings: the longest request the app makes a client wait, plus the in-process
SAQ worker's ``WORKER_SHUTDOWN_GRACE_S``.

Injected: a GitHub that takes ``GITHUB_SLOW_S`` to answer (longer than the old grace, within the
app's own ``GITHUB_TIMEOUT_S`` and ``GITHUB_COLD_WAIT_S``); SIGTERM once the app's request to it has
arrived. Asserted: the in-flight lookup gets the app's answer (GitHub's 404 as a problem), the
launcher exits 0 and granian killed no worker.
"""

from __future__ import annotations

import http.server
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.config import DEFAULT_DEMO_PASSWORD
from tests.reliability.test_serve import (  # noqa: F401 - fixtures
    Launcher,
    data_dir,
    launchers,
    start,
)

GITHUB_SLOW_S = 6.0
"""The fault: how long the fake GitHub takes to answer (the old launcher cut requests off at 2-3.5 s)."""
PORTS = range(18950, 18970)


class _SlowGitHub(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SlowHandler)
        self.asked = threading.Event()


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    server: _SlowGitHub

    def do_GET(self) -> None:
        self.server.asked.set()
        time.sleep(GITHUB_SLOW_S)  # the injected fault: a slow upstream, not synchronisation
        body = b'{"message":"Not Found"}'
        self.send_response(404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def slow_github() -> Iterator[_SlowGitHub]:
    server = _SlowGitHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def test_sigterm_lets_a_request_waiting_for_github_finish(
    launchers: list[Launcher],  # noqa: F811 - the fixtures of test_serve.py
    data_dir: Path,  # noqa: F811
    slow_github: _SlowGitHub,
) -> None:
    github = f"http://127.0.0.1:{slow_github.server_address[1]}"
    launcher = start(launchers, data_dir, _free_port(), env={"GITHUB_API_URL": github})
    launcher.read_banner()
    login = httpx.post(
        f"{launcher.base}/api/auth/login",
        json={"email": "ana@example.com", "password": DEFAULT_DEMO_PASSWORD},
        timeout=30,
    )
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

    with ThreadPoolExecutor(1) as pool:
        lookup = pool.submit(
            httpx.get, f"{launcher.base}/api/github/users/octocat", headers=headers, timeout=120
        )
        assert slow_github.asked.wait(60), "the lookup never reached GitHub"
        launcher.process.send_signal(signal.SIGTERM)
        response = lookup.result(timeout=120)

    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert launcher.read_to_exit(120) == 0, launcher.tail()
    assert "refused to gracefully stop" not in "\n".join(launcher.output), launcher.tail()
