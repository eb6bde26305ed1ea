"""A malformed DATABASE_URL or VALKEY_URL is refused naming the setting, never printing its password.

The drivers' own errors quote the part they could not parse (psycopg: ``invalid percent-encoded
token: "<password>"``, ``missing "=" after "<the whole URL>"``), so the settings refuse such URLs
before any driver sees them, and the start paths mask credentials in whatever they print
(``tests/unit/test_core_logging_scrub.py``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from app.config import SettingsError, load_settings, redact_url
from tests.served import ROOT

PASSWORD = "S3cretPw"
MALFORMED_DATABASE_URLS = [
    pytest.param(f"postgresql://app:Xy%zz{PASSWORD}@127.0.0.1:1/app", id="percent-not-encoded"),
    pytest.param(f"postgresql//app:{PASSWORD}@127.0.0.1:1/app", id="scheme-without-colon"),
    # libpq's key=value form: accepted here, it then failed every migrate (dbmate takes URLs only)
    pytest.param(f"host=127.0.0.1 dbname=app user=app password={PASSWORD}", id="key-value-string"),
]
MALFORMED_VALKEY_URLS = [
    pytest.param(f"redis//:{PASSWORD}@127.0.0.1:1/0", id="scheme-without-colon"),
    pytest.param(f"redis://:{PASSWORD}@127.0.0.1:port/0", id="port-not-a-number"),
]


def _everything_said(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("url", MALFORMED_DATABASE_URLS)
def test_a_malformed_database_url_is_refused_naming_the_setting_only(url: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({"DATABASE_URL": url})
    assert "DATABASE_URL" in str(refused.value)
    assert PASSWORD not in _everything_said(refused.value)


@pytest.mark.parametrize("url", MALFORMED_VALKEY_URLS)
def test_a_malformed_valkey_url_is_refused_naming_the_setting_only(url: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({"VALKEY_URL": url})
    assert "VALKEY_URL" in str(refused.value)
    assert PASSWORD not in _everything_said(refused.value)


@pytest.mark.parametrize("scheme", ["mysql", "redis", "http", "POSTGRESQL"])
def test_a_database_url_of_another_scheme_is_refused_naming_the_scheme(scheme: str) -> None:
    """The new-user pass: ``mysql://`` was told about key=value connection strings."""
    with pytest.raises(SettingsError) as refused:
        load_settings({"DATABASE_URL": f"{scheme}://app:{PASSWORD}@127.0.0.1:1/app"})
    assert str(refused.value).endswith(f"its scheme is {scheme!r}"), refused.value
    assert PASSWORD not in _everything_said(refused.value)


def test_well_formed_urls_load() -> None:
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://app:pa%25ss@db.internal:5432/app?sslmode=require",
            "VALKEY_URL": "rediss://:pw@cache.internal:6380/1",
        }
    )
    assert settings.database_url and settings.valkey_url
    assert load_settings({"DATABASE_URL": "postgres://app@db/app"}).database_url


@pytest.mark.parametrize("url", [*MALFORMED_DATABASE_URLS, *MALFORMED_VALKEY_URLS])
def test_redact_url_masks_what_it_cannot_parse(url: str) -> None:
    redacted = redact_url(url)
    assert redacted is not None
    assert PASSWORD not in redacted


def test_redact_url_still_shows_what_it_can() -> None:
    assert redact_url(f"postgresql://app:{PASSWORD}@db/app") == "postgresql://app:***@db/app"
    assert redact_url(f"host=db password={PASSWORD}") == "host=db password=***"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


COMMANDS = [
    pytest.param(["-m", "app.cli", "serve"], id="serve"),
    pytest.param(["-m", "app.cli", "worker"], id="cli-worker"),
    pytest.param(["-m", "workers"], id="workers"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("url", MALFORMED_DATABASE_URLS)
def test_starting_with_a_malformed_database_url_never_prints_the_password(
    tmp_path: Path, command: list[str], url: str
) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "DATABASE_", "VALKEY_", "APP_", "PORT", "HOST"))
    }
    env |= {
        "DATABASE_URL": url,
        "VALKEY_URL": "redis://127.0.0.1:1/0",
        "DATA_DIR": str(tmp_path),
        "PORT": str(_free_port()),
        "SERVE_READY_TIMEOUT_S": "2",
    }
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "DATABASE_URL" in said, said
    assert PASSWORD not in said, said
