"""Review L8: production refuses benchmark routes and keys too short for their HMAC; ``create-admin``
refuses a weak ADMIN_PASSWORD (no unit of I/O: the settings loader and the password policy alone)."""

from __future__ import annotations

import secrets

import pytest

from app.config import DEFAULT_ADMIN_PASSWORD, SettingsError, load_settings
from app.domains.accounts.passwords import WeakPasswordError, check_new_password


def production(**overrides: str) -> dict[str, str]:
    return {
        "APP_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "DATABASE_URL": "postgresql://app:pw@db.internal/app",
        "VALKEY_URL": "redis://:pw@cache.internal:6379/0",
    } | overrides


def test_production_refuses_bench_routes() -> None:
    with pytest.raises(SettingsError, match="BENCH_ROUTES"):
        load_settings(production(BENCH_ROUTES="true"))
    assert load_settings(production(BENCH_ROUTES="false")).bench_routes is False
    assert load_settings({"BENCH_ROUTES": "true", "APP_ENV": "test"}).bench_routes is True


@pytest.mark.parametrize(("algorithm", "needed"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_production_needs_a_key_as_long_as_the_hash(algorithm: str, needed: int) -> None:
    short = secrets.token_hex(needed)[: needed - 1]
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load_settings(production(JWT_ALGORITHM=algorithm, SECRET_KEY=short))
    enough = secrets.token_hex(needed)[:needed]
    assert load_settings(production(JWT_ALGORITHM=algorithm, SECRET_KEY=enough)).jwt_algorithm == algorithm


@pytest.mark.parametrize(
    "password",
    [
        "short-pw",
        "a" * 300,
        "aaaaabbbbb",
        "1212121212121212",
        " " * 10,
        "\x00" * 10,
        "a passphrase\x00",
        "tab\tpassphrase",
    ],
)
def test_create_admin_refuses_weak_passwords(password: str) -> None:
    with pytest.raises(WeakPasswordError):
        check_new_password(password, production=False)


def test_the_public_default_admin_password_is_refused_in_production_only() -> None:
    with pytest.raises(WeakPasswordError):
        check_new_password(DEFAULT_ADMIN_PASSWORD, production=True)
    check_new_password(DEFAULT_ADMIN_PASSWORD, production=False)  # the development seed's
    check_new_password("a strong passphrase for ops", production=True)


def test_a_weak_password_is_not_a_value_error() -> None:
    """``create-admin`` prompts on ValueError (no password given); a weak one must stop it instead."""
    assert not issubclass(WeakPasswordError, ValueError)
