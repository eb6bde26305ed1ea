"""What a process that configured logging leaves behind when it dies in C."""

from __future__ import annotations

import os
import subprocess
import sys

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
