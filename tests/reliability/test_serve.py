"""``python -m app.cli serve`` (what ``just serve`` runs), started as a new user would start it.

Each test runs the real command on its own fresh ``DATA_DIR`` (embedded PostgreSQL and Valkey),
reads its output line by line until the banner, and checks that the banner tells the truth: the
app answers ``/health/ready`` with 200 and the advertised account logs in. Then it stops the
launcher (SIGTERM, or SIGKILL and a second start on the same ``DATA_DIR``) and scans ``/proc``:
nothing the launcher started may be left running, neither its descendants nor any PostgreSQL or
Valkey whose command line or working directory names the ``DATA_DIR``.

The launcher's environment is built from scratch, so a developer's settings cannot change what
is tested.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import cli
from app.config import DEFAULT_ADMIN_PASSWORD, Settings, load_settings
from app.core import embedded
from tests.served import free_port
from tests.valkey_control import ControlledValkey

ROOT = Path(__file__).resolve().parents[2]
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
READY_DEADLINE_S = 120.0  # generous: a cold initdb plus the app's import on a busy machine
STOP_PROMISE_S = 10.0  # the documented bound for SIGTERM to stop everything
GONE_DEADLINE_S = 15.0
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - refused before anything binds


Identity = tuple[int, int]  # pid, start time: a pid alone may be reused


# --- /proc -------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a live process; None if it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def alive(who: Identity) -> bool:
    stat = _stat(who[0])
    return stat is not None and stat[1] == who[1]


def identity(pid: int) -> Identity:
    stat = _stat(pid)
    assert stat is not None, f"process {pid} is not running"
    return pid, stat[1]


def descendants(pid: int) -> set[Identity]:
    children: dict[int, list[Identity]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: set[Identity] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child[0])
    return found


def mentioning(directory: Path) -> dict[Identity, str]:
    """Live processes whose command line or working directory names ``directory``."""
    name = str(directory)
    found: dict[Identity, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        stat = _stat(int(entry.name))
        if stat is not None and (name in command or cwd == name or cwd.startswith(name + "/")):
            found[(int(entry.name), stat[1])] = f"{command.strip()} (cwd {cwd})"
    return found


def wait_gone(processes: set[Identity], deadline_s: float = GONE_DEADLINE_S) -> set[Identity]:
    """Poll until none of ``processes`` runs; returns those still running at the deadline."""
    deadline = time.monotonic() + deadline_s
    while (left := {who for who in processes if alive(who)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def wait_nothing_mentions(directory: Path, deadline_s: float = GONE_DEADLINE_S) -> dict[Identity, str]:
    deadline = time.monotonic() + deadline_s
    while (left := mentioning(directory)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def postmaster(data_dir: Path) -> Identity:
    return identity(int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0]))


def embedded_valkey(data_dir: Path) -> Identity:
    [who] = [who for who, line in mentioning(data_dir).items() if "valkey-server" in line]
    return who


# --- the launcher ------------------------------------------------------------------------------


class Launcher:
    """``python -m app.cli serve`` with a clean environment; its output is read by a thread."""

    def __init__(self, data_dir: Path, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{name: os.environ[name] for name in _INHERITED if name in os.environ},
            "DATA_DIR": str(data_dir),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.me = identity(self.process.pid)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put(None)

    def _next_line(self, deadline: float) -> str | None:
        try:
            line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            pytest.fail(f"no output from the launcher in time:\n{self.tail()}")
        if line is not None:
            self.output.append(line)
        return line

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output[-lines:])

    def read_banner(self) -> list[str]:
        """Lines from ``ready in`` to ``stop with Ctrl-C``; fails if the launcher exits first."""
        deadline = time.monotonic() + READY_DEADLINE_S
        while (line := self._next_line(deadline)) is not None and not line.startswith("ready in"):
            pass
        if line is None:
            pytest.fail(f"the launcher exited ({self.process.wait()}) without a banner:\n{self.tail()}")
        banner = [line]
        while (line := self._next_line(deadline)) is not None:
            banner.append(line)
            if "stop with Ctrl-C" in line:
                return banner
        pytest.fail(f"the banner was cut short:\n{self.tail()}")

    def read_until(self, prefix: str, deadline_s: float) -> str:
        """The first line from now that starts with ``prefix``; fails if the launcher exits first."""
        deadline = time.monotonic() + deadline_s
        while (line := self._next_line(deadline)) is not None:
            if line.startswith(prefix):
                return line
        pytest.fail(f"the launcher exited ({self.process.wait()}) before {prefix!r}:\n{self.tail()}")

    def read_to_exit(self, deadline_s: float) -> int:
        """The exit code; fails unless the launcher exits within ``deadline_s``."""
        deadline = time.monotonic() + deadline_s
        while self._next_line(deadline) is not None:
            pass
        try:
            return self.process.wait(max(deadline - time.monotonic(), 0.001))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher did not exit within {deadline_s:g}s:\n{self.tail()}")

    def family(self) -> set[Identity]:
        return {self.me, *descendants(self.me[0])}

    def kill_everything(self) -> None:
        """Last resort after a failed test: SIGKILL all it started."""
        for pid, _ in self.family() | set(mentioning(self.data_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh DATA_DIR outside pytest's tmp_path: pytest resets its base to 0700 whenever a session
    starts, which would cut off a PostgreSQL that pgserver runs as another user (when root)."""
    directory = Path(tempfile.mkdtemp(prefix="serve-test-"))
    yield directory / "data"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    started: list[Launcher] = []
    yield started
    for launcher in started:
        launcher.kill_everything()


