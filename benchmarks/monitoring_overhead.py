"""What error monitoring costs per request: the app served twice, monitoring on and off.

    uv run python -m benchmarks.monitoring_overhead                 # 10 s per measurement, 3 rounds
    uv run python -m benchmarks.monitoring_overhead --duration 5 --rounds 1

Each server is the project under granian (``app.main:create_app`` plus two routes this script adds:
``GET /bench/monitoring/ok`` answers 200, ``GET /bench/monitoring/fail`` raises, i.e. a 500 captured
by monitoring), one with ``MONITORING_ENABLED=true`` and one with ``false``. wrk drives each route;
the CPU the server's process group spent (from ``/proc``, robust to other load on the machine) divided
by the requests answered is the CPU per request. PostgreSQL's CPU is shown apart (monitoring writes
one aggregate per group per dedup window). Rounds alternate the order of the servers.

Needs wrk (``apt-get install wrk``). Data under ``--data-dir`` (default ``.data/bench-monitoring``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from litestar import Litestar, get

from app.config import load_settings
from app.core.migrate import migrate
from app.core.runtime import resolve_services
from app.main import create_app
from benchmarks.harness import procfs
from benchmarks.harness.servers import ServerProcess, free_port, granian_command
from benchmarks.harness.wrk import run_wrk

UNLIMITED = "1000000000"
ROUTES = {"ok": "/bench/monitoring/ok", "fail": "/bench/monitoring/fail"}
"""``--only`` takes a key: ``ok`` answers 200, ``fail`` raises (a 500 monitoring captures)."""


@get("/bench/monitoring/ok", sync_to_thread=False, include_in_schema=False)
def monitoring_ok() -> dict[str, bool]:
    return {"ok": True}


@get("/bench/monitoring/fail", sync_to_thread=False, include_in_schema=False)
def monitoring_fail() -> None:
    raise RuntimeError("benchmark failure: the same bug on every request")


def create_bench_app() -> Litestar:
    """The project's app with the two benchmark routes (granian ``--factory``)."""
    app = create_app()
    app.register(monitoring_ok)
    app.register(monitoring_fail)
    return app


def server(name: str, env: dict[str, str], workers: int, log_dir: Path) -> ServerProcess:
    port = free_port()
    command = granian_command("benchmarks.monitoring_overhead:create_bench_app", port, workers)
    return ServerProcess(name, command, {**env, "PORT": str(port)}, port, "/health/ready", log_dir)


def measure(
    target: ServerProcess, path: str, options: argparse.Namespace, postmaster: int | None
) -> dict[str, float]:
    meter = procfs.CpuMeter(target.pid, postmaster)
    wrk_env = {"URL_PATH": path}
    run_wrk("get.lua", target.base, duration=2, connections=options.connections, threads=2, env=wrk_env)
    before = meter.sample()
    stats: dict[str, Any] = run_wrk(
        "get.lua",
        target.base,
        duration=options.duration,
        connections=options.connections,
        threads=2,
        env=wrk_env,
    )
    after = meter.sample()
    requests = max(1, int(stats["requests"]))
    seconds = stats["duration_us"] / 1e6
    return {
        "server_us": (after["server"] - before["server"]) / requests * 1e6,
        "postgres_us": (after["postgres"] - before["postgres"]) / requests * 1e6,
        "rps": requests / seconds,
        "p99_ms": stats["latency_p99_us"] / 1000,
        "non_2xx": float(stats["errors_status"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".data/bench-monitoring"))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=sorted(ROUTES), help="one route only: ok (200) or fail (500)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="an extra setting for both servers"
    )
    options = parser.parse_args()

    services = resolve_services(load_settings({"APP_ENV": "test", "DATA_DIR": str(options.data_dir)}))
    assert services.database_url and services.valkey_url
    migrate(services.database_url)
    postmaster = procfs.postmaster_pid(options.data_dir)
    base_env = {
        "APP_ENV": "test",
        "DATA_DIR": str(options.data_dir),
        "DATABASE_URL": services.database_url,
        "VALKEY_URL": services.valkey_url,
        "LOG_LEVEL": "WARNING",
        "WORKER_IN_PROCESS": "false",
        "RATE_LIMIT_DEFAULT_PER_MINUTE": UNLIMITED,
        "RATE_LIMIT_DEFAULT_PER_HOUR": UNLIMITED,
        "PATH": "/usr/bin:/bin",
        **dict(item.split("=", 1) for item in options.set),
    }
    routes = {options.only: ROUTES[options.only]} if options.only else ROUTES
    log_dir = options.data_dir / "logs"
    servers = {
        "monitoring on": server(
            "monitoring-on", {**base_env, "MONITORING_ENABLED": "true"}, options.workers, log_dir
        ),
        "monitoring off": server(
            "monitoring-off", {**base_env, "MONITORING_ENABLED": "false"}, options.workers, log_dir
        ),
    }
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for target in servers.values():
            target.start()
        for target in servers.values():
            target.wait_ready()
        for number in range(options.rounds):
            order = list(servers.items()) if number % 2 == 0 else list(reversed(servers.items()))
            for route, path in routes.items():
                for name, target in order:
                    results.setdefault((route, name), []).append(measure(target, path, options, postmaster))
                    print(
                        f"round {number + 1}: {route:<11} {name:<15} {results[(route, name)][-1]}", flush=True
                    )
    finally:
        for target in servers.values():
            target.stop()

    print()
    print("| route | monitoring | server CPU µs/req | PostgreSQL CPU µs/req | req/s | p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    medians: dict[tuple[str, str], float] = {}
    for (route, name), runs in results.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        medians[(route, name)] = median["server_us"]
        print(
            f"| {route} | {name.split()[1]} | {median['server_us']:.0f} | {median['postgres_us']:.1f} | "
            f"{median['rps']:.0f} | {median['p99_ms']:.1f} |"
        )
    print()
    for route in routes:
        on, off = medians[(route, "monitoring on")], medians[(route, "monitoring off")]
        print(
            f"{route}: monitoring adds {on - off:+.0f} µs of server CPU per request ({(on - off) / off:+.1%})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
