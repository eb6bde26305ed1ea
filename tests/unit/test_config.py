"""``load_settings``: parsing from environment strings, validation and a secret-free repr."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.config import DEFAULT_SECRET_KEY, Settings, SettingsError, load_settings

STRONG_SECRET = "k" * 16 + "0123456789ABCDEF"  # 32 characters
PROD_DB = "postgresql://app:db-password-1@db.internal:5432/app"
PROD_VALKEY = "redis://:valkey-password-1@cache.internal:6379/0"


def production(**overrides: str) -> dict[str, str]:
    env = {
        "APP_ENV": "production",
        "SECRET_KEY": STRONG_SECRET,
        "DATABASE_URL": PROD_DB,
        "VALKEY_URL": PROD_VALKEY,
    }
    env.update(overrides)
    return env


def test_empty_environment_gives_the_struct_defaults() -> None:
    settings = load_settings({})

    assert settings == Settings()
    assert settings.app_env == "development"
    assert settings.port == 8000
    assert settings.database_url is None
    assert settings.valkey_url is None
    assert settings.secret_key == DEFAULT_SECRET_KEY
    assert settings.trusted_proxies == ["127.0.0.1", "::1"]
    assert settings.cors_origins == []


def test_empty_strings_count_as_unset() -> None:
    assert load_settings({"PORT": "", "DATABASE_URL": "", "LOG_JSON": ""}) == Settings()


def test_variables_unrelated_to_settings_are_ignored() -> None:
    assert load_settings({"HOME": "/root", "port": "1", "PATH": "/bin"}) == Settings()


def test_numbers_are_parsed_from_strings() -> None:
    settings = load_settings(
        {
            "PORT": "9001",
            "WORKERS": "4",
            "DATABASE_TIMEOUT_S": "2.5",
            "VALKEY_TIMEOUT_S": "0.25",
            "STATEMENT_TIMEOUT_MS": "0",
        }
    )

    assert settings.port == 9001
    assert isinstance(settings.port, int)
    assert settings.workers == 4
    assert settings.database_timeout_s == 2.5
    assert settings.valkey_timeout_s == 0.25
    assert settings.statement_timeout_ms == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("false", False), ("0", False)],
)
def test_booleans_are_parsed_from_strings(raw: str, expected: bool) -> None:
    settings = load_settings({"LOG_JSON": raw, "WORKER_IN_PROCESS": raw})

    assert settings.log_json is expected
    assert settings.worker_in_process is expected


def test_paths_are_parsed_from_strings() -> None:
    assert load_settings({"DATA_DIR": "/var/lib/app"}).data_dir == Path("/var/lib/app")


def test_lists_are_comma_separated_trimmed_and_blanks_dropped() -> None:
    settings = load_settings(
        {
            "CORS_ORIGINS": " https://a.example , ,https://b.example,",
            "TRUSTED_PROXIES": "10.0.0.0/8,,  192.168.1.1 ",
        }
    )

    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.168.1.1"]


def test_a_single_item_list_needs_no_comma() -> None:
    assert load_settings({"CORS_ORIGINS": "https://only.example"}).cors_origins == ["https://only.example"]


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("PORT", "abc", "port"),
        ("PORT", "70000", "port"),
        ("PORT", "-1", "port"),
        ("WORKERS", "0", "workers"),
        ("DATABASE_TIMEOUT_S", "0", "database_timeout_s"),
        ("DATABASE_TIMEOUT_S", "soon", "database_timeout_s"),
        ("LOG_JSON", "maybe", "log_json"),
        ("LOG_LEVEL", "TRACE", "log_level"),
        ("APP_ENV", "staging", "app_env"),
        ("MAX_BODY_BYTES", "10", "max_body_bytes"),
    ],
)
def test_an_invalid_value_raises_naming_the_field(name: str, value: str, field: str) -> None:
    with pytest.raises(SettingsError, match=rf"\b{field}\b"):
        load_settings({name: value})


def test_port_bounds_are_inclusive() -> None:
    assert load_settings({"PORT": "0"}).port == 0
    assert load_settings({"PORT": "65535"}).port == 65535


@pytest.mark.parametrize("secret", [None, DEFAULT_SECRET_KEY, "short-secret", "x" * 31])
def test_production_refuses_a_default_or_short_secret(secret: str | None) -> None:
    env = production()
    if secret is None:
        del env["SECRET_KEY"]
    else:
        env["SECRET_KEY"] = secret

    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load_settings(env)


@pytest.mark.parametrize("missing", ["DATABASE_URL", "VALKEY_URL"])
def test_production_requires_external_database_and_valkey(missing: str) -> None:
    env = production()
    del env[missing]

    with pytest.raises(SettingsError, match=missing):
        load_settings(env)


def test_production_fully_configured_loads() -> None:
    settings = load_settings(production())

    assert settings.is_production
    assert settings.secret_key == STRONG_SECRET
    assert settings.database_url == PROD_DB
    assert settings.valkey_url == PROD_VALKEY


def test_a_32_character_secret_is_long_enough_in_production() -> None:
    assert len(load_settings(production(SECRET_KEY="s" * 32)).secret_key) == 32


@pytest.mark.parametrize("env", ["development", "test"])
def test_outside_production_the_default_secret_and_embedded_services_are_accepted(env: str) -> None:
    settings = load_settings({"APP_ENV": env})

    assert settings.secret_key == DEFAULT_SECRET_KEY
    assert settings.database_url is None


def test_pool_min_above_max_raises() -> None:
    with pytest.raises(SettingsError, match="DATABASE_POOL_MIN"):
        load_settings({"DATABASE_POOL_MIN": "11", "DATABASE_POOL_MAX": "10"})


def test_pool_min_equal_to_max_is_allowed() -> None:
    settings = load_settings({"DATABASE_POOL_MIN": "10", "DATABASE_POOL_MAX": "10"})

    assert (settings.database_pool_min, settings.database_pool_max) == (10, 10)


def test_repr_masks_secret_and_url_passwords_but_keeps_the_rest() -> None:
    text = repr(load_settings(production()))

    assert STRONG_SECRET not in text
    assert "db-password-1" not in text
    assert "valkey-password-1" not in text
    assert "secret_key='***'" in text
    assert "postgresql://app:***@db.internal:5432/app" in text
    assert "cache.internal:6379/0" in text
    assert "app_env='production'" in text


def test_repr_leaves_urls_without_credentials_alone() -> None:
    url = "postgresql://db.internal:5432/app"

    assert f"database_url={url!r}" in repr(load_settings({"DATABASE_URL": url}))


_SAFE_TEXT = string.ascii_letters + string.digits
_PLACEHOLDER_SECRET = "P" * 40
_PLACEHOLDER_PASSWORD = "Q" * 12


def _settings_with(secret: str, password: str) -> Settings:
    return load_settings(
        production(
            SECRET_KEY=secret,
            DATABASE_URL=f"postgresql://app:{password}@db.internal:5432/app",
            VALKEY_URL=f"redis://default:{password}@cache.internal:6379/0",
        )
    )


@given(
    secret=st.text(alphabet=_SAFE_TEXT, min_size=32, max_size=80),
    password=st.text(alphabet=_SAFE_TEXT, min_size=8, max_size=40),
)
def test_repr_never_contains_the_secret_or_the_database_password(secret: str, password: str) -> None:
    # A value that happens to spell out other repr text (e.g. "developm") is not a leak.
    baseline = repr(_settings_with(_PLACEHOLDER_SECRET, _PLACEHOLDER_PASSWORD))
    assume(secret not in baseline and password not in baseline)

    settings = _settings_with(secret, password)
    text = repr(settings)

    assert settings.secret_key == secret
    assert secret not in text
    assert password not in text
