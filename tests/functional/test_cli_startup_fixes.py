"""``python -m app.cli serve`` and ``migrate`` start-up, as an operator meets it (review of start-up):

- a proxy in the environment (``HTTP_PROXY``/``ALL_PROXY``) does not stop ``serve`` from seeing its
  own readiness (the poll went through the proxy and never reached the loopback);
- ``HOST=localhost`` serves on 127.0.0.1, and a ``HOST`` that is a name is refused before anything
  starts (granian failed on either only after the migrations and the seeding);
- a ``DATABASE_URL`` whose database does not exist yet is created by the migrations, instead of
  ``serve`` waiting ``SERVE_READY_TIMEOUT_S`` for it and failing;
- ``migrate`` on an unreachable database fails in one line naming ``DATABASE_URL`` (password masked),
  without a traceback and without starting an embedded Valkey it has no use for;
- an unusable ``DATA_DIR`` is one line naming it, for every command; a worker whose database does not
  exist says so at once (review of the command line).

``serve`` runs on the session's PostgreSQL (a database of its own per test, dropped after) and Valkey.
"""

from __future__ import annotations

import http.server
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from psycopg import sql

from app.cli import _migrate, _StopSignals, spoken_duration
from app.config import Settings
from tests.factories import database_to_come
from tests.reliability.test_serve import ROOT, Launcher
from tests.served import free_port

READY_TIMEOUT_S = "60"
"""``SERVE_READY_TIMEOUT_S``: bounds the wait for the database and for readiness, so the old code's
failures end (waiting for a missing database, polling through the dead proxy)."""
EXIT_DEADLINE_S = 120.0


def _url_of(database_url: str, name: str) -> str:
    return urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))


def _exists(database_url: str, name: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


@pytest.fixture
def data_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="cli-startup-"))
    yield directory / "data"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """A database name of this test's own on the session's server, not created (dropped after)."""
    with database_to_come(database_url, "serve") as (_, name):
        yield name


