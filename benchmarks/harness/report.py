"""The run as a Markdown table, a JSON document and a PNG chart under ``benchmarks/results/``."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from benchmarks.harness.checks import ratios
from benchmarks.harness.model import BUSY_MACHINE, Check, Result, Run
from benchmarks.harness.servers import ROOT

RESULTS_DIR = ROOT / "benchmarks" / "results"
SERVER_NAMES = {"project": "project", "bare": "bare Litestar", "seed": "seed FastAPI"}
NOTES = (
    "Rates count answers below 400 (no scenario is answered 1xx or 3xx). Ratios divide rates of the "
    "same pass. In-process rows time whole "
    "`Writer.write` calls (transaction + COPY + commit, or the one statement) on one connection; their "
    "p50/p99 are per batch. "
    '"+N in flight": rows of requests wrk abandoned when it stopped, committed after its count (at most '
    "connections x rows/request). CPU µs/unit: CPU time of the server's processes (its process group), "
    "PostgreSQL's, Valkey's and wrk's per successful request (per row for rows/s; `—` when none "
    "succeeded), read from /proc "
    "(in-process rows: the harness's own CPU in the writes, and PostgreSQL's): comparable across runs "
    "even when other work shares the machine. Memory: RSS and USS (private) of each granian worker of the "
    "project server from /proc/<pid>/smaps_rollup, after each pass."
)


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _cpu(result: Result) -> str:
    if result.server_cpu_us is None or result.postgres_cpu_us is None:
        return "—"  # no answer succeeded
    parts = (result.server_cpu_us, result.postgres_cpu_us, result.valkey_cpu_us or 0, result.wrk_cpu_us or 0)
    return " + ".join(f"{part:,.0f}" for part in parts)


def _uvicorn_http(versions: dict[str, str]) -> str:
    """uvicorn's ``--http auto`` parses HTTP with httptools when it is installed, else with the pure
    Python h11 (about twice the CPU per request here)."""
    if versions.get("httptools", "?") != "?":
        return f"httptools {versions['httptools']}"
    return "h11: httptools is not installed"


def _header(run: Run) -> list[str]:
    meta = run.meta
    machine, versions, args = meta["machine"], meta["versions"], meta["args"]
    return [
        f"# Benchmark {meta['started_at']}",
        "",
        f"{machine['cpus']} CPUs, load average before the run {machine['load_before']:.2f}, "
        f"{machine['platform']}; granian {versions['granian']} with {args['workers']} workers "
        f"(`--loop auto`, no access log, backlog 2048) for the project and the bare Litestar app, "
        f"litestar {versions['litestar']}; the seed design on uvicorn {versions['uvicorn']} "
        f"({args['workers']} workers, {_uvicorn_http(versions)}) + fastapi {versions['fastapi']} + "
        f"asyncpg {versions['asyncpg']}; "
        f"{versions['wrk']} ({args['threads']} threads) on the same machine; {args['duration']:g}s per "
        f"scenario after a {args['warmup']:g}s warm-up; {args['connections']} connections unless noted; "
        f"sink driver {meta['server']['SINK_DRIVER']}; {len(run.passes)} pass(es), the table shows the last."
        + (" **Profiled with py-spy: rates are lower than in a plain run.**" if args["profile"] else ""),
    ]


def _results_table(results: list[Result]) -> list[str]:
    lines = [
        "| scenario | server | rate | unit | p50 ms | p99 ms | errors | CPU µs/unit server+PG+Valkey+wrk "
        "| stored vs acked |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        busy = " ¹" if BUSY_MACHINE in r.detail else ""
        lines.append(
            f"| {r.label}{busy} | {SERVER_NAMES.get(r.server, r.server)} | {r.rate:,.0f} | {r.unit} | "
            f"{_ms(r.p50_ms)} | {_ms(r.p99_ms)} | {r.errors} | {_cpu(r)} | {r.consistency} |"
        )
    if any(BUSY_MACHINE in r.detail for r in results):
        lines += [
            "",
            "¹ measured on a machine that did not become quiet first (other work shared the CPUs): its "
            "rate, and the ratios and targets that use it, are lower than the code's.",
        ]
    return lines


def _sink_table(results: list[Result]) -> list[str]:
    measured = [r for r in results if r.sink_rows_per_write is not None]
    if not measured:
        return []
    lines = [
        "",
        "The page-view sink's writes during each measure (the project's `/metrics`, "
        "`app_page_view_batch_rows`; a write's round trip and commit are paid once per write):",
        "",
        "| scenario | writes | views per write |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r.label} | {r.sink_writes:,.0f} | {r.sink_rows_per_write:,.1f} |" for r in measured]
    return lines


def _memory_table(run: Run) -> list[str]:
    snapshots = [run.memory_at_start, *run.memory]
    if not any(snapshots):
        return []
    header = " | ".join(["after start-up", *(f"after pass {i + 1}" for i in range(len(run.memory)))])
    lines = [
        "",
        "Resident memory of the project's granian workers, RSS (USS) MiB:",
        "",
        f"| worker | {header} |",
        "|---|" + "---:|" * len(snapshots),
    ]
    pids = sorted({m.pid for snapshot in snapshots for m in snapshot})
    for pid in pids:
        cells = []
        for snapshot in snapshots:
            found = next((m for m in snapshot if m.pid == pid), None)
            cells.append("" if found is None else f"{found.rss_mib:.1f} ({found.uss_mib:.1f})")
        lines.append(f"| pid {pid} | {' | '.join(cells)} |")
    return lines


def _passes_table(run: Run) -> list[str]:
    if len(run.passes) < 2:
        return []
    header = " | ".join(f"pass {i + 1}" for i in range(len(run.passes)))
    lines = ["", "Rate per pass:", "", f"| scenario | {header} |", "|---|" + "---:|" * len(run.passes)]
    for result in run.results:
        cells = []
        for results in run.passes:
            found = next((r for r in results if r.key == result.key), None)
            cells.append("" if found is None else f"{found.rate:,.0f}")
        lines.append(f"| {result.label} | {' | '.join(cells)} |")
    return lines


def _profiles(run: Run) -> list[str]:
    lines: list[str] = []
    for result in run.results:
        profile = result.detail.get("profile")
        if not profile:
            continue
        lines += ["", f"Profile of one worker (pid {profile.get('pid', '?')}) under {result.label}:", ""]
        if "error" in profile:
            lines.append(f"py-spy failed: {profile['error']}")
            continue
        lines += [
            f"{profile['samples']} samples holding the GIL; raw stacks in `{profile['raw']}`. Largest "
            "inclusive shares (entry points on 95 % of the samples left out), then largest self shares:",
            "",
            "| function | inclusive | self |",
            "|---|---:|---:|",
        ]
        lines += [f"| `{name}` | {inc:.1%} | {own:.1%} |" for name, inc, own in profile["inclusive"][:12]]
        lines += ["| **by self time** | | |"]
        lines += [f"| `{name}` | {inc:.1%} | {own:.1%} |" for name, inc, own in profile["self"][:8]]
    return lines


def markdown(run: Run, found: list[Check]) -> str:
    lines = [*_header(run), "", *_results_table(run.results)]
    if run.pending:
        lines += ["", "Not measured yet:", ""]
        lines += [f"- {label}: {why}" for label, why in run.pending.items()]
    lines += ["", "| ratio (same pass) | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in ratios(run.by_key).items()]
    lines += ["", "| target | result | measured |", "|---|---|---|"]
    lines += [f"| {c.name} | {c.status} | {c.measured} |" for c in found]
    lines += _sink_table(run.results)
    lines += _memory_table(run)
    lines += _passes_table(run)
    lines += _profiles(run)
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


def document(run: Run, found: list[Check]) -> dict[str, object]:
    return {
        **run.meta,
        "passes": [
            {
                "results": [{**asdict(r), "consistency": r.consistency} for r in results],
                "ratios": ratios({r.key: r for r in results}),
            }
            for results in run.passes
        ],
        "memory_at_start": [asdict(m) for m in run.memory_at_start],
        "memory": [[asdict(m) for m in snapshot] for snapshot in run.memory],
        "not_measured": run.pending,
        "targets": [asdict(c) for c in found],
    }


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
    if not groups:
        return False
    fig, axes = plt.subplots(
        len(groups),
        1,
        figsize=(10, 1.2 + 0.55 * sum(len(g) for g in groups) + 0.8 * len(groups)),
        squeeze=False,
    )
    colours = {"project": "#3b7dd8", "bare": "#8a8a8a", "seed": "#c0504d", "in-process": "#d8843b"}
    for ax, group in zip(axes[:, 0], groups, strict=True):
        labels = [r.label for r in group][::-1]
        values = [r.rate for r in group][::-1]
        bars = ax.barh(labels, values, color=[colours.get(r.server, "#3b7dd8") for r in group][::-1])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
        ax.set_xlabel(group[0].unit)
        ax.margins(x=0.18)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def save(run: Run, found: list[Check]) -> Path:
    """``results/<UTC stamp>.{md,json,png}`` and the same as ``latest.*``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = run.meta["started_at"].replace(":", "").replace("-", "")[:15]
    table = markdown(run, found)
    text = json.dumps(document(run, found), indent=2, default=str) + "\n"
    for name in (stamp, "latest"):
        (RESULTS_DIR / f"{name}.json").write_text(text)
        (RESULTS_DIR / f"{name}.md").write_text(table)
    if chart(RESULTS_DIR / f"{stamp}.png", run.results, f"monolith benchmark {run.meta['started_at']}"):
        shutil.copyfile(RESULTS_DIR / f"{stamp}.png", RESULTS_DIR / "latest.png")
    return RESULTS_DIR / f"{stamp}.md"
