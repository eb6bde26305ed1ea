"""Command line: ``python -m app.cli serve|worker|migrate|seed|create-admin``.

``serve`` (what ``just serve`` runs) is a supervisor. It never forks a Python process that has
threads: granian runs as a child *process* (a fresh interpreter), which forks its workers itself.

0. Claim ``PORT``: an exclusive lock held until the launcher and granian are gone
   (``_claim_port``). granian binds with ``SO_REUSEPORT``, so a second launcher of the same user
   would bind the same port too and the kernel would split requests between two apps; it exits
   instead, before it starts anything.
1. Resolve the services (embedded PostgreSQL and Valkey under ``DATA_DIR`` when ``DATABASE_URL`` /
   ``VALKEY_URL`` are unset), wait for a configured database and Valkey (``_wait_for``), apply
   migrations, seed demo data once.
   (``serve`` and ``migrate`` are the only commands that migrate; ``worker``, ``create-admin`` and
   ``seed`` refuse a schema behind the code.)
2. Start granian (``serve-child``) in its own process group with the URLs and the signing key in
   its environment (and, with several workers, a fresh ``PROMETHEUS_MULTIPROC_DIR``, so
   ``/metrics`` adds up every worker's). On Linux it dies with the launcher (``PR_SET_PDEATHSIG``),
   and its workers with it, so even a SIGKILLed launcher leaves nothing holding the port.
3. Poll ``GET /health/ready`` until it answers ``ok`` (every check, Valkey's and the queue's too: a
   ``degraded`` 200 is not a finished start), then print where everything is. If granian
   exits first, or ``SERVE_READY_TIMEOUT_S`` passes, say what failed, stop everything, exit 1.
4. On SIGTERM, SIGINT (Ctrl-C) or SIGHUP: stop granian (SIGTERM: the requests in flight are
   answered, within a grace derived from the settings, ``workers_kill_timeout_s``; then SIGKILL),
   release the embedded services (each stops unless another process still holds it), exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import getpass
import ipaddress
import json
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import msgspec

from app.config import Settings, SettingsError, load_settings, redact_url
from app.core.logging import configure_logging, error_message, told_traceback
from app.core.migrate import REFUSED_CONNECTION, database_missing, migrate
from app.core.runtime import release_services, resolve_services, revive_services
from app.core.scrub import scrub_text

if TYPE_CHECKING:
    from app.db.models import User
    from app.domains.accounts.services import AdminAccount

GRANIAN_BACKLOG = 2048
GRANIAN_EXIT_MARGIN_S = 5.0
"""After granian's bound on its workers' graceful stop, how long the launcher still waits for granian
to exit before it SIGKILLs granian's whole process group."""
READY_POLL_INTERVAL_S = 0.1
EMBEDDED_CHECK_S = 2.0
"""How often ``serve`` looks whether an embedded server it holds has died (``_revive_embedded``)."""
EMBEDDED_RETRY_MAX_S = 60.0
"""The longest pause between two tries to start again an embedded server that would not start."""
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class LaunchError(Exception):
    """``serve`` could not bring the application up; the message says what failed."""


class _Stopped(BaseException):
    """A stop signal arrived; unwinds to the clean-up."""