@pytest.fixture
def empty_database(database_url: str, fresh_database: str) -> str:
    """``fresh_database``, created empty: ``serve`` migrates and seeds it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(fresh_database)))
    return fresh_database


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    started: list[Launcher] = []
    yield started
    for launcher in started:
        launcher.kill_everything()


def serve(
    launchers: list[Launcher], data_dir: Path, database_url: str, valkey_url: str, **env: str
) -> Launcher:
    launcher = Launcher(
        data_dir,
        env={
            "DATABASE_URL": database_url,
            "VALKEY_URL": valkey_url,
            "SERVE_READY_TIMEOUT_S": READY_TIMEOUT_S,
            "MONITORING_CHECK_INTERVAL_S": "3600",
            **env,
        },
    )
    launchers.append(launcher)
    return launcher


def assert_ready_then_stops(launcher: Launcher) -> list[str]:
    banner = launcher.read_banner()
    assert httpx.get(f"{launcher.base}/health/ready", timeout=10, trust_env=False).status_code == 200
    launcher.process.terminate()
    assert launcher.read_to_exit(EXIT_DEADLINE_S) == 0, launcher.tail()
    return banner


def test_serve_becomes_ready_with_a_proxy_in_the_environment(
    launchers: list[Launcher], data_dir: Path, database_url: str, valkey_url: str, empty_database: str
) -> None:
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    launcher = serve(
        launchers,
        data_dir,
        _url_of(database_url, empty_database),
        valkey_url,
        HTTP_PROXY=dead_proxy,
        HTTPS_PROXY=dead_proxy,
        ALL_PROXY=dead_proxy,
        http_proxy=dead_proxy,
        all_proxy=dead_proxy,
    )

    assert_ready_then_stops(launcher)


def test_host_localhost_serves_on_the_loopback_address(
    launchers: list[Launcher], data_dir: Path, database_url: str, valkey_url: str, empty_database: str
) -> None:
    launcher = serve(launchers, data_dir, _url_of(database_url, empty_database), valkey_url, HOST="localhost")

    banner = assert_ready_then_stops(launcher)

    assert f"http://127.0.0.1:{launcher.port}/api" in "\n".join(banner)


def test_a_host_that_is_a_name_is_refused_before_anything_starts(
    launchers: list[Launcher], data_dir: Path, database_url: str, valkey_url: str, empty_database: str
) -> None:
    launcher = serve(
        launchers,
        data_dir,
        _url_of(database_url, empty_database),
        valkey_url,
        HOST="my-laptop",
        # past the settings' own refusals of a non-loopback HOST
        SECRET_KEY=uuid.uuid4().hex * 2,
        ADMIN_PASSWORD=uuid.uuid4().hex,
        DEMO_PASSWORD=uuid.uuid4().hex,
    )

    code = launcher.read_to_exit(EXIT_DEADLINE_S)

    assert code == 1, launcher.tail()
    [failure] = [line for line in launcher.output if line.startswith("serve: failed")]
    assert "HOST=my-laptop is not an IP address" in failure, failure
    with psycopg.connect(_url_of(database_url, empty_database)) as conn:
        tables = conn.execute("select count(*) from pg_tables where schemaname = 'public'").fetchone()
    assert tables == (0,), "nothing is migrated for a refused HOST"


def test_serve_creates_a_configured_database_that_does_not_exist_yet(
    launchers: list[Launcher], data_dir: Path, database_url: str, valkey_url: str, fresh_database: str
) -> None:
    assert not _exists(database_url, fresh_database)
    launcher = serve(launchers, data_dir, _url_of(database_url, fresh_database), valkey_url)

    assert_ready_then_stops(launcher)

    assert _exists(database_url, fresh_database)
    assert not any("PostgreSQL did not answer" in line for line in launcher.output), launcher.tail()


def test_serve_on_credentials_the_server_refuses_fails_at_once(
    launchers: list[Launcher], data_dir: Path, database_url: str, valkey_url: str
) -> None:
    """A role that does not exist (or a wrong password) was retried in silence for the whole
    ``SERVE_READY_TIMEOUT_S``, then reported as "did not answer" (the operability reviewer): the
    server answered, and waiting cannot mend its refusal."""
    parts = urlsplit(database_url)
    refused = urlunsplit(parts._replace(netloc=f"no-such-role@{parts.netloc.rpartition('@')[2]}"))
    launcher = serve(launchers, data_dir, refused, valkey_url, SERVE_READY_TIMEOUT_S="600")

    assert launcher.read_to_exit(EXIT_DEADLINE_S) == 1, launcher.tail()
    refusal = [line for line in launcher.output if "PostgreSQL refused the connection" in line]
    assert refusal and 'role "no-such-role" does not exist' in refusal[0], launcher.tail()


@pytest.fixture
def not_valkey() -> Iterator[str]:
    """The URL of a port that answers as a web server does (another service where Valkey was meant)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"redis://127.0.0.1:{server.server_address[1]}/0"
    finally:
        server.shutdown()
        server.server_close()


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f":{password}@{parts.netloc.rpartition('@')[2]}"))


def test_serve_on_a_valkey_that_refuses_it_fails_at_once_before_migrating(
    launchers: list[Launcher], data_dir: Path, database_url: str, valkey_url: str, fresh_database: str
) -> None:
    """The new-user pass: a bad ``VALKEY_URL`` met nothing until readiness, which said only ``valkey
    (error)`` after the whole ``SERVE_READY_TIMEOUT_S``. It is checked first, as ``DATABASE_URL`` is:
    a password the server refuses fails at once, named, the password masked."""
    password = "valkey-secret-" + uuid.uuid4().hex[:8]
    refused = _with_password(valkey_url, password)
    launcher = serve(
        launchers, data_dir, _url_of(database_url, fresh_database), refused, SERVE_READY_TIMEOUT_S="600"
    )

    assert launcher.read_to_exit(EXIT_DEADLINE_S) == 1, launcher.tail()
    refusal = [line for line in launcher.output if "Valkey refused the connection" in line]
    assert refusal and "(VALKEY_URL=redis://:***@" in refusal[0], launcher.tail()
    assert password not in "\n".join(launcher.output)
    assert not _exists(database_url, fresh_database), "nothing is migrated for a refused VALKEY_URL"


