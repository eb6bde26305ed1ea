"""The harness's records: the options of a run, one measured scenario, one target check."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness.procfs import Memory


@dataclass(frozen=True)
class Options:
    duration: float = 10.0
    warmup: float = 2.0
    connections: int = 64
    threads: int = 2
    workers: int = 2
    batch_size: int = 500
    batch_connections: int = 16
    copy_seconds: float = 2.0
    tasks: int = 50
    repeat: int = 1
    sink_driver: str | None = None
    only: tuple[str, ...] = ()
    profile: bool = False
    data_dir: Path = Path(".data/bench")


BUSY_MACHINE = "busy_machine_s"
"""A result's ``detail`` key, set when the machine did not become quiet before it was measured (how long
the harness waited for that, ``procfs.settle``): other work shared the CPUs."""


@dataclass
class Result:
    key: str
    label: str
    unit: str  # "req/s" or "rows/s"
    rate: float  # successful (2xx) requests, or rows, per second
    server: str = ""
    requests: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    rows_acknowledged: int | None = None
    rows_stored: int | None = None
    in_flight_bound: int | None = None
    server_cpu_us: float | None = None  # CPU of the server's processes per 2xx request (per row: rows/s)
    postgres_cpu_us: float | None = None
    valkey_cpu_us: float | None = None
    wrk_cpu_us: float | None = None
    sink_writes: float | None = None  # the page-view sink's writes during the measure (its /metrics)
    sink_rows_per_write: float | None = None
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

    @property
    def lost(self) -> bool:
        return self.consistency.startswith(("LOST", "EXTRA"))


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "PASS", "FAIL" or "n/a" (a scenario it needs did not run)
    measured: str

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


@dataclass
class Run:
    """Everything one run measured: a list of results per pass (the last pass is the headline),
    the project's worker memory after each pass, and the scenarios that could not run."""

    meta: dict[str, Any]
    passes: list[list[Result]] = field(default_factory=list)
    memory_at_start: list[Memory] = field(default_factory=list)  # once the project answered
    memory: list[list[Memory]] = field(default_factory=list)  # after each pass
    pending: dict[str, str] = field(default_factory=dict)  # label → why it did not run

    @property
    def results(self) -> list[Result]:
        return self.passes[-1] if self.passes else []

    @property
    def by_key(self) -> dict[str, Result]:
        return {r.key: r for r in self.results}

    @property
    def lost(self) -> list[Result]:
        return [r for results in self.passes for r in results if r.lost]
