"""What a process that configured logging leaves behind when it dies in C, or cannot start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "k" * 16 + "0123456789ABCDEF",
    "DATABASE_URL": "postgresql://app:secret@127.0.0.1:1/none",
    "VALKEY_URL": "redis://127.0.0.1:1/0",
}
"""Settings that load: nothing is connected to before the checks."""


def start_in_production(argv: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``argv`` run to its end with ``PRODUCTION`` and ``environ`` over this process's environment."""
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, **PRODUCTION, **environ},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("refused", "refusal"),
    [
        (
            {"SECRET_KEY": ""},
            "configuration error: SECRET_KEY must be set to a random value of 32+ characters in "
            "production (e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')",
        ),
        (
            {"MONITORING_ALERT_RULES": "not json"},
            "configuration error: MONITORING_ALERT_RULES is not a valid rule list: JSON is malformed",
        ),
        (
            {"FILES_DIR": "/proc/no-files"},
            f"configuration error: FILES_DIR '/proc/no-files' cannot hold uploads for user id {os.getuid()}: "
            "No such file or directory",
        ),
    ],
    ids=["settings", "monitoring-rules", "files-dir"],
)
def test_settings_the_api_cannot_start_with_are_one_line_naming_the_variable(
    tmp_path: Path, refused: dict[str, str], refusal: str
) -> None:
    """The image starts granian directly, which builds its log formatter first: a refused setting
    was the middle of a 50-line traceback whose last line blamed the formatter, and a module's
    (alert rules, the files directory) a crash loop of every worker, or a healthy start and a 500
    for every upload."""
    started = start_in_production(
        [*GRANIAN, "--log-config", str(GRANIAN_LOG_CONFIG), "--port", "0", "app.main:create_app"],
        {"DATA_DIR": str(tmp_path), **refused},
    )

    assert started.returncode == 1
    [line] = started.stderr.strip().splitlines()
    assert line.startswith(refusal), line


def test_the_worker_refuses_a_modules_settings_in_one_line_before_it_connects(tmp_path: Path) -> None:
    started = start_in_production(
        [sys.executable, "-m", "app.cli", "worker"],
        {"DATA_DIR": str(tmp_path), "MONITORING_ALERT_RULES": "[1]"},
    )

    assert started.returncode == 1
    assert started.stderr.strip().splitlines() == [
        "configuration error: MONITORING_ALERT_RULES is not a valid rule list: Expected `object`, got "
        "`int` - at `$[0]`"
    ], started.stderr
