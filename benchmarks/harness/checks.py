"""Ratios between scenarios of the same pass, and the targets of issue 14 ("Done when"), each a
row of a table: a new target is one more entry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from benchmarks.harness.model import Check, Result
from benchmarks.harness.procfs import Memory

# name → (numerator, denominator): rates of the same pass.
RATIOS: Mapping[str, tuple[str, str]] = {
    "GET /health/live / bare GET": ("health", "bare-get"),
    "no-op / bare decode POST": ("noop", "bare-decode"),
    "ingest / no-op": ("ingest", "noop"),
    "ingest / seed design": ("ingest", "seed"),
    "task list / bare GET": ("tasks", "bare-get"),
    "ingest / naive (in-app INSERT per request)": ("ingest", "naive"),
    "bare decode POST / bare GET": ("bare-decode", "bare-get"),
}


@dataclass(frozen=True)
class Target:
    name: str
    metric: Literal["ratio", "rate", "p99_ms"]
    keys: tuple[str, ...]  # one scenario, or numerator and denominator of a ratio
    bound: float
    at_most: bool = False

    def measure(self, results: Mapping[str, Result]) -> float | None:
        found = [results.get(key) for key in self.keys]
        if any(r is None for r in found):
            return None
        first = found[0]
        assert first is not None
        if self.metric == "ratio":
            second = found[1]
            assert second is not None
            return first.rate / second.rate if second.rate else None
        return first.rate if self.metric == "rate" else first.p99_ms

    def format(self, value: float, unit: str) -> str:
        if self.metric == "p99_ms":
            return f"{value:.1f} ms"
        if self.metric == "rate":
            return f"{value:,.0f} {unit}"
        return f"{value:.0%}" if self.bound < 1 else f"{value:.2f}x"

    def check(self, results: Mapping[str, Result]) -> Check:
        value = self.measure(results)
        if value is None:
            return Check(self.name, "n/a", "not measured in this run")
        # a fast error answer would pass a latency bound (rates count 2xx answers only)
        if self.metric == "p99_ms" and (failed := [key for key in self.keys if results[key].errors]):
            return Check(self.name, "FAIL", f"{', '.join(failed)} answered errors (see the table)")
        passed = value <= self.bound if self.at_most else value >= self.bound
        return Check(self.name, "PASS" if passed else "FAIL", self.format(value, results[self.keys[0]].unit))


TARGETS: tuple[Target, ...] = (
    Target("GET /health/live >= 85% of the bare Litestar GET", "ratio", ("health", "bare-get"), 0.85),
    Target("no-op >= 85% of the bare decode-only POST", "ratio", ("noop", "bare-decode"), 0.85),
    Target("ingest (event ids) >= 75% of the no-op", "ratio", ("ingest", "noop"), 0.75),
    Target("ingest (event ids) >= 2.5x the seed's FastAPI design", "ratio", ("ingest", "seed"), 2.5),
    Target("ingest p99 <= 15 ms", "p99_ms", ("ingest",), 15.0, at_most=True),
    Target("batch with event ids >= 120,000 rows/s", "rate", ("batch",), 120_000),
    Target("batch without event ids >= 200,000 rows/s", "rate", ("batch-no-ids",), 200_000),
    Target("authenticated task list >= 40% of the bare GET", "ratio", ("tasks", "bare-get"), 0.40),
)
MEMORY_GROWTH_LIMIT = 0.05  # RSS of a worker after the last pass vs the workers' mark up to the baseline


def ratios(results: Mapping[str, Result]) -> dict[str, float]:
    return {
        name: results[a].rate / results[b].rate
        for name, (a, b) in RATIOS.items()
        if a in results and b in results and results[b].rate
    }


def memory_check(snapshots: Sequence[Sequence[Memory]]) -> Check:
    """Flat memory: every project worker's RSS after the last pass within 5% of the workers' high-water
    mark up to the baseline pass (the first of two, the second of three or more).

    The mark is the pool's, not each worker's own: the workers serve the same load, but the batch
    scenarios' large bodies land on them unevenly, and a worker may reach the level its peer reached
    in an earlier pass only later (one worker at 117 MiB after pass 1 and 121 after pass 2, its peer
    at 140 after each, both at 140 after pass 3: 10:30 UTC run of 2026-12-02). That is settling, not
    growth; memory kept across passes (a cache, a queue, a leak) takes a worker past the pool's mark.
    """
    name = f"worker RSS flat across passes (growth <= {MEMORY_GROWTH_LIMIT:.0%})"
    if len(snapshots) < 2:
        return Check(name, "n/a", "needs --repeat 2")
    baseline = 0 if len(snapshots) == 2 else 1
    first, last = snapshots[baseline], snapshots[-1]
    pids = [m.pid for m in snapshots[0]]
    if not first or any([m.pid for m in taken] != pids for taken in snapshots):
        return Check(name, "FAIL", "the worker processes changed between passes (a restart?)")
    mark = max(m.rss_kib for taken in snapshots[: baseline + 1] for m in taken)
    worst = max(m.rss_kib for m in last) / mark - 1
    detail = ", ".join(f"{a.rss_mib:.0f}->{b.rss_mib:.0f} MiB" for a, b in zip(first, last, strict=True))
    return Check(
        name,
        "PASS" if worst <= MEMORY_GROWTH_LIMIT else "FAIL",
        f"{worst:+.1%} of the workers' mark {mark / 1024:.0f} MiB ({detail})",
    )


def checks(results: Mapping[str, Result], snapshots: Sequence[Sequence[Memory]]) -> list[Check]:
    return [target.check(results) for target in TARGETS] + [memory_check(snapshots)]
