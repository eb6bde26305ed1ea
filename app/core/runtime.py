"""Resolve the service URLs: the configured servers, or the embedded ones when unset."""

from __future__ import annotations

from typing import Any

import msgspec

from app.config import Settings
from app.core import embedded

DEFAULT_DATABASE = "app"
# Handles of embedded servers this process started or joined; pgserver stops its server when the
# last process holding a handle exits, so they live as long as the process.
_handles: list[Any] = []


def resolve_services(settings: Settings, database: str = DEFAULT_DATABASE) -> Settings:
    """Settings whose ``database_url`` and ``valkey_url`` are set, starting embedded servers if needed."""
    changes: dict[str, str] = {}
    if settings.database_url is None:
        server = embedded.start_postgres(settings.data_dir)
        embedded.ensure_database(server, database)
        _handles.append(server)
        changes["database_url"] = embedded.postgres_url(server, database)
    if settings.valkey_url is None:
        url, server = embedded.start_valkey(settings.data_dir)
        if server is not None:
            _handles.append(server)
        changes["valkey_url"] = url
    return msgspec.structs.replace(settings, **changes) if changes else settings
