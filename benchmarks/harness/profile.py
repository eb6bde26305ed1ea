"""Where a worker's time goes: a py-spy sampling profile of one worker while wrk measures.

``--profile`` records one worker of the server under test for each scenario (py-spy ``record``,
collapsed stacks) into ``<data-dir>/profiles/`` and summarises it as the functions with the largest
inclusive and self share of the samples. py-spy is not a project dependency:
``uv run --with py-spy python -m benchmarks.run --profile ...`` brings it for one run. Only samples
of the thread holding the GIL count (``--gil``): the shares are of the worker's Python time. Sampling
pauses the worker briefly at every sample, so a profiled run's rates are lower than a plain run's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness.servers import BenchError, ServerProcess

SAMPLE_RATE_HZ = 100
_LINE = re.compile(r" \(([^()]*?):\d+\)$")


@dataclass(frozen=True)
class Hotspot:
    function: str  # "qualified name (file)"
    inclusive: float  # share of the samples with the function anywhere on the stack
    self_share: float  # share of the samples with the function on top


def py_spy() -> str:
    found = shutil.which("py-spy")
    if found is None:
        raise BenchError(
            "py-spy is not installed: run `uv run --with py-spy python -m benchmarks.run --profile ...`"
        )
    return found


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` → ``name (path/file.py)``: one entry per function, not per line."""
    return _LINE.sub(r" (\1)", frame.strip())


def summarise(raw: Path, top: int = 15, common: float = 0.95) -> tuple[int, list[Hotspot], list[Hotspot]]:
    """Total samples and the ``top`` functions by inclusive share and by self share, from py-spy's
    collapsed stacks.

    Functions on at least ``common`` of the samples (the server's entry points, the event loop's
    run method) say nothing about where the time goes and are left out."""
    inclusive: Counter[str] = Counter()
    self_count: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        inclusive.update(dict.fromkeys(set(frames), count))
        self_count[frames[-1]] += count
    if total == 0:
        return 0, [], []

    def hotspot(name: str) -> Hotspot:
        return Hotspot(name, inclusive[name] / total, self_count[name] / total)

    ranked = [name for name, n in inclusive.most_common() if n < common * total]
    return (
        total,
        [hotspot(name) for name in ranked[:top]],
        [hotspot(name) for name, _ in self_count.most_common(top)],
    )


class Profiler:
    """Starts py-spy on a pid for the measured seconds; ``finish`` waits and summarises."""

    def __init__(self, out_dir: Path) -> None:
        self.binary = py_spy()
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)

    def start(self, pid: int, seconds: float, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        raw = self.out_dir / f"{name}.collapsed.txt"
        command = [
            self.binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds) - 1)),
            "--rate",
            str(SAMPLE_RATE_HZ),
            "--gil",
            "--format",
            "raw",
            "--output",
            str(raw),
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return process, raw

    def finish(self, handle: tuple[subprocess.Popen[bytes], Path]) -> dict[str, object]:
        process, raw = handle
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        if process.returncode != 0 or not raw.exists():
            return {"error": err.decode(errors="replace").strip()[-500:]}
        total, by_inclusive, by_self = summarise(raw)
        return {
            "raw": str(raw),
            "samples": total,
            "inclusive": [(h.function, round(h.inclusive, 4), round(h.self_share, 4)) for h in by_inclusive],
            "self": [(h.function, round(h.inclusive, 4), round(h.self_share, 4)) for h in by_self],
        }

    def bind(self, server: ServerProcess, name: str) -> Callable[[float], Callable[[], dict[str, object]]]:
        """For ``run_wrk_scenario``: profile the server's first worker for the measured seconds."""

        def begin(seconds: float) -> Callable[[], dict[str, object]]:
            workers = server.workers()
            if not workers:
                return lambda: {"error": f"{server.name} has no worker process"}
            handle = self.start(workers[0], seconds, name)
            return lambda: {"pid": workers[0], **self.finish(handle)}

        return begin
