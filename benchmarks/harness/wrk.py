"""Running wrk with a scenario script from ``benchmarks/wrk/`` and reading its summary.

Every script loads ``common.lua``, whose ``done()`` prints one line ``BENCH_JSON {...}``: wrk's
counts and latency percentiles in microseconds.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import subprocess
from typing import Any

from benchmarks.harness.servers import ROOT, BenchError

WRK_DIR = ROOT / "benchmarks" / "wrk"
ERROR_KINDS = ("errors_status", "errors_connect", "errors_read", "errors_write", "errors_timeout")


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False)
    text = out.stdout or out.stderr
    return text.splitlines()[0].strip() if text else "?"


def run_wrk(
    script: str,
    base: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    env: dict[str, str],
) -> dict[str, Any]:
    """wrk's summary for ``duration`` seconds of ``script`` against ``base``, plus ``wrk_cpu_s`` (the
    CPU wrk itself used, from this process's children's rusage)."""
    command = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_DIR / script),
        base,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        command,
        env={**os.environ, "RUN_ID": secrets.token_hex(4), **env},
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            stats: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            stats["wrk_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            return stats
    raise BenchError(f"wrk printed no summary (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
