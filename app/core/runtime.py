"""Resolve the service URLs: the configured servers, or the embedded ones when unset."""

from __future__ import annotations

import msgspec

from app.config import Settings
from app.core import embedded

DEFAULT_DATABASE = "app"


def resolve_services(
    settings: Settings, database: str = DEFAULT_DATABASE, *, valkey: bool = True
) -> Settings:
    """Settings whose ``database_url`` and (unless not ``valkey``) ``valkey_url`` are set, starting
    embedded servers if needed.

    This process then holds the embedded servers it started or joined until ``release_services``
    (or its exit); see ``app.core.embedded``.
    """
    changes: dict[str, str] = {}
    if settings.database_url is None:
        server = embedded.start_postgres(settings.data_dir)
        embedded.ensure_database(server, database)
        changes["database_url"] = embedded.postgres_url(server, database)
    if valkey and settings.valkey_url is None:
        url, _ = embedded.start_valkey(settings.data_dir)
        changes["valkey_url"] = url
    return msgspec.structs.replace(settings, **changes) if changes else settings


def revive_services() -> list[embedded.Revival]:
    """Start again the embedded servers this process holds that died (``embedded.revive_held``)."""
    return embedded.revive_held()


def release_services() -> None:
    """Let go of the embedded servers this process holds; each stops when nobody else holds it."""
    embedded.release_all()
