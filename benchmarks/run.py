"""The load-test harness: ``python -m benchmarks.run`` (``just bench``).

Starts the project (granian, production-like settings) on its own embedded PostgreSQL and Valkey
under ``--data-dir``, beside two references nobody can tune (a bare Litestar app under the same
granian settings, and the seed's design: FastAPI + uvicorn + asyncpg, one INSERT per request),
drives every scenario with wrk, checks that every acknowledged page view was stored, computes the
ratios and targets within the run, and writes a Markdown table, JSON and a PNG chart to
``benchmarks/results/`` (timestamped, plus ``latest.*``). See ``benchmarks/README.md``.

Exit status: 0 when the run completed and no acknowledged row is missing; 1 when rows were lost, a
server or setup step failed (or, with ``--strict``, a target is missed); 2 when wrk is not installed.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from benchmarks.harness.checks import checks
from benchmarks.harness.model import Options
from benchmarks.harness.provision import claim_data_dir
from benchmarks.harness.report import RESULTS_DIR, markdown, save
from benchmarks.harness.runner import run
from benchmarks.harness.scenarios import SCENARIOS, select
from benchmarks.harness.servers import ROOT, BenchError

DEFAULT_DATA_DIR = ROOT / ".data" / "bench"


def scenario_list() -> str:
    lines = ["scenarios (* = in a run without --only):"]
    for s in SCENARIOS:
        mark = "*" if s.default and not s.pending else " "
        note = f"  [placeholder: {s.pending}]" if s.pending else ""
        lines.append(f"  {mark} {s.key:<17} {s.title(Options())}{note}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="benchmarks.run",
        description=(__doc__ or "").split("\n\n")[0],
        epilog=scenario_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--duration", type=float, default=10, help="seconds per scenario (default 10)")
    add("--warmup", type=float, default=2, help="warm-up seconds per scenario (default 2)")
    add("--connections", type=int, default=64, help="wrk connections (default 64)")
    add("--threads", type=int, default=2, help="wrk threads (default 2)")
    add("--workers", type=int, default=2, help="workers of every server (default 2)")
    add("--batch-size", type=int, default=500, help="views per batch request (default 500)")
    add("--batch-connections", type=int, default=16, help="wrk connections for batch (default 16)")
    add("--copy-seconds", type=float, default=2, help="seconds per in-process COPY case (default 2)")
    add("--tasks", type=int, default=50, help="tasks in the task-list scenario's project (default 50)")
    add("--repeat", type=int, default=1, help="passes over the scenarios, same servers (default 1)")
    add("--sink-driver", choices=("asyncpg", "psycopg", "hybrid"), default=None, help="SINK_DRIVER")
    add("--only", default=None, help="comma-separated scenario keys (default: the starred ones below)")
    add("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="embedded services' data (.data/bench)")
    add("--no-save", action="store_true", help="print only; write nothing to benchmarks/results/")
    add("--strict", action="store_true", help="exit 1 when a target is missed")
    add(
        "--profile",
        action="store_true",
        help="py-spy one worker per scenario (rates drop; needs `uv run --with py-spy`)",
    )
    add("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= 1000:
        parser.error("--batch-size must be between 1 and 1000")
    if not 1 <= args.tasks <= 100:
        parser.error("--tasks must be between 1 and 100 (one page of the task list)")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.duration < 1 or args.warmup < 0 or args.copy_seconds <= 0:
        parser.error(
            "--duration must be at least 1 (wrk counts whole seconds), --warmup at least 0, "
            "--copy-seconds above 0"
        )
    for name in ("connections", "threads", "workers", "batch_connections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.connections < args.threads or args.batch_connections < args.threads:
        parser.error("--connections and --batch-connections must be at least --threads (wrk's rule)")
    if not args.list and (refused := claim_data_dir(args.data_dir, default=DEFAULT_DATA_DIR)) is not None:
        parser.error(refused)
    only = tuple(key.strip() for key in (args.only or "").split(",") if key.strip())
    if args.only is not None and not only:
        parser.error("--only names no scenario (see --list)")
    try:
        select(only)
    except ValueError as exc:
        parser.error(str(exc))
    options = Options(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        threads=args.threads,
        workers=args.workers,
        batch_size=args.batch_size,
        batch_connections=args.batch_connections,
        copy_seconds=args.copy_seconds,
        tasks=args.tasks,
        repeat=args.repeat,
        sink_driver=args.sink_driver,
        only=only,
        profile=args.profile,
        data_dir=args.data_dir.resolve(),
    )
    return options, args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options, args = parse_args(argv)
    if args.list:
        print(scenario_list())
        return 0
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed. Install it with `sudo apt-get install wrk` (Debian/Ubuntu), "
            "`brew install wrk` (macOS) or build it from https://github.com/wg/wrk.",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    for signum in (signal.SIGTERM, signal.SIGHUP):  # stop the servers (in sessions of their own)
        signal.signal(signum, _interrupt)
    try:
        record = run(options)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmark interrupted", file=sys.stderr)
        return 130
    found = checks(record.by_key, record.memory)
    print()
    print(markdown(record, found))
    for check in found:
        print(f"{check.status:<4}  {check.name}: {check.measured}")
    if options.profile:  # profiled rates are not the headline: keep them out of results/
        path = options.data_dir / "profiles" / f"{record.meta['started_at'].replace(':', '')}.md"
        path.write_text(markdown(record, found))
        print(f"\nprofiled run written to {path}")
    elif not args.no_save:
        saved = save(record, found)
        print(f"\nsaved {saved} (+ .json, .png) and {RESULTS_DIR / 'latest.md'}")
    for name, path in record.meta["logs"].items():
        print(f"{name} log: {path}")
    print(f"run took {time.monotonic() - started:.0f}s")
    for r in (result for results in record.passes for result in results if result.errors):
        where = "its server's log" if args.no_save else "the JSON's detail and its server's log"
        print(f"WARNING {r.label}: {r.errors} errors (p50/p99 include their answers; see {where})")
    for r in record.lost:
        print(f"ERROR {r.label}: {r.consistency} (acked {r.rows_acknowledged}, stored {r.rows_stored})")
    if record.lost:
        return 1
    return 1 if args.strict and any(c.failed for c in found) else 0


if __name__ == "__main__":
    sys.exit(main())
