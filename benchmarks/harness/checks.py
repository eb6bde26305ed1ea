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
MEMORY_GROWTH_LIMIT = 0.05  # RSS of a worker after the last pass vs after the baseline pass


def ratios(results: Mapping[str, Result]) -> dict[str, float]:
    return {
        name: results[a].rate / results[b].rate
        for name, (a, b) in RATIOS.items()
        if a in results and b in results and results[b].rate
    }


def memory_check(snapshots: Sequence[Sequence[Memory]]) -> Check:
    """Flat memory: every project worker's RSS after the last pass within 5% of after the baseline
    pass: the first of two, the second of three or more. A worker's first pass may leave it below its
    high-water mark (the batch scenarios' bodies land on the workers unevenly: one worker at 109 MiB,
    the other at 127, both at 131 after pass 2 and after pass 3), so a third pass tells settling from
    growth."""
    name = f"worker RSS flat across passes (growth <= {MEMORY_GROWTH_LIMIT:.0%})"
    if len(snapshots) < 2:
        return Check(name, "n/a", "needs --repeat 2")
    first, last = snapshots[0 if len(snapshots) == 2 else 1], snapshots[-1]
    if not first or [m.pid for m in first] != [m.pid for m in last]:
        return Check(name, "FAIL", "the worker processes changed between passes (a restart?)")
    growth = [b.rss_kib / a.rss_kib - 1 for a, b in zip(first, last, strict=True)]
    worst = max(growth)
    detail = ", ".join(f"{a.rss_mib:.0f}->{b.rss_mib:.0f} MiB" for a, b in zip(first, last, strict=True))
    return Check(name, "PASS" if worst <= MEMORY_GROWTH_LIMIT else "FAIL", f"{worst:+.1%} ({detail})")


def checks(results: Mapping[str, Result], snapshots: Sequence[Sequence[Memory]]) -> list[Check]:
    return [target.check(results) for target in TARGETS] + [memory_check(snapshots)]
