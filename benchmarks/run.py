"""The load-test harness: ``python -m benchmarks.run`` (``just bench``).

Starts the server (``python -m app.cli serve``: granian, production-like settings) on its own
embedded PostgreSQL and Valkey under ``.data/bench``, drives it with wrk from ``benchmarks/wrk/``,
measures the sink's COPY in-process, checks that every acknowledged view was stored, and writes a
Markdown table, JSON and a PNG chart to ``benchmarks/results/`` (timestamped, plus ``latest.*``).

Exit status: 0 when the run completed and no acknowledged row is missing; 1 when rows were lost (or,
with ``--strict``, when a target is missed); 2 when wrk is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg

from app.config import load_settings
from app.core.runtime import resolve_services
from app.domains.analytics.sink import AsyncpgWriter, PsycopgWriter, Row, Writer

ROOT = Path(__file__).resolve().parents[1]
WRK_DIR = ROOT / "benchmarks" / "wrk"
RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_DATA_DIR = ROOT / ".data" / "bench"
BENCH_EMAIL = "bench@example.com"
BENCH_PASSWORD = "bench-password-not-secret"  # noqa: S105 - a throwaway account in the bench database

# The targets.
INGEST_VS_NOOP = 0.80
INGEST_VS_NAIVE = 4.0
INGEST_P99_MS = 25.0
NOOP_VS_HEALTH = 0.50
BATCH_ROWS_PER_S = 100_000


@dataclass
class Result:
    key: str
    label: str
    unit: str  # "req/s" or "rows/s"
    rate: float  # successful (2xx) requests or rows per second
    requests: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    rows_acknowledged: int | None = None
    rows_stored: int | None = None
    in_flight_bound: int | None = None
    server_cpu_us: float | None = None  # CPU of the server's processes per request (per row: rows/s)
    postgres_cpu_us: float | None = None
    wrk_cpu_us: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def consistency(self) -> str:
        """``ok`` when acknowledged ≤ stored ≤ acknowledged + what was in flight when wrk stopped."""
        if self.rows_acknowledged is None or self.rows_stored is None:
            return ""
        if self.rows_stored < self.rows_acknowledged:
            return f"LOST {self.rows_acknowledged - self.rows_stored}"
        extra = self.rows_stored - self.rows_acknowledged
        if extra > (self.in_flight_bound or 0):
            return f"EXTRA {extra}"
        return "ok" if extra == 0 else f"ok (+{extra} in flight at stop)"


@dataclass
class Check:
    name: str
    passed: bool
    measured: str


@dataclass
class Site:
    id: int
    key: str


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python -m app.cli serve`` in its own process group, so granian's workers stop with it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, base: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"the server was not ready within {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # workers that outlived the main process
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()


# --------------------------------------------------------------------------- CPU accounting

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


class CpuMeter:
    """CPU seconds spent by the server's processes (its process group) and by PostgreSQL (the
    postmaster's children): per request, robust to other work sharing the machine. Linux only."""

    def __init__(self, server_pgid: int, postmaster_pid: int | None) -> None:
        self.server_pgid = server_pgid
        self.postmaster_pid = postmaster_pid

    def sample(self) -> dict[str, float]:
        totals = {"server": 0.0, "postgres": 0.0}
        proc = Path("/proc")
        if not proc.exists():
            return totals
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            fields = _proc_stat(int(entry.name))
            if fields is None:
                continue
            # fields[1] = ppid, fields[2] = pgrp, fields[11] / fields[12] = utime / stime (ticks)
            seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            if int(fields[2]) == self.server_pgid:
                totals["server"] += seconds
            elif self.postmaster_pid and int(fields[1]) == self.postmaster_pid:
                totals["postgres"] += seconds
        return totals


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- wrk


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "?"


def run_wrk(
    script: str, base: str, *, duration: float, connections: int, threads: int, env: dict[str, str]
) -> dict[str, Any]:
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
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            stats["wrk_cpu_s"] = (children.ru_utime - children_before.ru_utime) + (
                children.ru_stime - children_before.ru_stime
            )
            return stats
    raise BenchError(f"wrk printed no summary (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")


# --------------------------------------------------------------------------- setup through the API


def bench_token(client: httpx.Client) -> str:
    """Register the bench account (or find it) and log in."""
    client.post(
        "/api/auth/register",
        json={"email": BENCH_EMAIL, "password": BENCH_PASSWORD, "display_name": "Benchmark"},
    )  # 201, or 409 when it exists from an earlier run
    response = client.post("/api/auth/login", json={"email": BENCH_EMAIL, "password": BENCH_PASSWORD})
    if response.status_code != 200:
        raise BenchError(f"login failed: {response.status_code} {response.text[:300]}")
    token: str = response.json()["access_token"]
    return token