def start(
    launchers: list[Launcher], data_dir: Path, port: int | None = None, env: dict[str, str] | None = None
) -> Launcher:
    launcher = Launcher(data_dir, port, env)
    launchers.append(launcher)
    return launcher


def assert_banner_is_true(launcher: Launcher, banner: list[str], workers: int = 1) -> None:
    """At the moment the banner is out, the app is ready and the advertised account logs in."""
    text = "\n".join(banner)
    response = httpx.get(f"{launcher.base}/health/ready", timeout=10)
    assert response.status_code == 200, f"banner printed but /health/ready says {response.text}"
    for path in ("/api", "/schema", "/schema/openapi.json", "/saq/", "/health/ready", "/metrics"):
        assert f"{launcher.base}{path}" in text, f"{path} missing from the banner:\n{text}"
        opened = httpx.get(f"{launcher.base}{path}", follow_redirects=True, timeout=10)  # as a browser would
        assert opened.status_code == 200, f"{path}, printed in the banner, answers {opened.status_code}"
    assert "admin@example.com" in text and DEFAULT_ADMIN_PASSWORD in text, text
    login = httpx.post(
        f"{launcher.base}/api/auth/login",
        json={"email": "admin@example.com", "password": DEFAULT_ADMIN_PASSWORD},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    for _ in range(4 * workers):  # a new connection each time: every worker must accept the token
        me = httpx.get(
            f"{launcher.base}/api/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert me.status_code == 200, me.text


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_and_assert_clean(launcher: Launcher, also_started: set[Identity] | None = None) -> None:
    """SIGTERM: exit 0 within the promised time, and nothing it started is left."""
    family = launcher.family() | (also_started or set())
    assert any("serve-child" in command_line(pid) for pid, _ in family), "granian is a child process"
    launcher.process.send_signal(signal.SIGTERM)
    assert launcher.read_to_exit(STOP_PROMISE_S) == 0, launcher.tail()
    assert not wait_gone(family), f"left running: {wait_gone(family)}\n{launcher.tail()}"
    assert not wait_nothing_mentions(launcher.data_dir), f"left running: {mentioning(launcher.data_dir)}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{launcher.base}/health/live", timeout=2)


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("run", "workers"), [(1, 1), (2, 1), (3, 2)], ids=["1st", "2nd", "3rd-two-workers"])
def test_every_fresh_start_is_ready_and_sigterm_leaves_nothing(
    launchers: list[Launcher], data_dir: Path, run: int, workers: int
) -> None:
    launcher = start(launchers, data_dir, env={"WORKERS": str(workers)})

    banner = launcher.read_banner()

    assert_banner_is_true(launcher, banner, workers)
    key_file = data_dir / "secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    stop_and_assert_clean(launcher)


