"""Demo data, created once: `just seed`, and `just serve` on an empty database.

Domains register a seeder with ``@seeder``; each one must be idempotent (it checks before it
inserts), so running the seed twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from app.config import Settings
from app.core.db import UnitOfWork

Seeder = Callable[[UnitOfWork, Settings], Awaitable[list[str]]]
SEEDERS: list[Seeder] = []


def seeder(function: Seeder) -> Seeder:
    SEEDERS.append(function)
    return function


def _load_domain_seeders() -> None:
    """Import the modules whose ``@seeder`` functions register themselves (in dependency order)."""
    import app.domains.accounts.seed
    import app.domains.projects.seed  # noqa: F401


async def run_seeders(uow: UnitOfWork, settings: Settings) -> list[str]:
    """Run every registered seeder in one transaction; returns what they report (log-in hints)."""
    _load_domain_seeders()
    lines: list[str] = []
    for function in SEEDERS:
        lines.extend(await function(uow, settings))
    return lines
