"""The "oldest of the live processes" gauges: ``app_worker_heartbeat_timestamp_seconds``
(``app/core/metrics.py``) and ``app_monitoring_round_timestamp_seconds``
(``app/domains/monitoring/services.py``), both ``multiprocess_mode="livemin"``.

With several processes writing to ``PROMETHEUS_MULTIPROC_DIR``, what is exported is the smallest
value of the processes alive: one stalled process among live ones shows (``mostrecent`` or a maximum
hid it behind the others' fresh values), and a process that is gone does not (its files are removed by
``sweep_dead_processes``, which every worker runs when it starts and every scrape before it reads; a
plain ``min`` would keep a dead process's last value for ever, an alarm nothing clears).

Each process here is a real interpreter importing the app's modules with the directory set, as a
granian worker does, and setting the gauge; the test then reads the directory as ``/metrics`` does.
The stalled process writes first and the fresh one last, so that ``mostrecent`` would answer the
fresh value.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from app.core.metrics import sweep_dead_processes

ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import importlib, os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]  # before prometheus_client is imported
    gauge = getattr(importlib.import_module(sys.argv[2]), sys.argv[3])
    print("imported", flush=True)
    value = float(sys.stdin.readline())  # first: labels() gives the process a value (0) of its own
    gauge.labels(sys.argv[4]).set(value)
    print("set", flush=True)
    sys.stdin.read()  # alive until the test closes stdin
    """
)

GAUGES = [
    ("app.core.metrics", "WORKER_HEARTBEAT", "app_worker_heartbeat_timestamp_seconds", "worker"),
    (
        "app.domains.monitoring.services",
        "ROUND_ENDED",
        "app_monitoring_round_timestamp_seconds",
        "monitoring",
    ),
]


class Writer:
    """A process that imports ``module`` with the multiprocess directory set, then sets its gauge."""

    def __init__(self, directory: Path, module: str, name: str, loop: str) -> None:
        self.process = subprocess.Popen(  # this interpreter, a fixed script
            [sys.executable, "-c", WRITER, str(directory), module, name, loop],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def said(self, word: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line != f"{word}\n":
            self.process.kill()
            self.process.wait(timeout=60)
            error = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"the writer said {line!r}, not {word!r}: {error}")

    def set(self, value: float) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{value}\n")
        self.process.stdin.flush()
        self.said("set")

    def end(self) -> None:
        """The process exits (its files stay behind, as a killed worker's do)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0, self.process.stderr.read() if self.process.stderr else ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=60)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for writer in started:
        writer.close()


def scraped(directory: Path, name: str, loop: str) -> float | None:
    """What ``/metrics`` answers for ``name``: the dead processes' live gauges swept, then every
    process's files added up by prometheus_client's multiprocess collector."""
    sweep_dead_processes(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry.get_sample_value(name, {"loop": loop})


@pytest.mark.parametrize(("module", "gauge", "name", "loop"), GAUGES, ids=[entry[2] for entry in GAUGES])
def test_the_oldest_live_process_shows_and_a_dead_ones_value_does_not(
    tmp_path: Path, writers: list[Writer], module: str, gauge: str, name: str, loop: str
) -> None:
    """Three processes set the gauge (one then exits); a fourth only imports its module, as the API's
    processes import the worker's heartbeat and never run a worker: it adds no value (was: a 0 that
    held the oldest at 0 for ever, a stalled loop on every scrape of the API)."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    stalled, fresh, dead, idle = (Writer(directory, module, gauge, loop) for _ in range(4))
    writers += [stalled, fresh, dead, idle]
    for writer in writers:
        writer.said("imported")

    stalled.set(1_000.0)
    dead.set(500.0)
    dead.end()  # gone, oldest of all
    fresh.set(2_000.0)

    assert scraped(directory, name, loop) == 1_000.0  # the stalled one, not the fresh one written last

    stalled.end()
    assert scraped(directory, name, loop) == 2_000.0  # only the live process is left
