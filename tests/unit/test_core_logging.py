"""What a process that configured logging leaves behind when it dies in C, or cannot start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.core.logging import GRANIAN_LOG_CONFIG
from tests.served import ROOT

CRASH = """
import ctypes
from app.core.logging import configure_logging

configure_logging("WARNING")

def serve_a_request():
    ctypes.string_at(0)  # a read through a null pointer, as a driver's use-after-free would

serve_a_request()
"""


def test_a_crash_in_c_leaves_the_python_stack_on_stderr() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert crashed.returncode != 0
    stderr = crashed.stderr.decode()
    assert "Fatal Python error: Segmentation fault" in stderr, stderr
    assert "serve_a_request" in stderr, stderr


GRANIAN = (sys.executable, "-m", "granian", "--interface", "asgi", "--factory")
"""How the image starts the API (``Containerfile``)."""


def test_settings_granian_cannot_start_with_are_one_line_naming_the_variable(tmp_path: Path) -> None:
    """The image starts granian directly, which builds its log formatter first: a refused setting
    was the middle of a 50-line traceback whose last line blamed the formatter."""
    environ = {**os.environ, "APP_ENV": "production", "DATA_DIR": str(tmp_path)}
    environ.pop("SECRET_KEY", None)
    started = subprocess.run(
        [*GRANIAN, "--log-config", str(GRANIAN_LOG_CONFIG), "--port", "0", "app.main:create_app"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert started.returncode == 1
    assert started.stderr.strip().splitlines() == [
        "configuration error: SECRET_KEY must be set to a random value of 32+ characters in production "
        "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')"
    ], started.stderr