def test_after_a_sigkill_nothing_is_left_and_a_second_start_is_ready(
    launchers: list[Launcher], data_dir: Path
) -> None:
    first = start(launchers, data_dir)
    assert_banner_is_true(first, first.read_banner())
    family = first.family()

    first.process.kill()

    assert not wait_gone(family), "granian, Valkey or the reaper outlived the SIGKILLed launcher"
    assert not wait_nothing_mentions(data_dir), "PostgreSQL or Valkey outlived the SIGKILLed launcher"
    second = start(launchers, data_dir, first.port)  # the killed one's claim on the port died with it
    assert_banner_is_true(second, second.read_banner())
    stop_and_assert_clean(second)


def _busy_backend(data_dir: Path) -> threading.Thread:
    """A backend in a long statement, which notices its postmaster's death only when it ends: left
    attached to the shared memory, it kept a new postmaster from starting."""
    socket_dir = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[4].strip()
    connection = psycopg.connect(host=socket_dir, user="postgres", dbname="app", autocommit=True)

    def run() -> None:
        with contextlib.suppress(psycopg.Error), connection:
            connection.execute("select count(*) from generate_series(1, 10000000000)")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    with psycopg.connect(host=socket_dir, user="postgres", dbname="app", autocommit=True) as watcher:
        deadline = time.monotonic() + READY_DEADLINE_S
        while watcher.execute(
            "select count(*) from pg_stat_activity where state = 'active' and query like '%generate_series%'"
            " and pid <> pg_backend_pid()"
        ).fetchone() != (1,):
            assert time.monotonic() < deadline, "the long statement did not start"
            time.sleep(0.05)
    return thread


def _said(launcher: Launcher, said: str) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while (line := launcher._next_line(deadline)) is not None and said not in line:
        assert time.monotonic() < deadline, f"not said: {said}\n{launcher.tail()}"
    assert line is not None, f"the launcher exited instead:\n{launcher.tail()}"


def _ready_again(launcher: Launcher, name: str) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while True:  # the app reconnects on its own: no restart of granian or its workers
        response = httpx.get(f"{launcher.base}/health/ready", timeout=10)
        if response.status_code == 200 and response.json()["status"] == "ok":
            return
        assert time.monotonic() < deadline, f"not ready again after {name} was started again"
        time.sleep(0.2)


