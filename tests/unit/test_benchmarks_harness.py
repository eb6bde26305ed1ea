"""The harness's own logic, without servers or wrk: ``uv run pytest benchmarks/tests -q``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from litestar.testing import TestClient
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from app.core.runtime import release_services
from benchmarks.harness import procfs
from benchmarks.harness.checks import RATIOS, TARGETS, checks, memory_check, ratios
from benchmarks.harness.model import BUSY_MACHINE, Options, Result, Run
from benchmarks.harness.profile import summarise
from benchmarks.harness.provision import DATA_DIR_MARKER, claim_data_dir
from benchmarks.harness.report import chart, document, markdown
from benchmarks.harness.runner import run
from benchmarks.harness.scenarios import BY_KEY, SCENARIOS, select, sink_writes
from benchmarks.harness.servers import BenchError, ServerProcess
from benchmarks.harness.wrk import WRK_DIR
from benchmarks.reference.bare_litestar import create_app

VIEW = {"site_key": "k" * 20, "url": "https://bench.example/p/1", "event_id": None}


def result(key: str, rate: float, p99_ms: float = 5.0, unit: str = "req/s") -> Result:
    return Result(key=key, label=key, unit=unit, rate=rate, p50_ms=1.0, p99_ms=p99_ms)


def test_consistency_flags_lost_and_unexplained_rows() -> None:
    stored = Result("ingest", "ingest", "req/s", 1.0, rows_acknowledged=100, in_flight_bound=64)
    stored.rows_stored = 99
    assert stored.consistency == "LOST 1" and stored.lost
    stored.rows_stored = 100
    assert stored.consistency == "ok" and not stored.lost
    stored.rows_stored = 164
    assert stored.consistency == "ok (+64 in flight at stop)"
    stored.rows_stored = 165
    assert stored.consistency == "EXTRA 65" and stored.lost


def test_targets_pass_fail_and_not_measured() -> None:
    measured = [result("bare-get", 20_000), result("health", 17_100), result("tasks", 7_900)]
    results = {r.key: r for r in measured}
    found = {c.name: c for c in checks(results, [])}
    assert found["GET /health/live >= 85% of the bare Litestar GET"].status == "PASS"
    assert found["GET /health/live >= 85% of the bare Litestar GET"].measured == "86%"
    assert found["authenticated task list >= 40% of the bare GET"].status == "FAIL"
    assert found["ingest p99 <= 15 ms"].status == "n/a"
    results["ingest"] = result("ingest", 5_000, p99_ms=15.0)
    assert {c.name: c for c in checks(results, [])}["ingest p99 <= 15 ms"].status == "PASS"
    results["ingest"] = result("ingest", 5_000, p99_ms=15.1)
    assert {c.name: c for c in checks(results, [])}["ingest p99 <= 15 ms"].status == "FAIL"
    results["ingest"] = result("ingest", 5_000, p99_ms=2.0)
    results["ingest"].errors = 40  # fast error answers: the harness review
    errored = {c.name: c for c in checks(results, [])}["ingest p99 <= 15 ms"]
    assert (errored.status, errored.measured) == ("FAIL", "ingest answered errors (see the table)")


def test_ratios_divide_rates_of_the_same_pass() -> None:
    found = ratios({"ingest": result("ingest", 9_000), "seed": result("seed", 3_000)})
    assert found == {"ingest / seed design": 3.0}


def test_memory_check_needs_two_passes_and_catches_growth() -> None:
    a, b = procfs.Memory(1, 100_000, 60_000), procfs.Memory(2, 100_000, 60_000)
    assert memory_check([[a, b]]).status == "n/a"
    assert memory_check([[a, b], [procfs.Memory(1, 104_900, 0), b]]).status == "PASS"
    assert memory_check([[a, b], [procfs.Memory(1, 105_200, 0), b]]).status == "FAIL"
    assert memory_check([[a, b], [procfs.Memory(3, 100_000, 0), b]]).status == "FAIL"


def test_with_three_passes_memory_is_compared_after_the_warm_up_pass() -> None:
    a, b = procfs.Memory(1, 100_000, 0), procfs.Memory(2, 120_000, 0)
    settled = [[a, b], [procfs.Memory(1, 120_000, 0), b], [procfs.Memory(1, 121_000, 0), b]]
    assert memory_check(settled).status == "PASS"
    growing = [[a, b], [procfs.Memory(1, 120_000, 0), b], [procfs.Memory(1, 127_000, 0), b]]
    assert memory_check(growing).status == "FAIL"


def test_a_worker_reaching_its_peers_earlier_mark_is_settling_not_growth() -> None:
    def mib(pid: int, rss: float) -> procfs.Memory:
        return procfs.Memory(pid, int(rss * 1024), 0)

    # The 2026-12-02 10:30 UTC run: worker 1 reached in pass 3 what worker 2 held since pass 1.
    settling = [
        [mib(1, 117.4), mib(2, 140.0)],
        [mib(1, 120.5), mib(2, 140.1)],
        [mib(1, 139.8), mib(2, 140.2)],
    ]
    check = memory_check(settling)
    assert check.status == "PASS", check.measured
    assert "mark 140 MiB" in check.measured and "120->140 MiB" in check.measured
    past_the_mark = [*settling[:2], [mib(1, 147.2), mib(2, 140.2)]]
    assert memory_check(past_the_mark).status == "FAIL"
    restarted = [settling[0], [mib(3, 120.5), mib(2, 140.1)], [mib(3, 121.0), mib(2, 140.2)]]
    assert memory_check(restarted).status == "FAIL"


def test_every_scenario_and_target_is_consistent() -> None:
    for scenario in SCENARIOS:
        if scenario.server != "in-process":
            assert (WRK_DIR / scenario.script).exists(), scenario.key
    for target in TARGETS:
        assert all(key in BY_KEY for key in target.keys), target.name
    assert all(a in BY_KEY and b in BY_KEY for a, b in RATIOS.values())
    default = [s.key for s in select(())]
    assert "bare-get" in default and "seed" in default and "tasks" in default
    assert "bare-decode-data" not in default
    assert "feed" not in default and BY_KEY["feed"].pending is None  # needs its data set: --only
    assert [s.key for s in select(("tasks", "health"))] == ["health", "tasks"]
    with pytest.raises(ValueError, match="unknown scenario"):
        select(("nope",))


def test_profile_summary_counts_each_function_once_per_stack(tmp_path: Path) -> None:
    raw = tmp_path / "stacks.txt"
    raw.write_text(
        "main (srv.py:1);loop (srv.py:2);handler (app.py:10);handler (app.py:12);encode (json.py:5) 3\n"
        "main (srv.py:1);loop (srv.py:2);auth (app.py:20) 1\n"
    )
    total, by_inclusive, by_self = summarise(raw)
    assert total == 4
    shares = {h.function: (h.inclusive, h.self_share) for h in by_inclusive}
    assert "main (srv.py)" not in shares  # on every sample: says nothing
    assert shares["handler (app.py)"] == (0.75, 0.0)
    assert by_self[0].function == "encode (json.py)" and by_self[0].self_share == 0.75


def test_procfs_reads_memory_and_children_of_this_process() -> None:
    mine = procfs.memory(os.getpid())
    assert mine is not None and 0 < mine.uss_kib <= mine.rss_kib
    program = "import sys; print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"  # exec is over
        assert child.pid in procfs.children(os.getpid())
        assert "sys.stdin.read()" in procfs.cmdline(child.pid)
    finally:
        child.communicate(b"")


def test_the_machines_busy_time_counts_this_process_working() -> None:
    busy, idle = procfs.busy_seconds()
    started = time.process_time()
    while time.process_time() - started < 0.2:
        pass
    busy_after, idle_after = procfs.busy_seconds()
    assert busy_after - busy >= 0.2 - 2 / procfs.CLOCK_TICKS
    assert idle_after >= idle


class BurningChild:
    """A child process that burns 0.3 s of CPU when told to, once its meter is in place (a burn
    started before the meter's first reading would be missed). Its command line ends with ``args``."""

    BURN = (
        "import sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\n"
        "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
        "print('burnt', flush=True)\nsys.stdin.read()\n"
    )

    def __init__(self, *args: str, own_session: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.BURN, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=own_session,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        assert self.stdout.readline() == b"ready\n"  # running its own program now

    def burn(self) -> None:
        self.stdin.write(b"go\n")
        self.stdin.flush()
        assert self.stdout.readline() == b"burnt\n"

    def stop(self) -> None:
        self.process.communicate(b"")


def test_cpu_meter_never_goes_back_when_a_measured_process_exits() -> None:
    child = BurningChild(own_session=True)  # its own process group, as the harness starts a server
    meter = procfs.CpuMeter(child.process.pid, postmaster=None)
    child.burn()
    while_alive = meter.sample()["server"]
    child.stop()
    after_exit = meter.sample()["server"]
    assert while_alive >= 0.25
    assert after_exit >= while_alive


def test_cpu_meter_counts_valkey_apart(tmp_path: Path) -> None:
    child = BurningChild("valkey-server")  # on its command line, as the embedded server has
    record = tmp_path / "valkey" / "server.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"port": 1, "pid": os.getpid(), "holders": []}))
    assert procfs.valkey_pid(tmp_path) is None, "a recorded pid that is no Valkey (any more) is not counted"
    record.write_text(json.dumps({"port": 1, "pid": child.process.pid, "holders": []}))
    meter = procfs.CpuMeter(server_pgid=-1, postmaster=None, valkey=procfs.valkey_pid(tmp_path))
    child.burn()
    counted = meter.sample()
    child.stop()
    assert counted["valkey"] >= 0.25
    assert counted["server"] == counted["postgres"] == 0


def test_settling_gives_up_at_its_limit_and_says_it_was_not_quiet() -> None:
    waited, quiet = procfs.settle(quiet_share=-1.0, window_s=0.01, limit_s=0.0)
    assert waited >= 0.01 and not quiet


def test_a_result_measured_on_a_busy_machine_is_marked_in_the_table() -> None:
    """The harness review: "(waited 30.0s for the machine to become quiet)" was printed when it never
    became quiet, and nothing marked the rows measured so."""
    quiet, busy = result("health", 10_000), result("bare-get", 20_000)
    busy.detail[BUSY_MACHINE] = 30.0
    meta = {
        "started_at": "2026-01-01T00:00:00Z",
        "machine": {"cpus": 2, "load_before": 0.1, "platform": "linux"},
        "versions": {k: "1" for k in ("granian", "litestar", "uvicorn", "fastapi", "asyncpg", "wrk")},
        "args": {
            "workers": 2,
            "threads": 2,
            "duration": 10,
            "warmup": 2,
            "connections": 64,
            "profile": False,
        },
        "server": {"SINK_DRIVER": "hybrid"},
    }
    text = markdown(Run(meta, passes=[[busy, quiet]]), [])
    assert "| bare-get ¹ |" in text and "| health |" in text
    assert "¹ measured on a machine that did not become quiet first" in text
    assert "¹" not in markdown(Run(meta, passes=[[quiet]]), [])


def test_a_data_dir_that_holds_other_data_is_refused(tmp_path: Path) -> None:
    """The harness review: a ``just serve`` ``DATA_DIR`` given as ``--data-dir`` lost every page view
    (each pass empties them)."""
    serve_data = tmp_path / "serve"
    (serve_data / "postgres").mkdir(parents=True)
    refused = claim_data_dir(serve_data, default=tmp_path / "bench")
    assert refused is not None and "not a benchmark's" in refused
    assert not (serve_data / DATA_DIR_MARKER).exists()
    default = tmp_path / "bench"  # the default, made by the releases before the marker
    (default / "postgres").mkdir(parents=True)
    assert claim_data_dir(default, default=default) is None
    assert (default / DATA_DIR_MARKER).exists()
    new = tmp_path / "new" / "dir"
    assert claim_data_dir(new, default=default) is None
    (new / "postgres").mkdir()
    assert claim_data_dir(new, default=default) is None, "claimed once, its own from then on"


def test_the_command_refuses_another_data_dir_before_it_starts_anything(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "health", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done
    assert "not a benchmark's" in done.stderr and not (tmp_path / "postgres").exists()


def test_markdown_shows_results_ratios_targets_and_memory() -> None:
    health = result("health", 10_000)
    health.server_cpu_us, health.postgres_cpu_us, health.valkey_cpu_us, health.wrk_cpu_us = 150.4, 0, 12.2, 22
    run = Run(
        {
            "started_at": "2026-01-01T00:00:00Z",
            "machine": {"cpus": 2, "load_before": 0.1, "platform": "linux"},
            "versions": {k: "1" for k in ("granian", "litestar", "uvicorn", "fastapi", "asyncpg", "wrk")},
            "args": {
                **{"workers": 2, "threads": 2, "duration": 10, "warmup": 2},
                **{"connections": 64, "profile": False},
            },
            "server": {"SINK_DRIVER": "hybrid"},
        },
        passes=[[result("bare-get", 20_000), health]],
        memory=[[procfs.Memory(7, 102_400, 51_200)]],
        pending={"GET /api/feed": "no route yet"},
    )
    ingest = run.passes[0][1]
    ingest.sink_writes, ingest.sink_rows_per_write = 1_234, 9.26
    text = markdown(run, checks(run.by_key, run.memory))
    assert "| health | 1,234 | 9.3 |" in text, "views per sink write"
    assert "| bare-get |  | 20,000 | req/s |" in text
    assert "| 150 + 0 + 12 + 22 |" in text, "CPU per request: server + PostgreSQL + Valkey + wrk"
    assert "| GET /health/live / bare GET | 0.50 |" in text
    assert "| GET /health/live >= 85% of the bare Litestar GET | FAIL | 50% |" in text
    assert "| pid 7 |  | 100.0 (50.0) |" in text
    assert "- GET /api/feed: no route yet" in text
    saved = json.loads(json.dumps(document(run, checks(run.by_key, run.memory)), default=str))
    assert saved["passes"][0]["results"][0]["key"] == "bare-get"
    assert saved["memory"] == [[{"pid": 7, "rss_kib": 102_400, "uss_kib": 51_200}]]


def test_sink_writes_are_read_from_the_servers_prometheus_text() -> None:
    """The histogram as prometheus_client serves it (buckets, ``_sum``, ``_count``, ``_created``),
    summed over its series as a multiprocess scrape lists them."""
    registry = CollectorRegistry()
    rows = Histogram("app_page_view_batch_rows", "Rows per sink write", ["worker"], registry=registry)
    for worker, sizes in {"1": [9, 7], "2": [500]}.items():
        for size in sizes:
            rows.labels(worker=worker).observe(size)
    Counter("app_page_views_written", "another metric", registry=registry).inc(99)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        assert sink_writes(f"http://127.0.0.1:{server.server_port}") == (516.0, 3.0)
    finally:
        server.shutdown()
        thread.join()
    assert sink_writes("http://127.0.0.1:9") is None, "nothing listens: no figure, no failure"


def test_chart_draws_both_units(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    assert chart(path, [result("health", 10_000), result("batch", 90_000, unit="rows/s")], "title")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_bare_reference_decodes_the_ingest_body_and_nothing_else() -> None:
    with TestClient(app=create_app()) as client:
        assert client.get("/hello").json() == {"status": "ok"}
        for path in ("/decode", "/decode-data"):
            assert client.post(path, json=VIEW).status_code == 202
            assert client.post(path, json={**VIEW, "extra": 1}).status_code == 400
            assert client.post(path, json={**VIEW, "site_key": "short"}).status_code == 400


def test_a_server_that_exits_during_the_run_fails_it(tmp_path: Path) -> None:
    """The harness reviewer killed the project mid-scenario: the row was printed and the run exited 0."""
    server = ServerProcess("gone", [sys.executable, "-c", "print('bye')"], {}, 1, "/", tmp_path)
    server.start()
    assert server.process is not None
    server.process.wait(timeout=30)
    with pytest.raises(BenchError, match="gone exited with 0 during the run"):
        server.check_alive()
    server.stop()


def test_a_server_that_never_became_ready_is_killed_at_once(tmp_path: Path) -> None:
    """granian starting its workers went on after a SIGTERM: the stop waited 15 s, and a second
    Ctrl-C then left it running (the harness reviewer). One that never answered gets SIGKILL alone."""
    told = tmp_path / "told"
    stubborn = (
        "import pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: pathlib.Path({str(told)!r}).write_text('term'))\n"
        "print('listening', flush=True)\n"
        "time.sleep(600)\n"
    )
    server = ServerProcess("stubborn", [sys.executable, "-c", stubborn], {}, 1, "/", tmp_path)
    server.start()
    deadline = time.monotonic() + 60
    while "listening" not in server.log_tail():  # its handler is in place
        assert time.monotonic() < deadline, f"the stub never started:\n{server.log_tail()}"
        time.sleep(0.05)
    server.stop(timeout_s=5)
    assert server.process is not None and server.process.returncode == -signal.SIGKILL
    assert not told.exists(), "it was asked to stop and waited for"


@pytest.mark.parametrize("only", [",", ""])
def test_an_only_that_names_no_scenario_is_refused(only: str) -> None:
    """The harness review: ``--only ,`` and ``--only ""`` ran every default scenario."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", only, "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "--only names no scenario" in done.stderr, done


def test_the_feed_scenarios_are_refused_without_the_feeds_data_set(tmp_path: Path) -> None:
    """The harness review: on a directory without the data set they measured an empty feed under the
    label "20 groups of 1M events", and exited 0. Refused before any server starts (in-process: no wrk
    needed; the embedded PostgreSQL is started, migrated and released)."""
    try:
        with pytest.raises(BenchError) as refused:
            run(Options(only=("feed",), data_dir=tmp_path / "d"))
    finally:
        release_services()
    assert "the feed scenarios measure the feed's data set" in str(refused.value)
    assert "benchmarks.feed_data --harness --only data" in str(refused.value)


def test_the_feed_data_set_refuses_a_data_dir_that_is_not_a_benchmarks(tmp_path: Path) -> None:
    """``feed_data --harness`` replaces the users, projects and sites of the database it is given."""
    (tmp_path / "secret_key").write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.feed_data", "--harness", "--only", "data"],
        env={**os.environ, "DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done
    assert f"DATA_DIR {tmp_path} holds data that is not a benchmark's" in done.stderr, done.stderr
    assert not (tmp_path / "postgres").exists()
