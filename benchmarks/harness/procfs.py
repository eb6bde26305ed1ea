"""CPU time and resident memory of processes, read from ``/proc`` (Linux only).

CPU per request is robust to other work sharing the machine, where rates are not; memory per worker
shows whether a long run grows.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name: [0] state, [1] ppid, [2] pgrp,
    [11] utime, [12] stime (clock ticks)."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pids() -> list[int]:
    if not PROC.exists():
        return []
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, oldest first."""
    found = []
    for candidate in _pids():
        fields = _stat(candidate)
        if fields is not None and int(fields[1]) == pid:
            found.append((int(fields[19]) if len(fields) > 19 else 0, candidate))  # [19] start time
    return [child for _, child in sorted(found)]


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def postmaster_pid(data_dir: Path) -> int | None:
    """The embedded PostgreSQL's main process (its backends are its children)."""
    try:
        return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def valkey_pid(data_dir: Path) -> int | None:
    """The embedded Valkey's process (``app/core/embedded.py`` records it), if it runs: the record
    outlives the server, and its pid may since belong to another process."""
    try:
        pid = int(json.loads((data_dir / "valkey" / "server.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if "valkey-server" in cmdline(pid) else None


def busy_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine spent working, seconds it spent idle or waiting for I/O),
    summed over its CPUs since boot (the ``cpu`` line of ``/proc/stat``)."""
    fields = [int(value) for value in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / CLOCK_TICKS, idle / CLOCK_TICKS


def settle(quiet_share: float = 0.1, window_s: float = 0.5, limit_s: float = 30.0) -> tuple[float, bool]:
    """Wait until the machine is quiet: busy at most ``quiet_share`` of its CPU time over one
    ``window_s`` (PostgreSQL's autovacuum and checkpoints after millions of rows, a server's
    flushers finishing), at most ``limit_s``. Returns the seconds waited, and whether it was quiet."""
    started = time.monotonic()
    while True:
        busy, idle = busy_seconds()
        time.sleep(window_s)
        busy_after, idle_after = busy_seconds()
        worked = busy_after - busy
        waited = time.monotonic() - started
        if worked <= quiet_share * (worked + idle_after - idle):
            return waited, True
        if waited >= limit_s:
            return waited, False


class CpuMeter:
    """CPU seconds spent by one process group (a server under test, started in its own session),
    by PostgreSQL (the postmaster's children) and by Valkey, counted from the first ``sample``.

    Counted per process: one that exits between two samples (an autovacuum worker, a backend) takes
    its CPU time out of ``/proc``, so a plain sum of the living could go down. Here a process's time
    counts from when it was first seen (a new one's whole time); a process that exits loses only its
    time since the previous sample."""

    def __init__(self, server_pgid: int, postmaster: int | None, valkey: int | None = None) -> None:
        self.server_pgid = server_pgid
        self.postmaster = postmaster
        self.valkey = valkey
        self._seen: dict[int, float] = {}
        self._totals = {"server": 0.0, "postgres": 0.0, "valkey": 0.0}

    def sample(self) -> dict[str, float]:
        now: dict[int, float] = {}
        groups: dict[int, str] = {}
        for pid in _pids():
            fields = _stat(pid)
            if fields is None:
                continue
            if int(fields[2]) == self.server_pgid:
                groups[pid] = "server"
            elif self.postmaster and int(fields[1]) == self.postmaster:
                groups[pid] = "postgres"
            elif pid == self.valkey:
                groups[pid] = "valkey"
            else:
                continue
            now[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        for pid, seconds in now.items():
            before = self._seen.get(pid, 0.0)
            self._totals[groups[pid]] += seconds - before if seconds >= before else seconds  # reused pid
        self._seen = now
        return dict(self._totals)


@dataclass(frozen=True)
class Memory:
    """Resident memory of one process in KiB: ``rss`` as ``ps`` shows it, ``uss`` the private part
    (what the process would give back if it exited; pages shared with the parent after fork excluded)."""

    pid: int
    rss_kib: int
    uss_kib: int

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024

    @property
    def uss_mib(self) -> float:
        return self.uss_kib / 1024


def memory(pid: int) -> Memory | None:
    """``/proc/<pid>/smaps_rollup``: Rss, and Private_Clean + Private_Dirty as the USS."""
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0])
    return Memory(pid, values.get("Rss", 0), values.get("Private_Clean", 0) + values.get("Private_Dirty", 0))