def test_an_embedded_server_killed_under_serve_is_started_again_and_the_app_recovers(
    launchers: list[Launcher], data_dir: Path
) -> None:
    launcher = start(launchers, data_dir)
    banner = launcher.read_banner()
    assert_banner_is_true(launcher, banner)

    # PostgreSQL, killed while a backend is busy in a statement.
    busy = _busy_backend(data_dir)
    victim = postmaster(data_dir)
    os.kill(victim[0], signal.SIGKILL)
    _said(launcher, "the embedded PostgreSQL had stopped: started again")
    assert not alive(victim) and postmaster(data_dir) != victim
    _ready_again(launcher, "PostgreSQL")
    assert_banner_is_true(launcher, banner)  # logs in and reads the account again
    busy.join(READY_DEADLINE_S)

    # Valkey, killed while another process holds it too (as `just worker` would): started again on
    # the port that process's clients have, and it still holds it.
    record_path = data_dir / "valkey" / "server.json"
    url, _ = embedded.start_valkey(data_dir)
    try:
        victim = embedded_valkey(data_dir)
        os.kill(victim[0], signal.SIGKILL)
        _said(launcher, "the embedded Valkey had stopped: started again")
        assert not alive(victim), "the killed Valkey is left (a zombie of the launcher?)"
        record = json.loads(record_path.read_text())
        assert url == f"redis://127.0.0.1:{record['port']}/0"
        assert [os.getpid(), identity(os.getpid())[1]] in record["holders"], record
        _ready_again(launcher, "Valkey")
        assert_banner_is_true(launcher, banner)

        # Killed again, and its append-only file damaged before the launcher looks (held still
        # meanwhile: it looks every 2 s): Valkey refuses to start, which is said, and tried again
        # until the file is mended, on the same port (the other holder's clients have it).
        victim = embedded_valkey(data_dir)
        manifest = data_dir / "valkey" / "appendonlydir" / "appendonly.aof.manifest"
        kept = manifest.read_bytes()
        launcher.process.send_signal(signal.SIGSTOP)
        try:
            os.kill(victim[0], signal.SIGKILL)
            assert not wait_gone({victim}), "the killed Valkey did not go"
            manifest.write_bytes(b"this is no manifest\n")
        finally:
            launcher.process.send_signal(signal.SIGCONT)
        _said(launcher, "the embedded Valkey has stopped and did not start again")
        manifest.write_bytes(kept)
        _said(launcher, "the embedded Valkey had stopped: started again")
        assert json.loads(record_path.read_text())["port"] == record["port"]
        _ready_again(launcher, "Valkey")
    finally:
        embedded.release("valkey", data_dir)

    stop_and_assert_clean(launcher)


def test_servers_a_killed_launcher_left_are_adopted_and_a_stale_pid_file_is_ignored(
    launchers: list[Launcher], data_dir: Path
) -> None:
    first = start(launchers, data_dir)
    assert_banner_is_true(first, first.read_banner())
    database, cache = postmaster(data_dir), embedded_valkey(data_dir)

    killed = first.family() - {database, cache}  # the launcher, its reaper and granian: not the servers
    for pid, _ in sorted(killed, key=lambda who: "embedded reap" not in command_line(who[0])):
        os.kill(pid, signal.SIGKILL)  # the reaper first, or it would stop the servers
    assert not wait_gone(killed)
    assert alive(database) and alive(cache), "this test needs the servers left behind"

    second = start(launchers, data_dir)
    assert_banner_is_true(second, second.read_banner())
    assert postmaster(data_dir) == database, "the running PostgreSQL is reused"
    stop_and_assert_clean(second, also_started={database, cache})

    # A postmaster killed with the machine leaves postmaster.pid behind; after a reboot its pid may
    # belong to any program (here: this test), and PostgreSQL then refuses to start.
    pgdata = data_dir / "postgres"
    (pgdata / "postmaster.pid").write_text(
        f"{os.getpid()}\n{pgdata}\n1700000000\n5432\n{pgdata}\n\n0 0\nready\n"
    )
    (pgdata / ".s.PGSQL.5432.lock").write_text(f"{os.getpid()}\n{pgdata}\n1700000000\n5432\n{pgdata}\n")

    third = start(launchers, data_dir)
    assert_banner_is_true(third, third.read_banner())
    stop_and_assert_clean(third)


def test_an_unreachable_database_fails_naming_it_and_stops_what_it_started(
    launchers: list[Launcher], data_dir: Path
) -> None:
    closed = free_port()
    launcher = start(
        launchers,
        data_dir,
        env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/app", "SERVE_READY_TIMEOUT_S": "1"},
    )

    code = launcher.read_to_exit(READY_DEADLINE_S)

    output = "\n".join(launcher.output)
    assert code == 1, output
    assert "PostgreSQL did not answer" in output and f"127.0.0.1:{closed}" in output, output
    assert not any(line.startswith("ready in") for line in launcher.output)
    assert not wait_gone(launcher.family())
    assert not wait_nothing_mentions(data_dir), "the embedded Valkey it started is left"