def test_serve_on_another_service_where_valkey_was_meant_fails_at_once(
    launchers: list[Launcher], data_dir: Path, database_url: str, fresh_database: str, not_valkey: str
) -> None:
    launcher = serve(
        launchers, data_dir, _url_of(database_url, fresh_database), not_valkey, SERVE_READY_TIMEOUT_S="600"
    )

    assert launcher.read_to_exit(EXIT_DEADLINE_S) == 1, launcher.tail()
    assert any("Valkey answered in another protocol" in line for line in launcher.output), launcher.tail()


def test_serve_waits_for_an_unreachable_valkey_saying_so_then_fails_naming_it(
    launchers: list[Launcher], data_dir: Path, database_url: str, fresh_database: str
) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    launcher = serve(
        launchers, data_dir, _url_of(database_url, fresh_database), unreachable, SERVE_READY_TIMEOUT_S="1"
    )

    assert launcher.read_to_exit(EXIT_DEADLINE_S) == 1, launcher.tail()
    named = f"(VALKEY_URL={unreachable})"
    assert any(line.startswith(f"serve: waiting up to 1s for Valkey {named}: ") for line in launcher.output)
    failed = [line for line in launcher.output if line.startswith("serve: failed: ")]
    assert len(failed) == 1, launcher.tail()
    assert failed[0].startswith(f"serve: failed: Valkey did not answer within 1s {named}: "), failed
    assert "refused" in failed[0].lower(), failed


def test_migrate_on_an_unreachable_database_fails_in_one_line_naming_it(tmp_path: Path) -> None:
    port = free_port()
    password = "migrate-secret-" + uuid.uuid4().hex[:8]
    env = {
        "PATH": "/usr/bin:/bin",
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"postgresql://app:{password}@127.0.0.1:{port}/app",
        "SERVE_READY_TIMEOUT_S": "1",  # how long a configured database is waited for, as serve waits
    }

    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXIT_DEADLINE_S,
        check=False,
    )

    assert result.returncode == 1, result
    waiting, error = [line for line in result.stderr.splitlines() if line.strip()]
    named = f"(DATABASE_URL=postgresql://app:***@127.0.0.1:{port}/app)"
    assert waiting.startswith(f"migrate: waiting up to 1s for PostgreSQL {named}: "), waiting
    assert error.startswith(f"migrate: failed: PostgreSQL did not answer within 1s {named}: "), error
    assert f"127.0.0.1:{port}" in error and "connection refused" in error.lower(), error
    assert "Traceback" not in result.stderr
    assert password not in result.stdout + result.stderr
    assert not (tmp_path / "data" / "valkey").exists(), "migrate started an embedded Valkey"


def test_migrate_waiting_for_its_database_stops_on_sigterm(tmp_path: Path) -> None:
    """The wait says so and stops on a signal; the migration after it stops on one as it always did
    (the second diff reviewer: the wait's handlers, kept, made a migration ignore Ctrl-C and SIGTERM
    until it ended)."""
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"postgresql://app:secret@127.0.0.1:{port}/app",
        "SERVE_READY_TIMEOUT_S": "600",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "app.cli", "migrate"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stderr is not None
        waiting = process.stderr.readline()
        assert waiting.startswith("migrate: waiting up to 600s for PostgreSQL"), waiting
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=EXIT_DEADLINE_S) == 128 + signal.SIGTERM
        assert process.stderr.read().strip() == "migrate: stopped before it began"