def create_site(client: httpx.Client, token: str, domain: str) -> Site:
    response = client.post(
        "/api/sites/", json={"domain": domain}, headers={"Authorization": f"Bearer {token}"}
    )
    if response.status_code != 201:
        raise BenchError(f"POST /api/sites failed: {response.status_code} {response.text[:300]}")
    body = response.json()
    return Site(int(body["id"]), str(body["ingest_key"]))


def prepare_database(database_url: str) -> None:
    """Empty the page-view tables of the bench database and make sure today's partitions exist."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select ensure_page_view_partitions((now() at time zone 'UTC')::date - 1, 3)")
        conn.execute("truncate page_views, page_view_event_ids")


def count_rows(database_url: str, site_id: int) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("select count(*) from page_views where site_id = %s", (site_id,)).fetchone()
    assert row is not None
    return int(row[0])


def settled_count(database_url: str, site_id: int, timeout_s: float = 15.0) -> int:
    """The row count once the server has finished the requests wrk abandoned when it stopped."""
    deadline = time.monotonic() + timeout_s
    last = count_rows(database_url, site_id)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = count_rows(database_url, site_id)
        if now == last:
            return now
        last = now
    return last


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    key: str
    label: str
    script: str
    stores: bool = False
    rows_per_request: int = 1
    connections: int | None = None
    env: dict[str, str] = field(default_factory=dict)


def http_scenario(
    scenario: Scenario,
    args: argparse.Namespace,
    base: str,
    site: Site,
    warm_site: Site,
    database_url: str,
    meter: CpuMeter,
) -> Result:
    connections = scenario.connections or args.connections
    env = {"BATCH_SIZE": str(scenario.rows_per_request), **scenario.env}
    print(f"  {scenario.label}: warm-up {args.warmup:g}s, then {args.duration:g}s", flush=True)
    if args.warmup > 0:
        run_wrk(
            scenario.script,
            base,
            duration=args.warmup,
            connections=connections,
            threads=args.threads,
            env={**env, "SITE_KEY": warm_site.key},
        )
    before = count_rows(database_url, site.id) if scenario.stores else 0
    cpu_before = meter.sample()
    stats = run_wrk(
        scenario.script,
        base,
        duration=args.duration,
        connections=connections,
        threads=args.threads,
        env={**env, "SITE_KEY": site.key},
    )
    cpu_after = meter.sample()
    seconds = stats["duration_us"] / 1e6
    ok = stats["requests"] - stats["errors_status"]
    errors = sum(stats[k] for k in ("errors_status", "errors_connect", "errors_read", "errors_write"))
    errors += stats["errors_timeout"]
    result = Result(
        key=scenario.key,
        label=scenario.label,
        unit="rows/s" if scenario.rows_per_request > 1 else "req/s",
        rate=ok * scenario.rows_per_request / seconds,
        requests=stats["requests"],
        p50_ms=stats["latency_p50_us"] / 1000,
        p99_ms=stats["latency_p99_us"] / 1000,
        errors=errors,
        detail={**stats, "connections": connections, "rows_per_request": scenario.rows_per_request},
    )
    units = max(1, ok * scenario.rows_per_request)
    result.server_cpu_us = (cpu_after["server"] - cpu_before["server"]) / units * 1e6
    result.postgres_cpu_us = (cpu_after["postgres"] - cpu_before["postgres"]) / units * 1e6
    result.wrk_cpu_us = stats["wrk_cpu_s"] / units * 1e6
    if scenario.stores:
        result.rows_acknowledged = ok * scenario.rows_per_request
        result.rows_stored = settled_count(database_url, site.id) - before
        result.in_flight_bound = connections * scenario.rows_per_request
    return result


def copy_rows(site_id: int, count: int, with_ids: bool) -> list[Row]:
    now = datetime.now(UTC)
    return [
        (
            site_id,
            now,
            now,
            uuid.uuid4() if with_ids else None,
            1_000_000 + i,
            f"/p/{i % 100}",
            "Bench page",
            "www.google.com",
            "Google",
            "bench",
            "",
            "",
            1440,
            "desktop",
            "Chrome",
            "Linux",
            False,
        )
        for i in range(count)
    ]


async def copy_scenario(
    driver: str, database_url: str, site: Site, batch: int, seconds: float, with_ids: bool
) -> Result:
    """Sequential ``Writer.write`` calls (claim ids, COPY, commit) through one connection of the
    sink's own writer class; only the writes are timed, not the making of the rows."""
    writer: Writer = AsyncpgWriter(database_url, 1) if driver == "asyncpg" else PsycopgWriter(database_url, 1)
    await writer.open()
    try:
        await writer.write(copy_rows(site.id, batch, with_ids))  # warm-up: connection, type cache
        before = count_rows(database_url, site.id)
        rows = copy_rows(site.id, batch, with_ids)
        written = 0
        durations: list[float] = []
        wall_deadline = time.monotonic() + 3 * seconds + 10
        while (sum(durations) < seconds or len(durations) < 3) and time.monotonic() < wall_deadline:
            if with_ids and durations:  # a repeated event id is dropped: every batch needs new ones
                rows = copy_rows(site.id, batch, with_ids)
            started = time.perf_counter()
            written += await writer.write(rows)
            durations.append(time.perf_counter() - started)
    finally:
        await writer.close()
    stored = count_rows(database_url, site.id) - before
    elapsed = sum(durations)
    durations.sort()
    suffix = ", with event ids" if with_ids else ""
    return Result(
        key=f"copy-{driver}-{batch}{'-ids' if with_ids else ''}",
        label=f"COPY {driver}, {batch:,} rows/batch{suffix} (in-process)",
        unit="rows/s",
        rate=written / elapsed,
        requests=len(durations),
        p50_ms=durations[len(durations) // 2] * 1000,
        p99_ms=durations[min(len(durations) - 1, int(len(durations) * 0.99))] * 1000,
        rows_acknowledged=written,
        rows_stored=stored,
        in_flight_bound=0,
        detail={"batches": len(durations), "seconds_writing": elapsed},
    )


# --------------------------------------------------------------------------- report


def ratios(results: dict[str, Result]) -> dict[str, float]:
    out: dict[str, float] = {}
    pairs = {
        "ingest/noop": ("ingest", "noop"),
        "ingest/naive": ("ingest", "naive"),
        "noop/health": ("noop", "health"),
    }
    for name, (a, b) in pairs.items():
        if a in results and b in results and results[b].rate:
            out[name] = results[a].rate / results[b].rate
    return out


def checks(results: dict[str, Result], ratio: dict[str, float], connections: int) -> list[Check]:
    found: list[Check] = []
    if "ingest/noop" in ratio:
        found.append(
            Check(
                f"ingest >= {INGEST_VS_NOOP:.0%} of the no-op's req/s",
                ratio["ingest/noop"] >= INGEST_VS_NOOP,
                f"{ratio['ingest/noop']:.0%}",
            )
        )
    if "ingest/naive" in ratio:
        found.append(
            Check(
                f"ingest >= {INGEST_VS_NAIVE:g}x naive",
                ratio["ingest/naive"] >= INGEST_VS_NAIVE,
                f"{ratio['ingest/naive']:.2f}x",
            )
        )
    if "ingest" in results and results["ingest"].p99_ms is not None:
        p99 = results["ingest"].p99_ms
        found.append(
            Check(
                f"ingest p99 < {INGEST_P99_MS:g} ms at {connections} connections",
                p99 < INGEST_P99_MS,
                f"{p99:.1f} ms",
            )
        )
    if "noop/health" in ratio:
        found.append(
            Check(
                f"no-op >= {NOOP_VS_HEALTH:.0%} of GET /health/live",
                ratio["noop/health"] >= NOOP_VS_HEALTH,
                f"{ratio['noop/health']:.0%}",
            )
        )
    if "batch" in results:
        rate = results["batch"].rate
        found.append(
            Check(
                f"batch >= {BATCH_ROWS_PER_S:,} rows/s (views with event ids)",
                rate >= BATCH_ROWS_PER_S,
                f"{rate:,.0f} rows/s",
            )
        )
    return found


def _cpu(result: Result) -> str:
    if result.server_cpu_us is None or result.postgres_cpu_us is None:
        return ""
    return f"{result.server_cpu_us:,.0f} + {result.postgres_cpu_us:,.0f} + {result.wrk_cpu_us or 0:,.0f}"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown(meta: dict[str, Any], results: list[Result], ratio: dict[str, float], found: list[Check]) -> str:
    machine, versions, args = meta["machine"], meta["versions"], meta["args"]
    lines = [
        f"# Benchmark {meta['started_at']}",
        "",
        f"{machine['cpus']} CPUs, load average before the run {machine['load_before']:.2f}, "
        f"{machine['platform']}; granian {versions['granian']} with {args['workers']} workers, "
        f"litestar {versions['litestar']}; {versions['wrk']} ({args['threads']} threads) on the same "
        f"machine; {args['duration']:g}s per scenario after a {args['warmup']:g}s warm-up; "
        f"{args['connections']} connections unless noted; "
        f"sink driver {meta['server']['SINK_DRIVER']}.",
        "",
        "| scenario | rate | unit | p50 ms | p99 ms | errors | CPU µs/unit server+PG+wrk | stored vs acked |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.label} | {r.rate:,.0f} | {r.unit} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)} | {r.errors} | "
            f"{_cpu(r)} | {r.consistency} |"
        )
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {name} (req/s) | {value:.2f} |" for name, value in ratio.items()]
    lines += ["", "| target | result | measured |", "|---|---|---|"]
    lines += [f"| {c.name} | {'PASS' if c.passed else 'FAIL'} | {c.measured} |" for c in found]
    lines += [
        "",
        "Rates count 2xx answers only. COPY rows time whole `Writer.write` calls (transaction + COPY + "
        'commit) on one connection; their p50/p99 are per batch. "+N in flight": rows of requests '
        "wrk abandoned when it stopped, committed after its count (at most connections x rows/request). "
        "CPU µs/unit: CPU time of the server's processes, PostgreSQL's and wrk's per 2xx request (per row "
        "for rows/s), read from /proc: comparable across runs even when other work shares the machine.",
    ]
    return "\n".join(lines) + "\n"


def chart(path: Path, results: list[Result], title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (uv sync installs the dev group): no chart", file=sys.stderr)
        return False
    groups = [[r for r in results if r.unit == "req/s"], [r for r in results if r.unit == "rows/s"]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(
        len(groups),
        1,
        figsize=(10, 1.2 + 0.55 * sum(len(g) for g in groups) + 0.8 * len(groups)),
        squeeze=False,
    )
    for ax, group in zip(axes[:, 0], groups, strict=True):
        labels = [r.label for r in group][::-1]
        values = [r.rate for r in group][::-1]
        bars = ax.barh(labels, values, color="#3b7dd8" if group[0].unit == "req/s" else "#d8843b")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
        ax.set_xlabel(group[0].unit)
        ax.margins(x=0.18)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def save(meta: dict[str, Any], results: list[Result], ratio: dict[str, float], found: list[Check]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = meta["started_at"].replace(":", "").replace("-", "")[:15]
    table = markdown(meta, results, ratio, found)
    document = {
        **meta,
        "results": [{**asdict(r), "consistency": r.consistency} for r in results],
        "ratios": ratio,
        "targets": [asdict(c) for c in found],
    }
    for name in (stamp, "latest"):
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
        (RESULTS_DIR / f"{name}.md").write_text(table)
    if chart(RESULTS_DIR / f"{stamp}.png", results, f"monolith benchmark {meta['started_at']}"):
        shutil.copyfile(RESULTS_DIR / f"{stamp}.png", RESULTS_DIR / "latest.png")
    return RESULTS_DIR / f"{stamp}.md"


# --------------------------------------------------------------------------- main


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    print(f"{title} ...", flush=True)
    started = time.monotonic()
    yield
    print(f"  done in {time.monotonic() - started:.1f}s", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds per scenario (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="granian workers (default 2)")
    parser.add_argument("--batch-size", type=int, default=500, help="views per batch request (default 500)")
    parser.add_argument(
        "--batch-connections",
        type=int,
        default=16,
        help="wrk connections for the batch scenario (default 16)",
    )
    parser.add_argument("--copy-seconds", type=float, default=2, help="seconds per in-process COPY case")
    parser.add_argument(
        "--sink-driver", choices=("asyncpg", "psycopg", "hybrid"), default=None, help="SINK_DRIVER"
    )
    parser.add_argument(
        "--only",
        default="health,noop,ingest,batch,batch-no-ids,naive,copy",
        help="comma-separated subset of health,noop,ingest,batch,batch-no-ids,naive,copy",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="embedded services' data")
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing to results/")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= 1000:
        parser.error("--batch-size must be between 1 and 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed. Install it with `sudo apt-get install wrk` (Debian/Ubuntu), "
            "`brew install wrk` (macOS) or build it from https://github.com/wg/wrk.",
            file=sys.stderr,
        )
        return 2
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f} before the run: other work shares the CPUs")

    # The embedded services live in this process (the server only gets their URLs), so the bench
    # database is reachable for counting and for the in-process COPY. APP_ENV=test: production mode
    # refuses embedded services.
    with step(f"starting embedded PostgreSQL and Valkey in {args.data_dir}"):
        services = resolve_services(load_settings({"APP_ENV": "test", "DATA_DIR": str(args.data_dir)}))
    assert services.database_url and services.valkey_url
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_env = {
        "APP_ENV": "test",
        "DATA_DIR": str(args.data_dir),
        "DATABASE_URL": services.database_url,
        "VALKEY_URL": services.valkey_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(args.workers),
        "LOG_LEVEL": "WARNING",  # INFO writes an access-log line per request: a real cost at these rates
        "BENCH_ROUTES": "true",
        "WORKER_IN_PROCESS": "false",
        "RATE_LIMIT_INGEST_PER_MINUTE": "1000000000",
        "RATE_LIMIT_INGEST_PER_HOUR": "1000000000",
        "SINK_DRIVER": args.sink_driver or os.environ.get("SINK_DRIVER", load_settings({}).sink_driver),
    }
    server = Server({**os.environ, **server_env}, args.data_dir / "server.log")
    meta: dict[str, Any] = {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "server": {k: v for k, v in server_env.items() if k not in ("DATABASE_URL", "VALKEY_URL")},
        "machine": {"cpus": os.cpu_count(), "load_before": load_before, "platform": platform.platform()},
        "versions": {
            "python": platform.python_version(),
            "granian": version("granian"),
            "litestar": version("litestar"),
            "asyncpg": version("asyncpg"),
            "psycopg": version("psycopg"),
            "wrk": wrk_version(),
        },
    }
    results: list[Result] = []
    try:
        with step(f"starting the server on {base} ({args.workers} granian workers)"):
            server.start()
            server.wait_ready(base)
        prepare_database(services.database_url)
        assert server.process is not None
        meter = CpuMeter(server.process.pid, postmaster_pid(args.data_dir))
        with httpx.Client(base_url=base, timeout=10) as client:
            token = bench_token(client)
            run = secrets.token_hex(3)
            sites = {
                name: create_site(client, token, f"{name}-{run}.bench.example")
                for name in ("warmup", "ingest", "batch", "batch-no-ids", "naive", "copy")
            }
        scenarios = [
            Scenario("health", "GET /health/live", "health.lua"),
            Scenario("noop", "POST /bench/noop (decode only)", "noop.lua"),
            Scenario("ingest", "POST /api/page-views (sink)", "ingest.lua", stores=True),
            Scenario(
                "batch",
                f"POST /api/page-views/batch ({args.batch_size} views, {args.batch_connections} conn.)",
                "batch.lua",
                stores=True,
                rows_per_request=args.batch_size,
                connections=args.batch_connections,
            ),
            Scenario(
                "batch-no-ids",
                f"POST /api/page-views/batch ({args.batch_size} views without event ids)",
                "batch.lua",
                stores=True,
                rows_per_request=args.batch_size,
                connections=args.batch_connections,
                env={"EVENT_IDS": "0"},
            ),
            Scenario("naive", "POST /bench/naive (INSERT per request)", "naive.lua", stores=True),
        ]
        with step("HTTP scenarios (wrk)"):
            for scenario in scenarios:
                if scenario.key in only:
                    site = sites.get(scenario.key, sites["warmup"])
                    results.append(
                        http_scenario(
                            scenario, args, base, site, sites["warmup"], services.database_url, meter
                        )
                    )
        if "copy" in only:
            with step("in-process COPY through the sink's writers"):
                cases = [(d, b, False) for d in ("asyncpg", "psycopg") for b in (1_000, 10_000)]
                cases += [(d, 1_000, True) for d in ("asyncpg", "psycopg")]
                for driver, batch, with_ids in cases:
                    results.append(
                        asyncio.run(
                            copy_scenario(
                                driver,
                                services.database_url,
                                sites["copy"],
                                batch,
                                args.copy_seconds,
                                with_ids,
                            )
                        )
                    )
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        with step("stopping the server"):
            server.stop()

    by_key = {r.key: r for r in results}
    ratio = ratios(by_key)
    found = checks(by_key, ratio, args.connections)
    table = markdown(meta, results, ratio, found)
    saved = None if args.no_save else save(meta, results, ratio, found)
    print()
    print(table)
    for check in found:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.measured}")
    if saved is not None:
        print(f"\nsaved {saved} (+ .json, .png) and {RESULTS_DIR / 'latest.md'}")
    print(f"server log: {server.log_path}")
    lost = [r for r in results if r.consistency.startswith(("LOST", "EXTRA"))]
    for r in lost:
        print(
            f"ERROR {r.label}: {r.consistency} (acknowledged {r.rows_acknowledged}, stored {r.rows_stored})"
        )
    if lost:
        return 1
    return 1 if args.strict and not all(c.passed for c in found) else 0


if __name__ == "__main__":
    sys.exit(main())
