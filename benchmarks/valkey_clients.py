"""What one Lua call costs the caller: valkey-py's pooled client (as ``app/core/valkey.py`` builds
it) against the pipelined client of the hot read paths (``app/core/multiplexed.py``).

    uv run python -m benchmarks.valkey_clients                       # 20,000 calls, 64 callers
    uv run python -m benchmarks.valkey_clients --calls 50000 --callers 128 --rounds 3

A private embedded Valkey (``app.core.embedded``) in a temporary directory; the script is the shape
of a cached page read (a version and a 17 KB page in one call). CPU per call is this process's CPU
time (``process_time``, every thread) over the calls; the clients alternate in each round, under
uvloop as the app runs.
Other clients, measured the same way by hand (``uv run --with valkey-glide`` / ``--with coredis``):
valkey-glide 57 µs per call, coredis 216.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import uvloop

from app.config import Settings
from app.core.embedded import release_all, start_valkey
from app.core.multiplexed import MultiplexedValkey
from app.core.valkey import create_valkey

LOOKUP = "if not redis.call('GET', KEYS[1]) then return {0} end return {1, redis.call('GET', KEYS[2])}"


async def measure(call: Callable[[], Awaitable[Any]], calls: int, callers: int) -> tuple[float, float]:
    """(µs of CPU per call, calls per second) for ``calls`` calls made by ``callers`` tasks."""

    async def caller() -> None:
        for _ in range(calls // callers):
            await call()

    await asyncio.gather(*(caller() for _ in range(callers)))  # warm: connections, script cache
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = calls // callers * callers
    return cpu / done * 1e6, done / wall


async def compare(url: str, calls: int, callers: int, rounds: int) -> None:
    pooled = create_valkey(Settings(valkey_url=url), url)
    multiplexed = MultiplexedValkey.like(pooled)
    await pooled.mset({"version": "v1", "page": b"x" * 17_000})
    clients: dict[str, Callable[..., Awaitable[Any]]] = {
        "valkey-py, BlockingConnectionPool": pooled.register_script(LOOKUP),
        "MultiplexedValkey (one pipelined connection)": multiplexed.register_script(LOOKUP),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    for round_no in range(rounds):
        order = list(clients.items())
        for name, script in order if round_no % 2 == 0 else reversed(order):
            results[name].append(await measure(partial(script, keys=["version", "page"]), calls, callers))
    print(f"\n{calls:,} calls by {callers} concurrent callers, {rounds} round(s), best round shown\n")
    print("| client | CPU µs per call | calls/s |\n|---|---:|---:|")
    for name, measured in results.items():
        cpu, rate = min(measured)
        print(f"| {name} | {cpu:.1f} | {rate:,.0f} |")
    await multiplexed.aclose()
    await pooled.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="valkey-clients-") as directory:
        url, _ = start_valkey(Path(directory))
        try:
            uvloop.run(compare(url, options.calls, options.callers, options.rounds))
        finally:
            release_all()


if __name__ == "__main__":
    main()