def test_an_unreachable_valkey_fails_the_start_naming_it(launchers: list[Launcher], data_dir: Path) -> None:
    """Before granian starts (``_wait_for_valkey``), as a configured ``DATABASE_URL`` is waited for."""
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    launcher = start(launchers, data_dir, env={"VALKEY_URL": unreachable, "SERVE_READY_TIMEOUT_S": "3"})

    code = launcher.read_to_exit(READY_DEADLINE_S)

    output = "\n".join(launcher.output)
    assert code == 1, output
    [failure] = [line for line in launcher.output if line.startswith("serve: failed")]
    assert failure.startswith(f"serve: failed: Valkey did not answer within 3s (VALKEY_URL={unreachable})")
    assert not any(line.startswith("serve: starting granian") for line in launcher.output), output
    assert not wait_gone(launcher.family())
    assert not wait_nothing_mentions(data_dir), "the embedded PostgreSQL it started is left"


def test_an_app_that_is_not_ready_in_time_fails_naming_the_dependency(
    launchers: list[Launcher], data_dir: Path, controlled_valkey: ControlledValkey
) -> None:
    """Valkey answers the launcher's check, then stops: the app's readiness names it."""
    launcher = start(
        launchers,
        data_dir,
        # long enough for the app to answer on a busy machine, so the answer can name Valkey
        env={"VALKEY_URL": controlled_valkey.url, "SERVE_READY_TIMEOUT_S": "15"},
    )
    launcher.read_until("serve: starting granian", READY_DEADLINE_S)
    controlled_valkey.stop()

    code = launcher.read_to_exit(READY_DEADLINE_S)

    output = "\n".join(launcher.output)
    assert code == 1, output
    assert not any(line.startswith("ready in") for line in launcher.output), output
    [failure] = [line for line in launcher.output if line.startswith("serve: failed")]
    assert "not ready within 15s" in failure and "valkey" in failure, failure
    assert not wait_gone(launcher.family())
    assert not wait_nothing_mentions(data_dir), "the embedded PostgreSQL it started is left"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "not-a-port"}, "PORT"),
        ({"HOST": ALL_INTERFACES}, "ADMIN_PASSWORD and DEMO_PASSWORD"),
        ({"HOST": ALL_INTERFACES, "SECRET_KEY": "x" * 40}, "SECRET_KEY is weak"),
    ],
    ids=["invalid-port", "public-host-default-passwords", "public-host-weak-key"],
)
def test_a_refused_configuration_exits_non_zero_naming_it(
    launchers: list[Launcher], data_dir: Path, env: dict[str, str], named: str
) -> None:
    launcher = start(launchers, data_dir, env=env)

    code = launcher.read_to_exit(READY_DEADLINE_S)

    assert code != 0
    assert named in "\n".join(launcher.output), launcher.tail()
    assert not (data_dir).exists(), "nothing is started for a refused configuration"