class _StopSignals:
    """SIGTERM, SIGINT and SIGHUP only set a flag; the launcher checks it between steps."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {signum: signal.signal(signum, self._record) for signum in self.SIGNALS}

    def restore(self) -> None:
        """Give the signals back to the handlers they had (a step past the launcher's checks)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, _: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def check(self) -> None:
        if self.received is not None:
            raise _Stopped

    def sleep(self, seconds: float) -> None:
        self.check()
        time.sleep(seconds)
        self.check()


def _resolve_or_exit(settings: Settings, *, valkey: bool = True) -> Settings:
    """``resolve_services``, a failure of the embedded servers one line (an unusable ``DATA_DIR``, a
    server that would not start) instead of a traceback."""
    try:
        return resolve_services(settings, valkey=valkey)
    except (OSError, RuntimeError) as exc:  # the file system's, or the embedded servers' own
        raise SystemExit(
            f"cannot start the embedded services in DATA_DIR={settings.data_dir}: {exc} "
            "(or set DATABASE_URL and VALKEY_URL)"
        ) from None


def _resolve(settings: Settings) -> Settings:
    """Resolve the service URLs (embedded when unset) and export them to child processes."""
    settings = _resolve_or_exit(settings)
    assert settings.database_url
    assert settings.valkey_url
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["VALKEY_URL"] = settings.valkey_url
    return settings


def _prepare(settings: Settings) -> Settings:
    """``_resolve``, then the pre-flight of every process but ``serve`` and ``migrate``
    (``app.core.queues.preflight``: the dependencies answer, the schema is this release's; else exit 1
    with one line). ``worker`` makes it in ``run_workers``."""
    from app.core.queues import preflight  # SAQ and the drivers: only where they are used

    settings = _resolve(settings)
    asyncio.run(preflight(settings))
    return settings


async def _seed(settings: Settings, *, once: bool = False) -> list[str]:
    from app.core.services import open_services
    from app.modules import MODULES
    from app.seed import run_seeders

    if settings.is_production:
        return ["demo data is never seeded in production: create an administrator with `create-admin`"]
    async with open_services(settings, MODULES) as services:
        return await run_seeders(services, once=once)


async def _create_admin(
    settings: Settings, email: str, name: str, *, promote_existing: bool = False
) -> AdminAccount:
    """Create the administrator ``email`` with ``ADMIN_PASSWORD`` (or a prompted password). An address
    that has an account already is refused in one line (exit 1) unless ``promote_existing``: then that
    account is promoted, keeping its own password. Returns the service's ``AdminAccount``."""
    from app.core.services import open_services
    from app.domains.accounts.services import (
        AccountExistsError,
        AccountService,
        UnusableEmailError,
        WeakPasswordError,
    )
    from app.modules import MODULES

    password = os.environ.get("ADMIN_PASSWORD") or None
    async with open_services(settings, MODULES) as services:
        accounts = services[AccountService]
        try:
            try:
                return await accounts.create_admin(email, password, name, promote_existing=promote_existing)
            except ValueError:
                password = getpass.getpass(f"password for the new administrator {email}: ")
                return await accounts.create_admin(email, password, name, promote_existing=promote_existing)
        except (WeakPasswordError, UnusableEmailError) as exc:
            raise SystemExit(f"create-admin: {exc.detail}") from None
        except AccountExistsError as exc:
            raise SystemExit(_account_exists(exc.existing)) from None


def _created_on(user: User) -> str:
    return f"{user.created_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _account_exists(existing: User) -> str:
    """``create-admin``'s one-line refusal of an address that has an account already."""
    from app.db.models import UserRole

    state = "an administrator already" if existing.role == UserRole.ADMIN else f"a {existing.role.value}"
    if not existing.is_active:
        state += ", deactivated"
    return (
        f"create-admin: {existing.email} already has an account (id {existing.id}, created "
        f"{_created_on(existing)}, {state}); nothing was changed. `--promote-existing` makes it an active "
        "administrator that keeps its own password (ADMIN_PASSWORD is not used)"
    )


def _admin_granted(granted: AdminAccount) -> str:
    """What ``create-admin`` did, in one line."""
    from app.domains.accounts.services import AdminGrant

    user = granted.user
    done = f"{user.email} is an administrator (id {user.id})"
    if granted.grant == AdminGrant.CREATED:
        return f"{done}: created with the password given"
    if granted.grant == AdminGrant.PROMOTED:
        reactivated = ", reactivated" if granted.reactivated else ""
        return (
            f"{done}: the existing account (created {_created_on(user)}) was promoted{reactivated} and its "
            "sessions signed out; its password is unchanged (ADMIN_PASSWORD was not used)"
        )
    return f"{done} already; nothing was changed, its password is unchanged (ADMIN_PASSWORD was not used)"


# --- serve: the supervisor ---------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"serve: {message}", flush=True)


def _say_to_stderr(command: str) -> Callable[[str], None]:
    """What a command whose standard output is its result (``migrate``: dbmate's lines) says meanwhile."""
    return lambda message: print(f"{command}: {message}", file=sys.stderr, flush=True)


def _local_host(host: str) -> str:
    """The address to reach a server bound to ``host`` from this machine."""
    if host in ("0.0.0.0", ""):  # noqa: S104 - comparing, not binding
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _bind_address(host: str) -> str:
    """``HOST`` as granian binds it: an IP address. ``localhost`` (and ``*.localhost``, loopback by
    definition) is 127.0.0.1 and brackets around an IPv6 address are dropped; any other name is
    refused before anything starts (granian failed on it only after the migrations and the seeding,
    with ``invalid IP address syntax``)."""
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.lower() == "localhost" or name.lower().endswith(".localhost"):
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        raise LaunchError(
            f"HOST={host} is not an IP address: granian binds an address, not a name "
            "(127.0.0.1 or localhost for this machine only, 0.0.0.0 or :: for every interface)"
        ) from None


def _base_url(settings: Settings) -> str:
    host = _local_host(settings.host)
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((_local_host(host), port), timeout=1):
            return True
    except OSError:
        return False


def _claim_port(port: int) -> int:
    """Lock ``port`` for this launcher, or raise if another launcher of this user holds it.

    The lock is ``flock`` on a file of a private directory; the returned descriptor is passed on to
    granian, so the claim lasts until the launcher and granian have both exited (the kernel drops it
    with the last one, even after SIGKILL). One lock per port whatever ``HOST``: a wildcard address
    overlaps every other one.
    """
    directory = Path(tempfile.gettempdir()) / f"app-serve-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise LaunchError(f"{directory} is not a private directory of this user: remove it")
    descriptor = os.open(directory / f"port-{port}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise LaunchError(
            f"another `just serve` is starting or running on port {port}: stop it or set PORT"
        ) from None
    return descriptor


class _WaitingCannotHelpError(Exception):
    """A service answered in a way that waiting cannot change (``_wait_for``): ``reason`` says how."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason


def _wait_for(
    what: str,
    setting: str,
    url: str,
    probe: Callable[[], None],
    timeout: float,
    signals: _StopSignals,
    say: Callable[[str], None],
) -> None:
    """A configured service may still be starting (compose): ``probe`` it until it answers or the
    deadline, saying once (``say``) what the first attempt met. ``_WaitingCannotHelpError`` fails at once.
    Every message names ``setting`` with its password masked; ``probe``'s errors come scrubbed."""
    deadline = time.monotonic() + timeout
    named = f"({setting}={redact_url(url)})"
    waiting = False
    while True:
        signals.check()
        try:
            probe()
            return
        except _WaitingCannotHelpError as exc:
            raise LaunchError(f"{what} {exc.reason} {named}: {exc}") from None
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            raise LaunchError(f"{what} did not answer within {timeout:g}s {named}: {error}")
        if not waiting:
            say(f"waiting up to {timeout:g}s for {what} {named}: {error}")
            waiting = True
        signals.sleep(0.25)


def _wait_for_database(
    url: str, timeout: float, signals: _StopSignals, say: Callable[[str], None] = _say
) -> None:
    """A server that answers without the database counts as ready: ``migrate`` creates it. One that
    answers and refuses the credentials fails at once."""
    import psycopg

    def connect() -> None:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.Error as exc:  # its text may quote the URL (or the part it could not parse)
            if isinstance(exc, psycopg.OperationalError) and database_missing(url):
                return
            error = error_message(exc, url)
            if REFUSED_CONNECTION.search(str(exc)):
                raise _WaitingCannotHelpError("refused the connection", error) from None
            raise RuntimeError(error) from None

    _wait_for("PostgreSQL", "DATABASE_URL", url, connect, timeout, signals, say)


def _wait_for_valkey(
    url: str, timeout: float, signals: _StopSignals, say: Callable[[str], None] = _say
) -> None:
    """A configured ``VALKEY_URL`` is checked before anything starts: the app's readiness would only
    say ``valkey (error)`` after ``SERVE_READY_TIMEOUT_S`` (the new-user pass: a minute's silence).
    What waiting cannot change fails at once (``app.core.valkey.final_refusal``)."""
    from valkey import Valkey
    from valkey.exceptions import ValkeyError

    from app.core.valkey import final_refusal

    def ping() -> None:
        with contextlib.closing(Valkey.from_url(url, socket_connect_timeout=2, socket_timeout=2)) as client:
            try:
                client.ping()
            except (ValkeyError, OSError) as exc:
                reason = final_refusal(exc)
                if reason is not None:
                    raise _WaitingCannotHelpError(reason, error_message(exc, url)) from None
                raise RuntimeError(error_message(exc, url)) from None

    _wait_for("Valkey", "VALKEY_URL", url, ping, timeout, signals, say)


def _prepare_to_serve(settings: Settings, signals: _StopSignals) -> tuple[Settings, list[str]]:
    embedded = [
        name
        for name, url in (("PostgreSQL", settings.database_url), ("Valkey", settings.valkey_url))
        if not url
    ]
    if embedded:
        _say(f"embedded {' and '.join(embedded)} in {settings.data_dir.resolve()}")
    configured_database, configured_valkey = settings.database_url, settings.valkey_url
    settings = resolve_services(settings)
    assert settings.database_url and settings.valkey_url
    signals.check()
    if configured_database:
        _wait_for_database(configured_database, settings.serve_ready_timeout_s, signals)
    if configured_valkey:
        _wait_for_valkey(configured_valkey, settings.serve_ready_timeout_s, signals)
    applied = [line for line in migrate(settings.database_url).splitlines() if line.startswith("Applying")]
    _say(f"migrations: {len(applied)} applied" if applied else "migrations: up to date")
    signals.check()
    return settings, asyncio.run(_seed(settings, once=True))


def _granian_env(settings: Settings) -> dict[str, str]:
    """granian's environment; with several workers, a fresh, empty ``PROMETHEUS_MULTIPROC_DIR``
    (``DATA_DIR/metrics/<port>``, emptied at every start as prometheus_client requires; the port's
    claim keeps other launchers out of it) unless one is configured."""
    assert settings.database_url and settings.valkey_url
    env = dict(os.environ)
    env["DATABASE_URL"] = settings.database_url
    env["VALKEY_URL"] = settings.valkey_url
    env["SECRET_KEY"] = settings.secret_key  # every worker signs with the same key
    env["DATA_DIR"] = str(settings.data_dir.resolve())
    env.setdefault("WORKER_IN_PROCESS", "false" if settings.is_production else "true")
    if settings.workers > 1 and not env.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics = settings.data_dir.resolve() / "metrics" / str(settings.port)
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir(mode=0o700, parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    return env


def _start_granian(settings: Settings, keep_open: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "app.cli", "serve-child", "--parent", str(os.getpid())]
    command += ["--host", settings.host, "--port", str(settings.port), "--workers", str(settings.workers)]
    command += ["--workers-kill-timeout", str(workers_kill_timeout_s(settings))]
    workers = f"{settings.workers} worker{'s' if settings.workers > 1 else ''}"
    _say(f"starting granian on {settings.host}:{settings.port} ({workers}); waiting for /health/ready")
    # Its own process group: the launcher signals granian and its workers together, and a Ctrl-C
    # in the terminal reaches only the launcher, which stops everything in order.
    return subprocess.Popen(  # noqa: S603
        command, env=_granian_env(settings), process_group=0, pass_fds=keep_open
    )


def _everything_answers(response: Any) -> bool:
    """Ready with every check, Valkey's and the queue's too (a degraded instance is ready for a load
    balancer, not a finished start: the worker needs the queue)."""
    from app.domains.health.schemas import Readiness

    try:
        return msgspec.json.decode(response.content, type=Readiness).status == "ok"
    except msgspec.DecodeError:
        return False


def _describe_not_ready(response: Any) -> str:
    """What a readiness answer that is not ``ok`` says: the failing dependencies, else the body."""
    from app.domains.health.schemas import Readiness

    try:
        readiness = msgspec.json.decode(response.content, type=Readiness)
    except msgspec.DecodeError:
        return f"answered {response.status_code}: {response.text[:300]}"
    down = [f"{check.name} ({check.detail or 'down'})" for check in readiness.checks if not check.ok]
    return f"answered {response.status_code}, down: {', '.join(down) or 'none reported'}"


def _wait_ready(settings: Settings, child: subprocess.Popen[bytes], signals: _StopSignals) -> None:
    import httpx

    timeout = settings.serve_ready_timeout_s
    url = f"{_base_url(settings)}/health/ready"
    deadline = time.monotonic() + timeout
    last = f"nothing listening on {settings.host}:{settings.port}"
    # trust_env=False: the poll goes to this machine, never through HTTP_PROXY/ALL_PROXY (a proxy
    # cannot reach the launcher's loopback, and the launcher waited SERVE_READY_TIMEOUT_S in vain).
    with httpx.Client(timeout=max(settings.health_timeout_s * 2, 2.0), trust_env=False) as client:
        while True:
            signals.check()
            code = child.poll()
            if code is not None:
                raise LaunchError(f"granian exited with code {code} before it was ready (last check: {last})")
            try:
                response = client.get(url)
                if response.status_code == 200 and _everything_answers(response):
                    return
                last = f"/health/ready {_describe_not_ready(response)}"
            except httpx.ConnectError:
                last = f"nothing listening on {settings.host}:{settings.port}"
            except httpx.HTTPError as exc:
                last = f"/health/ready failed: {type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise LaunchError(f"not ready within {timeout:g}s (SERVE_READY_TIMEOUT_S): {last}")
            signals.sleep(READY_POLL_INTERVAL_S)


def spoken_duration(seconds: int) -> str:
    """``8 h``, ``90 min``, ``45 s``: the largest unit that says ``seconds`` exactly."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _banner(settings: Settings, started: float, hints: list[str]) -> str:
    base = _base_url(settings)
    lines = [
        f"ready in {time.monotonic() - started:.1f}s",
        f"  API            {base}/api",
        f"  OpenAPI UI     {base}/schema  (Swagger UI; the document: {base}/schema/openapi.json)",
        f"  SAQ dashboard  {base}/saq/  (administrators: sign in with the admin's email and password; "
        f"sessions last {spoken_duration(settings.dashboard_session_s)} (DASHBOARD_SESSION_S) or until "
        "sign-out, a password change, deactivation or demotion)",
        f"  health         {base}/health/ready",
        f"  metrics        {base}/metrics",
        *[f"  {hint}" for hint in hints],
        "  stop with Ctrl-C",
    ]
    if _local_host(settings.host) != settings.host:
        lines.insert(1, f"  listening on all interfaces ({settings.host}:{settings.port})")
    return "\n".join(lines)


def workers_kill_timeout_s(settings: Settings) -> int:
    """How long granian lets a worker stop gracefully after SIGTERM before it kills it.

    A worker first finishes the requests it is answering, then runs the lifespan shutdown (which
    stops the in-process SAQ worker, ``WORKER_SHUTDOWN_GRACE_S``: counted whether or not there is one,
    as ``serve`` runs one by default outside production). The longest request the app makes
    a client wait is bounded by its settings: a cold GitHub lookup (``GITHUB_COLD_WAIT_S``), a SQL
    statement (``STATEMENT_TIMEOUT_MS``), a throttled login (``LOGIN_MAX_DELAY_S``); live streams (the
    feed's, GitHub's refresh streams) end at the signal (``app/core/stops.py``). An idle server stops at
    once whatever this is.
    """
    longest_request_s = max(
        settings.github_cold_wait_s, settings.statement_timeout_ms / 1000, float(settings.login_max_delay_s)
    )
    return max(1, math.ceil(longest_request_s + settings.worker_shutdown_grace_s + 1))


def _stop_granian(child: subprocess.Popen[bytes] | None, settings: Settings) -> None:
    """SIGTERM granian (it stops its workers, within ``workers_kill_timeout_s``); SIGKILL its whole
    group if it has not exited ``GRANIAN_EXIT_MARGIN_S`` after that."""
    if child is None:
        return
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(workers_kill_timeout_s(settings) + GRANIAN_EXIT_MARGIN_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)  # a hung granian, or workers that outlived it
    child.wait()


def _revive_embedded() -> bool:
    """Start again an embedded server that died under ``serve`` (killed, out of memory), saying so;
    False when one could not be started (said too; ``serve`` tries again later and keeps serving
    its 503s meanwhile, as it would for a configured server that is down)."""
    healthy = True
    for service, error in revive_services():
        name = "PostgreSQL" if service == "postgres" else "Valkey"
        if error is None:
            _say(f"the embedded {name} had stopped: started again")
        else:
            _say(f"the embedded {name} has stopped and did not start again ({error}): trying again")
            healthy = False
    return healthy


def serve(settings: Settings) -> int:
    """Run the application until a stop signal; returns the exit code."""
    started = time.monotonic()
    configured = settings
    signals = _StopSignals()
    child: subprocess.Popen[bytes] | None = None
    claim: int | None = None
    try:
        if settings.port == 0:
            raise LaunchError("PORT=0 is not supported by serve: choose a port")
        settings = msgspec.structs.replace(settings, host=_bind_address(settings.host))
        claim = _claim_port(settings.port)
        if _listening(settings.host, settings.port):
            raise LaunchError(
                f"something already listens on {settings.host}:{settings.port} "
                "(another `just serve`?): stop it or set PORT"
            )
        settings, hints = _prepare_to_serve(settings, signals)
        child = _start_granian(settings, keep_open=(claim,))
        _wait_ready(settings, child, signals)
        print(_banner(settings, started, hints), flush=True)
        look_again, pause = time.monotonic() + EMBEDDED_CHECK_S, EMBEDDED_CHECK_S
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = child.wait(0.25)
                raise LaunchError(f"granian exited with code {code}")
            signals.check()
            if time.monotonic() >= look_again:
                pause = EMBEDDED_CHECK_S if _revive_embedded() else min(pause * 2, EMBEDDED_RETRY_MAX_S)
                look_again = time.monotonic() + pause
    except _Stopped:
        return 0
    except Exception as exc:
        if signals.received is not None:  # Ctrl-C also reached a step's subprocess
            return 0
        secrets = (configured.database_url, configured.valkey_url, settings.database_url, settings.valkey_url)
        if not isinstance(exc, LaunchError | SettingsError | RuntimeError | OSError):
            print(scrub_text(told_traceback(exc), *secrets), end="", file=sys.stderr)
        print(f"serve: failed: {scrub_text(str(exc), *secrets)}", file=sys.stderr, flush=True)
        return 1
    finally:
        for signum in _StopSignals.SIGNALS:  # the clean-up is bounded: let nothing interrupt it
            signal.signal(signum, signal.SIG_IGN)
        _say("stopping")
        _stop_granian(child, settings)
        release_services()
        if claim is not None:
            os.close(claim)
        _say(f"stopped ({time.monotonic() - started:.1f}s after start)")


# --- serve-child: granian, dying with the launcher ---------------------------------------------


def _die_with(parent: int, signum: signal.Signals = signal.SIGKILL) -> None:
    """Receive ``signum`` when ``parent`` exits (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


def _workers_die_with(main_pid: int) -> Callable[[], None]:
    def after_fork_in_child() -> None:
        _die_with(main_pid)

    return after_fork_in_child


def serve_child(host: str, port: int, workers: int, parent: int, kill_timeout_s: int) -> None:
    """granian in this (thread-free) process; its forked workers die with it."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    from app.core.logging import GRANIAN_LOG_CONFIG

    _die_with(parent)
    os.register_at_fork(after_in_child=_workers_die_with(os.getpid()))
    Granian(
        "app.main:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.auto,
        log_access=False,
        log_dictconfig=json.loads(GRANIAN_LOG_CONFIG.read_text()),
        respawn_failed_workers=True,  # as the image's granian: a worker's crash is not the server's
        backlog=GRANIAN_BACKLOG,
        workers_kill_timeout=kill_timeout_s,
    ).serve()


def _migrate(settings: Settings) -> str:
    """``migrate``: apply the pending migrations to ``DATABASE_URL`` (the embedded PostgreSQL when
    unset; Valkey is not needed, so not started); what it prints (dbmate's lines, or that nothing was
    pending, as ``serve`` says). A database that cannot be reached or migrated is one line naming
    ``DATABASE_URL`` (password masked) and exit 1, as the other commands fail."""
    import psycopg

    configured = settings.database_url
    url = _resolve_or_exit(settings, valkey=False).database_url
    assert url is not None
    signals = _StopSignals()
    try:
        if configured:  # as serve waits: saying so, and a refusal at once (dbmate waited 60 s mute)
            _wait_for_database(url, settings.serve_ready_timeout_s, signals, say=_say_to_stderr("migrate"))
        signals.restore()  # the migration itself stops on Ctrl-C or SIGTERM, as it always did
        said = migrate(url)
    except _Stopped:
        print("migrate: stopped before it began", file=sys.stderr, flush=True)
        raise SystemExit(128 + (signals.received or signal.SIGINT)) from None
    except LaunchError as exc:
        raise SystemExit(f"migrate: failed: {exc}") from None
    except (RuntimeError, psycopg.Error, OSError) as exc:  # dbmate's output, the driver's, the binary's
        failure = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise SystemExit(
            f"migrate: failed (DATABASE_URL={redact_url(url)}): {scrub_text(failure, url)}"
        ) from None
    return said if said.strip() else "migrations: up to date\n"


@contextlib.contextmanager
def exit_scrubbed(*urls: str | None) -> Iterator[None]:
    """Let no credential reach the terminal when a command dies: a driver's error (in its message
    or a traceback's) may quote the connection URL. The traceback is printed with credentials masked
    and the process exits 1."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        print(scrub_text(told_traceback(exc), *urls), end="", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the API (granian) on embedded or configured services")
    commands.add_parser("worker", help="run the SAQ workers and the outbox relay")
    commands.add_parser("migrate", help="apply pending migrations")
    commands.add_parser("seed", help="create the demo data that is missing (idempotent)")
    create_admin = commands.add_parser(
        "create-admin",
        help="create an administrator (an address that has an account is refused unless --promote-existing)",
        description="Create an administrator. Its password is ADMIN_PASSWORD if set, else asked for on the "
        "terminal (10 to 256 characters, at least 5 different ones).",
    )
    create_admin.add_argument("email")
    create_admin.add_argument("--name", default="Administrator")
    create_admin.add_argument(
        "--promote-existing",
        action="store_true",
        help="if the address has an account, make it an active administrator keeping its own password",
    )
    child = commands.add_parser("serve-child")  # internal: granian as started by `serve`
    child.add_argument("--host", required=True)
    child.add_argument("--port", type=int, required=True)
    child.add_argument("--workers", type=int, required=True)
    child.add_argument("--parent", type=int, required=True)
    child.add_argument("--workers-kill-timeout", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "serve-child":
        serve_child(args.host, args.port, args.workers, args.parent, args.workers_kill_timeout)
        return
    try:
        settings = load_settings()
        if args.command in ("serve", "worker"):  # what the API and the worker run needs more
            from app.modules import check_settings

            check_settings(settings)
    except SettingsError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    except OSError as exc:  # the signing key kept under DATA_DIR (development)
        raise SystemExit(f"configuration error: DATA_DIR cannot hold the signing key: {exc}") from None
    configure_logging(settings.log_level, json=settings.log_json)
    if args.command == "serve":
        sys.exit(serve(settings))
    elif args.command == "worker":
        from app.core.queues import run_workers
        from app.core.services import Services
        from app.modules import MODULES

        with exit_scrubbed(settings.database_url, settings.valkey_url):
            asyncio.run(run_workers(Services(_resolve(settings), MODULES)))
    elif args.command == "migrate":
        with exit_scrubbed(settings.database_url):
            sys.stdout.write(_migrate(settings))
    elif args.command == "create-admin":
        with exit_scrubbed(settings.database_url, settings.valkey_url):
            granted = asyncio.run(
                _create_admin(
                    _prepare(settings), args.email, args.name, promote_existing=args.promote_existing
                )
            )
        print(_admin_granted(granted))
    elif args.command == "seed":
        with exit_scrubbed(settings.database_url, settings.valkey_url):
            # In production _seed refuses before it connects: nothing to prepare.
            prepared = settings if settings.is_production else _prepare(settings)
            lines = asyncio.run(_seed(prepared))
        for line in lines or ["nothing to seed"]:
            print(line)


if __name__ == "__main__":
    main()