def test_the_launchers_signal_handlers_are_given_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    signals = _StopSignals()
    assert signal.getsignal(signal.SIGTERM) != before
    signals.restore()
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("command", ["migrate", "seed", "worker"])
def test_every_command_on_credentials_the_server_refuses_fails_at_once(
    settings: Settings, command: str
) -> None:
    """The front-door reviewer: a wrong password made ``migrate`` wait dbmate's 60 s in silence, and
    ``seed``/``worker`` 30 s before "did not answer"; ``serve`` said at once that it was refused."""
    assert settings.database_url and settings.valkey_url
    parts = urlsplit(settings.database_url)
    refused = urlunsplit(parts._replace(netloc=f"no-such-role@{parts.netloc.rpartition('@')[2]}"))
    result = _cli(
        command,
        DATABASE_URL=refused,
        VALKEY_URL=settings.valkey_url,
        SECRET_KEY="k" * 16 + "0123456789ABCDEF",
        SERVE_READY_TIMEOUT_S="600",
    )

    assert result.returncode == 1, result
    assert "refused the connection" in result.stderr, result.stderr
    assert 'role "no-such-role" does not exist' in result.stderr, result.stderr
    assert "did not answer" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_refused_connection_does_not_wait_for_an_unreachable_valkey(settings: Settings) -> None:
    """The second diff reviewer: the refusal waited for Valkey's whole 30 s all the same."""
    assert settings.database_url
    parts = urlsplit(settings.database_url)
    refused = urlunsplit(parts._replace(netloc=f"no-such-role@{parts.netloc.rpartition('@')[2]}"))
    result = _cli(
        "worker",
        DATABASE_URL=refused,
        VALKEY_URL=f"redis://127.0.0.1:{free_port()}/0",
        SECRET_KEY="k" * 16 + "0123456789ABCDEF",
    )

    assert result.returncode == 1, result
    assert "refused the connection" in result.stderr, result.stderr
    assert "Valkey did not answer" not in result.stderr, result.stderr


def test_a_worker_on_a_valkey_that_refuses_it_fails_at_once(settings: Settings) -> None:
    """Its preflight waited ``PREFLIGHT_TIMEOUT_S`` for a refused password as for a Valkey starting."""
    assert settings.database_url and settings.valkey_url
    result = _cli(
        "worker",
        DATABASE_URL=settings.database_url,
        VALKEY_URL=_with_password(settings.valkey_url, "not-its-password"),
        SECRET_KEY="k" * 16 + "0123456789ABCDEF",
    )

    assert result.returncode == 1, result
    assert "Valkey answered (VALKEY_URL=redis://:***@" in result.stderr, result.stderr
    assert "it refused the connection" in result.stderr, result.stderr
    assert "did not answer" not in result.stderr and "not-its-password" not in result.stderr, result.stderr


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=EXIT_DEADLINE_S,
        check=False,
    )


@pytest.mark.parametrize("command", ["migrate", "seed", "worker"])
@pytest.mark.parametrize("secret_key", [None, "k" * 16 + "0123456789ABCDEF"], ids=["key-file", "key-set"])
def test_an_unusable_data_dir_is_one_line_naming_it(
    tmp_path: Path, command: str, secret_key: str | None
) -> None:
    """A ``DATA_DIR`` under a regular file: the signing key's file (no ``SECRET_KEY``), then the
    embedded servers (with one), ended every command in a Python traceback."""
    (tmp_path / "a-file").touch()
    data_dir = tmp_path / "a-file" / "data"
    result = _cli(command, DATA_DIR=str(data_dir), **({"SECRET_KEY": secret_key} if secret_key else {}))

    assert result.returncode == 1, result
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "DATA_DIR" in errors[0] and "Not a directory" in errors[0], errors[0]


def test_a_worker_on_a_database_that_does_not_exist_says_so_at_once(
    settings: Settings, fresh_database: str
) -> None:
    """The server answers: waiting PREFLIGHT_TIMEOUT_S (30 s) for it, then "did not answer", misled."""
    assert settings.database_url and settings.valkey_url
    result = _cli(
        "worker",
        DATABASE_URL=_url_of(settings.database_url, fresh_database),
        VALKEY_URL=settings.valkey_url,
        SECRET_KEY="k" * 16 + "0123456789ABCDEF",
    )

    assert result.returncode == 1, result
    assert "its database does not exist: run `migrate` first" in result.stderr, result.stderr
    assert "did not answer" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_migrate_says_so_when_nothing_was_pending(settings: Settings) -> None:
    """``just migrate`` on a database already at the code's schema: one line, as ``serve`` prints,
    not the nothing dbmate prints."""
    assert _migrate(settings) == "migrations: up to date\n"


@pytest.mark.parametrize(
    ("seconds", "spoken"),
    [
        (8 * 3600, "8 h"),
        (60, "1 min"),
        (5400, "90 min"),
        (45, "45 s"),
        (3601, "3601 s"),
        (7 * 86_400, "168 h"),
    ],
)
def test_the_banner_says_a_session_length_in_a_unit_that_says_it_exactly(seconds: int, spoken: str) -> None:
    assert spoken_duration(seconds) == spoken