def test_a_busy_port_is_refused_before_anything_starts(launchers: list[Launcher], data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        launcher = start(launchers, data_dir, port)

        code = launcher.read_to_exit(READY_DEADLINE_S)

    assert code == 1
    assert f"already listens on 127.0.0.1:{port}" in "\n".join(launcher.output), launcher.tail()
    assert not (data_dir / "postgres").exists()


def test_a_launcher_for_a_port_another_launcher_claimed_exits_at_once_naming_it(
    launchers: list[Launcher], data_dir: Path
) -> None:
    port = free_port()
    claim = cli._claim_port(port)  # what a launcher holds from before it starts anything until it exits
    try:
        launcher = start(launchers, data_dir, port)

        code = launcher.read_to_exit(READY_DEADLINE_S)
    finally:
        os.close(claim)

    output = "\n".join(launcher.output)
    assert code == 1, output
    assert f"another `just serve` is starting or running on port {port}" in output, output
    assert not any(line.startswith("ready in") for line in launcher.output), output
    assert not (data_dir / "postgres").exists(), "nothing is started"


def test_two_launchers_started_together_on_one_port_one_serves_the_other_exits(
    launchers: list[Launcher], data_dir: Path
) -> None:
    """granian binds with SO_REUSEPORT: both launchers used to bind the port and the kernel split the
    requests between two apps on two databases. The second is refused before it starts anything."""
    port = free_port()
    other_data_dir = data_dir.with_name("other")
    first, second = start(launchers, data_dir, port), start(launchers, other_data_dir, port)

    exited: queue.Queue[Launcher] = queue.Queue()

    def report_exit(launcher: Launcher) -> None:
        launcher.process.wait()
        exited.put(launcher)

    for launcher in (first, second):
        threading.Thread(target=report_exit, args=(launcher,), daemon=True).start()
    try:
        loser = exited.get(timeout=READY_DEADLINE_S)
    except queue.Empty:
        pytest.fail(f"both launchers run on port {port}: neither was refused")
    winner = second if loser is first else first
    assert loser.read_to_exit(READY_DEADLINE_S) == 1, loser.tail()
    assert f"another `just serve` is starting or running on port {port}" in "\n".join(loser.output)
    assert not (loser.data_dir / "postgres").exists(), "the refused one started nothing"
    assert_banner_is_true(winner, winner.read_banner())
    stop_and_assert_clean(winner)


def _metrics_settings(data_dir: Path, workers: int) -> Settings:
    return load_settings(
        {
            "DATA_DIR": str(data_dir),
            "PORT": "18791",
            "WORKERS": str(workers),
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/app",
            "VALKEY_URL": "redis://127.0.0.1:1/0",
        }
    )


def test_with_several_workers_granian_gets_a_fresh_empty_metrics_directory(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prometheus_client adds up the workers' metrics only through files in PROMETHEUS_MULTIPROC_DIR,
    which must be empty when they start (what a previous run left would be counted again)."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    env = cli._granian_env(_metrics_settings(data_dir, 2))
    directory = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    assert directory.is_dir() and directory.is_relative_to(data_dir.resolve())
    (directory / "counter_12345.db").write_bytes(b"left by the previous run")

    again = cli._granian_env(_metrics_settings(data_dir, 2))

    assert Path(again["PROMETHEUS_MULTIPROC_DIR"]) == directory
    assert list(directory.iterdir()) == [], "emptied at every start"
    assert "PROMETHEUS_MULTIPROC_DIR" not in cli._granian_env(_metrics_settings(data_dir, 1))


def _requests_counted(base: str, path: str) -> float:
    """``app_requests_total`` of ``GET path`` answered 200, as one scrape (a new connection) reports it."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "app_requests_total"
        and sample.labels.get("path") == path
        and sample.labels.get("method") == "GET"
        and sample.labels.get("status_code") == "200"
    )


def test_with_two_workers_every_scrape_counts_the_requests_of_both(
    launchers: list[Launcher], data_dir: Path
) -> None:
    """Each request and each scrape on a new connection, so both workers take some: without the
    shared metrics directory a scrape answered only for the worker that took it."""
    launcher = start(launchers, data_dir, env={"WORKERS": "2"})
    assert_banner_is_true(launcher, launcher.read_banner(), workers=2)
    requests = 40
    for _ in range(requests):
        assert httpx.get(f"{launcher.base}/api/products", timeout=10).status_code == 200

    scrapes = [_requests_counted(launcher.base, "/api/products") for _ in range(16)]

    assert scrapes == [requests] * len(scrapes)

    def memory_by_pid() -> dict[str, float]:
        text = httpx.get(f"{launcher.base}/metrics", timeout=10).text
        return {
            sample.labels["pid"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "app_process_resident_memory_bytes"
        }

    # each worker's own memory (the default process_* metrics are not exported with two workers), set
    # by its process-gauge round every PROCESS_GAUGES_INTERVAL_S
    deadline = time.monotonic() + 30
    while len(memory := memory_by_pid()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(memory) == 2 and all(rss > 10_000_000 for rss in memory.values()), memory  # only workers
    stop_and_assert_clean(launcher)
